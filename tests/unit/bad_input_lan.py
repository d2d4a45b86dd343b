"""The bad-input matrix, second pass (issue 19): the surfaces added since the first one — fleet inventories,
restore archives, site templates, overrides, [webui_env], bench/tune arguments, engine URLs.

``lan_cases(Case)`` returns the cases for tests/unit/test_bad_input.py, which runs each the same way: exit
code, message, no traceback, no secret, every file under the test folder byte-identical, bounded time.
Groups: I internal errors and hangs, P secrets, R accepted though it should be refused, O output nobody
checked, A archives, X site templates' power.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import random
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

NO_ENGINE = ("--docker-host", "unix:///nonexistent.sock")
CPU = ("-p", "cpu")
DEEP_TOML = "a = " + "[" * 5000 + "]" * 5000 + "\n"
DEEP_JSON = "[" * 100_000 + "]" * 100_000
Setup = Callable[[Path], list[str]]


def _write(path: Path, data: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, bytes):
        path.write_bytes(data)
    else:
        path.write_text(data, encoding="utf-8")
    return path


def _fifo(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if os.path.lexists(path):
        path.unlink()
    os.mkfifo(path)
    return path


def _config_file() -> Path:
    return Path(os.environ["XDG_CONFIG_HOME"]) / "deploykit" / "config.toml"


def _config(body: str | bytes, args: Setup) -> Setup:
    def setup(t: Path) -> list[str]:
        _write(_config_file(), body)
        return args(t)

    return setup


def _render(t: Path) -> list[str]:
    return ["render", *CPU, "--dir", str(t / "s")]


def _plan(t: Path) -> list[str]:
    return ["plan", *CPU]


def _inventory(body: str | bytes, command: str = "plan", *extra: str) -> Setup:
    def setup(t: Path) -> list[str]:
        path = _write(t / "lab.toml", body)
        return ["fleet", command, "--inventory", str(path), *extra]

    return setup


HOST = '[[hosts]]\nname = "lab-01"\nengine = "unix:///nonexistent/docker.sock"\n'


def _tls_fifo(t: Path) -> list[str]:
    for name in ("cert.pem", "key.pem"):
        _write(t / "tls" / name, "-----BEGIN-----\n")
    _fifo(t / "tls" / "ca.pem")
    path = _write(t / "lab.toml", '[[hosts]]\nname = "lab-01"\nengine = "tcp://127.0.0.1:9"\ntls_dir = "tls"\n')
    return ["fleet", "plan", "--inventory", str(path)]


def _site(files: dict[str, str | bytes], args: Setup = _render, webui_env: str = "") -> Setup:
    """A site templates folder (``files`` by template name) named by config.toml, then ``args``."""

    def setup(t: Path) -> list[str]:
        for name, body in files.items():
            _write(t / "tpl" / name, body)
        _write(_config_file(), f'templates_dir = "{t / "tpl"}"\n{webui_env}')
        return args(t)

    return setup


def _site_fifo(t: Path) -> list[str]:
    _fifo(t / "tpl" / "compose.yaml.j2")
    _write(_config_file(), f'templates_dir = "{t / "tpl"}"\n')
    return _render(t)


def _site_link_out(t: Path) -> list[str]:
    _write(t / "outside" / "secret.txt", "services: {}\n")
    (t / "tpl").mkdir()
    (t / "tpl" / "compose.yaml.j2").symlink_to(t / "outside" / "secret.txt")
    _write(_config_file(), f'templates_dir = "{t / "tpl"}"\n')
    return _render(t)


def _plan_version(version: str, args: Setup) -> Setup:
    def setup(t: Path) -> list[str]:
        path = t / "s" / "plan.json"
        data = json.loads(path.read_text(encoding="utf-8"))
        data["deploykit_version"] = version
        path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        return args(t)

    return setup


def _env_edit(edit: Callable[[str], str], args: Setup) -> Setup:
    def setup(t: Path) -> list[str]:
        env = t / "s" / ".env"
        env.write_text(edit(env.read_text(encoding="utf-8")), encoding="utf-8")
        return args(t)

    return setup


def _status(t: Path) -> list[str]:
    return [*NO_ENGINE, "status", "--dir", str(t / "s")]


# ---------------------------------------------------------------- backup archives


def _stack_id(t: Path) -> str:
    for line in (t / "s" / ".env").read_text(encoding="utf-8").splitlines():
        if line.startswith("DEPLOYKIT_STACK_ID="):
            return line.split("=", 1)[1].strip("'")
    raise AssertionError("no stack id")


def _member(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", **fields: Any) -> tuple[Any, bytes]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    for key, value in fields.items():
        setattr(info, key, value)
    return info, data


def _archive(
    members: list[tuple[Any, bytes]],
    sidecar: str | bytes | dict[str, Any] | None = "auto",
    manifest: dict[str, Any] | None = None,
    manifest_size: int | None = None,
    cut: int = 0,
    claims: int | None = None,
) -> Setup:
    """A backup of the test stack (its own stack id) with ``members`` after the manifest, then `restore` of it.

    ``sidecar``: "auto" writes the right one; a dict is merged into it; text/bytes are written as they are.
    ``manifest_size``: the manifest's header claims that size; ``cut``: bytes cut off the end; ``claims``: the
    last member's header claims that size (its data is not there)."""

    def setup(t: Path) -> list[str]:
        body = {
            "stack_id": _stack_id(t),
            "project": "deploykit-s",
            "volume": "deploykit-s_open-webui-data",
            "image": "ghcr.io/open-webui/open-webui:v0.12.4",
            "created": "2026-12-01T00:00:00Z",
            "deploykit_version": "0.1.0",
            "format": 1,
            **(manifest or {}),
        }
        path = t / "backups" / "deploykit-s-20261201T000000Z.tar.gz"
        path.parent.mkdir(parents=True)
        text = json.dumps(body).encode()
        blocks = _block(tarfile.TarInfo("deploykit-backup.json"), text, manifest_size)
        for i, (member, content) in enumerate(members):
            blocks += _block(member, content, claims if i == len(members) - 1 else None)
        data = gzip.compress(blocks + (b"" if claims else b"\0" * 1024))
        data = data[: len(data) - cut]
        path.write_bytes(data)
        side = path.with_name(path.name.removesuffix(".tar.gz") + ".json")
        if sidecar == "auto" or isinstance(sidecar, dict):
            extra = sidecar if isinstance(sidecar, dict) else {}
            full = body | {"sha256": hashlib.sha256(data).hexdigest(), "size_bytes": len(data)} | extra
            side.write_text(json.dumps(full), encoding="utf-8")
        elif sidecar is not None:
            _write(side, sidecar)
        return [*NO_ENGINE, "restore", str(path), "--dir", str(t / "s")]

    return setup


def _block(info: Any, data: bytes, claims: int | None = None) -> bytes:
    """One tar member as tarfile writes it, its header optionally claiming ``claims`` bytes instead."""
    if info.type in (tarfile.REGTYPE, tarfile.XHDTYPE):
        info.size = len(data) if claims is None else claims
    return info.tobuf(format=tarfile.PAX_FORMAT) + data + b"\0" * (-len(data) % 512)


def _fifo_archive(t: Path) -> list[str]:
    path = _fifo(t / "backups" / "b.tar.gz")
    return [*NO_ENGINE, "restore", str(path), "--dir", str(t / "s")]


def _fifo_sidecar(args: Setup) -> Setup:
    def setup(t: Path) -> list[str]:
        command = args(t)
        archive = Path(command[command.index("restore") + 1])
        _fifo(archive.with_name(archive.name.removesuffix(".tar.gz") + ".json"))
        return command

    return setup


DATA = _member("data", tarfile.DIRTYPE)
DB = _member("data/webui.db", data=b"sqlite")
BIG = _member("data/webui.db", data=random.Random(19).randbytes(65536))  # incompressible: a cut loses data


# fmt: off
ROWS: list[tuple[Any, ...]] = [
    # ---- 1. internal errors and hangs become sentences
    ("I01", "encoding", "an inventory that is not UTF-8", _inventory(b'[[hosts]]\nname = "lab-\xff"\n'),
      2, r"inventory .*lab\.toml is not UTF-8 text \(line 2\)"),
    ("I02", "special file", "an inventory that is a named pipe (reading it would hang)",
      lambda t: ["fleet", "plan", "--inventory", str(_fifo(t / "lab.toml"))], 2, r"inventory .* is a named pipe"),
    ("I03", "nesting", "an inventory nested thousands deep", _inventory(DEEP_TOML),
      2, r"inventory .* is nested too deeply"),
    ("I04", "special file", "a host file that is a named pipe",
      lambda t: ["plan", "--host", str(_fifo(t / "h.json"))], 2, r"host file .* is a named pipe"),
    ("I05", "nesting", "a host file nested 100 000 deep",
      lambda t: ["plan", "--host", str(_write(t / "h.json", DEEP_JSON))], 2, r"host file .* is nested too deeply"),
    ("I06", "nesting", "a profiles file nested thousands deep",
      lambda t: ["--profiles-file", str(_write(t / "p.toml", DEEP_TOML)), "profiles"],
      4, r"profiles file .* is nested too deeply"),
    ("I07", "nesting", "config.toml nested thousands deep", _config(DEEP_TOML, _plan),
      4, r"config file .*config\.toml is nested too deeply"),
    ("I08", "special file", "config.toml is a named pipe",
      lambda t: _fifo(_config_file()) and _plan(t), 4, r"config file .*config\.toml is a named pipe"),
    ("I09", "encoding", "config.toml that is not UTF-8", _config(b'model = "\xfe"\n', _plan),
      4, r"config file .*config\.toml is not UTF-8 text \(line 1\)"),
    ("I10", "nesting", "status on a plan.json nested 100 000 deep",
      lambda t: _write(t / "s" / "plan.json", DEEP_JSON) and _status(t), 10, r"not a deploykit plan \(JSON nested"),
    ("I11", "encoding", "a site template that is not UTF-8", _site({"compose.yaml.j2": b"services: \xff\n"}),
      2, r"site template .*compose\.yaml\.j2 is not UTF-8 text \(line 1\)"),
    ("I12", "special file", "a site template that is a named pipe", _site_fifo,
      2, r"site template .*compose\.yaml\.j2 is a named pipe"),
    ("I13", "encoding", "a chat message with a byte that is not UTF-8",
      lambda t: ["chat", "--dir", str(t / "s"), "hello \udcff"], 2, r"MESSAGE holds bytes that are not UTF-8"),
    ("I14", "special file", "a model's config.json that is a named pipe",
      lambda t: _fifo(t / "m" / "config.json") and ["plan", "-p", "cpu-vllm", "--model-file", str(t / "m")],
      2, r"model config .*config\.json is a named pipe"),
    ("I15", "special file", "a fleet host's TLS file that is a named pipe", _tls_fifo,
      4, r"host lab-01: TLS file .*ca\.pem is a named pipe"),
    ("I16", "special file", "a fleet override that is a named pipe",
      lambda t: _fifo(t / "o.yaml") and _inventory(HOST + 'override = "o.yaml"\n', "plan")(t)
      and ["fleet", "plan", "--inventory", str(t / "lab.toml")],
      1, r"unreachable"),
    ("I17", "backup manifest", "a backup sidecar whose sha256 is a number",
      _archive([DATA, DB], sidecar={"sha256": 5}), 2, r"is not a backup manifest \(sha256 is a JSON int, not a"),
    ("I18", "backup manifest", "a backup manifest member claiming 1 TiB",
      _archive([], manifest_size=1 << 40, sidecar=None), 2, r"deploykit-backup\.json claims 1,099,511,627,776"),
    ("I19", "special file", "a backup sidecar that is a named pipe", _fifo_sidecar(_archive([DATA, DB])),
      2, r"backup manifest .*\.json is a named pipe"),
    ("I20", "special file", "a backup archive that is a named pipe", _fifo_archive,
      2, r"backup .*b\.tar\.gz is not a regular file"),
    ("I21", "backup manifest", "a backup sidecar that is a JSON list", _archive([DATA, DB], sidecar="[1]"),
      2, r"is not a backup manifest \(a JSON list, not an object\)"),
    ("I22", "backup manifest", "a backup sidecar nested 20 000 deep",
      _archive([DATA, DB], sidecar="[" * 20000 + "]" * 20000), 2, r"backup manifest .* is nested too deeply"),
    ("I26", "backup manifest", "a backup sidecar of 200 000 bytes", _archive([DATA, DB], sidecar=DEEP_JSON),
      2, r"backup manifest .* is 200000 bytes; deploykit reads at most 65536 bytes of it"),
    ("I23", "special file", "the stack's deploykit.toml is a named pipe",
      lambda t: _fifo(t / "s" / "deploykit.toml") and _render(t),
      4, r"stack settings .*deploykit\.toml is a named"),
    ("I24", "special file", "`bench --chart` names a named pipe",
      lambda t: ["bench", "--dir", str(t / "s"), "--chart", str(_fifo(t / "c.html"))],
      2, r"--chart file .*c\.html is a named pipe"),
    ("I25", "nesting", "a site templates record nested 100 000 deep",
      _site({"deploykit-templates.json": DEEP_JSON}), 2, r"templates record .* is nested too deeply"),
    ("I27", "special file", "the config folder's profiles.toml is a named pipe",
      lambda t: _fifo(_config_file().with_name("profiles.toml")) and ["profiles"],
      4, r"profiles file .*profiles\.toml is a named pipe"),
    ("I28", "special file", "`smoke` of a stack whose compose.yaml is a named pipe",
      lambda t: _fifo(t / "s" / "compose.yaml") and ["smoke", "--dir", str(t / "s")],
      10, r"compose\.yaml is a special file"),
    ("I29", "special file", "`tune` of a stack whose compose.yaml is a named pipe",
      lambda t: _fifo(t / "s" / "compose.yaml") and [*NO_ENGINE, "tune", "--dir", str(t / "s")],
      10, r"compose\.yaml is a special file"),
    ("I31", "special file", "`down` of a stack whose compose.yaml is a named pipe (compose would block on it)",
      lambda t: _fifo(t / "s" / "compose.yaml") and [*NO_ENGINE, "down", "--dir", str(t / "s")],
      10, r"compose\.yaml is a special file"),
    ("I30", "encoding", "`smoke` of a stack whose compose.yaml is not UTF-8",
      lambda t: _write(t / "s" / "compose.yaml", b"services: \xff\n") and ["smoke", "--dir", str(t / "s")],
      10, r"compose\.yaml is not UTF-8 text \(line 1\)"),
    # ---- 2. secrets where they do not belong
    ("P01", "credentials in URL", "`fleet detect --json` with an engine URL holding a password",
      _inventory('[[hosts]]\nname = "lab-01"\nengine = "tcp://admin:hunter2@127.0.0.1:9"\ntls = false\n',
                 "detect", "--json"),
      1, r'"engine": "tcp://\*\*\*@127\.0\.0\.1:9"'),
    ("P02", "credentials in URL", "a tcp:// engine with a password and no TLS in an inventory",
      _inventory('[[hosts]]\nname = "lab-01"\nengine = "tcp://admin:hunter2@127.0.0.1:9"\n'),
      4, r"engine tcp://\*\*\*@127\.0\.0\.1:9 is tcp:// without TLS"),
    ("P03", "credentials in URL", "an engine URL of another scheme with a password",
      _inventory('[[hosts]]\nname = "lab-01"\nengine = "http://admin:hunter2@lab-01"\n'),
      4, r"engine 'http://\*\*\*@lab-01' is not ssh://"),
    ("P04", "credentials in URL", "`fleet status --json` with a password in an ssh:// URL",
      _inventory('[[hosts]]\nname = "lab-01"\nengine = "ssh://admin:hunter2@127.0.0.1:1"\n', "status", "--json"),
      1, r"ssh://\*\*\*@127\.0\.0\.1:1"),
    # ---- 3. accepted though it should be refused
    ("R01", "setting", "a [webui_env] name with a trailing newline (a reserved one)",
      _config('[webui_env]\n"OPENAI_API_KEY\\n" = "x"\n', _render), 4, r"name 'OPENAI_API_KEY\\n' is not an"),
    ("R02", "setting", "[webui_env] DEFAULT_MODELS, which the template sets", _config(
      '[webui_env]\nDEFAULT_MODELS = "x"\n', _render), 4, r"sets DEFAULT_MODELS, which deploykit sets itself"),
    ("R03", "setting", "[webui_env] OPENAI_API_BASE_URL in an inventory",
      _inventory(HOST + 'webui_env = { OPENAI_API_BASE_URL = "http://evil/v1" }\n'),
      4, r"line 4: hosts\[0\]\.webui_env: \[webui_env\] sets OPENAI_API_BASE_URL"),
    ("R04", "setting", "an admin e-mail with an escape sequence", _plan,
      4, r"DEPLOYKIT_ADMIN_EMAIL: String should", {"DEPLOYKIT_ADMIN_EMAIL": "adm\x1b[2Jin@lab.example"}),
    ("R05", "setting", "an admin e-mail with a NUL byte (config.toml)",
      _config('admin_email = "a\\u0000b@lab.example"\n', _plan), 4, r"admin_email in .*: String should match"),
    ("R06", "setting", "a model cache that is a file", _plan,
      4, r"DEPLOYKIT_MODEL_CACHE: /etc/hostname is a file, not a folder",
      {"DEPLOYKIT_MODEL_CACHE": "/etc/hostname"}),
    ("R07", "secret unreadable", "a NUL byte in a secret in .env",
      _env_edit(lambda s: s.replace("DEPLOYKIT_ADMIN_PASSWORD='", "DEPLOYKIT_ADMIN_PASSWORD='\x00"), _render),
      10, r"the value of DEPLOYKIT_ADMIN_PASSWORD holds a control character"),
    ("R08", "setting", "a NUL byte in a [webui_env] secret",
      _config('[webui_env]\nLDAP_APP_PASSWORD = "a\\u0000b"\n', _render),
      4, r"the value of LDAP_APP_PASSWORD holds a control character"),
    ("R09", "setting", "an escape sequence in a [webui_env] value",
      _config('[webui_env]\nWEBUI_NAME = "\\u001b]0;pwned\\u0007Lab"\n', _render),
      4, r"the value of WEBUI_NAME holds a control character"),
    ("R10", "setting", "a quote in a [webui_env] secret (.env cannot hold it)",
      _config("[webui_env]\nOAUTH_CLIENT_SECRET = \"it's\"\n", _render),
      4, r"OAUTH_CLIENT_SECRET holds a quote or a newline"),
    ("R11", "setting", "an empty [webui_env] secret", _config('[webui_env]\nLDAP_APP_PASSWORD = ""\n', _render),
      4, r"LDAP_APP_PASSWORD is empty"),
    ("R12", "argument", "`bench --prompt-tokens -5`", lambda t: ["bench", "--dir", str(t / "s"), "--prompt-tokens",
                                                                  "-5"], 2, r"-5 is not in the range 1<=x"),
    ("R13", "argument", "`bench --max-tokens 0`", lambda t: ["bench", "--dir", str(t / "s"), "--max-tokens", "0"],
      2, r"--max-tokens.*0 is not in the range"),
    ("R14", "argument", "`bench --concurrency 0,4`",
      lambda t: ["bench", "--dir", str(t / "s"), "--concurrency", "0,4"], 2, r"'0,4' is not a list of whole"),
    ("R15", "argument", "`bench --concurrency 100000`",
      lambda t: ["bench", "--dir", str(t / "s"), "--concurrency", "100000"], 2, r"from 1 to 1024"),
    ("R16", "argument", "`bench --requests 0`", lambda t: ["bench", "--dir", str(t / "s"), "--requests", "0"],
      2, r"--requests.*0 is not in the range"),
    ("R17", "argument", "`bench` of more prompt tokens than the stack's context",
      lambda t: ["bench", "--dir", str(t / "s"), "--prompt-tokens", "4000", "--max-tokens", "200"],
      2, r"--prompt-tokens 4000 \+ --max-tokens 200 is more than the 4096 tokens"),
    ("R18", "argument", "`bench` building a hundred million prompt tokens",
      lambda t: ["bench", "--dir", str(t / "s"), "--requests", "100000", "--prompt-tokens", "1000"],
      2, r"100,000,000 prompt tokens in one level"),
    ("R19", "argument", "`tune --time-limit nan`",
      lambda t: ["tune", "--dir", str(t / "s"), "--time-limit", "nan"], 2, r"nan is not a number of seconds"),
    ("R20", "argument", "`tune --time-limit -1`",
      lambda t: ["tune", "--dir", str(t / "s"), "--time-limit", "-1"], 2, r"--time-limit.*-1"),
    ("R21", "argument", "`tune --concurrency 0`", lambda t: ["tune", "--dir", str(t / "s"), "--concurrency", "0"],
      2, r"--concurrency.*0 is not in the range"),
    ("R22", "argument", "`tune --threads 0,2`", lambda t: [*NO_ENGINE, "tune", "--dir", str(t / "s"), "--threads",
                                                            "0,2"], 2, r"--threads '0,2' is not a list"),
    ("R23", "argument", "`fleet up --timeout nan`", _inventory(HOST, "up", "--timeout", "nan"),
      2, r"nan is not a number of seconds"),
    ("R24", "argument", "`chat` with an empty message", lambda t: ["chat", "--dir", str(t / "s"), "  "],
      2, r"MESSAGE is empty"),
    ("R25", "setting", "`--docker-host` with an escape sequence",
      lambda t: ["--docker-host", "tcp://h\x1b[31m:1", "status", "--dir", str(t / "s")],
      4, r"--docker-host: String should match pattern"),
    ("R26", "plan.json version", "render over a plan.json written by a newer deploykit",
      _plan_version("99.0.0", _render), 10, r"was written by deploykit 99\.0\.0, newer than this deploykit"),
    ("R27", "plan.json version", "status of a plan.json written by a newer deploykit",
      _plan_version("0.2.0", _status), 10, r"Hint: Use deploykit 0\.2\.0 or newer"),
    ("R28", "plan.json version", "`upgrade` of a stack written by a newer deploykit",
      _plan_version("1.0", lambda t: [*NO_ENGINE, "upgrade", "--dir", str(t / "s")]),
      10, r"written by deploykit 1\.0, newer"),
    # ---- 4. output nobody checked
    ("O01", "rendered file", "a site template that renders something that is not YAML",
      _site({"compose.yaml.j2": "services: [unclosed\n"}), 2, r"render a compose\.yaml that deploykit will not "
                                                               r"write: line \d+: not valid YAML"),
    ("O02", "rendered file", "a site template that writes a key twice",
      _site({"compose.yaml.j2": "services:\n  inference:\n    image: a:1\n  open-webui:\n    image: b:1\n"
                                "    image: c:1\n"}), 2, r"line 6: the key 'image' appears twice"),
    ("O03", "rendered file", "a site template without the inference service",
      _site({"compose.yaml.j2": "services:\n  open-webui:\n    image: b:1\n"}), 2, r"the services inference are "),
    ("O04", "rendered file", "a site template that renders a YAML list",
      _site({"compose.yaml.j2": "- services\n"}), 2, r"not a Compose file"),
    ("O05", "rendered file", "a site template setting a key [webui_env] sets too",
      _site({"compose.yaml.j2": "services:\n  inference: {image: a:1}\n  open-webui:\n    environment:\n"
                                "      LAB_ROOM: b12\n{% for n, v in webui_env.items() %}"
                                "      {{ n }}: {{ v | q }}\n{% endfor %}"},
            webui_env='[webui_env]\nLAB_ROOM = "c7"\n'),
      4, r"\[webui_env\] sets LAB_ROOM, which the stack's template sets itself"),
    ("O06", "templates folder", "`templates rebase` of a stack folder",
      lambda t: ["templates", "rebase", str(t / "s")],
      2, r"is a stack folder \(\.env, compose\.yaml, plan\.json\)"),
    ("O07", "templates folder", "`templates rebase` of a folder that is no templates folder",
      lambda t: _write(t / "docs" / "notes.txt", "x") and ["templates", "rebase", str(t / "docs")],
      2, r"is not a templates folder"),
    ("O08", "templates folder", "`templates export` into a stack folder",
      lambda t: ["templates", "export", str(t / "s")], 2, r"is a stack folder"),
    ("O09", "templates folder", "`templates export --force` over a template that is a named pipe",
      lambda t: _fifo(t / "tpl" / "env.j2") and ["templates", "export", "--force", str(t / "tpl")],
      2, r"template .*env\.j2 is a named pipe"),
    ("O10", "rendered file", "a site template that renders a Kubernetes file of other things",
      _site({"kubernetes/stack.yaml.j2": "just: text\n"}, lambda t: [*_render(t)[:-2], "--dir", str(t / "k"),
                                                                       "--target", "kubernetes"]),
      2, r"kubernetes\.yaml that deploykit will not write: a document is not a Kubernetes object"),
    # ---- 5. archives are data from elsewhere
    ("A01", "archive member", "a symbolic link in a backup",
      _archive([DATA, _member("data/x", tarfile.SYMTYPE, linkname="/etc/shadow")]),
      2, r"'data/x' \(a symbolic link to '/etc/shadow'\)"),
    ("A02", "archive member", "a hard link in a backup",
      _archive([DATA, _member("data/h", tarfile.LNKTYPE, linkname="/etc/passwd")]), 2, r"\(a hard link to"),
    ("A03", "archive member", "a device node in a backup",
      _archive([DATA, _member("data/sda", tarfile.BLKTYPE, devmajor=8)]), 2, r"'data/sda' \(a device\)"),
    ("A04", "archive member", "a named pipe in a backup", _archive([DATA, _member("data/p", tarfile.FIFOTYPE)]),
      2, r"'data/p' \(a named pipe\)"),
    ("A05", "archive member", "an absolute path in a backup",
      _archive([DATA, _member("/etc/cron.d/x", data=b"* * * * * root sh\n")]), 2, r"\(an absolute path\)"),
    ("A06", "archive member", "a `..` path in a backup",
      _archive([DATA, _member("data/../../root/.ssh/authorized_keys", data=b"ssh-ed25519 x\n")]),
      2, r"\(a path with '\.\.'\)"),
    ("A07", "archive member", "a member outside data/", _archive([DATA, _member("etc/passwd", data=b"x")]),
      2, r"'etc/passwd' \(outside data/\)"),
    ("A08", "archive member", "a file whose header claims 100 GiB",
      _archive([DATA, _member("data/big", data=b"x")], claims=100 * 1024**3),
      2, r"100\.0 GiB, more than the 64 GiB a file may have"),
    ("A09", "archive member", "restore's own scratch folder in a backup",
      _archive([DATA, _member("data/.deploykit-old", tarfile.DIRTYPE)]), 2, r"restore's own scratch folder"),
    ("A10", "archive member", "the same member twice", _archive([DATA, DB, DB]),
      2, r"a second member of the same name"),
    ("A11", "archive member", "seven refused members: the first five named, the rest counted",
      _archive([DATA, *[_member(f"data/l{i}", tarfile.SYMTYPE, linkname="/") for i in range(7)]]),
      2, r"'data/l4' \(a symbolic link to '/'\) and 2 more; nothing was changed"),
    ("A12", "archive member", "a setuid, world-writable file: masked, not refused (restore goes on)",
      _archive([DATA, _member("data/run.sh", data=b"#!/bin/sh\n", mode=0o4777)]),
      6, r"cannot connect to the Docker Engine"),
    ("A13", "archive", "a backup cut short (no sidecar to tell)", _archive([DATA, BIG], sidecar=None, cut=20000),
      2, r"cannot be read to the end"),
    ("A14", "archive", "a sidecar recording another size than the archive has",
      _archive([DATA, DB], sidecar={"size_bytes": 1}),
      2, r"is damaged: it is [\d,]+ bytes, the manifest recorded 1"),
    ("A15", "archive", "a backup of a newer format", _archive([DATA, DB], manifest={"format": 2}),
      2, r"is a backup of format 2"),
    ("A16", "archive", "a backup holding no data/ folder", _archive([]), 2, r"holds no data/ folder"),
    ("A17", "archive member", "an extended (pax) header claiming 1 GiB, read before any name is known",
      _archive([DATA, _member("././@PaxHeader", tarfile.XHDTYPE, data=b"")], claims=1 << 30),
      2, r"an extended header of 1,073,741,824 bytes"),
    # ---- 7. site templates with the controller's power
    ("X01", "sandbox", "a site template reaching for Python's internals",
      _site({"compose.yaml.j2": "{{ ''.__class__.__mro__[1].__subclasses__() }}"}),
      2, r"do not render: access to attribute '__class__' of 'str' object is unsafe"),
    ("X02", "sandbox", "a site template changing the data it is given",
      _site({"compose.yaml.j2": "{{ images.update({'inference': 'evil:1'}) }}"}), 2, r"do not render: .*unsafe"),
    ("X03", "sandbox", "a site template making a huge number",
      _site({"compose.yaml.j2": "{{ 10 ** 10000000 }}"}), 2, r"larger number than a template needs"),
    ("X04", "sandbox", "a site template making a huge string",
      _site({"compose.yaml.j2": "{{ 'x' * 1000000000 }}"}), 2, r"makes too long a value"),
    ("X05", "sandbox", "a site template that is a link out of its folder", _site_link_out,
      2, r"is a link to a file outside"),
    ("X06", "sandbox", "a site template rendering hundreds of MiB",
      _site({"compose.yaml.j2": "{% for i in range(100000) %}{{ 'x' * 4000 }}{% endfor %}"}),
      2, r"renders more than 16 MiB"),
    ("X07", "sandbox", "a site template including a file above its folder",
      _site({"compose.yaml.j2": "{% include '../../../etc/passwd' %}"}), 2, r"do not render: \.\./\.\./\.\./etc"),
    ("X08", "sandbox", "a site template reaching a function's globals",
      _site({"compose.yaml.j2": "{{ cycler.__init__.__globals__ }}"}), 2, r"do not render: access to attribute"),
]
# fmt: on


def lan_cases(case: Any) -> list[Any]:
    """The rows as test_bad_input's Case objects (its class is passed in: that module imports this one)."""
    return [case(*row) for row in ROWS]
