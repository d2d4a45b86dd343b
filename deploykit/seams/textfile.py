"""Files a user pointed at: read as text with errors that name the file instead of a traceback, or hashed.

One reader for every file deploykit takes from a user (inventories, settings, host and profiles files,
templates, overrides, TLS material, model configs, backup manifests): a regular file only — its type is
checked with ``stat`` before it is opened and with ``fstat`` after (opened non-blocking), so a named pipe
or a device never blocks the command —, at most ``limit`` bytes, strict UTF-8 with the line of the first
bad byte. ``load_json``/``load_toml`` parse such text and say "nested too deeply" where Python's parsers
would run out of stack.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

from deploykit.values.errors import DeployKitError, UsageError

# Inventories, settings, templates and manifests are kilobytes; a fleet of thousands of hosts a few MiB.
MAX_TEXT_BYTES = 16 * 1024 * 1024


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a named pipe"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file"


def _size(n: int) -> str:
    return f"{n / 1024**2:.1f} MiB" if n >= 1024**2 else f"{n} bytes"


def read_bytes(
    path: Path,
    what: str,
    hint: str,
    error: type[DeployKitError] = UsageError,
    limit: int = MAX_TEXT_BYTES,
    missing: type[DeployKitError] | None = None,
) -> bytes:
    """The bytes of the regular file ``path`` (links followed), at most ``limit`` of them; else ``error``
    (``missing`` when there is no such file, if given)."""
    try:
        before = path.stat()
    except OSError as exc:
        kind = missing if missing is not None and isinstance(exc, FileNotFoundError) else error
        raise kind(f"cannot read {what} {path}: {exc.strerror}.", hint) from None
    if not stat.S_ISREG(before.st_mode):
        raise error(f"{what} {path} is {_kind(before.st_mode)}, not a regular file.", hint)
    if before.st_size > limit:
        raise error(f"{what} {path} is {_size(before.st_size)}; deploykit reads at most {_size(limit)} of it.", hint)
    try:
        # Non-blocking, so a file swapped for a pipe between the stat and the open cannot hang us either.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        raise error(f"cannot read {what} {path}: {exc.strerror}.", hint) from None
    try:
        now = os.fstat(fd)
        if not stat.S_ISREG(now.st_mode):
            raise error(f"{what} {path} is {_kind(now.st_mode)}, not a regular file.", hint)
        chunks: list[bytes] = []
        got = 0
        while got <= limit:
            block = os.read(fd, min(1 << 20, limit + 1 - got))
            if not block:
                break
            chunks.append(block)
            got += len(block)
    except OSError as exc:
        raise error(f"cannot read {what} {path}: {exc.strerror}.", hint) from None
    finally:
        os.close(fd)
    if got > limit:
        raise error(f"{what} {path} is larger than the {_size(limit)} deploykit reads of it.", hint)
    return b"".join(chunks)


def decode(raw: bytes, path: Path, what: str, hint: str, error: type[DeployKitError] = UsageError) -> str:
    """``raw`` as strict UTF-8; the error names the line of the first byte that is not."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise error(f"{what} {path} is not UTF-8 text (line {line}).", hint) from None


def read_text(
    path: Path,
    what: str,
    hint: str,
    error: type[DeployKitError] = UsageError,
    limit: int = MAX_TEXT_BYTES,
    missing: type[DeployKitError] | None = None,
) -> str:
    """The UTF-8 text of ``path``; ``what`` names it in messages ("host file", "profiles file" …)."""
    return decode(read_bytes(path, what, hint, error, limit, missing), path, what, hint, error)


def check_writable(
    path: Path, what: str, hint: str, error: type[DeployKitError] = UsageError, follow: bool = True
) -> None:
    """A file deploykit is about to write: absent or a regular file. A named pipe would block the write, a
    device would take it; without ``follow`` a symbolic link is refused too (it would be written through)."""
    try:
        mode = (path.stat() if follow else path.lstat()).st_mode
    except FileNotFoundError:
        return
    except OSError as exc:
        raise error(f"cannot write {what} {path}: {exc.strerror}.", hint) from None
    if stat.S_ISLNK(mode):
        raise error(f"{what} {path} is a symbolic link; deploykit does not write through it.", hint)
    if not stat.S_ISREG(mode):
        raise error(f"{what} {path} is {_kind(mode)}, not a regular file.", hint)


def sha256_of(path: Path) -> str:
    """The hex SHA-256 of a file's bytes, read in 1 MiB blocks (model files run to many GiB)."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
