"""`restore` vets every archive member before anything reaches the volume, on the real engine (ports 33860-33861).

One stack, rendered and never started: `restore` of a stack that is down creates the Open WebUI volume
and unpacks into it with the stack's own image, the path every restore takes. What the volume then holds is
read back with that image (`stat`, `sha256sum` in a throw-away container on the volume, read-only).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import GGUF, MODEL_ID, Stack, deploykit, docker, make_stack, remove_by_label, secrets

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def vet(engine: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    stack = make_stack(tmp_path_factory.mktemp("vet"), "e2e-vet", 33860, 33861)
    remove_by_label(f"org.deploykit.stack={stack.project}")
    images = ("--image", f"inference={engine['LLAMACPP_IMAGE']}", "--image", f"open-webui={engine['OPENWEBUI_IMAGE']}")
    rendered = deploykit(
        "render", "--profile", "cpu", "--model", MODEL_ID, "--model-file", str(GGUF), *images,
        "--dir", str(stack.dir), env=stack.env,
    )  # fmt: skip
    assert rendered.code == 0, rendered.err
    try:
        yield {"stack": stack, "image": engine["OPENWEBUI_IMAGE"]}
    finally:
        stack.remove()


def _member(name: str, data: bytes | None = None, **fields: Any) -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    if data is None:
        info.type, info.mode = tarfile.DIRTYPE, 0o755
    else:
        info.size, info.mode = len(data), 0o644
    for key, value in fields.items():
        setattr(info, key, value)
    return info, data


def backup_file(stack: Stack, folder: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    """A backup of ``stack`` (its own stack id) holding ``members``, with a correct sidecar."""
    manifest = {
        "stack_id": secrets(stack)["DEPLOYKIT_STACK_ID"],
        "project": stack.project,
        "volume": f"{stack.project}_open-webui-data",
        "image": "deploykit-local/open-webui:0.12.4",
        "created": "2026-12-02T00:00:00Z",
        "deploykit_version": "0.1.0",
        "format": 1,
    }
    path = folder / f"{stack.project}-{len(list(folder.glob('*.tar.gz')))}.tar.gz"
    with tarfile.open(path, "w:gz", format=tarfile.PAX_FORMAT) as tar:
        body = json.dumps(manifest).encode()
        info = tarfile.TarInfo("deploykit-backup.json")
        info.size = len(body)
        tar.addfile(info, io.BytesIO(body))
        for member, data in members:
            tar.addfile(member, io.BytesIO(data) if data is not None else None)
    data = path.read_bytes()
    side = manifest | {"sha256": hashlib.sha256(data).hexdigest(), "size_bytes": len(data)}
    path.with_name(path.name.removesuffix(".tar.gz") + ".json").write_text(json.dumps(side))
    return path


def volume(stack: Stack) -> str:
    return docker(
        "volume", "ls", "-q", "--filter", f"label=com.docker.compose.project={stack.project}",
        "--filter", "label=com.docker.compose.volume=open-webui-data",
    ).strip()  # fmt: skip


def listing(vet: dict[str, Any]) -> list[str]:
    """Every entry of the volume: "type mode uid:gid size sha256|path" (read-only, in a throw-away container)."""
    name = volume(vet["stack"])
    if not name:
        return []
    script = (
        "cd /data && find . -mindepth 1 | sort | while read -r p; do "
        'if [ -f "$p" ] && [ ! -L "$p" ]; then s=$(sha256sum "$p" | cut -c1-16); else s=-; fi; '
        'echo "$(stat -c "%F %a %u:%g %s" "$p") $s|$p"; done'
    )
    out = docker(
        "run", "--rm", "--network", "none", "--entrypoint", "sh", "-v", f"{name}:/data:ro",
        "--label", f"org.deploykit.stack={vet['stack'].project}", vet["image"], "-c", script,
    )  # fmt: skip
    return out.splitlines()


def helpers_left(stack: Stack) -> str:
    return docker(
        "ps", "-aq", "--filter", "label=org.deploykit.helper", "--filter", f"label=org.deploykit.stack={stack.project}"
    ).strip()


GOOD = [
    _member("data"),
    _member("data/uploads"),
    _member("data/webui.db", b"SQLite format 3\0" + bytes(4000)),
    _member("data/uploads/notes é.txt", b"kept\n", uid=1000, gid=1000),
    _member("data/run.sh", b"#!/bin/sh\necho hi\n", mode=0o6777),  # setuid, setgid, world-writable
    _member("data/shared", mode=0o1777),  # a sticky, world-writable folder
]


def test_a_clean_backup_is_restored_with_its_modes_masked(vet: dict[str, Any], tmp_path: Path) -> None:
    stack = vet["stack"]
    result = deploykit("restore", "--dir", str(stack.dir), str(backup_file(stack, tmp_path, GOOD)), "--json",
                       env=stack.env)  # fmt: skip
    assert result.code == 0, result.err
    report = json.loads(result.out)
    assert (report["files"], report["folders"], report["modes_masked"]) == (3, 3, 2)
    rows = dict(reversed(line.rsplit("|", 1)) for line in listing(vet))
    assert sorted(rows) == ["./run.sh", "./shared", "./uploads", "./uploads/notes é.txt", "./webui.db"]
    assert rows["./run.sh"].startswith("regular file 775 0:0 ")  # no setuid/setgid, not world-writable
    assert rows["./shared"].startswith("directory 775 ")  # no sticky bit, not world-writable
    assert rows["./uploads/notes é.txt"].startswith("regular file 644 1000:1000 5 ")
    assert helpers_left(stack) == ""
    vet["clean"] = listing(vet)


HOSTILE = {
    "a symbolic link out of the volume": [_member("data/evil", b"", type=tarfile.SYMTYPE, linkname="/etc/shadow")],
    "a hard link to the host's passwd": [_member("data/evil", b"", type=tarfile.LNKTYPE, linkname="/etc/passwd")],
    "a device node": [_member("data/sda", b"", type=tarfile.BLKTYPE, devmajor=8, devminor=0)],
    "a named pipe": [_member("data/fifo", b"", type=tarfile.FIFOTYPE)],
    "an absolute path": [_member("/etc/cron.d/evil", b"* * * * * root id\n")],
    "a path out through ..": [_member("data/../../../../etc/cron.d/evil", b"* * * * * root id\n")],
    "a member outside data/": [_member("root/.ssh/authorized_keys", b"ssh-ed25519 AAAA x\n")],
}


@pytest.mark.parametrize("what", list(HOSTILE))
def test_a_hostile_member_is_refused_and_the_volume_is_unchanged(
    vet: dict[str, Any], tmp_path: Path, what: str
) -> None:
    stack = vet["stack"]
    before = vet.get("clean") or listing(vet)
    archive = backup_file(stack, tmp_path, [_member("data"), *HOSTILE[what], _member("data/new.txt", b"new\n")])
    result = deploykit("restore", "--dir", str(stack.dir), str(archive), env=stack.env)
    assert result.code == 2, result.err
    assert "holds members deploykit will not restore" in result.err and "nothing was changed" in result.err
    assert "Traceback" not in result.err
    assert listing(vet) == before  # not even the harmless member beside it arrived
    assert helpers_left(stack) == ""


def test_a_truncated_archive_whose_sidecar_matches_is_refused_before_the_engine(
    vet: dict[str, Any], tmp_path: Path
) -> None:
    stack = vet["stack"]
    before = listing(vet)
    archive = backup_file(stack, tmp_path, [_member("data"), _member("data/big", os.urandom(256 * 1024))])
    archive.write_bytes(archive.read_bytes()[:-4096])
    side = archive.with_name(archive.name.removesuffix(".tar.gz") + ".json")
    data = archive.read_bytes()
    manifest = json.loads(side.read_text()) | {"sha256": hashlib.sha256(data).hexdigest(), "size_bytes": len(data)}
    side.write_text(json.dumps(manifest))
    result = deploykit("restore", "--dir", str(stack.dir), str(archive), env=stack.env)
    assert result.code == 2 and "cannot be read to the end" in result.err, result.err
    assert listing(vet) == before and helpers_left(stack) == ""


def test_a_real_backup_round_trips_through_the_vetting(vet: dict[str, Any], tmp_path: Path) -> None:
    stack = vet["stack"]
    before = listing(vet)
    assert before, "the clean restore above left data to back up"
    taken = deploykit("backup", "--dir", str(stack.dir), "--output", str(tmp_path), "--json", env=stack.env)
    assert taken.code == 0, taken.err
    archive = json.loads(taken.out)["path"]
    result = deploykit("restore", "--dir", str(stack.dir), archive, env=stack.env)
    assert result.code == 0, result.err
    assert listing(vet) == before
