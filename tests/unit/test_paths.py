"""The model cache's default folder is one rule (deploykit/values/paths.py): the settings, the script the Makefile
and the provisioning scripts run, and those callers all give the same folder."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from deploykit.config.settings import load_settings
from deploykit.values.paths import model_cache
from tests.unit.conftest import ROOT

ENVS = {
    "nothing set": {},
    "XDG_CACHE_HOME": {"XDG_CACHE_HOME": "/xdg/cache"},
    "DEPLOYKIT_MODEL_CACHE": {"DEPLOYKIT_MODEL_CACHE": "/srv/models"},
    "both": {"XDG_CACHE_HOME": "/xdg/cache", "DEPLOYKIT_MODEL_CACHE": "/srv/models"},
    "empty ones are unset": {"XDG_CACHE_HOME": "", "DEPLOYKIT_MODEL_CACHE": ""},
}
EXPECTED = {
    "nothing set": "HOME/.cache/deploykit/models",
    "XDG_CACHE_HOME": "/xdg/cache/deploykit/models",
    "DEPLOYKIT_MODEL_CACHE": "/srv/models",
    "both": "/srv/models",
    "empty ones are unset": "HOME/.cache/deploykit/models",
}


def _environ(tmp_path: Path, case: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if k not in ("XDG_CACHE_HOME", "DEPLOYKIT_MODEL_CACHE")}
    return base | {"HOME": str(tmp_path)} | ENVS[case]


def _run(args: list[str], env: dict[str, str]) -> str:
    done = subprocess.run(args, env=env, cwd=ROOT, capture_output=True, text=True, check=True)
    return done.stdout.strip()


@pytest.mark.parametrize("case", ENVS)
def test_the_script_and_the_function_agree(case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env = _environ(tmp_path, case)
    monkeypatch.setattr(os, "environ", env)
    expected = EXPECTED[case].replace("HOME", str(tmp_path))
    assert str(model_cache()) == expected
    # -I: no site-packages and not this venv's deploykit, as the system python3 runs it before `make venv`.
    assert _run([sys.executable, "-I", "deploykit/values/paths.py", "model-cache"], env) == expected
    assert _run(["bash", "-c", '. scripts/provision/lib.sh && model_cache'], env) == expected
    if ENVS[case].get("DEPLOYKIT_MODEL_CACHE") != "":  # an empty variable is refused by the settings
        assert load_settings().model_cache == Path(expected)


@pytest.mark.parametrize("case", ENVS)
def test_the_makefile_asks_the_script(case: str, tmp_path: Path) -> None:
    make = shutil.which("make")
    if make is None:
        pytest.skip("make is not installed")
    env = _environ(tmp_path, case) | {"PYTHON": sys.executable}
    expected = EXPECTED[case].replace("HOME", str(tmp_path))
    show = ["--eval", "show-cache: ; @echo $(MODEL_CACHE)", "show-cache"]
    assert _run([make, "-s", "-f", "Makefile", *show], env) == expected
    # A make variable given on the command line counts as the environment variable does.
    assert _run([make, "-s", "-f", "Makefile", "DEPLOYKIT_MODEL_CACHE=/arg/models", *show], env) == "/arg/models"


def test_the_script_says_how_to_use_it() -> None:
    done = subprocess.run(
        [sys.executable, "-I", "deploykit/values/paths.py"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert done.returncode == 2 and "usage: python3 deploykit/values/paths.py model-cache" in done.stderr
