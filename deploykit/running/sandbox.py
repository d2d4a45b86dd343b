"""Checking untrusted code (a model's completions) in throw-away containers through the stack's engine.

Nothing here runs a completion on this machine. ``check_programs`` hands batches of programs to
``deploykit.seams.sandbox``, which runs ``sandbox_runner.py`` in a container of an image the engine already has
(the stack's Open WebUI image carries python3; nothing is pulled) with no network, a read-only root, a
non-root user, no capabilities, no new privileges, and limits on memory, processes, CPU and wall-clock time.
The runner checks each program in its own process, with its own rlimits, timeout and temporary folder, one at
a time, and reports one JSON line per check.
"""

from __future__ import annotations

import dataclasses
import json
import math
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING

from deploykit.seams import sandbox
from deploykit.values.services import WEBUI

if TYPE_CHECKING:
    from deploykit.running.stack import LoadedStack
    from deploykit.seams.engine import EngineAddress


PYTHON = "python3"  # on the image's PATH (Open WebUI's own interpreter)
# Each check is one argument of the runner's command line: Linux takes 128 KiB per argument, 2 MiB in all.
MAX_PROGRAM_BYTES = 96 << 10
MAX_BATCH_BYTES = 1 << 20
MAX_BATCH_CHECKS = 50
MAX_PARALLEL = 4  # containers at once, each checking its batch one program at a time
# What each check's process may use (its own rlimits, set by the runner)...
CHECK_LIMITS: dict[str, int] = {"output_kib": 64, "memory_mb": 512, "fsize_kib": 1024, "nproc": 32}
# ... and each container, whatever runs in it (cgroup limits); its wall-clock bound is the sum of its checks'.
CONTAINER_LIMITS = sandbox.SandboxLimits(memory_mb=1024, pids=128, cpus=1.0, tmpfs_mb=64)
STARTUP_S = 30  # the container's start and the runner's own per-check work, on top of the checks' timeouts


@dataclass(frozen=True)
class CodeCheck:
    """One program to run: it passes when it exits cleanly within ``timeout_s`` seconds."""

    key: str  # the caller's name for it, e.g. "HumanEval/0#3"; outcomes carry it back
    program: str  # e.g. quality.humaneval.check_program(problem, completion)
    timeout_s: float = 10.0


@dataclass(frozen=True)
class CheckOutcome:
    """What became of one check. ``reason`` is "passed", or why not: "failed: AssertionError…",
    "timed out after 10 s", "crashed: …", "output over 64 KiB", "sandbox refused: …"."""

    key: str
    passed: bool
    reason: str


def sandbox_image(stack: LoadedStack) -> str:
    """The image checks run in: the stack's own Open WebUI image (python3, already on its engine)."""
    return stack.spec.images[WEBUI]


def check_programs(
    docker_host: EngineAddress,
    image: str,
    checks: Sequence[CodeCheck],
    *,
    project: str,
    progress: Callable[[int, int], None] | None = None,
    on_outcome: Callable[[CheckOutcome], None] | None = None,
) -> list[CheckOutcome]:
    """One outcome per check, in the order given. ``project`` labels the containers
    (``org.deploykit.stack``) as the stack's own. As each check finishes (in the order the containers finish
    them, possibly from several threads, one call at a time) ``on_outcome(outcome)`` is called, so a caller
    can keep it at once, then ``progress(done, total)``.

    A timeout, a crash or the sandbox refusing a program is that check's failed outcome, never an exception;
    an engine that cannot be reached, or that lacks ``image``, raises EngineError before anything runs.
    Every container is removed, whatever happens.
    """
    from deploykit.seams.engine import engine_cpus

    outcomes: dict[str, CheckOutcome] = {}
    runnable = []
    for check in checks:
        size = len(check.program.encode("utf-8"))
        if size > MAX_PROGRAM_BYTES:
            refused = f"sandbox refused: the program is {size:,} bytes; a check may be {MAX_PROGRAM_BYTES >> 10} KiB"
            outcomes[check.key] = CheckOutcome(check.key, False, refused)
        else:
            runnable.append(check)
    tally = _Tally(len(checks), progress, on_outcome)
    for outcome in outcomes.values():
        tally.add(outcome)
    batches = list(_batches(runnable))
    labels = {"org.deploykit.managed": "true", "org.deploykit.stack": project}
    runner = resources.files("deploykit.running").joinpath("sandbox_runner.py").read_text(encoding="utf-8")
    workers = max(1, min(MAX_PARALLEL, len(batches), engine_cpus(docker_host) - 1)) if batches else 1
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for batch_outcomes in pool.map(lambda b: _check_batch(docker_host, image, runner, b, labels, tally), batches):
            for outcome in batch_outcomes:
                outcomes[outcome.key] = outcome
                tally.add(outcome)  # those the runner did not report as it went
    return [outcomes[check.key] for check in checks]


class _Tally:
    """Outcomes as they arrive from every batch's container: each counted once, in progress and on_outcome."""

    def __init__(
        self,
        total: int,
        progress: Callable[[int, int], None] | None,
        on_outcome: Callable[[CheckOutcome], None] | None,
    ) -> None:
        self.total = total
        self.progress = progress
        self.on_outcome = on_outcome
        self.seen: set[str] = set()
        self.lock = threading.Lock()

    def add(self, outcome: CheckOutcome) -> None:
        with self.lock:
            if outcome.key in self.seen:
                return
            self.seen.add(outcome.key)
            if self.on_outcome is not None:
                self.on_outcome(outcome)
            if self.progress is not None:
                self.progress(len(self.seen), self.total)


def _batches(checks: Sequence[CodeCheck]) -> Iterator[list[CodeCheck]]:
    batch: list[CodeCheck] = []
    size = 0
    for check in checks:
        check_size = len(_argument(check).encode("utf-8"))
        if batch and (len(batch) >= MAX_BATCH_CHECKS or size + check_size > MAX_BATCH_BYTES):
            yield batch
            batch, size = [], 0
        batch.append(check)
        size += check_size
    if batch:
        yield batch


def _argument(check: CodeCheck) -> str:
    return json.dumps({"key": check.key, "program": check.program, "timeout_s": check.timeout_s})


def _check_batch(
    docker_host: EngineAddress, image: str, runner: str, batch: list[CodeCheck], labels: dict[str, str], tally: _Tally
) -> list[CheckOutcome]:
    wall_s = STARTUP_S + sum(math.ceil(c.timeout_s) + 1 for c in batch)
    limits = dataclasses.replace(CONTAINER_LIMITS, wall_s=wall_s)
    config = json.dumps(CHECK_LIMITS | {"sandboxed": True})
    command = [PYTHON, "-I", "-c", runner, config, *(_argument(c) for c in batch)]
    keys = {c.key for c in batch}

    def reported(line: str) -> None:
        outcome = _reported(line, keys)
        if outcome is not None:
            tally.add(outcome)

    run = sandbox.run_sandboxed(docker_host, image, command, labels=labels, limits=limits, on_line=reported)
    return outcomes_of(run, batch, wall_s)


def _reported(line: str, keys: set[str]) -> CheckOutcome | None:
    """One line of the runner's report, if it is one about a check of this batch."""
    try:
        row = json.loads(line)
    except ValueError:
        return None
    if isinstance(row, dict) and row.get("key") in keys and isinstance(row.get("passed"), bool):
        return CheckOutcome(row["key"], row["passed"], str(row.get("reason", "")))
    return None


def outcomes_of(run: sandbox.SandboxRun, batch: Sequence[CodeCheck], wall_s: float) -> list[CheckOutcome]:
    """The runner's report read back: one outcome per check of ``batch``, in its order. A check the runner did
    not report (the container killed at its bound, or the runner unable to start) failed, and says why."""
    reported: dict[str, CheckOutcome] = {}
    keys = {c.key for c in batch}
    for line in run.output.splitlines():
        outcome = _reported(line, keys)
        if outcome is not None:
            reported.setdefault(outcome.key, outcome)
    if run.exit_code is None:
        missing = f"timed out: the sandbox's bound of {wall_s:g} s for its batch was reached first"
    else:
        last = (run.errors.strip().splitlines() or ["no output"])[-1][:200]
        missing = f"sandbox refused: its runner stopped (exit code {run.exit_code}) before this check: {last}"
    return [reported.get(c.key) or CheckOutcome(c.key, False, missing) for c in batch]
