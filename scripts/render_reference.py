"""Regenerate compose/<profile>/ for every built-in profile (``make reference``)."""

from __future__ import annotations

import shutil
from pathlib import Path

from deploykit.app.stack import reference_stack
from deploykit.catalog import builtin_profiles

ROOT = Path(__file__).resolve().parent.parent / "compose"


def main() -> None:
    names = [p.name for p in builtin_profiles()]
    for stale in ROOT.iterdir() if ROOT.is_dir() else ():
        if stale.is_dir() and stale.name not in names:
            shutil.rmtree(stale)
    for name in names:
        folder = ROOT / name
        folder.mkdir(parents=True, exist_ok=True)
        for file_name, text in reference_stack(name).items():
            (folder / file_name).write_text(text, encoding="utf-8")
        print(f"compose/{name}/")


if __name__ == "__main__":
    main()
