"""Time to the first chat answered through Open WebUI, from a stack whose images are present.

    python benchmarks/readiness.py [--runs N] [--write]

Side by side, each from nothing running and a fresh data volume, on the same rendered files:

- ``deploykit up``: Open WebUI started beside the inference server, readiness polled from 50 ms backing off
  to 0.25 s, then admin sign-up, the model in Open WebUI's list, and one chat through Open WebUI;
- ``docker compose up --wait`` on the same compose.yaml, then the same admin/model/chat stages;
- the same with Open WebUI held back until the inference healthcheck passes (``service_healthy``, what
  deploykit rendered before): the serial baseline;
- Open WebUI's own cold start alone: its container, a fresh volume, to ``/health``.

Target: ``deploykit up`` ≤ 1.2 × Open WebUI's own cold start. Runs are interleaved so a busy machine
slows every variant alike. Needs the offline images (build/images.env) and the SmolLM2 GGUF.
Ports 19862-19865; everything is labelled ``org.deploykit.stack=deploykit-pf-bench-*`` and removed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import yaml

from deploykit.running.stack import LoadedStack, load_stack
from deploykit.running.stages import StageResult, UpReport, health_stages, run_stages
from deploykit.seams import health
from deploykit.values.paths import model_cache

ROOT = Path(__file__).resolve().parents[1]
GGUF = model_cache() / "SmolLM2-135M-Instruct.Q4_1.gguf"
WEBUI_PORT, INFERENCE_PORT, ALONE_PORT = 19862, 19863, 19864
RESULTS = ROOT / "docs" / "benchmarks.md"


def images() -> dict[str, str]:
    lines = (ROOT / "build" / "images.env").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line)


def run(*args: str, env: dict[str, str] | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, check=check, env={**os.environ, **(env or {})})


class Quiet:
    def stage(self, name: str) -> None: ...
    def tick(self, elapsed: float, detail: str) -> None: ...
    def done(self, result: StageResult) -> None: ...
    def note(self, text: str) -> None: ...


ENV = {"DEPLOYKIT_WEBUI_PORT": str(WEBUI_PORT), "DEPLOYKIT_INFERENCE_PORT": str(INFERENCE_PORT)}


def deploykit(*args: str) -> subprocess.CompletedProcess[str]:
    return run(sys.executable, "-m", "deploykit", *args, env=ENV, check=False)


def stack_args(imgs: dict[str, str], stack_dir: Path) -> list[str]:
    return [
        "--profile", "cpu", "--model", "smollm2-135m-instruct", "--model-file", str(GGUF),
        "--image", f"inference={imgs['LLAMACPP_IMAGE']}", "--image", f"open-webui={imgs['OPENWEBUI_IMAGE']}",
        "--dir", str(stack_dir),
    ]  # fmt: skip


def remove(stack_dir: Path) -> None:
    deploykit("down", "--dir", str(stack_dir), "--volumes", "--yes")


def time_up(imgs: dict[str, str], stack_dir: Path) -> float:
    started = time.monotonic()
    result = deploykit("up", *stack_args(imgs, stack_dir), "--json")
    seconds = time.monotonic() - started
    if result.returncode != 0:
        raise SystemExit(f"deploykit up failed:\n{result.stderr[-3000:]}")
    stages = json.loads(result.stdout)["stages"]
    print("  deploykit up stages (s from its start): " + ", ".join(f"{s['name']} {s['at']}" for s in stages))
    return seconds


def chat_stages(stack: LoadedStack, budget: float) -> None:
    """The stages after the servers are up (admin, model in Open WebUI, chat): the same for every variant."""
    key = stack.secrets["INFERENCE_API_KEY"]
    with health.http_client(stack.inference_url, key) as inference, health.http_client(stack.webui_url) as ui:
        stages = health_stages(stack, inference, ui, UpReport("", "", False))
        run_stages(stages, budget, Quiet())


def time_compose_wait(stack_dir: Path, serial: bool) -> float:
    compose = stack_dir / "compose.yaml"
    if serial:
        # The serial start in a file of its own beside the stack: deploykit's compose.yaml stays as it
        # wrote it (a hand edit there would stop the next `deploykit up`).
        serial_file = stack_dir.parent / "compose.serial.yaml"
        doc = yaml.safe_load(compose.read_text())
        doc["services"]["open-webui"]["depends_on"] = {"inference": {"condition": "service_healthy"}}
        serial_file.write_text(yaml.safe_dump(doc))
        compose = serial_file
    stack = load_stack(stack_dir)
    started = time.monotonic()
    run("docker", "compose", "--project-directory", str(stack_dir), "-f", str(compose), "-p", stack.spec.project,
        "up", "--detach", "--wait")  # fmt: skip
    chat_stages(stack, 600)
    return time.monotonic() - started


def time_webui_alone(imgs: dict[str, str]) -> float:
    name = "deploykit-pf-bench-webui-alone"
    label = f"org.deploykit.stack={name}"
    run("docker", "rm", "-f", name, check=False)
    run("docker", "volume", "rm", "-f", name, check=False)
    run("docker", "volume", "create", "--label", label, name)
    started = time.monotonic()
    run("docker", "run", "-d", "--name", name, "--label", label, "-p", f"127.0.0.1:{ALONE_PORT}:8080",
        "-v", f"{name}:/app/backend/data", "-e", "WEBUI_SECRET_KEY=bench", "-e", "ENABLE_OLLAMA_API=false",
        "-e", "OPENAI_API_BASE_URL=http://127.0.0.1:9/v1", imgs["OPENWEBUI_IMAGE"])  # fmt: skip
    with httpx.Client(base_url=f"http://127.0.0.1:{ALONE_PORT}", timeout=5, trust_env=False) as client:
        ok, _, detail = health.wait_until(lambda: health.probe_webui_health(client), 600)
    seconds = time.monotonic() - started
    run("docker", "rm", "-f", name, check=False)
    run("docker", "volume", "rm", "-f", name, check=False)
    if not ok:
        raise SystemExit(f"Open WebUI alone did not start: {detail}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--write", action="store_true", help=f"append the table to {RESULTS}")
    opts = parser.parse_args()
    imgs = images()
    work = Path(tempfile.mkdtemp(prefix="deploykit-pf-bench-"))
    stack_dir = work / "pf-bench"
    times: dict[str, list[float]] = {"deploykit up": [], "compose up --wait": [], "compose, serial": [],
                                     "Open WebUI alone": []}  # fmt: skip
    try:
        for i in range(opts.runs):
            times["Open WebUI alone"].append(time_webui_alone(imgs))
            times["deploykit up"].append(time_up(imgs, stack_dir))
            remove(stack_dir)
            times["compose up --wait"].append(time_compose_wait(stack_dir, serial=False))
            remove(stack_dir)
            times["compose, serial"].append(time_compose_wait(stack_dir, serial=True))
            remove(stack_dir)
            print(f"run {i + 1}: " + ", ".join(f"{k} {v[-1]:.1f} s" for k, v in times.items()), flush=True)
    finally:
        remove(stack_dir)
        shutil.rmtree(work, ignore_errors=True)
    alone = statistics.median(times["Open WebUI alone"])
    # Two views of the ratio: of the medians, and the median of each run's own ratio (its variants ran
    # back to back, so a slow spell of the machine hits both sides of that run's ratio).
    rows = [
        f"| {name} | {statistics.median(v):.1f} | {', '.join(f'{x:.1f}' for x in v)} | "
        f"{statistics.median(v) / alone:.2f} × | "
        f"{statistics.median(x / a for x, a in zip(v, times['Open WebUI alone'], strict=True)):.2f} × |"
        for name, v in times.items()
    ]
    table = "\n".join(
        [
            "| to the first chat through Open WebUI | median s | runs | × Open WebUI alone | run by run, median |",
            "|---|---|---|---|---|",
            *rows,
        ]
    )
    print(table)
    if opts.write:
        machine = f"{platform.node()}: {os.cpu_count()} CPUs, {platform.machine()}"
        when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
        with RESULTS.open("a", encoding="utf-8") as fh:
            fh.write(
                f"\n### Readiness ({when})\n\nMachine: {machine}. Command: `python benchmarks/readiness.py "
                f"--runs {opts.runs} --write`. Open WebUI alone is its cold start to /health (it answers no chat "
                f"without a server).\n\n{table}\n"
            )


if __name__ == "__main__":
    main()
