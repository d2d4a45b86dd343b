"""Documents from text: JSON and TOML parsed with one sentence for what is wrong, deep nesting included.

Pure (no files): the seams read the bytes (deploykit.seams.textfile), these turn the text into data.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

from deploykit.values.errors import DeployKitError, UsageError


def too_deep(path: Path, what: str, hint: str, error: type[DeployKitError] = UsageError) -> DeployKitError:
    return error(f"{what} {path} is nested too deeply to read (thousands of levels of brackets or tables).", hint)


def load_json(text: str, path: Path, what: str, hint: str, error: type[DeployKitError] = UsageError) -> Any:
    """JSON from ``text``; not JSON or nested beyond Python's stack: ``error`` naming the line."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise error(f"{what} {path} is not JSON ({exc.msg} at line {exc.lineno}).", hint) from None
    except RecursionError:
        raise too_deep(path, what, hint, error) from None


def load_toml(text: str, path: Path, what: str, hint: str, error: type[DeployKitError] = UsageError) -> dict[str, Any]:
    """TOML from ``text``; not TOML or nested beyond Python's stack: ``error`` naming the line."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise error(f"{what} {path} is not valid TOML: {exc}.", hint) from None
    except RecursionError:
        raise too_deep(path, what, hint, error) from None
