"""Where deploykit keeps its files by default: the one rule, for Python and for shell.

Standard library only, and runnable as a script, so the Makefile and the provisioning scripts (which
run with the system's python3 before any virtual environment exists) ask it instead of spelling the
rule again::

    python3 deploykit/values/paths.py model-cache
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def config_dir() -> Path:
    """deploykit's config folder (config.toml, profiles.toml, the site CA): under $XDG_CONFIG_HOME, else ~/.config."""
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "deploykit"


def cache_dir() -> Path:
    """deploykit's cache folder: under $XDG_CACHE_HOME, else ~/.cache."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "deploykit"


def model_cache() -> Path:
    """Where models go: $DEPLOYKIT_MODEL_CACHE, else the cache folder's models/."""
    return Path(os.environ.get("DEPLOYKIT_MODEL_CACHE") or cache_dir() / "models")


def main(argv: list[str]) -> int:
    if argv != ["model-cache"]:
        print("usage: python3 deploykit/values/paths.py model-cache", file=sys.stderr)
        return 2
    print(model_cache())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
