"""Issue 19's classes beyond the matrix's one-command cases: proxies against stand-in servers on loopback,
secret settings in .env, archive vetting and its clean tar, the safe reader, the template sandbox and the
inventory's line index. No engine: stand-in servers on 127.0.0.1, an unused unix socket for the engine."""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import stat
import tarfile
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from click.testing import CliRunner

from deploykit.cli import cli
from deploykit.seams import archive, health, stackdir
from deploykit.values import webui_env
from deploykit.values.errors import ConfigError, UsageError
from deploykit.values.stackfiles import INFERENCE_API_KEY

NO_ENGINE = ("--docker-host", "unix:///nonexistent.sock")


# ---------------------------------------------------------------- stand-in servers


class Recorder(ThreadingHTTPServer):
    """A loopback server that records each request (method, path, Authorization) and answers ``answer``."""

    daemon_threads = True

    def __init__(self, answer: dict[str, Any] | None, status: int = 200) -> None:
        self.seen: list[tuple[str, str, str]] = []
        self.answer, self.status = answer, status
        super().__init__(("127.0.0.1", 0), _Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: Recorder

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        self.server.seen.append((self.command, self.path, self.headers.get("Authorization", "")))
        body = json.dumps(self.server.answer or {}).encode()
        self.send_response(self.server.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_CONNECT = _answer

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def proxy(monkeypatch: pytest.MonkeyPatch) -> Iterator[Recorder]:
    """A stand-in proxy that every proxy variable points at (no NO_PROXY): whatever reaches it is recorded."""
    stand_in = Recorder({"error": "the proxy"}, status=502)
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.setenv(name, stand_in.url)
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    yield stand_in
    stand_in.shutdown()


ANSWER = {"choices": [{"message": {"role": "assistant", "content": "Hello from loopback."}}]}


def test_the_stand_in_proxy_catches_a_client_that_trusts_the_environment(proxy: Recorder) -> None:
    # The control: without trust_env=False the request goes to the proxy (so the tests below can fail).
    server = Recorder(ANSWER)
    with httpx.Client(base_url=server.url) as client:
        assert client.get("/health").status_code == 502
    assert proxy.seen and not server.seen


def test_health_client_goes_straight_to_the_loopback_server(proxy: Recorder) -> None:
    server = Recorder({"status": True})
    with health.http_client(server.url, "sk-key") as client:
        assert health.probe_webui_health(client) == "ready"
    assert server.seen == [("GET", "/health", "Bearer sk-key")] and proxy.seen == []


def test_bench_client_and_metrics_go_straight_to_the_loopback_server(proxy: Recorder) -> None:
    from deploykit.backends.llamacpp import LLAMACPP
    from deploykit.running import bench

    server = Recorder({})
    target = bench.Target(
        server.url, "/v1/chat/completions", "sk-key", "m", "inference", LLAMACPP.metrics, server.url, "k"
    )

    async def one() -> int:
        async with bench._client(target, 1) as client:
            return (await client.get("/v1/models")).status_code

    assert asyncio.run(one()) == 200
    bench.server_counters(target)
    assert [path for _, path, _ in server.seen] == ["/v1/models", "/metrics"] and proxy.seen == []


def _stack_served_by(server: Recorder, tmp_path: Path) -> tuple[CliRunner, dict[str, str], str]:
    """A stack rendered in tmp_path/s whose inference port is ``server``'s: the runner, its env and the API key."""
    env = {"DEPLOYKIT_INFERENCE_PORT": str(server.server_address[1]), "DEPLOYKIT_MODEL_CACHE": str(tmp_path / "models")}
    runner = CliRunner()
    rendered = runner.invoke(cli, ["render", "-p", "cpu", "--dir", str(tmp_path / "s")], env=env)
    assert rendered.exit_code == 0, rendered.output
    return runner, env, stackdir.read_secrets(tmp_path / "s")[INFERENCE_API_KEY]


def test_chat_direct_with_a_proxy_in_the_environment_reaches_the_server_and_not_the_proxy(
    proxy: Recorder, tmp_path: Path
) -> None:
    server = Recorder(ANSWER)
    runner, env, key = _stack_served_by(server, tmp_path)
    result = runner.invoke(cli, ["chat", "--direct", "--dir", str(tmp_path / "s"), "Say hello"], env=env)
    assert result.exit_code == 0 and "Hello from loopback." in result.output, result.output
    assert server.seen == [("POST", "/v1/chat/completions", f"Bearer {key}")]
    assert proxy.seen == []  # the API key never went to the proxy


def test_eval_with_a_proxy_in_the_environment_asks_the_server_and_not_the_proxy(
    proxy: Recorder, tmp_path: Path
) -> None:
    """`deploykit eval --via inference` on a plain data set: every question to the stack's loopback server with
    its key, none through the proxy every proxy variable names."""
    server = Recorder({"choices": [{"message": {"role": "assistant", "content": "4"}, "finish_reason": "stop"}]})
    runner, env, key = _stack_served_by(server, tmp_path)
    items = tmp_path / "plain.jsonl"
    items.write_text("".join(json.dumps({"prompt": f"{i} + {4 - i}?", "answer": "4"}) + "\n" for i in range(3)))
    result = runner.invoke(
        cli, [*NO_ENGINE, "eval", "--dir", str(tmp_path / "s"), "--dataset", str(items), "--json"], env=env
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["stacks"][0]["metrics"]["passed"] == 3, result.stdout
    asked = [(method, path) for method, path, auth in server.seen if auth == f"Bearer {key}"]
    assert asked.count(("POST", "/v1/chat/completions")) == 3, server.seen
    assert proxy.seen == []  # neither a question nor the API key went to the proxy


# ---------------------------------------------------------------- [webui_env] secrets


SITE = """[webui_env]
WEBUI_NAME = "Physics Lab"
LDAP_APP_PASSWORD = "hunter2$-ldap"
OAUTH_CLIENT_SECRET = "oauth-s3cret"
ENABLE_API_KEYS = true
"""


def _render(tmp_path: Path, config: str, *extra: str) -> Any:
    path = Path(os.environ["XDG_CONFIG_HOME"]) / "deploykit" / "config.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(config, encoding="utf-8")
    env = {"DEPLOYKIT_MODEL_CACHE": str(tmp_path / "models")}
    return CliRunner().invoke(cli, ["render", "-p", "cpu", "--dir", str(tmp_path / "s"), *extra], env=env)


def test_secret_settings_go_into_env_and_compose_refers_to_them(tmp_path: Path) -> None:
    result = _render(tmp_path, SITE, "--json")
    assert result.exit_code == 0, result.output
    stack = tmp_path / "s"
    for secret in ("hunter2$-ldap", "oauth-s3cret"):
        assert secret not in result.output
        assert secret not in (stack / "compose.yaml").read_text() and secret not in (stack / "plan.json").read_text()
    env = (stack / ".env").read_text()
    assert "LDAP_APP_PASSWORD='hunter2$-ldap'\n" in env and "OAUTH_CLIENT_SECRET='oauth-s3cret'\n" in env
    assert stat.S_IMODE((stack / ".env").stat().st_mode) == 0o600
    web = yaml.safe_load((stack / "compose.yaml").read_text())["services"]["open-webui"]["environment"]
    assert web["LDAP_APP_PASSWORD"].startswith("${LDAP_APP_PASSWORD:?")
    assert web["WEBUI_NAME"] == "Physics Lab" and web["ENABLE_API_KEYS"] == "true"  # a switch, not a secret
    plan = json.loads((stack / "plan.json").read_text())["stack"]
    assert plan["webui_secrets"] == ["LDAP_APP_PASSWORD", "OAUTH_CLIENT_SECRET"]
    assert "LDAP_APP_PASSWORD" not in plan["webui_env"]


def test_compose_reads_the_secret_setting_from_env(tmp_path: Path) -> None:
    from tests.unit.conftest import compose_config

    assert _render(tmp_path, SITE).exit_code == 0
    web = compose_config(tmp_path / "s")["services"]["open-webui"]["environment"]
    # `compose config` writes a literal $ as $$ (its own escape): the value from .env, taken literally.
    assert web["LDAP_APP_PASSWORD"] == "hunter2$$-ldap" and web["OAUTH_CLIENT_SECRET"] == "oauth-s3cret"


def test_a_changed_secret_setting_replaces_its_line_and_keeps_the_others(tmp_path: Path) -> None:
    assert _render(tmp_path, SITE).exit_code == 0
    env = tmp_path / "s" / ".env"
    env.write_text(env.read_text() + "# mine\nMY_NOTE='kept'\n")
    before = env.read_text()
    again = _render(tmp_path, SITE)
    assert again.exit_code == 0 and "nothing changed" in again.output.lower(), again.output
    assert env.read_text() == before
    assert _render(tmp_path, SITE.replace("oauth-s3cret", "rotated")).exit_code == 0
    assert env.read_text() == before.replace("OAUTH_CLIENT_SECRET='oauth-s3cret'", "OAUTH_CLIENT_SECRET='rotated'")


def test_env_with_sets_appends_and_keeps() -> None:
    text = "# head\nA='1'\n\nexport B='2'  # note\nC=3"
    assert stackdir.env_with(text, {}) == text
    assert stackdir.env_with(text, {"B": "2"}) == text  # the same value: the same text, comment and all
    assert stackdir.env_with(text, {"B": "9", "D": "4"}) == "# head\nA='1'\n\nB='9'\nC=3\nD='4'\n"
    with pytest.raises(UsageError, match="control character"):
        stackdir.env_with(text, {"D": "a\x00b"})


def test_the_reserved_names_are_everything_the_template_sets_for_open_webui() -> None:
    from deploykit.app.stack import reference_stack

    files = reference_stack("cpu")
    for name in ("compose.yaml", "swarm.yaml"):
        environment = yaml.safe_load(files[name])["services"]["open-webui"]["environment"]
        assert set(environment) <= webui_env.RESERVED, (name, set(environment) - webui_env.RESERVED)


@pytest.mark.parametrize(
    ("name", "secret"),
    [("LDAP_APP_PASSWORD", True), ("OAUTH_CLIENT_SECRET", True), ("RAG_OPENAI_API_KEY", True),
     ("OPENAI_API_KEYS", True), ("SCIM_TOKEN", True), ("ENABLE_API_KEYS", False), ("WEBUI_NAME", False),
     ("BRAVE_SEARCH_CONTEXT_TOKENS", False), ("KEYBOARD", False)],
)  # fmt: skip
def test_which_names_are_secrets(name: str, secret: bool) -> None:
    assert webui_env.is_secret(name) is secret


# ---------------------------------------------------------------- archives


def _backup(path: Path, members: list[tuple[tarfile.TarInfo, bytes]]) -> Path:
    with tarfile.open(path, "w:gz", format=tarfile.PAX_FORMAT) as tar:
        manifest = tarfile.TarInfo(archive.MANIFEST_MEMBER)
        manifest.size = 2
        tar.addfile(manifest, io.BytesIO(b"{}"))
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if info.isfile() else None)
    return path


def _info(name: str, kind: bytes = tarfile.REGTYPE, mode: int = 0o644, size: int = 0) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.size, info.uid, info.gid = kind, mode, size, 1000, 1000
    return info


def test_the_clean_tar_holds_the_vetted_members_with_masked_modes(tmp_path: Path) -> None:
    body = os.urandom(70_000)
    path = _backup(
        tmp_path / "b.tar.gz",
        [
            (_info("data", tarfile.DIRTYPE, 0o1777), b""),
            (_info("data/run.sh", mode=0o6777, size=10), b"#!/bin/sh\n"),
            (_info("data/webui.db", size=len(body)), body),
            (_info("data/ünïcode name.txt", size=3), b"abc"),
        ],
    )
    vetted = archive.vet(path)
    assert (vetted.files, vetted.folders, vetted.masked) == (3, 1, 2)
    clean = b"".join(archive.clean_tar(path, vetted))
    assert len(clean) == vetted.tar_bytes
    with tarfile.open(fileobj=io.BytesIO(clean)) as tar:
        got = {m.name: (m.type, stat.S_IMODE(m.mode), m.uid, tar.extractfile(m).read() if m.isfile() else b"")  # type: ignore[union-attr]
               for m in tar}  # fmt: skip
    assert got["data"][:2] == (tarfile.DIRTYPE, 0o775)
    assert got["data/run.sh"] == (tarfile.REGTYPE, 0o775, 1000, b"#!/bin/sh\n")  # no setuid, not world-writable
    assert got["data/webui.db"][3] == body and got["data/ünïcode name.txt"][3] == b"abc"
    assert archive.MANIFEST_MEMBER not in got
    outer = b"".join(archive.nested_tar("backup.tar", iter([clean]), len(clean)))
    with tarfile.open(fileobj=io.BytesIO(outer)) as tar:
        assert tar.extractfile("backup.tar").read() == clean  # type: ignore[union-attr]


def test_an_archive_swapped_between_vetting_and_sending_stops_the_stream(tmp_path: Path) -> None:
    good = [(_info("data", tarfile.DIRTYPE, 0o755), b""), (_info("data/a", size=1), b"a")]
    path = _backup(tmp_path / "b.tar.gz", good)
    vetted = archive.vet(path)
    link = _info("data/a", tarfile.SYMTYPE)
    link.linkname = "/etc/shadow"
    _backup(path, [good[0], (link, b"")])
    with pytest.raises(UsageError, match="changed while it was being restored"):
        b"".join(archive.clean_tar(path, vetted))
    _backup(path, [*good, (_info("data/b", size=5), b"grown")])
    with pytest.raises(UsageError, match="changed while it was being restored"):
        b"".join(archive.clean_tar(path, vetted))


@pytest.mark.parametrize(
    ("random", "mib", "most"),
    [(True, 48, 16), (False, 160, 48)],
    ids=["48 MiB that does not compress", "160 MiB of zeros (a tiny gzip)"],
)
def test_vetting_and_sending_stream_the_archive_in_bounded_memory(
    tmp_path: Path, random: bool, mib: int, most: int
) -> None:
    import tracemalloc

    body = os.urandom(mib * 1024 * 1024) if random else bytes(mib * 1024 * 1024)
    path = tmp_path / "b.tar.gz"
    with tarfile.open(path, "w:gz", compresslevel=1) as tar:
        manifest = tarfile.TarInfo(archive.MANIFEST_MEMBER)
        manifest.size = 2
        tar.addfile(manifest, io.BytesIO(b"{}"))
        tar.addfile(_info("data", tarfile.DIRTYPE, 0o755))
        tar.addfile(_info("data/webui.db", size=len(body)), io.BytesIO(body))
    size, body = len(body), b""  # not counted in the peak below
    tracemalloc.start()
    vetted = archive.vet(path)
    sent = sum(len(block) for block in archive.clean_tar(path, vetted))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert sent == vetted.tar_bytes and vetted.data_bytes == size
    # gzip hands over what one compressed block inflates to (large for zeros), never the whole member.
    assert peak < most * 1024 * 1024, f"peak {peak / 1024**2:.0f} MiB for a {mib} MiB member"


def test_a_gzip_bomb_in_an_extended_header_is_refused_by_its_size_unread(tmp_path: Path) -> None:
    import gzip
    import tracemalloc

    header = _info("././@PaxHeader", tarfile.XHDTYPE, size=96 * 1024 * 1024)
    path = tmp_path / "b.tar.gz"  # the manifest, then a pax header whose 96 MiB of zeros are really there
    manifest = _info(archive.MANIFEST_MEMBER, size=2)
    with gzip.open(path, "wb", compresslevel=1) as fh:
        fh.write(manifest.tobuf(format=tarfile.PAX_FORMAT) + b"{}".ljust(512, b"\0"))
        fh.write(header.tobuf(format=tarfile.GNU_FORMAT))
        for _ in range(96):
            fh.write(bytes(1024 * 1024))
    tracemalloc.start()
    with pytest.raises(UsageError, match="an extended header of 100,663,296 bytes"):
        archive.vet(path)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 8 * 1024 * 1024


def test_the_total_bound_stops_a_gzip_bomb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(archive, "MAX_TOTAL_BYTES", 1024 * 1024)
    members = [(_info("data", tarfile.DIRTYPE, 0o755), b"")]
    members += [(_info(f"data/{i}", size=400_000), bytes(400_000)) for i in range(3)]
    with pytest.raises(UsageError, match="unpacks to more than"):
        archive.vet(_backup(tmp_path / "b.tar.gz", members))


def test_manifest_fields_are_typed() -> None:
    from deploykit.running.backup import Manifest

    good = {"stack_id": "a", "project": "p", "volume": "v", "image": "i:1", "created": "t", "deploykit_version": "0"}
    assert Manifest.from_json(good).format == 1
    for bad, says in [
        ({**good, "format": "1"}, "format is a JSON str"),
        ({**good, "size_bytes": True}, "size_bytes"),
        ({k: v for k, v in good.items() if k != "image"}, "image is missing"),
        ([good], "a JSON list"),
    ]:
        with pytest.raises(ValueError, match=says):
            Manifest.from_json(bad)  # fmt: skip


# ---------------------------------------------------------------- the safe reader


def _bounded(seconds: int = 10) -> None:
    signal.signal(signal.SIGALRM, lambda *_: pytest.fail("blocked"))
    signal.alarm(seconds)


def test_the_reader_refuses_pipes_devices_and_sizes_without_blocking(tmp_path: Path) -> None:
    from deploykit.seams.textfile import read_text

    os.mkfifo(tmp_path / "pipe")
    (tmp_path / "link").symlink_to(tmp_path / "pipe")
    (tmp_path / "big").write_bytes(b"x" * 2048)
    _bounded()
    try:
        for path, says in [
            (tmp_path / "pipe", "is a named pipe"),
            (tmp_path / "link", "is a named pipe"),
            (Path("/dev/zero"), "is a device"),
            (tmp_path, "is a directory"),
            (tmp_path / "big", "is 2048 bytes; deploykit reads at most 1024 bytes"),
        ]:
            with pytest.raises(ConfigError, match=says):
                read_text(path, "test file", "hint", ConfigError, limit=1024)  # fmt: skip
    finally:
        signal.alarm(0)


def test_a_stack_file_larger_than_any_deploykit_writes_is_refused_unread(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["render", "-p", "cpu", "--dir", str(tmp_path / "s")])
    assert result.exit_code == 0, result.output
    with (tmp_path / "s" / "plan.json").open("r+b") as fh:  # sparse: 65 MiB claimed, nothing written
        fh.truncate(65 * 1024 * 1024)
    result = CliRunner().invoke(cli, [*NO_ENGINE, "status", "--dir", str(tmp_path / "s")])
    assert result.exit_code == 10 and "is larger than 64 MiB, so deploykit did not write it" in result.output


def test_a_fleet_override_that_is_a_pipe_or_too_deep_fails_that_host(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from deploykit.app import fleet as app
    from deploykit.app.fleet import summary
    from deploykit.catalog import builtin_profiles, find_profile
    from deploykit.config.settings import Settings
    from deploykit.seams.engine import EngineAddress

    monkeypatch.setattr(app, "_reach", lambda host: (EngineAddress("unix:///nonexistent.sock"), None))
    monkeypatch.setattr(app, "detect_fleet_host", lambda *a, **k: find_profile("cpu", builtin_profiles()))
    inventory = tmp_path / "lab.toml"
    inventory.write_text('[[hosts]]\nname = "lab-01"\nengine = "unix:///x"\noverride = "o.yaml"\n')
    settings = Settings(model_cache=tmp_path / "cache")
    req = app.FleetRequest(inventory, None, 1, tmp_path / "fleet")
    os.mkfifo(tmp_path / "o.yaml")
    _bounded()
    try:
        row = summary(app.fleet_plan(settings, req, write=True))["hosts"][0]  # type: ignore[index]
    finally:
        signal.alarm(0)
    assert row["state"] == "failed" and "not a file on this controller" in row["error"]
    (tmp_path / "o.yaml").unlink()
    (tmp_path / "o.yaml").write_text("services: " + "[" * 5000 + "]" * 5000 + "\n")
    row = summary(app.fleet_plan(settings, req, write=True))["hosts"][0]  # type: ignore[index]
    assert row["state"] == "failed" and "nested too deeply" in row["error"]
    assert not (tmp_path / "fleet" / "lab-01").exists()


# ---------------------------------------------------------------- templates and inventories


def test_every_template_renders_in_the_immutable_sandbox() -> None:
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    from deploykit.planning.render import _environment

    env = _environment(None)
    assert isinstance(env, ImmutableSandboxedEnvironment) and env.undefined.__name__ == "StrictUndefined"


def test_the_inventory_index_finds_the_lines_the_rescanning_found(tmp_path: Path) -> None:
    from deploykit.config.inventory import TomlLines, _line_of

    text = (
        'override = "top.yaml"\n[webui_env]\nA = "1"\n[groups."gpu room"]\noverride = "g.yaml"\n'
        "[groups.cpu]\n\n[[hosts]]\nname = 'a'\n  override='h.yaml'\n[hosts.labels]\noverride = 'not this'\n"
        "[[hosts]]\nname = 'b'\n"
    )
    lines = TomlLines(text)
    assert _line_of(lines, ("override",)) == 1
    assert _line_of(lines, ("webui_env",)) == 2
    assert _line_of(lines, ("groups", "gpu room", "override")) == 5
    assert _line_of(lines, ("groups", "cpu", "override")) == 6  # not written there: the header's line
    assert _line_of(lines, ("hosts", 0, "override")) == 10
    assert _line_of(lines, ("hosts", 1, "override")) == 13
    assert _line_of(lines, ("hosts", 2, "name")) is None


def test_engine_urls_lose_their_passwords_however_written() -> None:
    from deploykit.values.redact import redact

    assert redact("tcp://me:p@ss/w0rd@lab-01:2376 and more") == "tcp://***@lab-01:2376 and more"
    assert redact("ssh://root@lab-01") == "ssh://root@lab-01"
    assert redact('{"engine": "tcp://:only-password@h:1"}') == '{"engine": "tcp://***@h:1"}'
