"""Backups of a stack's Open WebUI data (accounts, chats, settings) and their restore.

A backup is ``backups/<project>-<UTC time>.tar.gz`` (0600): a ``deploykit-backup.json`` member saying
whose data it is, then the volume's files under ``data/``. Beside it, ``<same name>.json`` holds the same
manifest plus the archive's sha256 and size, which restore checks before touching anything.

Consistency: Open WebUI keeps its state in SQLite. While the files are copied its container is paused
(cgroup freezer), so nothing changes during the copy and the copy is what a crash at that instant would
leave — which SQLite recovers from by design. Pausing costs the users a few seconds of latency, not a
restart.

Restore unpacks into a staging directory inside the volume while Open WebUI still runs; only the final
swap (renames in one filesystem, rolled back if one fails) happens with Open WebUI stopped. A restore that
fails before the swap leaves the old data as it was.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import tempfile
import time
from collections.abc import Callable
from dataclasses import MISSING, asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from deploykit import __version__
from deploykit.running import webui_data
from deploykit.seams import compose, diskspace, engine
from deploykit.seams.archive import MANIFEST_MEMBER, MAX_MANIFEST_BYTES, Vetted, clean_tar, nested_tar, open_stream, vet
from deploykit.seams.textfile import sha256_of
from deploykit.values.errors import EngineError, NotFoundError, UsageError
from deploykit.values.services import WEBUI
from deploykit.values.stackfiles import STACK_ID

if TYPE_CHECKING:
    from deploykit.running.stack import LoadedStack

DATA_VOLUME = "open-webui-data"  # the compose volume key in compose.yaml.j2
FORMAT = 1
_STAGING = ".deploykit-restore"
_OLD = ".deploykit-old"

# Unpack into the staging directory; on any failure remove it and leave the live data alone. The tar is
# the clean one deploykit re-packed from the vetted archive (deploykit.archive), not the archive itself.
STAGE_SCRIPT = f"""set -u
cd /data || exit 2
rm -rf {_STAGING} && mkdir {_STAGING} || exit 2
if tar -xpf /tmp/backup.tar -C {_STAGING} && [ -d {_STAGING}/data ]; then exit 0; fi
rm -rf {_STAGING}
echo "the archive could not be unpacked" >&2
exit 3
"""

# Swap the staged files in; if a move fails, put the old files back.
SWAP_SCRIPT = f"""set -u
cd /data || exit 2
[ -d {_STAGING}/data ] || exit 2
rm -rf {_OLD} && mkdir {_OLD} || exit 2
move_all() {{ find "$1" -mindepth 1 -maxdepth 1 ! -name {_STAGING} ! -name {_OLD} -exec mv -t "$2" -- {{}} + ; }}
if move_all . {_OLD} && move_all {_STAGING}/data . ; then
  rm -rf {_OLD} {_STAGING}
  exit 0
fi
find . -mindepth 1 -maxdepth 1 ! -name {_STAGING} ! -name {_OLD} -exec rm -rf -- {{}} +
move_all {_OLD} .
rm -rf {_OLD} {_STAGING}
echo "the swap failed; the old data was put back" >&2
exit 4
"""


@dataclass(frozen=True)
class Manifest:
    stack_id: str
    project: str
    volume: str
    image: str  # the Open WebUI image whose data this is
    created: str  # UTC, ISO 8601
    deploykit_version: str
    format: int = FORMAT
    sha256: str = ""  # in the sidecar only: the archive cannot hold its own digest
    size_bytes: int = 0

    @classmethod
    def from_json(cls, data: object) -> Manifest:
        """The manifest in ``data``; ValueError naming the first field that is missing or of the wrong type."""
        if not isinstance(data, dict):
            raise ValueError(f"a JSON {type(data).__name__}, not an object")
        known: dict[str, Any] = {}
        for name, spec in cls.__dataclass_fields__.items():
            if name not in data or data[name] is None:
                if spec.default is MISSING:
                    raise ValueError(f"{name} is missing")
                continue
            value, kind = data[name], int if spec.type in ("int", int) else str
            if not isinstance(value, kind) or isinstance(value, bool):
                raise ValueError(
                    f"{name} is a JSON {type(value).__name__}, not a {'number' if kind is int else 'string'}"
                )
            known[name] = value
        return cls(**known)


@dataclass(frozen=True)
class BackupReport:
    path: str
    manifest_path: str
    manifest: Manifest
    files: int
    paused_seconds: float  # how long Open WebUI was frozen (0 when it was not running)


@dataclass(frozen=True)
class RestoreReport:
    path: str
    manifest: Manifest
    forced: bool
    webui_restarted: bool
    downtime_seconds: float  # Open WebUI stopped → answering /health again (0 when it was not running)
    files: int = 0  # regular files restored
    folders: int = 0
    modes_masked: int = 0  # members whose setuid/setgid/sticky/world-writable bits were dropped


def _labels(stack: LoadedStack) -> dict[str, str]:
    return {"org.deploykit.managed": "true", "org.deploykit.stack": stack.spec.project}


def default_dir(stack_dir: Path) -> Path:
    return stack_dir / "backups"


def _utc_stamp(now: datetime) -> str:
    return now.strftime("%Y%m%dT%H%M%SZ")


class _HashingWriter(io.RawIOBase):
    """Writes through to a file, keeping the sha256 and size of what passed."""

    def __init__(self, target: IO[bytes]) -> None:
        self.target = target
        self.digest = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = bytes(data)
        self.target.write(view)
        self.digest.update(view)
        self.size += len(view)
        return len(view)


def _repack(raw_tar: IO[bytes], out: IO[bytes], manifest: Manifest) -> int:
    """Gzip the engine's tar into ``out`` with the manifest first; returns the number of files."""
    count = 0
    with tarfile.open(fileobj=out, mode="w|gz", format=tarfile.PAX_FORMAT) as dst:
        body = json.dumps(asdict(manifest) | {"sha256": None, "size_bytes": None}, indent=2).encode()
        info = tarfile.TarInfo(MANIFEST_MEMBER)
        info.size, info.mode, info.mtime = len(body), 0o600, int(time.time())
        dst.addfile(info, io.BytesIO(body))
        with tarfile.open(fileobj=raw_tar, mode="r|") as src:
            for member in src:
                # A restore interrupted by a kill can leave its scratch directories behind: not data.
                if member.name.split("/")[1:2] in ([_STAGING], [_OLD]):
                    continue
                dst.addfile(member, src.extractfile(member) if member.isfile() else None)
                count += member.isfile()
    return count


def backup(
    stack: LoadedStack, docker_host: engine.EngineAddress, out_dir: Path | None = None, now: datetime | None = None
) -> BackupReport:
    """Copy the stack's Open WebUI volume into a new archive; Open WebUI is paused only during the copy."""
    es: compose.Stack = stack.engine_stack(docker_host)
    volume = es.volume_name(DATA_VOLUME)
    if volume is None:
        raise NotFoundError(
            f"stack {stack.spec.project} has no Open WebUI data volume yet, so there is nothing to back up.",
            "Start it once with `deploykit up`.",
        )
    when = now or datetime.now(UTC)
    manifest = Manifest(
        stack_id=stack.secrets.get(STACK_ID, ""),
        project=stack.spec.project,
        volume=volume,
        image=stack.spec.images[WEBUI],
        created=when.isoformat(timespec="seconds").replace("+00:00", "Z"),
        deploykit_version=__version__,
    )
    folder = (out_dir or default_dir(stack.dir)).expanduser().absolute()
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    base = f"{stack.spec.project}-{_utc_stamp(when)}"
    final = folder / f"{base}.tar.gz"
    n = 1
    while final.exists():
        n += 1
        final = folder / f"{base}-{n}.tar.gz"
    fd, tmp_name = tempfile.mkstemp(dir=folder, prefix=f".{final.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    paused_at: float | None = None
    paused_for = 0.0
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as fh:
            writer = _HashingWriter(fh)
            if es.pause(WEBUI):
                paused_at = time.monotonic()
            try:
                # The raw copy lands on disk first so the pause lasts only as long as the copy, not the gzip.
                with tempfile.TemporaryFile(dir=folder) as raw:
                    os.fchmod(raw.fileno(), 0o600)
                    engine.export_volume(docker_host, volume, manifest.image, _labels(stack), raw.write)
                    if paused_at is not None:
                        es.unpause(WEBUI)
                        paused_for = time.monotonic() - paused_at
                        paused_at = None
                    raw.seek(0)
                    files = _repack(raw, writer, manifest)  # type: ignore[arg-type]
            finally:
                if paused_at is not None:
                    es.unpause(WEBUI)
                    paused_for = time.monotonic() - paused_at
        done = Manifest(**(asdict(manifest) | {"sha256": writer.digest.hexdigest(), "size_bytes": writer.size}))
        sidecar = final.with_name(final.name.removesuffix(".tar.gz") + ".json")
        # The sidecar first: an archive without its sidecar would be restored without its sha256 checked.
        _write_private(sidecar, json.dumps(asdict(done), indent=2) + "\n")
        tmp.replace(final)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if diskspace.is_full(exc):
            raise diskspace.full_error(
                folder,
                "the backup was not written (nothing half-written was left) and the stack's data is unchanged.",
                f"Free some space there (`df -h {folder}`), or back up to another disk with --output.",
            ) from None
        raise
    return BackupReport(str(final), str(sidecar), done, files, round(paused_for, 2))


def _write_private(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _regular_archive(path: Path) -> int:
    """The archive's size; it must be a regular file (hashing a named pipe would never end)."""
    import stat

    try:
        st = path.stat()
    except FileNotFoundError:
        raise NotFoundError(
            f"backup {path} does not exist.", "`ls backups/` in the stack directory lists them."
        ) from None
    except OSError as exc:
        raise UsageError(f"cannot read backup {path}: {exc.strerror}.", "Check the path and its permissions.") from None
    if not stat.S_ISREG(st.st_mode):
        raise UsageError(f"backup {path} is not a regular file.", "Give the .tar.gz file `deploykit backup` wrote.")
    return st.st_size


def _manifest(data: object, where: Path) -> Manifest:
    try:
        manifest = Manifest.from_json(data)
    except ValueError as exc:
        raise UsageError(
            f"{where} is not a backup manifest ({exc}).", "Nothing was changed. Restore from another backup."
        ) from None
    if manifest.format > FORMAT:
        raise UsageError(
            f"{where} is a backup of format {manifest.format}, made by deploykit {manifest.deploykit_version[:40]}; "
            f"this deploykit {__version__} reads format {FORMAT}.",
            f"Restore it with deploykit {manifest.deploykit_version[:40]} or newer.",
        )
    return manifest


def _sidecar(path: Path, size: int) -> Manifest | None:
    """The manifest beside the archive, checked against the archive's size and sha256; None when absent."""
    from deploykit.seams.textfile import read_text
    from deploykit.values.documents import load_json

    sidecar = path.with_name(path.name.removesuffix(".tar.gz") + ".json")
    if not os.path.lexists(sidecar):
        return None
    hint = "Nothing was changed. Restore from another backup."
    text = read_text(sidecar, "backup manifest", hint, limit=MAX_MANIFEST_BYTES)
    expected = _manifest(load_json(text, sidecar, "backup manifest", hint), sidecar)
    if expected.size_bytes and expected.size_bytes != size:
        raise UsageError(
            f"backup {path} is damaged: it is {size:,} bytes, the manifest recorded {expected.size_bytes:,}.", hint
        )
    actual = sha256_of(path)
    if actual != expected.sha256:
        raise UsageError(
            f"backup {path} is damaged: its sha256 is {actual[:16]}…, the manifest recorded {expected.sha256[:16]}….",
            hint,
        )
    return expected


def read_backup(path: Path) -> Manifest:
    """The manifest of a backup archive, after checking the archive against its sidecar's size and sha256."""
    from deploykit.seams.textfile import decode
    from deploykit.values.documents import load_json

    expected = _sidecar(path, _regular_archive(path))
    hint = "Nothing was changed. Restore from another backup."
    try:
        with open_stream(path) as tar:
            first = tar.next()
            if first is None or first.name != MANIFEST_MEMBER or not first.isfile():
                raise UsageError(f"{path} is not a deploykit backup (no {MANIFEST_MEMBER}).", hint)
            if first.size > MAX_MANIFEST_BYTES:
                raise UsageError(
                    f"{path}: its {MANIFEST_MEMBER} claims {first.size:,} bytes; a manifest is a few hundred.", hint
                )
            handle = tar.extractfile(first)
            assert handle is not None
            raw = handle.read(MAX_MANIFEST_BYTES + 1)
    except (tarfile.TarError, OSError, EOFError, ValueError) as exc:
        raise UsageError(f"{path} cannot be read as a deploykit backup ({exc}).", hint) from None
    where = Path(f"{path}:{MANIFEST_MEMBER}")
    embedded = _manifest(load_json(decode(raw, where, "backup manifest", hint), where, "backup manifest", hint), where)
    if expected is not None:
        return Manifest(**(asdict(embedded) | {"sha256": expected.sha256, "size_bytes": expected.size_bytes}))
    return embedded


def check_restore(
    stack: LoadedStack, docker_host: engine.EngineAddress, archive: Path, force: bool, opened_by: str | None = None
) -> tuple[Manifest, tuple[webui_data.ArchiveScan, webui_data.Probe], Vetted]:
    """Everything a restore checks before it touches anything: the archive's sha256, every member (vetted before
    the engine is asked for anything), whose data it is, whether ``opened_by`` (default: the stack's Open WebUI)
    can open it, and whether the volume has room to unpack it."""
    manifest = read_backup(archive)
    vetted = vet(archive)
    ours = stack.secrets.get(STACK_ID, "")
    if manifest.stack_id != ours and not force:
        raise UsageError(
            f"backup {archive.name} holds the data of another stack ({manifest.project}, id {manifest.stack_id}); "
            f"this stack ({stack.spec.project}) has id {ours}.",
            "Add --force to restore it anyway: its accounts and admin password come with it, so sign in with "
            "that stack's credentials afterwards.",
        )
    volume = stack.engine_stack(docker_host).volume_name(DATA_VOLUME)
    image = opened_by or stack.spec.images[WEBUI]
    found = webui_data.check_restore(docker_host, archive, manifest.image, image, volume, _labels(stack), stack.dir)
    return manifest, found, vetted


def restore(
    stack: LoadedStack,
    docker_host: engine.EngineAddress,
    archive: Path,
    force: bool = False,
    wait_healthy: Callable[[], object] | None = None,
    opened_by: str | None = None,
    start_again: bool = True,
) -> RestoreReport:
    """Replace the stack's Open WebUI data with a backup's; Open WebUI is stopped only for the swap.

    ``opened_by`` is the Open WebUI image that opens the data next (default: the stack's); ``start_again``
    False leaves Open WebUI stopped after the swap, for `upgrade` to start the new image on the data first.
    """
    archive = archive.expanduser().absolute()
    manifest, found, vetted = check_restore(stack, docker_host, archive, force, opened_by)
    ours = stack.secrets.get(STACK_ID, "")
    es: compose.Stack = stack.engine_stack(docker_host)
    image = stack.spec.images[WEBUI]
    running = any(c.service == WEBUI and c.state in ("running", "restarting", "paused") for c in es.containers())
    volume = es.volume_name(DATA_VOLUME)
    if volume is None:
        es.create(WEBUI)  # the volume (and a stopped container) exactly as compose makes them
        volume = es.volume_name(DATA_VOLUME)
        if volume is None:
            raise EngineError(f"compose did not create the volume {DATA_VOLUME} of {stack.spec.project}.")
    # What reaches the helper (and the volume) is the vetted members re-packed, not the archive's own bytes.
    clean = nested_tar("backup.tar", clean_tar(archive, vetted), vetted.tar_bytes)
    code, output = engine.run_on_volume(
        docker_host, volume, image, _labels(stack), STAGE_SCRIPT, upload=("/tmp", clean)
    )
    if code != 0:
        if diskspace.says_full(output):
            scan, probe = found
            raise webui_data.volume_full_error(
                volume,
                archive,
                scan,
                probe,
                scan.disk_bytes,
                "the partly unpacked copy was removed, the current data is unchanged and Open WebUI was not stopped.",
            )
        raise EngineError(
            f"restore failed while unpacking {archive.name}: {output.strip()[-200:] or f'exit code {code}'}.",
            "The current data is unchanged and Open WebUI was not stopped.",
        )
    stopped_at = time.monotonic()
    if running:
        es.stop(WEBUI)
    code, output = engine.run_on_volume(docker_host, volume, image, _labels(stack), SWAP_SCRIPT)
    if running and (start_again or code != 0):
        es.start(WEBUI)
    if code != 0:
        raise EngineError(
            f"restore failed while swapping the data in: {output.strip()[-200:] or f'exit code {code}'}.",
            "The old data was put back" + (" and Open WebUI started again." if running else "."),
        )
    if running and start_again and wait_healthy is not None:
        wait_healthy()
    downtime = time.monotonic() - stopped_at if running else 0.0
    return RestoreReport(
        str(archive),
        manifest,
        manifest.stack_id != ours,
        running,
        round(downtime, 1),
        vetted.files,
        vetted.folders,
        vetted.masked,
    )
