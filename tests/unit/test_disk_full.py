"""A full disk, without an engine: ENOSPC injected where the OS reports it (fsync, write), and a restore's
unpack failing with the output GNU tar 1.34 printed in the real Open WebUI image on a full tmpfs
(tests/fixtures/diskfull/stage-enospc.txt). The same cases on real small file systems, with a real stack,
are tests/e2e/test_disk_full.py; these add the places the e2e cannot reach deterministically."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from click.testing import CliRunner

from deploykit.cli import cli
from deploykit.running import backup, webui_data
from deploykit.seams import engine
from deploykit.seams.engine import EngineAddress
from deploykit.seams.stackdir import STAGING_PARTIAL
from deploykit.values.errors import DiskFullError
from tests.unit.conftest import FIXTURES
from tests.unit.test_data_safety import MANIFEST, engine_tar, write_backup

TAR_ENOSPC = (FIXTURES / "diskfull" / "stage-enospc.txt").read_text(encoding="utf-8")


def no_space(*_: object, **__: object) -> Any:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def files(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mode) for p in sorted(folder.iterdir()) if p.is_file()}


def render(stack: Path, *extra: str) -> Any:
    return CliRunner().invoke(cli, ["render", "-p", "cpu", "--dir", str(stack), *extra], catch_exceptions=False)


@pytest.mark.parametrize("seam", ["fsync", "write"])
def test_render_onto_a_full_disk_keeps_the_old_files_and_leaves_no_staging(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seam: str
) -> None:
    stack = tmp_path / "s"
    assert render(stack).exit_code == 0
    old = files(stack)
    if seam == "fsync":  # where a full disk surfaces with delayed allocation (ext4, XFS) and on NFS
        monkeypatch.setattr(os, "fsync", no_space)
    else:
        real_fdopen = os.fdopen

        def fdopen_that_fills(fd: int, *args: Any, **kwargs: Any) -> Any:
            handle = real_fdopen(fd, *args, **kwargs)
            handle.write = no_space
            return handle

        monkeypatch.setattr(os, "fdopen", fdopen_that_fills)
    result = render(stack, "--context", "2048")
    assert result.exit_code == DiskFullError.exit_code == 11, result.output
    assert f"Error: the disk holding {stack} is full (" in result.output
    assert "nothing was changed" in result.output and "Hint: Free some space" in result.output
    assert files(stack) == old
    assert not [p for p in stack.iterdir() if p.name.startswith(STAGING_PARTIAL) or p.is_dir()]


def test_a_hand_edit_copy_cut_short_by_a_full_disk_is_not_left_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stack = tmp_path / "s"
    assert render(stack).exit_code == 0
    (stack / "compose.yaml").write_text((stack / "compose.yaml").read_text() + "# mine\n")
    old = files(stack)

    def copy_half(source: Path, target: Path) -> None:
        target.write_bytes(source.read_bytes()[:10])
        no_space()

    monkeypatch.setattr(shutil, "copy2", copy_half)
    result = render(stack, "--force")
    assert result.exit_code == 11, result.output
    assert files(stack) == old  # no compose.yaml.bak-TIME holding ten bytes


class FakeEngineStack:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def volume_name(self, key: str) -> str:
        return "deploykit-demo_open-webui-data"

    def pause(self, service: str) -> bool:
        self.calls.append("pause")
        return True

    def unpause(self, service: str) -> None:
        self.calls.append("unpause")

    def containers(self) -> list[Any]:
        return [SimpleNamespace(service="open-webui", state="running")]

    def stop(self, service: str) -> None:
        self.calls.append("stop")

    def start(self, service: str) -> None:
        self.calls.append("start")


def fake_stack(tmp_path: Path, es: FakeEngineStack) -> Any:
    spec = SimpleNamespace(project=MANIFEST.project, images={"open-webui": MANIFEST.image})
    return SimpleNamespace(
        dir=tmp_path, spec=spec, secrets={"DEPLOYKIT_STACK_ID": MANIFEST.stack_id}, engine_stack=lambda _: es
    )


def test_a_backup_onto_a_full_disk_leaves_no_file_and_unpauses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    es = FakeEngineStack()

    def export_then_fill(docker_host: object, volume: str, image: str, labels: object, sink: Any) -> None:
        sink(b"x" * 4096)  # some of the copy lands, then the disk is full
        no_space()

    monkeypatch.setattr(engine, "export_volume", export_then_fill)
    out = tmp_path / "out"
    with pytest.raises(DiskFullError, match=f"the disk holding {out} is full") as caught:
        backup.backup(fake_stack(tmp_path, es), EngineAddress(), out)
    assert "the backup was not written" in caught.value.message and "--output" in (caught.value.hint or "")
    assert list(out.iterdir()) == []
    assert es.calls == ["pause", "unpause"]


def test_a_full_disk_while_the_sidecar_is_written_leaves_no_archive(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    es = FakeEngineStack()
    copy = engine_tar({"webui.db": b"x"}).getvalue()
    monkeypatch.setattr(engine, "export_volume", lambda *a: a[-1](copy))  # the copy is written fine
    monkeypatch.setattr(backup, "_write_private", no_space)
    out = tmp_path / "out"
    with pytest.raises(DiskFullError):
        backup.backup(fake_stack(tmp_path, es), EngineAddress(), out)
    assert list(out.iterdir()) == []  # an archive without its sidecar would be restored unchecked


def test_a_restore_whose_unpack_runs_out_of_room_says_so_and_does_not_stop_open_webui(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    es = FakeEngineStack()
    archive = write_backup(tmp_path, {"webui.db": b"x" * 10240})
    room = webui_data.Probe(MANIFEST.image, frozenset(), None, free_bytes=50 << 20, free_files=1000)
    monkeypatch.setattr(webui_data, "probe", lambda *a: room)  # room enough by the count beforehand
    scripts: list[str] = []

    def stage_fails(docker_host: object, volume: str, image: str, labels: object, script: str, **kw: Any) -> Any:
        scripts.append(script)
        return 3, TAR_ENOSPC

    monkeypatch.setattr(engine, "run_on_volume", stage_fails)
    with pytest.raises(DiskFullError) as caught:
        backup.restore(fake_stack(tmp_path, es), EngineAddress(), archive)
    message = caught.value.message
    assert message.startswith(
        f"the disk holding the Open WebUI volume deploykit-demo_open-webui-data is too full to restore {archive.name} "
        "(50 MiB free and room for 1000 files;"
    )
    assert "the partly unpacked copy was removed" in message and "Open WebUI was not stopped" in message
    assert scripts == [backup.STAGE_SCRIPT] and es.calls == []  # never swapped, never stopped


@pytest.mark.parametrize(
    ("free_bytes", "free_files", "short"),
    [(100 << 10, 1000, "(100 KiB free and room for 1000 files;"), (50 << 20, 1, "(50 MiB free and room for 1 files;")],
)
def test_a_restore_without_room_is_refused_before_anything_is_unpacked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, free_bytes: int, free_files: int, short: str
) -> None:
    es = FakeEngineStack()
    archive = write_backup(tmp_path, {"webui.db": b"x" * 300_000, "uploads/a.txt": b"hi"})
    room = webui_data.Probe(MANIFEST.image, frozenset(), None, free_bytes=free_bytes, free_files=free_files)
    monkeypatch.setattr(webui_data, "probe", lambda *a: room)
    monkeypatch.setattr(engine, "run_on_volume", no_space)  # must not be reached
    with pytest.raises(DiskFullError, match=r"unpacking it beside the live data needs 1\.3 MiB for 4 files") as caught:
        backup.restore(fake_stack(tmp_path, es), EngineAddress(), archive)
    assert "nothing was changed and Open WebUI was not stopped" in caught.value.message
    assert short in caught.value.message
    assert es.calls == []
