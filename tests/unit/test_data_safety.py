"""Backup archives and their checks, safe defaults in the rendered stack, `up`'s address list, Ctrl-C during a step."""

from __future__ import annotations

import io
import json
import os
import stat
import tarfile
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from deploykit.running import backup
from deploykit.running.lifecycle import reachable_urls
from deploykit.seams.detect import Address, host_addresses, parse_ip_addr_json
from deploykit.seams.engine import EngineAddress
from deploykit.seams.proc import Completed
from deploykit.values.errors import NotFoundError, UsageError
from tests.unit.conftest import compose_config, render

MANIFEST = backup.Manifest(
    stack_id="0123456789abcdef",
    project="deploykit-demo",
    volume="deploykit-demo_open-webui-data",
    image="open-webui:v1",
    created="2026-11-28T22:00:00Z",
    deploykit_version="0.1.0",
)


def engine_tar(files: dict[str, bytes]) -> io.BytesIO:
    """What the engine's archive endpoint sends for /data: members under data/."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        directory = tarfile.TarInfo("data")
        directory.type = tarfile.DIRTYPE
        tar.addfile(directory)
        for name, body in files.items():
            info = tarfile.TarInfo(f"data/{name}")
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    raw.seek(0)
    return raw


def write_backup(folder: Path, files: dict[str, bytes]) -> Path:
    """An archive and its sidecar as backup.backup writes them."""
    path = folder / "deploykit-demo-20261128T220000Z.tar.gz"
    with path.open("wb") as fh:
        writer = backup._HashingWriter(fh)
        count = backup._repack(engine_tar(files), writer, MANIFEST)  # type: ignore[arg-type]
    assert count == len([n for n in files if not n.startswith(".deploykit")])
    sidecar = asdict(MANIFEST) | {"sha256": writer.digest.hexdigest(), "size_bytes": writer.size}
    (folder / "deploykit-demo-20261128T220000Z.json").write_text(json.dumps(sidecar))
    return path


def test_archive_holds_manifest_first_then_the_data(tmp_path: Path) -> None:
    path = write_backup(
        tmp_path, {"webui.db": b"sqlite", "uploads/a.txt": b"hi", ".deploykit-restore/x": b"scratch"}
    )
    with tarfile.open(path, "r:gz") as tar:
        names = tar.getnames()
        assert names[0] == backup.MANIFEST_MEMBER
        embedded = json.loads(tar.extractfile(names[0]).read())  # type: ignore[union-attr]
        assert tar.extractfile("data/webui.db").read() == b"sqlite"  # type: ignore[union-attr]
    assert "data/.deploykit-restore/x" not in names
    assert embedded["stack_id"] == MANIFEST.stack_id and embedded["sha256"] is None
    manifest = backup.read_backup(path)
    assert manifest.stack_id == MANIFEST.stack_id
    assert manifest.sha256 == backup.sha256_of(path)


def test_a_damaged_archive_is_refused_before_anything_changes(tmp_path: Path) -> None:
    path = write_backup(tmp_path, {"webui.db": os.urandom(4096)})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(UsageError, match="is damaged") as caught:
        backup.read_backup(path)
    assert "Nothing was changed" in (caught.value.hint or "")


def test_a_file_that_is_no_backup_is_refused(tmp_path: Path) -> None:
    other = tmp_path / "notes.tar.gz"
    with tarfile.open(other, "w:gz") as tar:
        tar.addfile(tarfile.TarInfo("readme.txt"), io.BytesIO(b""))
    with pytest.raises(UsageError, match="not a deploykit backup"):
        backup.read_backup(other)
    with pytest.raises(NotFoundError):
        backup.read_backup(tmp_path / "missing.tar.gz")


def fake_stack(tmp_path: Path, stack_id: str) -> Any:
    spec = SimpleNamespace(project="deploykit-other", images={"open-webui": "open-webui:v1"})

    def no_engine(docker_host: EngineAddress) -> Any:
        raise AssertionError("the engine must not be touched")

    return SimpleNamespace(dir=tmp_path, spec=spec, secrets={"DEPLOYKIT_STACK_ID": stack_id}, engine_stack=no_engine)


def test_restore_refuses_another_stacks_backup_without_force(tmp_path: Path) -> None:
    path = write_backup(tmp_path, {"webui.db": b"x"})
    with pytest.raises(UsageError, match="another stack") as caught:
        backup.restore(fake_stack(tmp_path, "fedcba9876543210"), EngineAddress(), path)
    assert "--force" in (caught.value.hint or "")


def test_scripts_stage_first_and_roll_back(tmp_path: Path) -> None:
    # The swap only runs on a complete staging copy, and puts the old files back when a move fails.
    assert "tar -xpf /tmp/backup.tar" in backup.STAGE_SCRIPT and "rm -rf .deploykit-restore" in backup.STAGE_SCRIPT
    assert "move_all .deploykit-old ." in backup.SWAP_SCRIPT


def test_private_sidecar(tmp_path: Path) -> None:
    target = tmp_path / "m.json"
    backup._write_private(target, "{}")
    assert stat.S_IMODE(target.stat().st_mode) == 0o600


# ---------------------------------------------------------------- safe defaults in the rendered stack


@pytest.mark.parametrize("profile", ["cpu", "rtx3060"])
def test_every_service_has_no_new_privileges_and_rotated_logs(tmp_path: Path, profile: str) -> None:
    result = render(tmp_path, profile=profile)
    config = compose_config(result.stack_dir)
    for name, service in config["services"].items():
        assert "no-new-privileges:true" in service["security_opt"], name
        assert service["logging"] == {"driver": "json-file", "options": {"max-size": "10m", "max-file": "3"}}, name


# ---------------------------------------------------------------- who can reach the UI


IP_JSON = json.dumps(
    [
        {"ifname": "lo", "addr_info": [{"family": "inet", "local": "127.0.0.1"}]},
        {"ifname": "eth0", "addr_info": [{"family": "inet", "local": "192.168.1.20"}]},
        {"ifname": "wlan0", "addr_info": [{"family": "inet", "local": "10.0.0.7"}]},
        {"ifname": "br-6c52163acf6f", "addr_info": [{"family": "inet", "local": "192.168.128.1"}]},
    ]
)


def test_parse_ip_addr_json() -> None:
    assert parse_ip_addr_json(IP_JSON) == (
        Address("lo", "127.0.0.1"),
        Address("eth0", "192.168.1.20"),
        Address("wlan0", "10.0.0.7"),
        Address("br-6c52163acf6f", "192.168.128.1"),
    )
    ran = host_addresses(lambda args, **kw: Completed(tuple(args), 0, IP_JSON, ""))
    assert ran[1] == Address("eth0", "192.168.1.20")


def test_all_interfaces_lists_every_address() -> None:
    rows = reachable_urls("0.0.0.0", 7860, EngineAddress(), parse_ip_addr_json(IP_JSON))
    assert rows == [
        {"url": "http://localhost:7860", "who": "this machine"},
        {"url": "http://192.168.1.20:7860", "who": "anyone who can reach eth0"},
        {"url": "http://10.0.0.7:7860", "who": "anyone who can reach wlan0"},
    ]


def test_loopback_bind_and_remote_engine() -> None:
    local = reachable_urls("127.0.0.1", 7860, EngineAddress(), ())
    assert local == [{"url": "http://localhost:7860", "who": "this machine only"}]
    remote = reachable_urls("0.0.0.0", 7860, EngineAddress("ssh://me@lab-pc-3"), ())
    assert remote == [{"url": "http://lab-pc-3:7860", "who": "whoever can reach the engine's host"}]


# ---------------------------------------------------------------- Ctrl-C lets an engine step finish


def test_ctrl_c_lets_the_running_step_finish(tmp_path: Path) -> None:
    import signal
    import threading

    from deploykit.seams.proc import run_cmd

    marker = tmp_path / "finished"
    threading.Timer(0.3, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
    with pytest.raises(KeyboardInterrupt):
        run_cmd(["sh", "-c", f"sleep 1; touch {marker}"], timeout=30)
    assert marker.exists()  # the child was not killed half-way; the interrupt came after it


def test_backup_restore_upgrade_refuse_a_swarm_stack(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from deploykit.cli import cli

    stack = tmp_path / "swarm-stack"
    rendered = CliRunner().invoke(cli, ["render", "--profile", "cpu", "--target", "swarm", "--dir", str(stack)])
    assert rendered.exit_code == 0, rendered.output
    for args in (["backup"], ["restore", str(tmp_path / "x.tar.gz")], ["upgrade"]):
        result = CliRunner().invoke(cli, [*args, "--dir", str(stack)])
        assert result.exit_code == 2, result.output
        assert "handle Compose stacks only" in result.output
