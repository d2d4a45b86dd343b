"""Seconds to check HumanEval's 164 canonical solutions in the code sandbox, against one container per check.

    python benchmarks/sandbox_checks.py [--image REF] [--naive N]

Side by side, on the engine DOCKER_HOST names (the local one by default), in the Open WebUI image from
build/images.env:

- ``check_programs`` as ``deploykit eval`` runs it: batches of up to 50 programs per container, each program in
  its own process in the container;
- the naive baseline: one container per program, timed on the first ``--naive`` problems and scaled to 164.

Every container is labelled ``org.deploykit.stack=deploykit-e2e-evs-bench`` and removed.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

from deploykit.quality.humaneval import check_program, humaneval_problems
from deploykit.running.sandbox import CodeCheck, check_programs
from deploykit.seams.engine import EngineAddress, engine_cpus

PROJECT = "deploykit-e2e-evs-bench"
IMAGES_ENV = Path(__file__).resolve().parents[1] / "build" / "images.env"


def default_image() -> str:
    pairs = (line.split("=", 1) for line in IMAGES_ENV.read_text().splitlines() if "=" in line)
    return dict(pairs)["OPENWEBUI_IMAGE"].strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", default=None)
    parser.add_argument("--naive", type=int, default=10, help="problems checked one container each")
    args = parser.parse_args()
    image = args.image or default_image()
    engine = EngineAddress()
    checks = [CodeCheck(p.task_id, check_program(p, p.canonical_solution)) for p in humaneval_problems()]

    start = time.monotonic()
    outcomes = check_programs(engine, image, checks, project=PROJECT)
    batched = time.monotonic() - start
    passed = sum(o.passed for o in outcomes)

    start = time.monotonic()
    for check in checks[: args.naive]:
        check_programs(engine, image, [check], project=PROJECT)
    naive = (time.monotonic() - start) / args.naive * len(checks)

    print(f"engine: {engine_cpus(engine)} CPUs; host {platform.node()}; image {image}")
    print(f"{'variant':<34} {'seconds':>8} {'ms/check':>9} passed")
    print(f"{'batched (check_programs)':<34} {batched:8.1f} {batched / len(checks) * 1000:9.0f} {passed}/{len(checks)}")
    print(f"{'one container per check (scaled)':<34} {naive:8.1f} {naive / len(checks) * 1000:9.0f}")


if __name__ == "__main__":
    main()
