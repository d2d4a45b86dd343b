"""The fleet's pure parts: inventory, host selection, the parallel runner, the model payload, rendering."""

from __future__ import annotations

import hashlib
import io
import tarfile
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from deploykit.app.fleet import HostResult, run_parallel, summary
from deploykit.cli import cli
from deploykit.config.inventory import FleetHost, load_inventory, select_hosts
from deploykit.running.delivery import archive_stream, model_payload
from deploykit.values.errors import ConfigError, EngineError, NotFoundError, UsageError

INVENTORY = """
[[hosts]]
name = "lab-01"
engine = "ssh://root@lab-01"
labels = { room = "b12" }

[[hosts]]
name = "lab-02"
engine = "unix:///var/run/docker.sock"
ui_port = 7870
inference_port = 7871
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "inventory.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_inventory_loads_with_defaults(tmp_path: Path) -> None:
    inv = load_inventory(write(tmp_path, INVENTORY))
    assert [h.name for h in inv.hosts] == ["lab-01", "lab-02"]
    assert inv.hosts[0].ui_port == 7860 and inv.hosts[0].labels == {"room": "b12"}
    assert inv.hosts[1].ui_port == 7870


def test_unknown_key_is_refused_with_its_line(tmp_path: Path) -> None:
    text = INVENTORY + '\n[[hosts]]\nname = "lab-03"\nengine = "ssh://lab-03"\nuiport = 7860\n'
    with pytest.raises(ConfigError) as err:
        load_inventory(write(tmp_path, text))
    line = text.splitlines().index("uiport = 7860") + 1
    assert f"line {line}: hosts[2].uiport: Extra inputs are not permitted" in err.value.message


@pytest.mark.parametrize(
    ("entry", "says"),
    [
        ('name = "a"', "exactly one of engine"),
        ('name = "a"\nengine = "http://a"', "is not ssh://"),
        ('name = "a"\nengine = "ssh://a"\nui_port = "7860"', "valid integer"),
        ('name = "a/b"\nengine = "ssh://a"', "pattern"),
        ('name = "a"\nengine = "ssh://a"\nui_port = 7861', "must differ"),
    ],
)
def test_bad_hosts_are_refused(tmp_path: Path, entry: str, says: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_inventory(write(tmp_path, f"[[hosts]]\n{entry}\n"))
    assert says in err.value.message


def test_duplicate_names_and_bad_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="appears twice"):
        load_inventory(write(tmp_path, INVENTORY + '[[hosts]]\nname = "lab-01"\nengine = "ssh://x"\n'))
    with pytest.raises(UsageError, match="not valid TOML"):
        load_inventory(write(tmp_path, "[[hosts]\n"))
    with pytest.raises(NotFoundError):
        load_inventory(tmp_path / "missing.toml")


def test_select_hosts_by_glob(tmp_path: Path) -> None:
    inv = load_inventory(write(tmp_path, INVENTORY))
    assert [h.name for h in select_hosts(inv, "lab-0[2]")] == ["lab-02"]
    assert len(select_hosts(inv, "lab-01,lab-02")) == 2
    with pytest.raises(NotFoundError, match="matches no host"):
        select_hosts(inv, "pc-*")


def test_one_failure_never_stops_the_others_and_concurrency_is_bounded() -> None:
    hosts = [FleetHost(name=f"h{i}", engine=f"ssh://h{i}") for i in range(6)]
    running = 0
    peak = 0
    lock = threading.Lock()

    def work(host: FleetHost) -> HostResult:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(0.05)
        with lock:
            running -= 1
        if host.name == "h1":
            raise EngineError("cannot reach h1", "is it on?")
        if host.name == "h2":
            raise RuntimeError("boom")
        return HostResult(host.name, "healthy")

    results = run_parallel(hosts, work, parallel=2)
    assert [r.host for r in results] == [h.name for h in hosts]
    assert [r.state for r in results] == ["healthy", "unreachable", "failed", "healthy", "healthy", "healthy"]
    assert peak == 2
    data = summary(results)
    assert data["ok"] is False and data["unreachable"] == ["h1"] and data["failed"] == ["h2"]
    assert data["hosts"][1]["error"] == "cannot reach h1" and data["hosts"][1]["hint"] == "is it on?"


def test_payload_of_a_file_and_a_directory(tmp_path: Path) -> None:
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF" + bytes(range(256)) * 50)
    payload = model_payload(gguf)
    assert payload.digest == hashlib.sha256(gguf.read_bytes()).hexdigest()
    assert payload.volume == f"deploykit-model-{payload.digest[:16]}"
    with tarfile.open(fileobj=io.BytesIO(b"".join(archive_stream(payload, chunk=1000)))) as tar:
        assert sorted(tar.getnames()) == ["SHA256SUMS", "m.gguf"]
        sums = tar.extractfile("SHA256SUMS")
        assert sums is not None and sums.read().decode() == f"{payload.digest}  m.gguf\n"

    model_dir = tmp_path / "hf"
    (model_dir / "sub").mkdir(parents=True)
    (model_dir / "config.json").write_text("{}")
    (model_dir / "sub" / "w.safetensors").write_bytes(b"x" * 10)
    payload = model_payload(model_dir)
    assert payload.sums.splitlines()[1].endswith("  sub/w.safetensors")
    assert payload.digest == hashlib.sha256(payload.sums.encode()).hexdigest()
    with tarfile.open(fileobj=io.BytesIO(b"".join(archive_stream(payload)))) as tar:
        assert sorted(tar.getnames()) == ["SHA256SUMS", "config.json", "sub/w.safetensors"]


def test_render_mounts_a_model_volume_safely(tmp_path: Path) -> None:
    from deploykit.app.resolve import ResolvedModel
    from deploykit.app.stack import prepare_for_host
    from deploykit.catalog import builtin_models, builtin_profiles, find_model, find_profile
    from deploykit.config.settings import Settings

    settings = Settings(model_cache=tmp_path / "cache")
    host = find_profile("cpu", builtin_profiles())
    model = ResolvedModel(find_model(settings.model, builtin_models()), None)
    prepared = prepare_for_host(settings, host, model, {}, tmp_path / "lab-01", model_volume='deploykit-model-"x$y')
    compose = yaml.safe_load(prepared.files["compose.yaml"])
    mount = compose["services"]["inference"]["volumes"][0]
    assert mount == {"type": "volume", "source": "model", "target": "/models", "read_only": True}
    # $ is doubled for compose's interpolation; YAML itself holds the name exactly.
    assert compose["volumes"]["model"] == {"name": 'deploykit-model-"x$$y', "external": True}
    plain = prepare_for_host(settings, host, model, {}, tmp_path / "lab-02")
    assert yaml.safe_load(plain.files["compose.yaml"])["services"]["inference"]["volumes"][0]["type"] == "bind"


def test_cli_fleet_status_reports_an_unreachable_host(tmp_path: Path) -> None:
    inv = write(tmp_path, '[[hosts]]\nname = "gone"\nengine = "unix:///nonexistent/docker.sock"\n')
    result = CliRunner().invoke(
        cli, ["fleet", "status", "--inventory", str(inv), "--dir", str(tmp_path / "fleet"), "--json"]
    )
    assert result.exit_code == 1
    assert '"state": "unreachable"' in result.output


# ---------------------------------------------------------------- tcp:// with TLS


def tls_folder(path: Path) -> Path:
    path.mkdir(parents=True)
    for name in ("ca.pem", "cert.pem", "key.pem"):
        (path / name).write_text(name, encoding="utf-8")
    return path


def test_tls_dir_is_layered_and_read_from_the_inventory_folder(tmp_path: Path) -> None:
    from deploykit.config.inventory import engine_address
    from deploykit.seams.engine import EngineAddress, EngineTLS

    tls_folder(tmp_path / "certs" / "fleet")
    tls_folder(tmp_path / "certs" / "lab-02")
    text = (
        'tls_dir = "certs/fleet"\n'
        '[[hosts]]\nname = "lab-01"\nengine = "tcp://lab-01:2376"\n'
        '[[hosts]]\nname = "lab-02"\nengine = "tcp://lab-02:2376"\ntls_dir = "certs/lab-02"\n'
        '[[hosts]]\nname = "lab-03"\nengine = "tcp://lab-03:2375"\ntls = false\n'
        '[[hosts]]\nname = "lab-04"\nengine = "ssh://root@lab-04"\n'
    )
    hosts = load_inventory(write(tmp_path, text)).hosts
    addresses = [engine_address(h) for h in hosts]
    assert [a.tls for a in addresses] == [
        EngineTLS(tmp_path / "certs" / "fleet"),
        EngineTLS(tmp_path / "certs" / "lab-02"),
        None,  # tls = false: the site's explicit choice
        None,  # ssh:// carries its own authentication; a fleet-wide tls_dir does not apply
    ]
    assert addresses[0] == EngineAddress("tcp://lab-01:2376", EngineTLS(tmp_path / "certs" / "fleet"))
    assert addresses[1].compose_env() == {
        "DOCKER_HOST": "tcp://lab-02:2376",
        "DOCKER_TLS_VERIFY": "1",
        "DOCKER_CERT_PATH": str(tmp_path / "certs" / "lab-02"),
    }
    assert addresses[2].compose_env() == {"DOCKER_HOST": "tcp://lab-03:2375"}
    assert EngineAddress().compose_env() == {}
    assert addresses[3].ssh and not addresses[3].local and addresses[3].hostname == "lab-04"


def test_tcp_without_tls_and_unreadable_cert_files_are_refused(tmp_path: Path) -> None:
    from deploykit.config.inventory import check_tls

    plain = load_inventory(write(tmp_path, '[[hosts]]\nname = "lab-01"\nengine = "tcp://lab-01:2375"\n')).hosts[0]
    with pytest.raises(ConfigError) as err:
        check_tls(plain)
    assert "lab-01" in err.value.message and "without TLS" in err.value.message and "tls = false" in err.value.hint
    asked = '[[hosts]]\nname = "lab-02"\nengine = "tcp://lab-02:2376"\ntls = true\n'
    with pytest.raises(ConfigError, match="tls = true but names no tls_dir"):
        check_tls(load_inventory(write(tmp_path, asked)).hosts[0])

    (tmp_path / "certs").mkdir()
    (tmp_path / "certs" / "ca.pem").write_text("ca", encoding="utf-8")
    text = '[[hosts]]\nname = "lab-01"\nengine = "tcp://lab-01:2376"\ntls_dir = "certs"\n'
    with pytest.raises(ConfigError) as err:
        check_tls(load_inventory(write(tmp_path, text)).hosts[0])
    assert "host lab-01" in err.value.message and str(tmp_path / "certs" / "cert.pem") in err.value.message
    assert "line 4" in err.value.message


def test_cli_refuses_tcp_without_tls_before_writing(tmp_path: Path) -> None:
    inv = write(tmp_path, '[[hosts]]\nname = "lab-01"\nengine = "tcp://127.0.0.1:1"\n')
    out = CliRunner().invoke(cli, ["fleet", "render", "--inventory", str(inv), "--dir", str(tmp_path / "fleet")])
    assert out.exit_code == ConfigError.exit_code and "without TLS" in out.output
    assert not (tmp_path / "fleet").exists()


def test_tls_config_for_the_sdk(tmp_path: Path) -> None:
    from deploykit.seams.engine import EngineAddress, EngineTLS

    folder = tls_folder(tmp_path / "c")
    config = EngineTLS(folder).sdk_config()
    assert config.cert == (str(folder / "cert.pem"), str(folder / "key.pem"))
    assert config.ca_cert == str(folder / "ca.pem") and config.verify is True
    with pytest.raises(ValueError, match="needs the engine's URL"):
        EngineAddress(None, EngineTLS(folder))


def test_engine_address_says_where_without_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    from deploykit.seams.engine import EngineAddress

    assert EngineAddress("tcp://user:hunter2@lab-01:2376").display == "tcp://***@lab-01:2376"
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    assert EngineAddress().display == "the local socket (/var/run/docker.sock)" and EngineAddress().local
    monkeypatch.setenv("DOCKER_HOST", "ssh://me:pw@lab-02")
    assert EngineAddress().display == "ssh://***@lab-02"
    assert EngineAddress("unix:///run/other.sock").local and not EngineAddress("tcp://h:2375").local


def test_tls_client_asks_the_api_version_without_reading_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The client is built with a version (no request), trust_env goes off before the one request (the
    unversioned /version), and the client kept speaks the engine's API version."""
    import docker
    from docker.constants import DEFAULT_DOCKER_API_VERSION

    from deploykit.seams.engine import EngineAddress, EngineTLS

    made: list[FakeClient] = []

    class FakeApi:
        trust_env = True

    class FakeClient:
        def __init__(self, **kwargs: Any) -> None:
            self.kwargs, self.api, self.asked, self.closed = kwargs, FakeApi(), [], False
            made.append(self)

        def version(self, api_version: bool = True) -> dict[str, str]:
            assert self.api.trust_env is False
            self.asked.append(api_version)
            return {"ApiVersion": "1.41", "Version": "20.10.24"}

        def close(self) -> None:
            self.closed = True

    monkeypatch.setattr(docker, "DockerClient", FakeClient)
    folder = tls_folder(tmp_path / "c")
    kept = EngineAddress("tcp://127.0.0.1:2376", EngineTLS(folder)).sdk_client(timeout=5)
    asking = made[0]
    assert asking.kwargs["version"] == DEFAULT_DOCKER_API_VERSION and asking.asked == [False] and asking.closed
    assert kept is made[1] and kept.kwargs["version"] == "1.41" and kept.api.trust_env is False
    assert kept.kwargs["tls"].ca_cert == str(folder / "ca.pem") and kept.asked == []
