"""Measuring a running stack: bench and tune."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import click

from deploykit.cli.common import (
    MAX_CONCURRENCY,
    MAX_THREADS,
    REQUESTS,
    TOKENS,
    check_load,
    int_list,
    not_nan,
    path_or_none,
    print_json,
    progress_bar,
    settings_from,
    stack_dir_option,
)
from deploykit.values.services import INFERENCE, SERVICES

if TYPE_CHECKING:
    pass


@click.command(short_help="Measure a running stack: TTFT, ITL, tokens/s.")
@stack_dir_option()
@click.option("--concurrency", default="1,4", show_default=True, metavar="N[,N…]", help="Concurrency levels.")
@click.option("--requests", type=REQUESTS, metavar="N", help="Requests per level [default: max(8, 2 × concurrency)].")
@click.option(
    "--prompt-tokens", default=128, type=TOKENS, show_default=True, help="Prompt length of each request, in tokens."
)
@click.option(
    "--max-tokens", default=128, type=TOKENS, show_default=True, help="Tokens each request generates (EOS ignored)."
)
@click.option(
    "--via",
    type=click.Choice(list(SERVICES)),
    default=INFERENCE,
    show_default=True,
    help="Send the load to the inference server's API, or through Open WebUI as the admin.",
)
@click.option("--compare", "compare_dir", type=click.Path(file_okay=False), help="Run the same load on a second stack.")
@click.option(
    "--model",
    "model_ids",
    multiple=True,
    metavar="NAME",
    help="Which of the stack's models to load (repeat it to compare models of one stack) [default: the default].",
)
@click.option("--chart", type=click.Path(dir_okay=False), help="Also write an HTML chart of tok/s and TTFT to FILE.")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
@click.pass_context
def bench(
    ctx: click.Context,
    stack_dir: str,
    concurrency: str,
    requests: int | None,
    prompt_tokens: int,
    max_tokens: int,
    via: str,
    compare_dir: str | None,
    model_ids: tuple[str, ...],
    chart: str | None,
    as_json: bool,
) -> None:
    """Streaming chat requests against a running stack at each concurrency level.

    Reports what `vllm bench serve` and GuideLLM report, under the same names: successful requests,
    request and output-token throughput, TTFT, TPOT and ITL (mean, median, P95, P99), and checks its
    token counts against the server's own /metrics counters.
    """
    from pathlib import Path

    from deploykit.app import measure as api
    from deploykit.cli import output

    levels = int_list(concurrency, "--concurrency", MAX_CONCURRENCY)
    check_load(levels, requests, prompt_tokens, lambda c: api.requests_for(c, api.BENCH_MIN_REQUESTS))
    if chart:  # before the load runs: a named pipe there would block the write at the end
        api.check_chart(Path(chart))
    dirs = [Path(stack_dir)] + ([Path(compare_dir)] if compare_dir else [])
    # Each model asked for on each stack, one after the other (a second stack: the same names, or its default).
    runs = [(d, m) for d in dirs for m in (model_ids or (None,))]
    total = sum(requests or api.requests_for(c, api.BENCH_MIN_REQUESTS) for c in levels) * len(runs)
    stacks = []
    with progress_bar(total, "bench") as progress:
        task = progress.task_ids[0]
        for d, model_id in runs:
            progress.update(task, description=f"bench {d.name}" + (f" {model_id}" if model_id else ""))
            stacks.append(
                api.bench_stack(
                    d,
                    via=via,
                    levels=levels,
                    requests=requests,
                    prompt_tokens=prompt_tokens,
                    max_tokens=max_tokens,
                    on_result=lambda _r: progress.advance(task),
                    model_id=model_id,
                )
            )
    report = api.bench_report(stacks, prompt_tokens, max_tokens, " ".join(sys.argv), path_or_none(chart))
    if as_json:
        print_json(report)
    else:
        output.show_bench(report)


@click.command(short_help="Sweep threads × slots on the running stack; keep the best.")
@stack_dir_option()
@click.option(
    "--workload",
    type=click.Choice(["chat", "throughput"]),
    help="What to optimise: one chat at a time (chat), or 4 at once (throughput) [default: chat].",
)
@click.option(
    "--concurrency",
    type=click.IntRange(1, MAX_CONCURRENCY),
    metavar="N",
    help="Optimise for N chats at once instead of a named workload.",
)
@click.option("--threads", "threads_list", metavar="N[,N…]", help="Thread counts to try [default: from the CPUs].")
@click.option("--parallel", "parallel_list", metavar="N[,N…]", help="Slot counts to try [default: from the workload].")
@click.option(
    "--requests", type=REQUESTS, metavar="N", help="Requests per candidate [default: max(4, 2 × concurrency)]."
)
@click.option(
    "--prompt-tokens", default=128, type=TOKENS, show_default=True, help="Prompt length of each request, in tokens."
)
@click.option("--max-tokens", default=128, type=TOKENS, show_default=True, help="Tokens each request generates.")
@click.option(
    "--time-limit",
    default=90.0,
    type=click.FloatRange(min=1, max=86400),
    callback=lambda ctx, param, value: not_nan(param, value),
    show_default=True,
    metavar="SECONDS",
    help="Cut a candidate's measurement after this long (it scores 0: too slow).",
)
@click.option(
    "--model",
    "model_id",
    metavar="NAME",
    help="Which of the stack's models to tune (needed on a stack of several; its [[models]] entry gets the winner).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the sweep as JSON.")
@click.pass_context
def tune(
    ctx: click.Context,
    stack_dir: str,
    workload: str | None,
    concurrency: int | None,
    threads_list: str | None,
    parallel_list: str | None,
    requests: int | None,
    prompt_tokens: int,
    max_tokens: int,
    time_limit: float,
    model_id: str | None,
    as_json: bool,
) -> None:
    """Measure the running stack with each candidate setting and keep the fastest for your workload.

    Restarts only the inference service, once per candidate (threads × parallel slots). The winner is
    written to the stack's deploykit.toml, so later `render` and `up` keep it, and the stack is left
    running it. Secrets, accounts and chats are untouched. A few minutes on a small model.

    On a stack of several models, --model NAME sweeps that model only: each candidate re-plans the stack
    with NAME's knobs (one that does not fit beside the others is skipped), only NAME's server restarts
    (behind the router, only NAME reloads), and the winner goes into NAME's [[models]] entry.
    """
    from dataclasses import asdict
    from pathlib import Path

    from deploykit.app import measure as api
    from deploykit.cli import output

    name, level = api.tune_goal(workload, concurrency)
    check_load([level], requests, prompt_tokens, lambda c: api.requests_for(c, api.TUNE_MIN_REQUESTS))
    request = api.TuneRequest(
        Path(stack_dir),
        concurrency=level,
        workload_name=name,
        prompt_tokens=prompt_tokens,
        max_tokens=max_tokens,
        requests=requests,
        threads=int_list(threads_list, "--threads", MAX_THREADS) if threads_list else None,
        parallel=int_list(parallel_list, "--parallel", MAX_CONCURRENCY) if parallel_list else None,
        time_limit=time_limit,
        model=model_id,
    )
    output.show_tune_goal(name, level)
    with progress_bar(1, "tune") as progress:
        task = progress.task_ids[0]

        def on_candidate(label: str) -> None:
            progress.update(task, description=label, completed=0, total=request.requests_each)

        report = api.tune_stack(settings_from(ctx), request, on_candidate, lambda _r: progress.advance(task))
    if as_json:
        print_json(asdict(report))
    else:
        output.show_tune(report)
    if not report.healthy:
        sys.exit(1)


@click.command("eval", short_help="Score a running stack's answers: HumanEval pass@1, GSM8K, MATH.")
@stack_dir_option()
@click.option("--suite", type=click.Choice(["humaneval"]), help="A built-in suite [default: humaneval].")
@click.option(
    "--dataset",
    type=click.Path(dir_okay=False),
    help="A JSON Lines file: GSM8K (question, answer), MATH (problem, answer) or plain (prompt, answer).",
)
@click.option("--limit", type=click.IntRange(1, 100_000), metavar="N", help="Only the first N items.")
@click.option(
    "--samples", default=1, type=click.IntRange(1, 100), show_default=True, help="Answers per item (pass@k, k=N)."
)
@click.option(
    "--max-tokens", type=TOKENS, help="Token budget of each answer [default: 512 code, 1024 math, the card's]."
)
@click.option(
    "--via",
    type=click.Choice(list(SERVICES)),
    default=INFERENCE,
    show_default=True,
    help="Ask the inference server's API, or Open WebUI's as the admin.",
)
@click.option(
    "--model",
    "model_ids",
    multiple=True,
    metavar="NAME",
    help="Which of the stack's models to ask (twice: two models of one stack compared) [default: the default].",
)
@click.option("--compare", "compare_dir", type=click.Path(file_okay=False), help="Ask a second stack the same items.")
@click.option("--report", type=click.Path(dir_okay=False), help="Also write a self-contained HTML report to FILE.")
@click.option("--json", "as_json", is_flag=True, help="Print the figures and every outcome as JSON.")
@click.pass_context
def evaluate(
    ctx: click.Context,
    stack_dir: str,
    suite: str | None,
    dataset: str | None,
    limit: int | None,
    samples: int,
    max_tokens: int | None,
    via: str,
    model_ids: tuple[str, ...],
    compare_dir: str | None,
    report: str | None,
    as_json: bool,
) -> None:
    """Ask a running stack every item and score its answers: pass@1 with a 95 % Wilson interval (pass@k
    with --samples), answers cut by the token budget, errors, and each item's outcome.

    HumanEval's completions are checked in throw-away locked-down containers on the stack's engine. Answers
    are kept in the stack folder (eval/) as they come: an interrupted run continues, a re-run is instant.
    """
    from pathlib import Path

    from deploykit.app import quality as api
    from deploykit.cli import output

    request = api.EvalRequest(suite, Path(dataset) if dataset else None, limit, samples, via, max_tokens)
    items = api.eval_items(request)  # a bad file is refused before any stack is touched
    if report:
        api.check_report(Path(report))
    settings = settings_from(ctx)
    dirs = [Path(stack_dir)] + ([Path(compare_dir)] if compare_dir else [])
    runs = api.eval_runs(dirs, model_ids)  # two at most: what --compare sets side by side
    stacks = []
    with progress_bar(len(items.keys) * samples, "eval") as progress:
        task = progress.task_ids[0]

        def on(what: str, done: int, total: int) -> None:
            progress.update(task, description=what, completed=done, total=total)

        for d, model_id in runs:
            stacks.append(api.eval_stack(settings, d, request, items, on, model_id))
    result = api.eval_report(items, request, stacks, " ".join(sys.argv), path_or_none(report))
    if as_json:
        print_json(result)
    else:
        output.show_eval(result)
