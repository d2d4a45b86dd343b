"""Byte units, and bytes written for a person: one place for GiB and MiB."""

from __future__ import annotations

MiB = 1024**2
GiB = 1024**3


def gib(n: float) -> str:
    """Bytes for a person: GiB with one decimal, or MiB below one GiB."""
    return f"{n / GiB:.1f} GiB" if abs(n) >= GiB else f"{n / MiB:.0f} MiB"
