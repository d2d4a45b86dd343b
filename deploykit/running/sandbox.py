"""Checking untrusted code (a model's completions) in throw-away containers through the stack's engine.

Nothing here runs a completion on this machine. ``check_programs`` hands batches of programs to
``deploykit.seams.sandbox``, which runs ``sandbox_runner.py`` in a container of an image the engine already has
(the stack's Open WebUI image carries python3; nothing is pulled) with no network, a read-only root, a
non-root user, no capabilities, no new privileges, and limits on memory, processes, CPU and wall-clock time.
The runner checks each program in its own process, with its own rlimits, timeout and temporary folder, one at
a time, and reports one JSON line per check.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from deploykit.running.stack import LoadedStack
    from deploykit.seams.engine import EngineAddress


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
    raise NotImplementedError


def check_programs(
    docker_host: EngineAddress,
    image: str,
    checks: Sequence[CodeCheck],
    *,
    project: str,
    progress: Callable[[int, int], None] | None = None,
) -> list[CheckOutcome]:
    """One outcome per check, in the order given. ``project`` labels the containers
    (``org.deploykit.stack``) as the stack's own. ``progress(done, total)`` is called as checks finish.

    A timeout, a crash or the sandbox refusing a program is that check's failed outcome, never an exception;
    an engine that cannot be reached, or that lacks ``image``, raises EngineError before anything runs.
    Every container is removed, whatever happens.
    """
    raise NotImplementedError
