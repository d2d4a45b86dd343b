"""The sweep behind ``deploykit tune``: which knob settings to try, and which one won.

Pure: the candidates come from the machine's CPU count, the stack's current settings and the workload;
the winner from measured figures. ``app.tune_stack`` restarts the inference service with each candidate
and measures it with ``deploykit.bench``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Required, TypedDict

Workload = Literal["chat", "throughput"]
# What each named workload means: one conversation at a time, or several at once.
WORKLOAD_CONCURRENCY: dict[str, int] = {"chat": 1, "throughput": 4}


def default_requests(concurrency: int) -> int:
    """Requests per candidate: every slot of the workload sees two, and never fewer than four."""
    return max(4, 2 * concurrency)


@dataclass(frozen=True)
class Candidate:
    """One setting of the planner's knobs (PlanSettings names: they go into deploykit.toml as they are)."""

    threads: int
    parallel: int

    def knobs(self) -> dict[str, int]:
        return {"threads": self.threads, "parallel": self.parallel}

    def label(self) -> str:
        return f"threads={self.threads} parallel={self.parallel}"


def thread_choices(cpus: int, current: int) -> list[int]:
    """Half the CPUs (the physical cores on an SMT machine), all of them, and what the stack has now."""
    return sorted({max(1, cpus // 2), max(1, cpus), current})


def parallel_choices(concurrency: int, current: int) -> list[int]:
    """Slots from 1 up to the workload's concurrency in powers of two, at least 1 and 2, and the current."""
    choices = {1, 2, current, max(1, concurrency)}
    slots = 4
    while slots < concurrency:
        choices.add(slots)
        slots *= 2
    return sorted(c for c in choices if c <= max(2, concurrency) or c == current)


def candidates(
    current: Candidate,
    cpus: int,
    concurrency: int,
    threads: list[int] | None = None,
    parallel: list[int] | None = None,
) -> list[Candidate]:
    """The grid to measure, the stack's current setting first (it is the baseline the gain is measured from)."""
    grid = [
        Candidate(t, p)
        for t in (threads or thread_choices(cpus, current.threads))
        for p in (parallel or parallel_choices(concurrency, current.parallel))
    ]
    return [current, *(c for c in grid if c != current)]


def score(metrics: dict[str, float]) -> float:
    """What the sweep maximises: output tokens per second over all requests at the workload's concurrency.

    At concurrency 1 this is the speed one chat sees; at higher concurrency, what the server delivers in all.
    """
    if metrics.get("failed", 0) or not metrics.get("completed"):
        return 0.0
    return float(metrics["output_throughput"])


def pick(measured: list[tuple[Candidate, dict[str, float] | None]]) -> tuple[Candidate, float] | None:
    """The candidate with the highest score; ties go to the one measured first (the current setting)."""
    best: tuple[Candidate, float] | None = None
    for candidate, metrics in measured:
        value = score(metrics) if metrics is not None else 0.0
        if value > 0 and (best is None or value > best[1]):
            best = (candidate, value)
    return best


class TuneWorkload(TypedDict):
    """What `tune` optimises for, as its report records it."""

    name: str
    concurrency: int
    prompt_tokens: int
    max_tokens: int
    objective: str


class TuneRow(TypedDict, total=False):
    """One candidate of the sweep: its knobs and what it measured."""

    threads: Required[int]
    parallel: Required[int]
    current: Required[bool]
    ready_s: float
    metrics: dict[str, float] | None
    errors: list[str]
    score: float
    of_best: float


def describe_workload(concurrency: int, prompt_tokens: int, max_tokens: int, name: str | None) -> TuneWorkload:
    what = "one chat at a time" if concurrency == 1 else f"{concurrency} chats at once"
    return {
        "name": name or f"concurrency-{concurrency}",
        "concurrency": concurrency,
        "prompt_tokens": prompt_tokens,
        "max_tokens": max_tokens,
        "objective": f"output tokens/s with {what} ({prompt_tokens} prompt tokens, {max_tokens} output tokens each)",
    }
