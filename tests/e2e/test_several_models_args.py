"""The llama.cpp router of a rendered several-models stack, run by the pinned llama-server itself — no model.

For each shape the stack is rendered with deploykit's library, `docker compose config` (with the stack's .env)
gives the router's command, and the provisioned llama-server image (build 11669, the release the CUDA image
pins) runs it with the stack folder's presets/ as /presets and no weights: the router must read the rendered models.ini,
list every routed model, and start a child llama-server for each model loaded at start with exactly that
model's section as flags; the child must get past argument parsing and stop at the missing model file. A
preset key llama-server does not know, or a value it cannot use, fails here (shown on a broken preset first).
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploykit.app.stack import StackRequest, render_stack
from deploykit.config.settings import load_settings
from tests.e2e.conftest import images, need, remove_by_label
from tests.e2e.test_gpu_args import compose_config

pytestmark = pytest.mark.e2e

PROJECT = "deploykit-e2e-mmp-router-args"
LABEL = f"org.deploykit.stack={PROJECT}"
R1_15B = "deepseek-r1-distill-qwen-1.5b"
QWEN_15B = "qwen2.5-1.5b-instruct"
SMOLLM = "smollm2-135m-instruct"
# llama-server's own words for a flag or value it refuses (common/arg.cpp), and the router's for a preset it
# cannot use ("failed to initialize router models: option 'x' not recognized in preset 'm'").
REFUSED = re.compile(
    r"error: invalid argument: .*|error while handling argument .*|error while handling environ.*"
    r"|failed to initialize router models: .*"
)
CHILD_EXIT = "instance name={name} exited with status"


@pytest.fixture(scope="module")
def image() -> Iterator[str]:
    ok = subprocess.run(["docker", "info"], capture_output=True, check=False).returncode == 0
    need(ok, "no Docker Engine is reachable")
    ref = images().get("LLAMACPP_IMAGE")
    need(ref is not None, "the llama.cpp image is not built (make provision)")
    assert ref is not None
    there = subprocess.run(["docker", "image", "inspect", ref], capture_output=True, check=False)
    need(there.returncode == 0, f"LLAMACPP_IMAGE={ref} is not in the engine (make provision builds it)")
    try:
        yield ref
    finally:
        remove_by_label(LABEL)


def render(folder: Path, profile: str, *models: str) -> tuple[Path, list[str]]:
    stack_dir = folder / "stack"
    render_stack(load_settings(models=tuple({"id": m} for m in models)), StackRequest(stack_dir, profile=profile))
    command = [str(word) for word in compose_config(stack_dir)["services"]["router"]["command"]]
    return stack_dir, command


def run_router(image: str, stack_dir: Path, command: list[str], names: list[str]) -> str:
    """The router with the rendered command and presets, until each named child has exited (no weights)."""
    started = subprocess.run(
        ["docker", "run", "-d", "--label", LABEL, "--network", "none", "-v", f"{stack_dir / 'presets'}:/presets:ro",
         image, *command],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    container = started.stdout.strip()
    try:
        deadline = time.monotonic() + 120  # a bound on the wait, not a timed assertion
        while True:
            # The state first, then the logs: a router that has exited has written all it will.
            state = subprocess.run(["docker", "inspect", "-f", "{{.State.Running}}", container],
                                   capture_output=True, text=True, check=False).stdout.strip()  # fmt: skip
            logs = subprocess.run(["docker", "logs", container], capture_output=True, text=True, check=False)
            out = logs.stdout + logs.stderr
            done = all(CHILD_EXIT.format(name=n) in out for n in names)
            if done or state != "true" or REFUSED.search(out) or time.monotonic() > deadline:
                return out
            time.sleep(1)
    finally:
        subprocess.run(["docker", "rm", "-f", container], capture_output=True, check=False)


def child_args(logs: str, name: str) -> list[str]:
    """The argv the router started a model's child with (it logs one word a line after 'with args:')."""
    block = logs.split(f"spawning server instance with name={name} ", 1)[1].split("with args:", 1)[1]
    words = []
    for line in block.splitlines()[1:]:
        found = re.search(r" load:   (\S.*)$", line)
        if not found:
            break
        words.append(found.group(1))
    return words


def section(preset: str, name: str) -> dict[str, str]:
    body = preset.split(f"[{name}]\n", 1)[1].split("\n\n", 1)[0]
    return dict(line.split(" = ", 1) for line in body.splitlines() if " = " in line)


@pytest.mark.parametrize(
    ("profile", "models", "at_start"),
    [
        ("cpu", (SMOLLM, QWEN_15B), (SMOLLM, QWEN_15B)),  # together: both loaded at start
        ("gtx1650", (R1_15B, QWEN_15B, SMOLLM), (R1_15B,)),  # on demand, GPU flags, SmolLM2 on vLLM beside
    ],
    ids=["cpu-together", "gtx1650-on-demand"],
)
def test_the_router_reads_the_rendered_presets_and_starts_each_model_with_its_flags(
    image: str, tmp_path: Path, profile: str, models: tuple[str, ...], at_start: tuple[str, ...]
) -> None:
    stack_dir, command = render(tmp_path, profile, *models)
    preset = (stack_dir / "presets" / "models.ini").read_text(encoding="utf-8")
    logs = run_router(image, stack_dir, command, list(at_start))
    assert not REFUSED.search(logs), logs[-4000:]
    routed = [m for m in models if f"[{m}]" in preset]
    assert f"Available models ({len(routed)}):" in logs, logs[-4000:]
    for name in at_start:
        args = child_args(logs, name)
        flags = dict(zip(args[1::2], args[2::2], strict=False))
        for key, value in section(preset, name).items():
            if key in ("load-on-startup", "model"):
                continue
            assert f"--{key}" in args, f"{name}: --{key} from the preset is not in the child's argv {args}"
            if value != "true":
                assert args[args.index(f"--{key}") + 1] == value, f"{name}: --{key}"
        assert flags.get("--alias") == name, "the section name is the id clients send"
        assert f"loading model '{section(preset, name)['model']}'" in logs, "past argument parsing, at the model"
        assert CHILD_EXIT.format(name=name) in logs
    for name in set(routed) - set(at_start):
        assert f"spawning server instance with name={name} " not in logs, f"{name} is loaded on demand only"


def test_a_preset_key_llama_server_does_not_know_is_refused(image: str, tmp_path: Path) -> None:
    # The check above can fail: a misspelt key in the rendered preset stops the router or its child.
    stack_dir, command = render(tmp_path, "cpu", SMOLLM, QWEN_15B)
    preset = stack_dir / "presets" / "models.ini"
    preset.write_text(preset.read_text(encoding="utf-8").replace("ubatch-size", "ubatch-sise"), encoding="utf-8")
    logs = run_router(image, stack_dir, command, [SMOLLM, QWEN_15B])
    refused = REFUSED.search(logs)
    assert refused is not None and "option 'ubatch-sise' not recognized in preset" in refused.group(0), logs[-3000:]
