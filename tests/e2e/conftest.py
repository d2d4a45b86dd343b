"""The end-to-end harness: a real Docker Engine, the offline images, the real SmolLM2 model.

`make test` provisions all of it first (scripts/provision). Here the suite finds what was built in
build/images.env. Without an engine: skip locally, but FAIL under CI=true — never a silent skip.
Everything the tests start is labelled ``org.deploykit.stack=deploykit-e2e-*`` and removed by label.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from deploykit.values.paths import model_cache

ROOT = Path(__file__).resolve().parents[2]
IMAGES_ENV = ROOT / "build" / "images.env"
ARTIFACTS = ROOT / "test-artifacts"
# Read at import, before the unit suite's fixtures point XDG_CACHE_HOME at a temp dir.
MODEL_CACHE = model_cache()
GGUF = MODEL_CACHE / "SmolLM2-135M-Instruct.Q4_1.gguf"
FP16_DIR = MODEL_CACHE / "smollm2-135m-instruct-fp16"
MODEL_ID = "smollm2-135m-instruct"


def need(condition: bool, why: str) -> None:
    if condition:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"e2e prerequisite missing under CI: {why} (make provision should have set it up)")
    pytest.skip(why)


def images() -> dict[str, str]:
    if not IMAGES_ENV.is_file():
        return {}
    pairs = (line.split("=", 1) for line in IMAGES_ENV.read_text().splitlines() if "=" in line)
    return {k.strip(): v.strip() for k, v in pairs}


@dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def json(self) -> object:
        return json.loads(self.out)


def deploykit(*args: str, env: dict[str, str] | None = None, timeout: float = 900) -> Result:
    """The real CLI in a subprocess, as a user runs it."""
    full_env = dict(os.environ) | (env or {})
    cp = subprocess.run(
        [sys.executable, "-m", "deploykit", *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
        check=False,
        cwd=ROOT,
    )
    return Result(cp.returncode, cp.stdout, cp.stderr)


def docker(*args: str) -> str:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=False).stdout


def remove_by_label(label: str) -> None:
    ids = docker("ps", "-aq", "--filter", f"label={label}").split()
    if ids:
        docker("rm", "-f", *ids)
    vols = docker("volume", "ls", "-q", "--filter", f"label={label}").split()
    if vols:
        docker("volume", "rm", "-f", *vols)
    nets = docker("network", "ls", "-q", "--filter", f"label=com.docker.compose.project={label.split('=')[-1]}").split()
    if nets:
        docker("network", "rm", *nets)


@pytest.fixture(scope="session")
def engine() -> dict[str, str]:
    ok = subprocess.run(["docker", "info"], capture_output=True, check=False).returncode == 0
    need(ok, "no Docker Engine is reachable")
    built = images()
    need({"LLAMACPP_IMAGE", "OPENWEBUI_IMAGE"} <= built.keys(), f"offline images not built ({IMAGES_ENV})")
    need(GGUF.is_file(), f"model {GGUF} missing")
    return built


@dataclass
class Stack:
    dir: Path
    project: str
    env: dict[str, str]
    webui_port: int
    inference_port: int
    up_result: Result | None = None

    def up(self, images: dict[str, str], *args: str, backend_image: str = "LLAMACPP_IMAGE") -> Result:
        """`deploykit up` for this stack with the offline images; ``args`` name the profile and model."""
        return deploykit(
            "up", *args,
            "--image", f"inference={images[backend_image]}", "--image", f"open-webui={images['OPENWEBUI_IMAGE']}",
            "--dir", str(self.dir), env=self.env, timeout=1200,
        )  # fmt: skip

    def remove(self) -> None:
        deploykit("down", "--dir", str(self.dir), "--volumes", "--yes", env=self.env)
        remove_by_label(f"org.deploykit.stack={self.project}")


def secrets(stack: Stack) -> dict[str, str]:
    out = {}
    for line in (stack.dir / ".env").read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            out[key] = value.strip("'")
    return out


def webui_token(stack: Stack) -> str:
    s = secrets(stack)
    r = httpx.post(
        f"http://127.0.0.1:{stack.webui_port}/api/v1/auths/signin",
        json={"email": s["DEPLOYKIT_ADMIN_EMAIL"], "password": s["DEPLOYKIT_ADMIN_PASSWORD"]},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    return str(r.json()["token"])


def container_ids(stack: Stack) -> dict[str, str]:
    out = docker(
        "ps", "--filter", f"label=com.docker.compose.project={stack.project}", "--format", "{{.Names}} {{.ID}}"
    )
    return dict(line.split() for line in out.splitlines())


@contextmanager
def running(stack: Stack, images: dict[str, str], *args: str, backend_image: str = "LLAMACPP_IMAGE") -> Iterator[Stack]:
    """``stack`` up (``args`` name the profile and model) for a fixture's lifetime, then removed, also when
    `up` failed: nothing of ours is left on the shared engine."""
    remove_by_label(f"org.deploykit.stack={stack.project}")
    try:
        stack.up_result = stack.up(images, *args, backend_image=backend_image)
        assert stack.up_result.code == 0, stack.up_result.err
        yield stack
    finally:
        stack.remove()


def make_stack(tmp: Path, name: str, webui_port: int, inference_port: int) -> Stack:
    env = {
        "DEPLOYKIT_WEBUI_PORT": str(webui_port),
        "DEPLOYKIT_INFERENCE_PORT": str(inference_port),
        "DEPLOYKIT_MODEL_CACHE": str(MODEL_CACHE),
    }
    return Stack(tmp / name, f"deploykit-{name}", env, webui_port, inference_port)


@pytest.fixture(scope="session")
def llama_stack(engine: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = make_stack(tmp_path_factory.mktemp("stacks"), "e2e-llama", 17860, 17861)
    with running(stack, engine, "--profile", "cpu", "--model", MODEL_ID, "--model-file", str(GGUF), "--json"):
        yield stack


@pytest.fixture(autouse=True)
def _real_home_for_e2e(monkeypatch: pytest.MonkeyPatch) -> None:
    # The unit suite isolates XDG dirs; e2e subprocesses get the model cache explicitly instead.
    monkeypatch.setenv("DEPLOYKIT_MODEL_CACHE", str(MODEL_CACHE))


# Tests that change the engine itself run after every compose stack test: on Docker 20.10 turning Swarm
# mode on or off can leave compose networks' embedded DNS answering NXDOMAIN for a while (moby#45144),
# which would fail an unrelated stack's Open WebUI → inference lookups.
ENGINE_CHANGING = ("test_swarm_stack.py",)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: ENGINE_CHANGING.index(item.path.name) + 1 if item.path.name in ENGINE_CHANGING else 0)
