"""A full disk under `backup`, `restore` and `render`/`up`, on real small file systems (ports 34870/34871).

Three size-limited tmpfs mounts made for the test (as root; under CI=true the test fails if it cannot make
them): the stack folder's disk, the backup folder's disk, and the disk under Open WebUI's data volume (the
site's compose.override.yaml binds the volume to a folder on it, as a site puts data on a disk of its own).
Each case fills one of them, runs the command, and checks the user sees exit 11 with the disk named and
what is left free, that the old files and data are as they were, and that nothing half-written is left
for the next run to trust. Then it frees the room and checks the same command succeeds. One stack, the
cases in file order.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import (
    GGUF,
    MODEL_ID,
    Result,
    Stack,
    container_ids,
    deploykit,
    docker,
    make_stack,
    need,
    remove_by_label,
    secrets,
)

pytestmark = pytest.mark.e2e

UP_ARGS = ("--profile", "cpu", "--model", MODEL_ID, "--model-file", str(GGUF))
DISKS = {"stack": ("4m", None), "backups": ("8m", None), "volume": ("64m", 4000)}  # size, inodes
VOLUME_OVERRIDE = """\
# The site keeps Open WebUI's data on a disk of its own (here: the test's small one).
volumes:
  open-webui-data:
    driver: local
    driver_opts:
      type: none
      o: bind
      device: "{device}"
"""


def mount_small_disk(path: Path, size: str, inodes: int | None) -> None:
    path.mkdir(parents=True)
    options = f"size={size},mode=0755" + (f",nr_inodes={inodes}" if inodes else "")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True, text=True)
    need(done.returncode == 0, f"cannot mount a small tmpfs at {path} (root needed): {done.stderr.strip()}")


def unmount(path: Path) -> None:
    if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def free(path: Path) -> tuple[int, int]:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize, st.f_favail


def fill(disk: Path, leave: int = 0) -> Path:
    """Fill ``disk`` with one file until only ``leave`` bytes are free; the file, to take away again."""
    filler = disk / "filler.bin"
    with filler.open("ab") as fh:
        while free(disk)[0] > leave:
            try:
                fh.write(b"\0" * min(1 << 20, free(disk)[0] - leave))
                fh.flush()
            except OSError:
                break
    return filler


def use_up_files(disk: Path, leave: int) -> Path:
    """Take every free inode of ``disk`` but ``leave``, with empty files in one folder; the folder."""
    folder = disk / "filler-files"
    folder.mkdir()
    i = 0
    while free(disk)[1] > leave:
        try:
            (folder / str(i)).touch()
        except OSError:
            break
        i += 1
    return folder


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file directly in ``folder``: its bytes and mode (folders: empty bytes)."""
    out = {}
    for p in sorted(folder.iterdir()):
        out[p.name] = (p.read_bytes() if p.is_file() else b"", p.stat().st_mode)
    return out


def webui(stack: Stack) -> httpx.Client:
    s = secrets(stack)
    base = f"http://127.0.0.1:{stack.webui_port}"
    creds = {"email": s["DEPLOYKIT_ADMIN_EMAIL"], "password": s["DEPLOYKIT_ADMIN_PASSWORD"]}
    token = httpx.post(f"{base}/api/v1/auths/signin", json=creds, timeout=30, trust_env=False).json()["token"]
    return httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=60, trust_env=False)


def new_chat(stack: Stack, title: str) -> str:
    messages = [{"role": "user", "content": title}, {"role": "assistant", "content": "noted"}]
    with webui(stack) as ui:
        r = ui.post("/api/v1/chats/new", json={"chat": {"title": title, "models": [MODEL_ID], "messages": messages}})
    assert r.status_code == 200, r.text
    return str(r.json()["id"])


def chat_title(stack: Stack, chat_id: str) -> str | None:
    with webui(stack) as ui:
        r = ui.get(f"/api/v1/chats/{chat_id}")
    return r.json()["chat"]["title"] if r.status_code == 200 else None


def webui_state(stack: Stack) -> tuple[str, str, str]:
    """Open WebUI's container: id, start time, and status (running, paused …)."""
    out = docker("inspect", "-f", "{{.Id}} {{.State.StartedAt}} {{.State.Status}}", f"{stack.project}-open-webui-1")
    ident, started, status = out.split()
    return ident, started, status


def assert_disk_full(result: Result, says: str) -> None:
    """Exit 11, ``says`` (the disk named), a hint, no traceback."""
    print(result.err)  # what the user sees, for docs/reliability.md
    assert result.code == 11, (result.code, result.err)
    assert says in result.err, result.err
    assert "Hint:" in result.err and "Traceback" not in result.err


@pytest.fixture(scope="module")
def full(engine: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    need(os.geteuid() == 0, "mounting the small file systems needs root")
    tmp = tmp_path_factory.mktemp("diskfull")
    disks: dict[str, Path] = {}
    stack: Stack | None = None
    try:
        for name, (size, inodes) in DISKS.items():
            disks[name] = tmp / f"{name}-disk"
            mount_small_disk(disks[name], size, inodes)
        stack = make_stack(disks["stack"], "e2e-full", 34870, 34871)
        remove_by_label(f"org.deploykit.stack={stack.project}")
        stack.dir.mkdir()
        (stack.dir / "compose.override.yaml").write_text(VOLUME_OVERRIDE.format(device=disks["volume"]))
        stack.up_result = stack.up(engine, *UP_ARGS, "--json")
        assert stack.up_result.code == 0, stack.up_result.err
        assert (disks["volume"] / "webui.db").is_file()  # Open WebUI's data really is on the small disk
        yield {"stack": stack, "disks": disks, "images": engine, "tmp": tmp}
    finally:
        if stack is not None:
            stack.remove()
        for path in disks.values():
            unmount(path)


def test_backup_onto_a_full_disk_says_so_and_leaves_nothing(full: dict[str, Any]) -> None:
    stack: Stack = full["stack"]
    disk: Path = full["disks"]["backups"]
    out = disk / "backups"
    kept = new_chat(stack, "made before the backup")
    before = webui_state(stack)
    filler = fill(disk, leave=64 << 10)
    result = deploykit("backup", "--dir", str(stack.dir), "--output", str(out), env=stack.env)
    assert_disk_full(result, f"the disk holding {out} is full (")
    assert "the backup was not written" in result.err and "--output" in result.err
    assert sorted(p.name for p in disk.iterdir()) == ["backups", "filler.bin"]
    assert list(out.iterdir()) == []  # no archive, no sidecar, no temporary file
    assert webui_state(stack) == before  # unpaused again, never restarted
    assert chat_title(stack, kept) == "made before the backup"

    filler.unlink()
    again = deploykit("backup", "--dir", str(stack.dir), "--output", str(out), "--json", env=stack.env)
    assert again.code == 0, again.err
    full["archive"] = Path(json.loads(again.out)["path"])
    full["before_backup"] = kept


def test_restore_into_a_full_volume_is_refused_before_anything_is_unpacked(full: dict[str, Any]) -> None:
    stack: Stack = full["stack"]
    disk: Path = full["disks"]["volume"]
    archive: Path = full["archive"]
    later = new_chat(stack, "made after the backup")
    full["after_backup"] = later
    filler = fill(disk, leave=256 << 10)
    before = webui_state(stack)
    result = deploykit("restore", "--dir", str(stack.dir), str(archive), env=stack.env)
    volume = f"{stack.project}_open-webui-data"
    assert_disk_full(result, f"the disk holding the Open WebUI volume {volume} is too full to restore {archive.name} (")
    assert "unpacking it beside the live data needs" in result.err
    assert "nothing was changed and Open WebUI was not stopped" in result.err
    assert webui_state(stack) == before
    assert chat_title(stack, later) == "made after the backup"
    assert not [p for p in disk.iterdir() if p.name.startswith(".deploykit")]  # no staging folder left
    assert filler.is_file()
    filler.unlink()


def test_restore_into_a_volume_without_free_inodes_is_refused(full: dict[str, Any]) -> None:
    stack: Stack = full["stack"]
    disk: Path = full["disks"]["volume"]
    fillers = use_up_files(disk, leave=3)
    try:
        before = webui_state(stack)
        result = deploykit("restore", "--dir", str(stack.dir), str(full["archive"]), env=stack.env)
        assert_disk_full(result, f"the disk holding the Open WebUI volume {stack.project}_open-webui-data is too full")
        assert "and room for 3 files" in result.err
        assert webui_state(stack) == before
        assert chat_title(stack, full["after_backup"]) == "made after the backup"
        assert not [p for p in disk.iterdir() if p.name.startswith(".deploykit")]
    finally:
        subprocess.run(["rm", "-rf", str(fillers)], check=True)


def test_with_room_again_the_restore_succeeds(full: dict[str, Any]) -> None:
    stack: Stack = full["stack"]
    result = deploykit("restore", "--dir", str(stack.dir), str(full["archive"]), "--json", env=stack.env)
    assert result.code == 0, result.err
    assert json.loads(result.out)["webui_restarted"] is True
    assert chat_title(stack, full["before_backup"]) == "made before the backup"
    assert chat_title(stack, full["after_backup"]) is None


def test_render_and_up_onto_a_full_stack_disk_keep_the_old_files(full: dict[str, Any]) -> None:
    stack: Stack = full["stack"]
    disk: Path = full["disks"]["stack"]
    images: dict[str, str] = full["images"]
    image_args = (
        "--image",
        f"inference={images['LLAMACPP_IMAGE']}",
        "--image",
        f"open-webui={images['OPENWEBUI_IMAGE']}",
    )
    changed = stack.env | {"DEPLOYKIT_WEBUI_ENV__WEBUI_NAME": "Full Disk Lab"}  # so the files must be rewritten
    files = snapshot(stack.dir)
    ids = container_ids(stack)
    filler = fill(disk)
    try:
        rendered = deploykit("render", *UP_ARGS, *image_args, "--dir", str(stack.dir), env=changed)
        assert_disk_full(rendered, f"the disk holding {stack.dir} is full (0 KiB free)")
        assert "nothing was changed" in rendered.err
        assert snapshot(stack.dir) == files  # no staging folder, no half-written file, the old ones as they were
        up = deploykit("up", "--dir", str(stack.dir), env=changed)
        assert_disk_full(up, f"the disk holding {stack.dir} is full (0 KiB free)")
        assert snapshot(stack.dir) == files
        assert container_ids(stack) == ids  # nothing was started or recreated
    finally:
        filler.unlink()
    again = deploykit("render", *UP_ARGS, *image_args, "--dir", str(stack.dir), env=changed)
    assert again.code == 0, again.err
    assert "Full Disk Lab" in (stack.dir / "compose.yaml").read_text()
    assert not [p for p in stack.dir.iterdir() if p.name.startswith(".deploykit-staging")]
