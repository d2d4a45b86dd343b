"""The planner's memory estimate against what the running inference container really uses.

    python benchmarks/memory_estimate.py STACK_DIR [STACK_DIR ...]

For each running stack: the naive baseline (weights only, what most "will it fit" tables print), the
planner's total (weights + KV cache + overhead), and the container's measured memory (its processes' RSS
summed, as `deploykit status` counts it, after a prompt that fills most of the context). Target: the
planner never below the measurement (a plan that "fits" must run) and within +25 % of it; the baseline shows how far off
the usual weights-only answer is.
"""

from __future__ import annotations

import json
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import docker
import httpx

from deploykit.seams.compose import processes_rss_bytes
from deploykit.values.units import MiB


def measured_bytes(project: str) -> int:
    client = docker.from_env()
    [container] = client.containers.list(
        filters={"label": [f"com.docker.compose.project={project}", "com.docker.compose.service=inference"]}
    )
    held = processes_rss_bytes(container.top(ps_args="-o pid,rss"))  # as `deploykit status` counts it
    if held is None:
        raise RuntimeError(f"the engine reports no memory for {project}'s inference container")
    return held


def warm_up(stack_dir: Path, plan: dict[str, Any]) -> None:
    env = dict(
        line.split("=", 1) for line in (stack_dir / ".env").read_text().splitlines() if "=" in line and line[0] != "#"
    )
    key = env["INFERENCE_API_KEY"].strip("'")
    filler = "The quick brown fox jumps over the lazy dog. " * int(plan["stack"]["plan"]["context_length"] * 0.07)

    def fill(slot: int) -> None:
        httpx.post(
            f"http://127.0.0.1:{plan['stack']['inference_port']}/v1/chat/completions",
            headers={"Authorization": f"Bearer {key}"},
            # A prompt that fills most of the context, so the KV cache pages are really touched.
            json={"model": plan["stack"]["plan"]["model_id"],
                  "messages": [{"role": "user", "content": f"{slot}: {filler}"}], "max_tokens": 16},
            timeout=600,
            trust_env=False,  # the stack's own loopback server: never through a proxy from the environment
        )

    # One such prompt per slot at once: the plan counts every slot's KV cache, and llama-server's pages
    # are only resident once a slot has used them.
    with ThreadPoolExecutor(plan["stack"]["plan"]["parallel"]) as pool:
        list(pool.map(fill, range(plan["stack"]["plan"]["parallel"])))


def main() -> None:
    print(f"{'stack':28} {'backend':14} {'naive MiB':>10} {'planner MiB':>12} {'measured MiB':>13} "
          f"{'naive err':>10} {'planner err':>12}")
    for arg in sys.argv[1:] or ["demo-stack"]:
        stack_dir = Path(arg)
        data = json.loads((stack_dir / "plan.json").read_text())
        plan = data["stack"]["plan"]
        warm_up(stack_dir, data)
        measured = measured_bytes(data["stack"]["project"])
        naive = plan["memory"]["weights_bytes"]
        estimate = plan["memory"]["total_bytes"]
        print(
            f"{stack_dir.name:28} {plan['backend'] + '/' + plan['device']:14} {naive / MiB:10.0f} "
            f"{estimate / MiB:12.0f} {measured / MiB:13.0f} {(naive - measured) / measured:+10.0%} "
            f"{(estimate - measured) / measured:+12.0%}"
        )
        verdict = "met" if measured <= estimate <= 1.25 * measured else "MISSED"
        print(f"{'':28} target: measured ≤ planner ≤ 1.25 × measured — {verdict}")


if __name__ == "__main__":
    main()
