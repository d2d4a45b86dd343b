"""A backup archive is data from elsewhere: every member vetted here before any of it reaches a volume.

The archive is read as a stream (``tarfile`` mode ``r|gz``: never whole into memory, never seeking), twice:
once to vet every member and count what will be sent, then again to send a clean, re-packed tar of
what passed to the restore helper. Only regular files and folders under ``data/`` pass; links, devices,
pipes, absolute or ``..`` paths are refused, naming them; modes lose setuid, setgid, sticky and
world-writable bits; each file and the whole are bounded in size. The second pass applies the same
rules and must produce exactly the bytes the first counted, so an archive changed in between is refused too.
"""

from __future__ import annotations

import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from deploykit.values.errors import UsageError

DATA_ROOT = "data"
MANIFEST_MEMBER = "deploykit-backup.json"
MAX_MANIFEST_BYTES = 64 * 1024
MAX_FILE_BYTES = 64 * 1024**3  # one file of Open WebUI's data (its SQLite database is the largest)
MAX_TOTAL_BYTES = 256 * 1024**3
MAX_MEMBERS = 1_000_000
SCRATCH = (".deploykit-restore", ".deploykit-old")  # restore's own folders inside the volume: never data
MODE_MASK = 0o775  # rwx for owner and group, r-x for others: no setuid/setgid/sticky, not world-writable
_BLOCK = tarfile.BLOCKSIZE
_SHOWN = 5  # refused members named in the message


@dataclass
class Vetted:
    """What the first pass found: what will be sent, and what was refused."""

    files: int = 0
    folders: int = 0
    data_bytes: int = 0
    masked: int = 0  # members whose mode lost setuid/setgid/sticky/world-writable bits
    tar_bytes: int = 2 * _BLOCK  # the clean tar's exact length: headers, padded data, the end blocks
    refused: list[str] = field(default_factory=list)


def _refusal(member: tarfile.TarInfo) -> str | None:
    """Why ``member`` may not reach the volume, in words; None when it may."""
    name = member.name
    parts = name.rstrip("/").split("/")
    if name.startswith("/"):
        return "an absolute path"
    if ".." in parts:
        return "a path with '..'"
    if parts[0] != DATA_ROOT or any(p in ("", ".") for p in parts):
        return f"outside {DATA_ROOT}/"
    if len(parts) > 1 and parts[1] in SCRATCH:
        return "restore's own scratch folder"
    if member.issym():
        return f"a symbolic link to {member.linkname[:60]!r}"
    if member.islnk():
        return f"a hard link to {member.linkname[:60]!r}"
    if member.ischr() or member.isblk():
        return "a device"
    if member.isfifo():
        return "a named pipe"
    if member.issparse():
        return "a sparse file"
    if not (member.isfile() or member.isdir()):
        return "not a regular file or folder"
    if member.size > MAX_FILE_BYTES:
        return f"{member.size / 1024**3:.1f} GiB, more than the {MAX_FILE_BYTES // 1024**3} GiB a file may have"
    return None


def _clean(member: tarfile.TarInfo) -> tarfile.TarInfo:
    """The header that is sent: the member's name, type, size, times and numeric owner; a masked mode."""
    info = tarfile.TarInfo(member.name)
    info.type = tarfile.DIRTYPE if member.isdir() else tarfile.REGTYPE
    info.size = member.size if member.isfile() else 0
    info.mode = member.mode & MODE_MASK
    info.mtime = member.mtime
    info.uid, info.gid = member.uid, member.gid
    return info


def _header(info: tarfile.TarInfo) -> bytes:
    return info.tobuf(format=tarfile.PAX_FORMAT, encoding="utf-8", errors="surrogateescape")


def _padded(size: int) -> int:
    return -(-size // _BLOCK) * _BLOCK


MAX_HEADER_BYTES = 1024 * 1024  # a pax or GNU long-name header: names and a few attributes


class _BoundedHeaders(tarfile.TarInfo):
    """tarfile reads a pax or GNU long-name header whole into memory: a gzip bomb there would be gigabytes."""

    def _proc_member(self, tarfile_: tarfile.TarFile) -> tarfile.TarInfo:
        extended = (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE, tarfile.GNUTYPE_LONGNAME,
                    tarfile.GNUTYPE_LONGLINK)  # fmt: skip
        if self.type in extended and self.size > MAX_HEADER_BYTES:
            raise tarfile.HeaderError(f"an extended header of {self.size:,} bytes")
        member: tarfile.TarInfo = super()._proc_member(tarfile_)  # type: ignore[misc]
        return member


def open_stream(path: Path) -> tarfile.TarFile:
    """The gzipped archive as a forward-only stream, its extended headers bounded."""
    return tarfile.open(path, mode="r|gz", tarinfo=_BoundedHeaders)


def _members(path: Path) -> Iterator[tuple[tarfile.TarFile, tarfile.TarInfo]]:
    """The archive's members after the manifest, streamed; a damaged archive is a UsageError."""
    try:
        with open_stream(path) as archive:
            for member in archive:
                if member.name != MANIFEST_MEMBER:
                    yield archive, member
    except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
        raise UsageError(
            f"backup {path} cannot be read to the end ({exc}); nothing was changed.", "Restore from another backup."
        ) from None


def vet(path: Path) -> Vetted:
    """The first pass: every member checked (see the module's rules), nothing extracted, nothing kept but counts."""
    found = Vetted()
    seen: set[str] = set()
    count = 0
    for _, member in _members(path):
        count += 1
        if count > MAX_MEMBERS:
            raise UsageError(
                f"backup {path} holds more than {MAX_MEMBERS:,} files and folders; nothing was changed.",
                "Restore from a backup deploykit made.",
            )
        problem = _refusal(member)
        if problem is not None and member.size > MAX_FILE_BYTES:
            # Its data would have to be read through to reach the next member: refuse it now.
            found.refused.append(f"{member.name[:120]!r} ({problem})")
            break
        name = member.name.rstrip("/")
        if problem is None and name in seen:
            problem = "a second member of the same name"
        seen.add(name)
        if problem is not None:
            found.refused.append(f"{member.name[:120]!r} ({problem})")
            continue
        found.files += member.isfile()
        found.folders += member.isdir()
        found.data_bytes += member.size if member.isfile() else 0
        found.masked += member.mode & MODE_MASK != member.mode & 0o7777
        found.tar_bytes += len(_header(_clean(member))) + _padded(member.size if member.isfile() else 0)
        if found.data_bytes > MAX_TOTAL_BYTES:
            raise UsageError(
                f"backup {path} unpacks to more than {MAX_TOTAL_BYTES // 1024**3} GiB; nothing was changed.",
                "Restore from a backup deploykit made.",
            )
    if found.refused:
        more = len(found.refused) - _SHOWN
        shown = ", ".join(found.refused[:_SHOWN]) + (f" and {more} more" if more > 0 else "")
        raise UsageError(
            f"backup {path} holds members deploykit will not restore: {shown}; nothing was changed.",
            "A deploykit backup holds only regular files and folders under data/: restore from one it made.",
        )
    if found.folders == 0 and found.files == 0:
        raise UsageError(
            f"backup {path} holds no {DATA_ROOT}/ folder; nothing was changed.", "Restore from another backup."
        )
    return found


def clean_tar(path: Path, expected: Vetted, chunk: int = 1 << 20) -> Iterator[bytes]:
    """The second pass: an uncompressed tar of the vetted members, re-packed, exactly ``expected.tar_bytes`` long.

    The same rules apply again, and not one byte more than the first pass counted is sent: an archive
    swapped or grown in between stops the stream (and with it the restore) before the helper starts."""
    changed = UsageError(f"backup {path} changed while it was being restored; nothing was changed.")
    room = expected.tar_bytes - 2 * _BLOCK

    def counted(block: bytes) -> bytes:
        nonlocal room
        room -= len(block)
        if room < 0:
            raise changed
        return block

    for archive, member in _members(path):
        if _refusal(member) is not None:
            raise changed
        yield counted(_header(_clean(member)))
        if not member.isfile():
            continue
        source: IO[bytes] | None = archive.extractfile(member)
        assert source is not None  # a regular file always has a reader
        left = member.size
        while left:
            data = source.read(min(chunk, left))
            if not data:
                raise UsageError(f"backup {path} ends inside {member.name!r}; nothing was changed.")
            left -= len(data)
            yield counted(data)
        yield counted(b"\0" * (_padded(member.size) - member.size))
    if room != 0:
        raise changed
    yield b"\0" * (2 * _BLOCK)


def nested_tar(name: str, body: Iterator[bytes], size: int) -> Iterator[bytes]:
    """A tar holding one file ``name`` whose ``size`` bytes are ``body``: what the engine's archive API takes."""
    info = tarfile.TarInfo(name)
    info.size, info.mode = size, 0o600
    yield info.tobuf(format=tarfile.PAX_FORMAT)
    yield from body
    yield b"\0" * (_padded(size) - size) + b"\0" * (2 * _BLOCK)
