"""A full disk, said as such: which disk, how much room is left, and that nothing was changed.

Every writer that can meet a full disk (the stack folder's staging, a backup's archive, a restore's
unpack into the data volume) turns ENOSPC/EDQUOT into one ``DiskFullError`` from here, after taking
away what it had half written.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from deploykit.values.errors import DiskFullError
from deploykit.values.units import MiB

# What tar and the other tools in a helper container print when a write fails for lack of room.
NO_SPACE_TEXT = ("No space left on device", "Disk quota exceeded")


def is_full(exc: BaseException) -> bool:
    """True for the OS errors that mean the disk (or the user's quota on it) has no room left."""
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def says_full(output: str) -> bool:
    """True when a tool's output (a helper container's) reports a full disk."""
    return any(text in output for text in NO_SPACE_TEXT)


def free_bytes(path: Path) -> int | None:
    """Bytes an unprivileged writer can still use on the disk holding ``path`` (or its nearest parent)."""
    for candidate in (path, *path.parents):
        try:
            st = os.statvfs(candidate)
        except OSError:
            continue
        return st.f_bavail * st.f_frsize
    return None


def mib(n: int | None) -> str:
    """A size for a person: KiB below one MiB, one decimal below ten."""
    if n is None:
        return "an unknown amount"
    if n < MiB:
        return f"{n // 1024} KiB"
    return f"{n / MiB:.1f} MiB" if n < 10 * MiB else f"{n // MiB} MiB"


def full_error(path: Path, outcome: str, hint: str | None = None) -> DiskFullError:
    """The error for a write into ``path`` that met a full disk; ``outcome`` says what was (not) changed."""
    return DiskFullError(
        f"the disk holding {path} is full ({mib(free_bytes(path))} free); {outcome}",
        hint or f"Free some space on the disk holding {path} (`df -h {path}` shows it) and run the command again.",
    )
