"""Measuring a running stack: `bench` (load at each concurrency) and `tune` (the sweep that keeps the best)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Required, TypedDict, cast

from deploykit import stackdir
from deploykit.render import StackIdentity, render_files
from deploykit.settings import Settings
from deploykit.values.errors import DeployKitError, PlanError
from deploykit.values.plan import DeploymentPlan
from deploykit.values.services import INFERENCE

if TYPE_CHECKING:
    # Running stacks needs httpx and the docker SDK: plan and render should not pay for them.
    from deploykit.bench import BenchLevel, RequestResult
    from deploykit.bench import Target as BenchTarget
    from deploykit.lifecycle import LoadedStack
    from deploykit.tune import TuneRow, TuneWorkload
from deploykit.app.resolve import ResolvedModel, engine_for, plan_with


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


def bench_target(stack: LoadedStack, via: str) -> BenchTarget:
    """Where `bench` sends its load: the inference server's API, or Open WebUI's as the stack's admin."""
    from deploykit import health, webui
    from deploykit.bench import Target

    plan = stack.spec.plan
    key = stack.api_key
    if via == INFERENCE:
        base, path, token = stack.inference_url, "/v1/chat/completions", key
    else:
        with health.http_client(stack.webui_url) as anon:
            try:
                token, _ = webui.admin_token(anon, *stack.admin)
            except (health.NotReady, health.StageFailed) as exc:
                from deploykit.values.errors import HealthError

                raise HealthError(
                    f"cannot sign in to Open WebUI as the admin: {exc}.", "Check `deploykit status`."
                ) from None
        base, path = stack.webui_url, "/api/chat/completions"
    return Target(base, path, token, plan.model_id, via, stack.spec.backend.metrics, stack.inference_url, key)


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
) -> BenchStack:
    """Streaming load at each concurrency level against a running stack; figures per level as plain data."""
    from dataclasses import asdict

    from deploykit.bench import Workload, calibrate_words, run_level
    from deploykit.lifecycle import identity, load_stack
    from deploykit.values.errors import HealthError

    stack = load_stack(stack_dir.expanduser().absolute())
    target = bench_target(stack, via)
    try:
        words = calibrate_words(target, prompt_tokens)
    except ConnectionError as exc:
        raise HealthError(
            f"{stack.spec.project} did not answer a test request through {via}: {exc}.",
            f"Check `deploykit status --dir {stack.dir}`.",
        ) from None
    results: list[BenchLevel] = []
    for concurrency in levels:
        workload = Workload(concurrency, requests or default_requests(concurrency), prompt_tokens, max_tokens)
        results.append(cast("BenchLevel", asdict(run_level(target, workload, words, on_result))))
    plan = stack.spec.plan
    return {
        **identity(stack),
        "flags": {"threads": plan.threads, "parallel": plan.parallel},
        "via": via,
        "url": target.base_url + target.path,
        "levels": results,
    }


def default_requests(concurrency: int) -> int:
    """Enough requests that every worker sends at least two (the first wave starts all at once)."""
    return max(8, 2 * concurrency)


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


def tune_stack(
    settings: Settings,
    stack_dir: Path,
    *,
    concurrency: int,
    workload_name: str | None,
    prompt_tokens: int,
    max_tokens: int,
    requests: int | None,
    threads: list[int] | None,
    parallel: list[int] | None,
    time_limit: float,
    on_candidate: Callable[[str], None],
    on_result: Callable[[RequestResult], None],
) -> TuneReport:
    """Restart the inference service with each candidate setting, measure it, keep the best.

    The winner goes into the stack's deploykit.toml and the stack is re-rendered and restarted with it; an
    interrupted sweep puts the stack back as it was. Only the inference service restarts; secrets stay.
    """
    from deploykit import engine, lifecycle, tune
    from deploykit.bench import Workload, calibrate_words, run_level, warm_up
    from deploykit.settings import write_stack_settings
    from deploykit.values.errors import HealthError

    docker_host = engine_for(settings)
    stack = lifecycle.load_stack(stack_dir.expanduser().absolute())
    plan = stack.spec.plan
    original = {name: (stack.dir / name).read_text(encoding="utf-8") for name in ("compose.yaml", "plan.json")}
    current = tune.Candidate(plan.threads, plan.parallel)
    cpus = engine.engine_cpus(docker_host)
    grid = tune.candidates(current, cpus, concurrency, threads, parallel)
    load = Workload(concurrency, requests or tune.default_requests(concurrency), prompt_tokens, max_tokens)
    report = TuneReport(
        str(stack.dir),
        tune.describe_workload(concurrency, prompt_tokens, max_tokens, workload_name),
        cpus,
        current.knobs(),
        current.knobs(),
        [],
    )
    compose = stack.engine_stack(docker_host)
    target = bench_target(stack, INFERENCE)
    words: int | None = None

    def apply(candidate: tune.Candidate) -> float:
        _, files = replan_files(stack, **candidate.knobs())
        stackdir.write_stack(stack.dir, {k: files[k] for k in ("compose.yaml", "plan.json")})
        compose.up(INFERENCE)
        return lifecycle.wait_inference_ready(lifecycle.load_stack(stack.dir), docker_host)

    def measure(candidate: tune.Candidate) -> TuneRow:
        nonlocal words
        row: TuneRow = {"threads": candidate.threads, "parallel": candidate.parallel, "current": candidate == current}
        try:
            row["ready_s"] = round(apply(candidate), 1)
            if words is None:
                words = calibrate_words(target, prompt_tokens)
            warm_up(target, load, words, time_limit)
            level = run_level(target, load, words, on_result, time_limit)
            row["metrics"] = level.metrics
            row["errors"] = level.errors
        except (PlanError, HealthError, ConnectionError) as exc:
            row["metrics"] = None
            row["errors"] = [getattr(exc, "message", str(exc))]
        return row

    try:
        for candidate in grid:
            on_candidate(candidate.label())
            report.rows.append(measure(candidate))
        first = [tune.mean_score([r.get("metrics")]) for r in report.rows]
        for i in tune.leaders(first):
            row = report.rows[i]
            again = tune.Candidate(row["threads"], row["parallel"])
            on_candidate(f"{again.label()} (close to the best: measured again)")
            row["repeat"] = measure(again).get("metrics")
    except BaseException:
        # Interrupted or broken: the stack goes back to what it ran before, nothing is written; the
        # error the user sees is the one that stopped the sweep, not one from putting things back.
        stackdir.write_stack(stack.dir, original)
        with contextlib.suppress(DeployKitError):
            compose.up(INFERENCE)
        raise
    for row in report.rows:
        row["score"] = tune.mean_score([row.get("metrics"), *([row.get("repeat")] if "repeat" in row else [])])
    best = tune.pick([(tune.Candidate(r["threads"], r["parallel"]), r["score"]) for r in report.rows])
    winner = best[0] if best else current
    top = best[1] if best else 0.0
    for row in report.rows:
        row["of_best"] = row["score"] / top if top else 0.0
    report.winner = winner.knobs()
    if best is None:
        report.notes.append("no candidate completed its requests; the stack keeps its settings.")
    else:
        report.settings_file = str(write_stack_settings(stack.dir, winner.knobs()))
    on_candidate(f"{winner.label()} (winner, confirming)")
    confirm = measure(winner)
    report.confirmed = confirm["metrics"]
    report.healthy = lifecycle.status(lifecycle.load_stack(stack.dir), docker_host)["healthy"]
    return report


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
        from deploykit.bench import chart_html

        series = {f"{s['project']} ({s['flags']['threads']}t/{s['flags']['parallel']}np)": s["levels"] for s in stacks}
        chart.write_text(chart_html(series, "deploykit bench"), encoding="utf-8")
        report["chart"] = str(chart.absolute())
    return report
