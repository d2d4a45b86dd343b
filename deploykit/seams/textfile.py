"""Files a user pointed at: read as text with errors that name the file instead of a traceback, or hashed."""

from __future__ import annotations

import hashlib
from pathlib import Path

from deploykit.values.errors import DeployKitError, UsageError


def read_text(path: Path, what: str, hint: str, error: type[DeployKitError] = UsageError) -> str:
    """The UTF-8 text of ``path``; ``what`` names it in messages ("host file", "profiles file" …)."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise error(f"cannot read {what} {path}: {exc.strerror}.", hint) from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise error(f"{what} {path} is not UTF-8 text (line {line}).", hint) from None


def sha256_of(path: Path) -> str:
    """The hex SHA-256 of a file's bytes, read in 1 MiB blocks (model files run to many GiB)."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
