"""Open WebUI's data against an image and a disk: its database revision, and the room a restore needs.

Open WebUI migrates its SQLite database with Alembic when it starts, forward only. An image whose
migrations do not hold the data's revision stops at start-up ("Can't locate revision identified by …")
and the engine restarts it for ever: Open WebUI 0.11.4 on data that 0.12.4 has migrated does exactly that.
So before deploykit puts data and an image together it asks the image itself (a short-lived container of
it) which revisions it knows, and refuses the pairing when the data is newer: `upgrade` to an older image
names the backup to go back with, and `restore` of a newer backup names the image that can read it.

The same probe reports the free room in the data volume, so a restore that cannot fit is refused before
anything is unpacked.
"""

from __future__ import annotations

import json
import shlex
import shutil
import sqlite3
import tarfile
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from deploykit.seams import diskspace, engine
from deploykit.seams.archive import open_stream
from deploykit.values.errors import DiskFullError, UsageError
from deploykit.values.units import MiB

DB_MEMBER = "data/webui.db"  # where a backup (backup.py) keeps Open WebUI's database
BLOCK = 4096  # a file takes whole blocks on disk: sizes are rounded up to this when room is counted

# Run inside the image: its Alembic revisions (read from the migration files, nothing imported), the
# revision(s) of the database given as argv[1] (if any), and the free room of the folder argv[2].
_PROBE = r"""
import importlib.util, json, os, re, sqlite3, sys
out = {"known": None, "data": None, "free_bytes": None, "free_files": None}
spec = importlib.util.find_spec("open_webui")
folders = list(spec.submodule_search_locations or []) if spec else []
versions = os.path.join(folders[0], "migrations", "versions") if folders else ""
if os.path.isdir(versions):
    found = set()
    for name in os.listdir(versions):
        if name.endswith(".py"):
            with open(os.path.join(versions, name), encoding="utf-8", errors="replace") as fh:
                m = re.search(r"^revision\s*(?::[^=\n]*)?=\s*['\"]([0-9A-Za-z_]+)['\"]", fh.read(), re.M)
            if m:
                found.add(m.group(1))
    out["known"] = sorted(found)
db = sys.argv[1] if len(sys.argv) > 1 else ""
if db and os.path.isfile(db):
    try:
        con = sqlite3.connect("file:" + db + "?mode=ro", uri=True)
        out["data"] = sorted(r[0] for r in con.execute("SELECT version_num FROM alembic_version"))
    except sqlite3.Error as exc:
        out["data_error"] = str(exc)
if len(sys.argv) > 2:
    st = os.statvfs(sys.argv[2])
    out["free_bytes"], out["free_files"] = st.f_bavail * st.f_frsize, st.f_favail
print("DEPLOYKIT-PROBE " + json.dumps(out))
"""


@dataclass(frozen=True)
class Probe:
    """What an image says about itself and, when a volume was given, about the data in it."""

    image: str
    known: frozenset[str] | None  # the revisions its migrations hold; None: it could not tell (no Open WebUI)
    data: tuple[str, ...] | None  # the volume's database revision(s); None: no database or none readable
    free_bytes: int | None = None  # room left in the volume
    free_files: int | None = None

    def unknown(self, revisions: tuple[str, ...] | None) -> tuple[str, ...]:
        """The revisions among ``revisions`` this image cannot open (none when either side cannot tell)."""
        if self.known is None or not revisions:
            return ()
        return tuple(r for r in revisions if r not in self.known)


def _parse(image: str, code: int, output: str) -> Probe:
    line = next((x for x in reversed(output.splitlines()) if x.startswith("DEPLOYKIT-PROBE ")), None)
    if code != 0 or line is None:
        return Probe(image, None, None)  # no python3, no Open WebUI: nothing to say, nothing refused
    data = json.loads(line.removeprefix("DEPLOYKIT-PROBE "))
    known = data.get("known")
    revs = data.get("data")
    return Probe(
        image,
        frozenset(known) if isinstance(known, list) else None,
        tuple(revs) if isinstance(revs, list) else None,
        data.get("free_bytes") if isinstance(data.get("free_bytes"), int) else None,
        data.get("free_files") if isinstance(data.get("free_files"), int) else None,
    )


def probe(docker_host: engine.EngineAddress, image: str, labels: dict[str, str], volume: str | None) -> Probe:
    """Ask ``image`` which revisions it knows and, with ``volume``, which one the data there is at."""
    if volume is None:
        code, output = engine.run_probe(
            docker_host, image, ["python3", "-c", _PROBE], label=labels["org.deploykit.stack"]
        )
        return _parse(image, code, output)
    # Read-write: SQLite needs to create the -shm file of a database in WAL mode to read it at all.
    script = f"exec python3 -c {shlex.quote(_PROBE)} {engine.VOLUME_MOUNT}/webui.db {engine.VOLUME_MOUNT}"
    code, output = engine.run_on_volume(docker_host, volume, image, labels, script, timeout=120)
    return _parse(image, code, output)


@dataclass(frozen=True)
class ArchiveScan:
    """What a backup archive would put into the volume."""

    revisions: tuple[str, ...] | None  # its database's revision(s); None: no database or none readable
    disk_bytes: int  # the room its files take unpacked, counted in whole blocks
    files: int  # files and folders it holds


def _revisions_of(db: Path) -> tuple[str, ...] | None:
    try:
        con = sqlite3.connect(db)
        try:
            con.execute("PRAGMA trusted_schema = OFF")  # the file came from elsewhere: run none of its code
            return tuple(sorted(str(r[0]) for r in con.execute("SELECT version_num FROM alembic_version")))
        finally:
            con.close()
    except sqlite3.Error:
        return None


def scan_archive(path: Path) -> ArchiveScan:
    """Walk a backup once: the room its files need and its database's revision (read from a private copy).

    An archive that ends early or is not gzip is counted as far as it reads, with no revision: the unpack
    then fails on it and says so, as before any of this was checked.
    """
    disk = files = 0
    complete = True
    with tempfile.TemporaryDirectory(prefix="deploykit-revision-") as scratch:
        copies = Path(scratch)
        try:
            with open_stream(path) as archive:
                for member in archive:
                    files += 1
                    disk += BLOCK + (-(-member.size // BLOCK) * BLOCK if member.isfile() else 0)
                    # The database and its write-ahead log: SQLite replays the log when the copy is opened.
                    if member.isfile() and member.name in (DB_MEMBER, f"{DB_MEMBER}-wal"):
                        _copy_member(archive, member, copies / Path(member.name).name)
        except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
            if diskspace.is_full(exc):
                raise diskspace.full_error(
                    copies.parent, "the backup's database could not be read; nothing was changed."
                ) from None
            complete = False
        db = copies / "webui.db"
        revisions = _revisions_of(db) if complete and db.is_file() else None
    return ArchiveScan(revisions, disk, files)


def _copy_member(archive: tarfile.TarFile, member: tarfile.TarInfo, target: Path) -> None:
    source = archive.extractfile(member)
    if source is not None:
        with target.open("wb") as out:
            shutil.copyfileobj(source, out, 1 << 20)


def newer_data_error(revisions: tuple[str, ...], image: str, what: str, hint: str) -> UsageError:
    return UsageError(
        f"{what} is at Open WebUI database revision {', '.join(revisions)}, which {image} does not know: "
        "a newer Open WebUI wrote it, and Open WebUI's migrations only go forward (this image would stop at "
        "start-up and restart for ever).",
        f"Nothing was changed. {hint}",
    )


def backups_made_on(folder: Path, image: str) -> list[Path]:
    """Backups in ``folder`` whose sidecar says they hold the data of ``image``, newest first."""
    found = []
    for sidecar in sorted(folder.glob("*.json"), reverse=True):
        archive = sidecar.with_name(sidecar.name.removesuffix(".json") + ".tar.gz")
        try:
            if sidecar.stat().st_size > 1 << 16 or not archive.is_file():
                continue
            data = json.loads(sidecar.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and data.get("image") == image:
            found.append(archive)
    return found


def check_upgrade(
    docker_host: engine.EngineAddress, stack_dir: Path, project: str, image: str, volume: str, backups: Path
) -> None:
    """Refuse to start ``image`` on the stack's data when the data is newer than the image, naming the way back."""
    labels = {"org.deploykit.managed": "true", "org.deploykit.stack": project}
    found = probe(docker_host, image, labels, volume)
    newer = found.unknown(found.data)
    if not newer:
        return
    kept = backups_made_on(backups, image)
    where = str(kept[0]) if kept else "BACKUP"
    hint = (
        f"To go back to {image}, restore the data it had with it: `deploykit upgrade --dir {stack_dir} --image "
        f"open-webui={image} --restore {where}` (the current data is backed up first)."
    )
    if not kept:
        hint += f" No backup made on {image} is in {backups}."
    raise newer_data_error(newer, image, f"the Open WebUI data of {project}", hint)


def volume_full_error(
    volume: str, archive: Path, scan: ArchiveScan, found: Probe, need: int, outcome: str
) -> DiskFullError:
    files = "" if found.free_files is None else f" and room for {found.free_files} files"
    return DiskFullError(
        f"the disk holding the Open WebUI volume {volume} is too full to restore {archive.name} "
        f"({diskspace.mib(found.free_bytes)} free{files}; unpacking it beside the live data needs "
        f"{diskspace.mib(need)} for {scan.files} files); {outcome}",
        "Free some space on the disk that holds the engine's volumes (`docker system df` shows what uses it), "
        "then restore again.",
    )


def check_restore(
    docker_host: engine.EngineAddress,
    archive: Path,
    wrote_it: str,
    image: str,
    volume: str | None,
    labels: dict[str, str],
    stack_dir: Path,
) -> tuple[ArchiveScan, Probe]:
    """Refuse a backup that ``image`` cannot open (newer data) or that the volume has no room to unpack."""
    scan = scan_archive(archive)
    found = probe(docker_host, image, labels, volume)
    newer = found.unknown(scan.revisions)
    if newer:
        raise newer_data_error(
            newer,
            image,
            f"backup {archive.name}",
            f"Restore it with the Open WebUI that wrote it: `deploykit upgrade --dir {stack_dir} --image "
            f"open-webui={wrote_it} --restore {archive}` (the current data is backed up first).",
        )
    need = scan.disk_bytes + MiB  # a little slack for what Open WebUI writes meanwhile
    short_of_files = found.free_files is not None and found.free_files < scan.files
    if volume is not None and ((found.free_bytes is not None and found.free_bytes < need) or short_of_files):
        raise volume_full_error(
            volume, archive, scan, found, need, "nothing was changed and Open WebUI was not stopped."
        )
    return scan, found
