"""Measuring a running stack: `bench` (streaming load at each concurrency) and `tune` (the sweep that keeps the best).

`tune`'s whole logic is here: which knob settings to try (from the machine's CPU count, the stack's current
settings and the workload), how each is measured (the inference service restarted with it, then loaded through
``deploykit.running.bench``), and which one won (written into the stack's deploykit.toml). What is particular
to one model of a stack of several (`tune --model`) is in ``deploykit.app.tune_model``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Required, TypedDict, cast

from deploykit.app.resolve import ResolvedModel, engine_for, plan_with
from deploykit.app.tune_model import placement_change, replan_model, tuned_model, write_winner
from deploykit.config.settings import Settings
from deploykit.planning.render import StackIdentity, render_files
from deploykit.seams import stackdir
from deploykit.values.errors import DeployKitError, HealthError, PlanError, UsageError
from deploykit.values.plan import DeploymentPlan
from deploykit.values.services import INFERENCE
from deploykit.values.stackfiles import PLAN_FILE
from deploykit.values.stackplan import PRESET_PATH

if TYPE_CHECKING:
    # Running stacks needs httpx and the docker SDK: plan and render should not pay for them.
    from deploykit.running.bench import BenchLevel, RequestResult, Workload
    from deploykit.running.bench import Target as BenchTarget
    from deploykit.running.stack import LoadedStack
    from deploykit.seams.compose import Stack
    from deploykit.seams.engine import EngineAddress

# Requests per level (bench) and per candidate (tune) when none are asked for: every worker sends at least two,
# since the first wave starts all at once; bench never fewer than eight, tune never fewer than four.
BENCH_MIN_REQUESTS = 8
TUNE_MIN_REQUESTS = 4


def requests_for(concurrency: int, at_least: int) -> int:
    """Requests for one load at ``concurrency``: two per worker, and never fewer than ``at_least``."""
    return max(at_least, 2 * concurrency)


# ---------------------------------------------------------------- bench


def replan_files(stack: LoadedStack, **knobs: int | None) -> tuple[DeploymentPlan, dict[str, str]]:
    """The stack's files re-planned from the inputs plan.json recorded, with some planner knobs changed.

    Same host, model, images, ports and secrets; only what the knobs change (flags, KV cache, context split).
    """
    recorded = stack.inputs
    plan_settings = recorded.settings.model_copy(update=knobs)
    inputs = recorded.model_copy(update={"settings": plan_settings})
    plan = plan_with(inputs.host, ResolvedModel(inputs.model, inputs.weights), plan_settings, inputs.runs_on)
    spec = stack.spec.model_copy(update={"plan": plan})
    return plan, render_files(spec, stack.secrets, inputs)


def bench_target(stack: LoadedStack, via: str, model_id: str | None = None) -> BenchTarget:
    """Where `bench` sends its load: the server of ``model_id`` (None: the stack's default model), or Open
    WebUI's API as the stack's admin."""
    from deploykit import backends
    from deploykit.running.bench import Target
    from deploykit.running.served import served_by
    from deploykit.seams import certificates, health, webui

    served = served_by(stack)
    model = served.require(model_id)
    server = served.server(model.service)
    key = stack.api_key
    if via == INFERENCE:
        base, path, token = server.url, "/v1/chat/completions", key
    else:
        with stack.webui_client() as anon:
            try:
                token, _ = webui.admin_token(anon, *stack.admin)
            except (health.NotReady, health.StageFailed) as exc:
                from deploykit.values.errors import HealthError

                raise HealthError(
                    f"cannot sign in to Open WebUI as the admin: {exc}.", "Check `deploykit status`."
                ) from None
        base, path = stack.webui_url, "/api/chat/completions"
    tls = stack.spec.tls if via != INFERENCE else None  # Open WebUI behind the proxy: its certificate's check
    verify = certificates.client_context(tls, stack.dir) if tls is not None else True
    metrics = backends.named(model.backend).metrics
    router = server.router
    return Target(
        base,
        path,
        token,
        model.id,
        via,
        metrics,
        server.url,
        key,
        verify,
        fresh_connections=router and via == INFERENCE,
        metrics_model=model.id if router else None,
    )


class BenchStack(StackIdentity):
    """One stack measured by `bench`."""

    flags: dict[str, int]  # threads and parallel slots it runs with
    via: str
    url: str
    levels: list[BenchLevel]


class BenchWorkload(TypedDict):
    prompt_tokens: int
    max_tokens: int
    stream: bool
    ignore_eos: bool


class BenchReport(TypedDict, total=False):
    """The whole `bench` result (`bench --json`)."""

    date: Required[str]
    machine: Required[str]
    command: Required[str]
    workload: Required[BenchWorkload]
    stacks: Required[list[BenchStack]]
    chart: str  # the HTML chart written, when asked for


def bench_stack(
    stack_dir: Path,
    *,
    via: str,
    levels: list[int],
    requests: int | None,
    prompt_tokens: int,
    max_tokens: int,
    on_result: Callable[[RequestResult], None],
    model_id: str | None = None,
) -> BenchStack:
    """Streaming load at each concurrency level against a running stack (``model_id``: one of its models; None:
    its default); figures per level as plain data."""
    from dataclasses import asdict

    from deploykit.running.bench import Workload, calibrate_words, run_level
    from deploykit.running.served import served_by
    from deploykit.running.stack import identity, load_stack
    from deploykit.values.errors import HealthError

    stack = load_stack(stack_dir.expanduser().absolute())
    model = served_by(stack).require(model_id)
    check_request_fits(stack, prompt_tokens, max_tokens, model.context_length)
    target = bench_target(stack, via, model.id)
    try:
        words = calibrate_words(target, prompt_tokens)
    except ConnectionError as exc:
        raise HealthError(
            f"{stack.spec.project} did not answer a test request through {via}: {exc}.",
            f"Check `deploykit status --dir {stack.dir}`.",
        ) from None
    results: list[BenchLevel] = []
    for concurrency in levels:
        count = requests or requests_for(concurrency, BENCH_MIN_REQUESTS)
        workload = Workload(concurrency, count, prompt_tokens, max_tokens)
        results.append(cast("BenchLevel", asdict(run_level(target, workload, words, on_result))))
    return {
        **identity(stack),
        "backend": model.backend,
        "model": model.id,
        "flags": {"threads": model.threads, "parallel": model.parallel},
        "via": via,
        "url": target.base_url + target.path,
        "levels": results,
    }


def check_chart(path: Path) -> None:
    """Refuse a --chart path the report could not be written to, before any load runs."""
    from deploykit.seams.textfile import check_writable

    check_writable(path, "--chart file", "Give the path of a new or regular .html file.", UsageError)


def check_request_fits(stack: LoadedStack, prompt_tokens: int, max_tokens: int, context: int | None = None) -> None:
    """Refuse a load whose every request the server would refuse: prompt and answer beyond the context
    (``context``: the model's; None: the stack's default model's)."""
    context = context if context is not None else stack.spec.plan.context_length
    if prompt_tokens + max_tokens > context:
        raise UsageError(
            f"--prompt-tokens {prompt_tokens} + --max-tokens {max_tokens} is more than the {context} tokens of "
            f"context {stack.spec.project} serves per request.",
            f"Keep their sum within {context}, or render the stack with a longer --context.",
        )


def bench_report(
    stacks: list[BenchStack], prompt_tokens: int, max_tokens: int, command: str, chart: Path | None = None
) -> BenchReport:
    """The whole `bench` result: when, where, how, and each stack's levels; ``chart`` also writes an HTML chart."""
    import os
    import platform
    from datetime import UTC, datetime

    report: BenchReport = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.node()}: {os.cpu_count()} CPUs, {platform.machine()}, {platform.system()}",
        "command": command,
        "workload": {"prompt_tokens": prompt_tokens, "max_tokens": max_tokens, "stream": True, "ignore_eos": True},
        "stacks": stacks,
    }
    if chart:
        from deploykit.running.bench import chart_html

        series = {
            f"{s['project']} {s['model']} ({s['flags']['threads']}t/{s['flags']['parallel']}np)": s["levels"]
            for s in stacks
        }
        chart.write_text(chart_html(series, "deploykit bench"), encoding="utf-8")
        report["chart"] = str(chart.absolute())
    return report


# ---------------------------------------------------------------- tune's sweep: pure

WorkloadName = Literal["chat", "throughput"]
# What each named workload means: one conversation at a time, or several at once.
WORKLOAD_CONCURRENCY: dict[str, int] = {"chat": 1, "throughput": 4}


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
    skipped: str  # not measured: the planner's reason (it does not fit, or not in the model's placement)
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


# ---------------------------------------------------------------- tune


def tune_goal(workload: str | None, concurrency: int | None) -> tuple[str | None, int]:
    """(workload name, concurrency) `tune` optimises for: a named workload, or N chats at once (default: chat)."""
    if workload and concurrency:
        raise UsageError("--workload and --concurrency both say what to optimise.", "Give one of them.")
    if concurrency is not None and concurrency < 1:
        raise UsageError("--concurrency must be at least 1.", "e.g. --concurrency 4")
    name = workload or (None if concurrency else "chat")
    return name, concurrency or WORKLOAD_CONCURRENCY[name or "chat"]


@dataclass(frozen=True)
class TuneRequest:
    """What `tune` is asked for: the stack, the workload to optimise for, and the candidates (None: from the CPUs)."""

    stack_dir: Path
    concurrency: int
    workload_name: str | None
    prompt_tokens: int
    max_tokens: int
    requests: int | None = None
    threads: list[int] | None = None
    parallel: list[int] | None = None
    time_limit: float = 90.0
    model: str | None = None  # which model of the stack (`--model`); needed on a stack of several

    @property
    def requests_each(self) -> int:
        return self.requests or requests_for(self.concurrency, TUNE_MIN_REQUESTS)


@dataclass
class TuneReport:
    stack_dir: str
    workload: TuneWorkload
    cpus: int
    before: dict[str, int]
    winner: dict[str, int]
    rows: list[TuneRow]
    settings_file: str = ""
    confirmed: dict[str, float] | None = None
    healthy: bool = False
    notes: list[str] = field(default_factory=list)
    model: str = ""  # the model swept
    service: str = ""  # the service restarted for each candidate


@dataclass
class _Sweep:
    """One candidate after another on the running stack: re-render with its knobs, restart the server,
    warm it up, measure it. ``model`` (a stack of several): that model's knobs only, its server restarted."""

    stack: LoadedStack
    docker_host: EngineAddress
    compose: Stack
    target: BenchTarget
    load: Workload
    request: TuneRequest
    current: Candidate
    on_result: Callable[[RequestResult], None]
    words: int | None = None
    model: str | None = None
    recreated: bool = False  # compose recreated the service for a candidate (a router: all its models reloaded)

    @property
    def service(self) -> str:
        stack_plan = self.stack.spec.stack_plan
        return stack_plan.model(self.model).service if stack_plan and self.model else INFERENCE

    @property
    def files(self) -> tuple[str, ...]:
        """What a candidate rewrites: the stack file and plan.json (never .env), and a router's preset."""
        names: tuple[str, ...] = (self.stack.stack_file.name, PLAN_FILE)
        stack_plan = self.stack.spec.stack_plan
        return (*names, PRESET_PATH) if stack_plan is not None and stack_plan.routed else names

    def replan(self, candidate: Candidate) -> dict[str, str]:
        """The files for ``candidate``; PlanError when it does not fit (a several-model stack: when it would
        change more than its model's own placement)."""
        if self.model is None:
            return replan_files(self.stack, **candidate.knobs())[1]
        before = self.stack.spec.stack_plan
        assert before is not None
        planned, files = replan_model(self.stack, self.model, candidate.knobs())
        if (why := placement_change(before, planned, self.model)) is not None:
            raise PlanError(
                f"{candidate.label()} does not fit in {self.model}'s placement: {why}.",
                "tune changes one model's knobs only; leave this setting out of the grid.",
            )
        return files

    def bring_up(self, preset_changed: bool = True) -> None:
        """The service started with the files on disk: compose recreates it when its own definition changed;
        a router whose command did not, but whose preset did (its models' flags), re-reads the preset in place,
        so that only the model whose flags changed reloads."""
        service = self.service
        if self.model is None:
            self.compose.up(service)
            return
        before = {c.service: c.started_at for c in self.compose.containers() if c.state == "running"}
        self.compose.up(service)
        after = {c.service: c.started_at for c in self.compose.containers() if c.state == "running"}
        if before.get(service) != after.get(service):
            self.recreated = True
        elif preset_changed and service in before:
            from deploykit.running.stack import load_stack
            from deploykit.running.stages import reread_router_preset

            reread_router_preset(load_stack(self.stack.dir), self.docker_host, service)

    def wait_ready(self) -> float:
        from deploykit.running.stack import load_stack
        from deploykit.running.stages import wait_inference_ready, wait_server_ready

        loaded = load_stack(self.stack.dir)
        if self.model is None:
            return wait_inference_ready(loaded, self.docker_host)
        return wait_server_ready(loaded, self.docker_host, self.service)

    def apply(self, files: dict[str, str]) -> float:
        changed = stackdir.write_stack(self.stack.dir, {k: files[k] for k in self.files})
        self.bring_up(PRESET_PATH in changed)
        return self.wait_ready()

    def measure(self, candidate: Candidate) -> TuneRow:
        from deploykit.running.bench import calibrate_words, run_level, warm_up

        limit = self.request.time_limit
        row: TuneRow = {
            "threads": candidate.threads,
            "parallel": candidate.parallel,
            "current": candidate == self.current,
        }
        try:
            files = self.replan(candidate)
        except PlanError as exc:  # nothing written, nothing restarted: the row says why
            row["metrics"] = None
            row["errors"] = [exc.message]
            row["skipped"] = exc.message
            return row
        try:
            row["ready_s"] = round(self.apply(files), 1)
            if self.words is None:
                self.words = calibrate_words(self.target, self.request.prompt_tokens)
            warm_up(self.target, self.load, self.words, limit)
            level = run_level(self.target, self.load, self.words, self.on_result, limit)
            row["metrics"] = level.metrics
            row["errors"] = level.errors
        except (PlanError, HealthError, ConnectionError) as exc:
            row["metrics"] = None
            row["errors"] = [getattr(exc, "message", str(exc))]
        return row

    def run(self, grid: list[Candidate], on_candidate: Callable[[str], None]) -> list[TuneRow]:
        """Every candidate, and again those close to the best; interrupted or broken, the stack goes back to
        what it ran before, and the error the user sees is the one that stopped the sweep."""
        original = {name: stackdir.read_stack_file(self.stack.dir, name) for name in self.files}
        rows: list[TuneRow] = []
        try:
            for candidate in grid:
                on_candidate(candidate.label())
                rows.append(self.measure(candidate))
            for i in leaders([mean_score([r.get("metrics")]) for r in rows]):
                again = Candidate(rows[i]["threads"], rows[i]["parallel"])
                on_candidate(f"{again.label()} (close to the best: measured again)")
                rows[i]["repeat"] = self.measure(again).get("metrics")
        except BaseException:
            self.restore(original)
            raise
        return rows

    def restore(self, original: dict[str, str]) -> None:
        """The files as they were, and the service started with them again."""
        changed = stackdir.write_stack(self.stack.dir, original)
        with contextlib.suppress(DeployKitError):
            self.bring_up(PRESET_PATH in changed)


def _score_rows(rows: list[TuneRow]) -> tuple[Candidate, float] | None:
    """Each row's score over its runs and its share of the best; the best candidate, if any completed."""
    for row in rows:
        row["score"] = mean_score([row.get("metrics"), *([row.get("repeat")] if "repeat" in row else [])])
    best = pick([(Candidate(r["threads"], r["parallel"]), r["score"]) for r in rows])
    top = best[1] if best else 0.0
    for row in rows:
        row["of_best"] = row["score"] / top if top else 0.0
    return best


def tune_stack(
    settings: Settings,
    request: TuneRequest,
    on_candidate: Callable[[str], None],
    on_result: Callable[[RequestResult], None],
) -> TuneReport:
    """Restart the inference service with each candidate setting, measure it, keep the best.

    The winner goes into the stack's deploykit.toml and the stack is re-rendered and restarted with it; an
    interrupted sweep puts the stack back as it was. Only the inference service restarts; secrets stay.
    On a stack of several models ``request.model``'s knobs are swept (each candidate re-plans the whole stack
    with that model's [[models]] entry changed, and must leave the other models' placements as they are), only
    its server restarts, and the winner goes into its [[models]] entry.
    """
    from deploykit.running import lifecycle
    from deploykit.running.bench import Workload
    from deploykit.running.served import served_by
    from deploykit.running.stack import load_stack
    from deploykit.seams import engine

    stack = load_stack(request.stack_dir.expanduser().absolute()).require_compose(
        "tune restarts a Compose stack's inference service, and handles Compose stacks only",
        "Tune a Compose stack of the same plan (`deploykit up --target compose --dir OTHER`), then copy the "
        "winner from its deploykit.toml into this stack's and render it again.",
    )
    served = served_by(stack)
    model_id = tuned_model(stack.dir, [m.id for m in served.models], request.model)
    model = served.require(model_id)
    check_request_fits(stack, request.prompt_tokens, request.max_tokens, model.context_length)
    docker_host = engine_for(settings)
    current = Candidate(model.threads, model.parallel)
    cpus = engine.engine_cpus(docker_host)
    load = Workload(request.concurrency, request.requests_each, request.prompt_tokens, request.max_tokens)
    target = bench_target(stack, INFERENCE, model.id)
    compose = stack.engine_stack(docker_host)
    sweep = _Sweep(stack, docker_host, compose, target, load, request, current, on_result, model=model_id)
    grid = candidates(current, cpus, request.concurrency, request.threads, request.parallel)
    workload = describe_workload(request.concurrency, request.prompt_tokens, request.max_tokens, request.workload_name)
    report = TuneReport(str(stack.dir), workload, cpus, current.knobs(), current.knobs(), sweep.run(grid, on_candidate))
    report.model, report.service = model.id, sweep.service
    best = _score_rows(report.rows)
    winner = best[0] if best else current
    report.winner = winner.knobs()
    if best is None:
        report.notes.append("no candidate completed its requests; the stack keeps its settings.")
    else:
        report.settings_file = str(write_winner(stack, model_id, winner.knobs()))
    router = served.server(model.service).router
    if model_id is not None and router:
        others = [m for m in served.server(model.service).models if m != model_id]
        report.notes.append(
            f"{model.id} is served by the {model.service}; a candidate changed its command, so the router was "
            f"recreated and its other models ({', '.join(others)}) reloaded too."
            if sweep.recreated
            else f"{model.id} is served by the {model.service}, which re-read its preset for each candidate: only "
            f"{model.id} reloaded, its other models ({', '.join(others)}) kept running."
        )
    on_candidate(f"{winner.label()} (winner, confirming)")
    report.confirmed = sweep.measure(winner)["metrics"]
    report.healthy = lifecycle.status(load_stack(stack.dir), docker_host)["healthy"]
    return report
