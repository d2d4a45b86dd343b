"""The sweep behind ``deploykit tune``: which knob settings to try, and which one won.

Pure: the candidates come from the machine's CPU count, the stack's current settings and the workload;
the winner from measured figures. ``app.tune_stack`` restarts the inference service with each candidate
and measures it with ``deploykit.bench``.
"""

from __future__ import annotations

from collections.abc import Sequence
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


def pick(scored: Sequence[tuple[Candidate, float]]) -> tuple[Candidate, float] | None:
    """The candidate with the highest score; ties go to the one measured first (the current setting)."""
    best: tuple[Candidate, float] | None = None
    for candidate, value in scored:
        if value > 0 and (best is None or value > best[1]):
            best = (candidate, value)
    return best


# Candidates scoring within this share of the best are measured again before one is picked: on a shared
# machine one run can order settings that differ by less (a 2-core VM's sweep scored six settings within
# 4 % and the pick then measured at 68 % of the best, docs/benchmarks.md).
LEADER_BAND = 0.9


def leaders(scores: Sequence[float], within: float = LEADER_BAND) -> list[int]:
    """Indexes of the candidates close enough to the best that one noisy run may have ordered them."""
    top = max(scores, default=0.0)
    found = [i for i, value in enumerate(scores) if top > 0 and value >= within * top]
    return found if len(found) > 1 else []


def mean_score(runs: Sequence[dict[str, float] | None]) -> float:
    """A candidate's score over all its runs; a run that failed counts as 0."""
    values = [score(m) if m is not None else 0.0 for m in runs]
    return sum(values) / len(values) if values else 0.0


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
    repeat: dict[str, float] | None  # a second run, for a candidate close to the best
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
