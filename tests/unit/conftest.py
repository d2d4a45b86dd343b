"""Helpers shared by the unit test files: the repository's paths, a rendered stack, and compose's view of it.

(The autouse isolation fixture for every test lives in tests/conftest.py.)
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from deploykit.app.stack import RenderResult, StackRequest, render_stack
from deploykit.config.settings import load_settings

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"
TINY_GGUF = FIXTURES / "gguf" / "tiny.gguf"
H200 = FIXTURES / "gpu" / "h200" / "detect.json"


def compose_v2() -> str | None:
    docker = shutil.which("docker")
    if docker is None:
        return None
    ok = subprocess.run([docker, "compose", "version"], capture_output=True, check=False).returncode == 0
    return docker if ok else None


def require_compose() -> str:
    docker = compose_v2()
    if docker is None:
        if os.environ.get("CI") == "true":
            pytest.fail("docker compose v2 is required in CI (make provision installs it)")
        pytest.skip("docker compose v2 not installed")
    return docker


def compose_config(stack_dir: Path) -> dict[str, Any]:
    """What `docker compose config` makes of the rendered file (it must accept it)."""
    docker = require_compose()
    out = subprocess.run(
        [docker, "compose", "-f", str(stack_dir / "compose.yaml"), "config", "--format", "json"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def render(tmp_path: Path, name: str = "stack", **kwargs: object) -> RenderResult:
    args: dict[str, object] = {
        "profile": "rtx3060",
        "host_file": None,
        "model_id": None,
        "model_path": None,
        "image_overrides": {},
    }
    args.update(kwargs)
    return render_stack(load_settings(), StackRequest(stack_dir=tmp_path / name, **args))  # type: ignore[arg-type]
