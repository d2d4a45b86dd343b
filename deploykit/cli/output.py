"""Human-readable output for the CLI (the ``--json`` forms bypass this module)."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from deploykit.values.units import MiB, gib

if TYPE_CHECKING:
    from rich.status import Status

    from deploykit.app.data import UpgradeReport
    from deploykit.app.day2 import ChatAnswer, SmokeReport
    from deploykit.app.fleet import HostResult
    from deploykit.app.measure import BenchReport, TuneReport
    from deploykit.app.stack import ProfileRow, RenderResult
    from deploykit.running.backup import BackupReport, RestoreReport
    from deploykit.running.doctor import Check
    from deploykit.running.lifecycle import ModelStatus, StackStatus
    from deploykit.running.models_change import ModelsChange
    from deploykit.running.stages import StageResult, UpReport
    from deploykit.values.host import HostProfile
    from deploykit.values.model import ModelSpec
    from deploykit.values.plan import DeploymentPlan
    from deploykit.values.stackplan import StackPlan

console = Console(highlight=False, width=None if sys.stdout.isatty() else 150)


def show_host(host: HostProfile) -> None:
    cpu = host.cpu
    console.print(f"[bold]Host[/bold] {host.name} ({host.source})")
    console.print(
        f"  CPU     {cpu.model or cpu.arch}: {cpu.physical_cores} cores / {cpu.logical_cores} threads, "
        f"{cpu.arch}, SIMD: {', '.join(cpu.flags) or 'none detected'}"
    )
    mem = host.memory
    avail = f", {gib(mem.available_bytes)} available" if mem.available_bytes is not None else ""
    console.print(f"  RAM     {gib(mem.total_bytes)}{avail}")
    if host.disk:
        console.print(f"  Disk    {gib(host.disk.free_bytes)} free at {host.disk.path}")
    if host.gpus:
        for g in host.gpus:
            free = f", {gib(g.memory_free_bytes)} free" if g.memory_free_bytes is not None else ""
            console.print(
                f"  GPU {g.index}   {g.name}: {gib(g.memory_total_bytes)}{free}, "
                f"compute {g.compute_capability or '?'}, driver {g.driver_version or '?'}, CUDA {g.cuda_version or '?'}"
            )
    else:
        why = f" ({host.gpu_probe_error})" if host.gpu_probe_error else ""
        console.print(f"  GPU     none — models run on the CPU{why}")
    d = host.docker
    if d is not None:
        if d.reachable:
            gpu = "NVIDIA runtime/CDI present" if d.nvidia_runtime else "no NVIDIA runtime"
            console.print(
                f"  Docker  engine {d.server_version} (API {d.api_version}), "
                f"compose {d.compose_version or 'v2 missing'}, {gpu}"
            )
        else:
            console.print(f"  Docker  not reachable: {escape(str(d.error))}")


def show_profiles(rows: Iterable[ProfileRow]) -> None:
    table = Table(title="Hardware profiles (backend for the default model)")
    for col in ("profile", "arch", "GPU", "VRAM", "RAM", "backend", "device", "quant", "context"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            r["name"] + (" (user)" if r["source"] == "user" else ""),
            r["arch"],
            ", ".join(r["gpus"]) or "—",
            gib(r["vram_bytes"]) if r["vram_bytes"] else "—",
            gib(r["ram_bytes"]),
            r.get("backend") or "does not fit",
            r.get("device", "—"),
            r.get("quantization", "—"),
            str(r.get("context_length", "—")),
        )
    table.add_row("auto", "this host", "detected", "", "", "", "", "", "")
    console.print(table)


def show_models(models: Iterable[ModelSpec]) -> None:
    table = Table(title="Model catalog")
    for col in ("id", "params", "layers", "KV/token", "max context", "GGUF", "reasoning"):
        table.add_column(col)
    for m in models:
        table.add_row(
            m.id,
            f"{m.params / 1e9:.2f} B",
            str(m.layers),
            f"{m.kv_bytes_per_token() / 1024:.0f} KiB",
            str(m.max_context),
            f"{m.gguf.quant} {gib(m.gguf.size_bytes)}" if m.gguf else "—",
            m.reasoning or "—",
        )
    console.print(table)


def show_plan(plan: DeploymentPlan) -> None:
    mem = plan.memory
    where = "VRAM" if mem.budget_kind == "vram" else "RAM"
    console.print(
        f"[bold]{escape(plan.model_name)}[/bold] on [bold]{escape(plan.profile)}[/bold]: "
        f"[green]{plan.backend}[/green] on {plan.device}, {plan.quantization}, {plan.context_length} tokens"
    )
    if plan.gpu_layers is not None and plan.device == "cuda":
        console.print(f"  GPU layers  {plan.gpu_layers} of {plan.total_layers}")
    console.print(
        f"  Memory      {gib(mem.weights_bytes)} weights + {gib(mem.kv_cache_bytes)} KV + "
        f"{gib(mem.overhead_bytes)} overhead = {gib(mem.total_bytes)} of {gib(mem.budget_bytes)} {where}"
    )
    console.print("  Why:")
    for reason in plan.reasons:
        console.print(f"    - {escape(reason)}")


def show_stack_plan(stack: StackPlan) -> None:
    """Several models: one row each (where, how loaded, its memory), the total per budget, and every reason."""
    packing = stack.packing
    first = stack.plan
    mode = "together" if packing.mode == "together" else f"on demand (--models-max {packing.models_max})"
    console.print(f"[bold]{len(stack.models)} models[/bold] on [bold]{escape(first.profile)}[/bold]: {mode}")
    table = Table(box=None, pad_edge=False)
    for col in ("model", "service", "backend", "device", "quant", "context", "slots", "loaded", "memory", "GPU util"):
        table.add_column(col)
    for m in stack.models:
        place = packing.placement(m.model_id)
        util = f"{place.device_fraction:.3f}" if place.device_fraction is not None else "—"
        loaded = "on demand" if m.loaded == "on_demand" else ("kept" if m.keep_loaded else "at start")
        default = " (default)" if m.model_id == stack.default_model else ""
        table.add_row(
            escape(m.model_id + default),
            m.service,
            m.plan.backend,
            m.plan.device,
            m.plan.quantization,
            str(place.context),
            str(place.slots),
            loaded,
            gib(place.total_bytes),
            util,
        )
    console.print(table)
    for budget in packing.budgets:
        if budget.planned_bytes:
            used = f"{gib(budget.planned_bytes)} of {gib(budget.usable_bytes)}"
            console.print(f"  Total       {used} on {escape(budget.name)}")
    console.print("  Why:")
    for reason in (*stack.reasons, *packing.reasons):
        console.print(f"    - {escape(reason)}")


def show_rendered(result: RenderResult) -> None:
    plan = result.spec.plan
    changed = ", ".join(result.changed) if result.changed else "nothing changed"
    console.print(f"Stack written to [bold]{escape(str(result.stack_dir))}[/bold] ({changed}).")
    for m in result.spec.models:  # several models: one line each (`deploykit plan` says why)
        p = m.plan
        how = "on demand" if m.loaded == "on_demand" else "loaded at start"
        console.print(
            f"  {escape(m.model_id)}: {p.backend} on {p.device}, {p.quantization}, {p.context_length} tokens "
            f"× {p.parallel}, service {m.service}, {how}"
        )
    if not result.spec.models:
        context = f"{plan.context_length} tokens of context"
        console.print(f"  {plan.backend} on {plan.device}, {plan.quantization}, {context}")
    if result.spec.target == "kubernetes":
        console.print("  Secrets are in .env and in kubernetes.yaml's Secret (both mode 0600).")
        console.print(f"  Next: kubectl apply -n NAMESPACE -f {result.stack_dir / 'kubernetes.yaml'}")
        return
    console.print(f"  Open WebUI will listen on port {result.spec.webui_port}; secrets are in .env (mode 0600).")
    for note in result.notes:
        Console(stderr=True, highlight=False).print(f"[yellow]Note:[/yellow] {escape(note)}")
    console.print(f"  Next: deploykit up --dir {escape(str(result.stack_dir))}")


class ConsoleReporter:
    """Progress for `up` on stderr: one line per stage, a live elapsed counter on a terminal."""

    def __init__(self) -> None:
        self.err = Console(stderr=True, highlight=False)
        self._status: Status | None = None
        self._name = ""
        self._printed = 0  # the last half-minute a progress line was printed for (no terminal)

    def stage(self, name: str) -> None:
        self._name = name
        self._printed = 0
        if self.err.is_terminal:
            self._status = self.err.status(f"{name} …")
            self._status.start()

    def tick(self, elapsed: float, detail: str) -> None:
        if self._status is not None:
            self._status.update(f"{self._name} … {elapsed:.0f} s ({detail})")
        elif int(elapsed) // 30 > self._printed:
            self._printed = int(elapsed) // 30
            self.err.print(f"  … {self._name}: {elapsed:.0f} s, {detail}")

    def done(self, result: StageResult) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None
        mark = "[green]✓[/green]" if result.ok else "[red]✗[/red]"
        at = f"  (at {result.at:.1f} s)" if result.at is not None else ""
        self.err.print(f"{mark} {result.name:22} {result.seconds:6.1f} s{at}  {result.detail}")

    def note(self, text: str) -> None:
        self.err.print(text, markup=False)  # notes quote settings such as [webui_env] literally


def show_up(report: UpReport) -> None:
    console.print(f"\n[bold green]Ready:[/bold green] open [bold]{report.url}[/bold]")
    if report.reachable:
        console.print("  Open WebUI answers on:")
        for row in report.reachable:
            console.print(f"    {row['url']:28} {row['who']}")
    if report.tls:
        show_tls(report.tls)
    if report.models:
        table = Table(title="models")
        for col in ("model", "service", "served", "first answer", "answer"):
            table.add_column(col, overflow="fold")
        for model_row in report.models:
            name = f"{model_row['model']} (default)" if model_row["default"] else model_row["model"]
            table.add_row(
                escape(name),
                model_row["service"],
                model_row["served"],
                f"{model_row['first_answer_s']:.1f} s",
                escape(model_row["detail"]),
            )
        console.print(table)
    if report.admin_created:
        console.print("  An admin account was created for you.")
    console.print(f"  Admin sign-in: {report.credentials}")
    console.print("  Try: deploykit chat --dir " + report.stack_dir + ' "Say hello"')
    for drift in report.drift:
        console.print(
            f"[yellow]Warning:[/yellow] {drift} (Open WebUI's saved settings override the stack's;"
            " fix it under Admin Panel → Settings → Connections)."
        )


def show_tls(tls: Mapping[str, object], how: bool = True) -> None:
    """The stack's certificate, and (``how``) how to trust the site CA that issued it (internal certificates)."""
    names = tls.get("names")
    named = ", ".join(map(str, names)) if isinstance(names, list) else ""
    kind = "the site's own" if tls.get("mode") == "files" else "a site CA"
    console.print(
        f"  HTTPS: {kind} certificate for {escape(named) or 'no names'} (expires {str(tls['not_after'])[:10]}, "
        f"in {tls['days_left']} days); plain HTTP is redirected to it."
    )
    trust = tls.get("trust")
    if tls.get("ca_file") and isinstance(trust, dict):
        console.print(
            f"  Trust the site CA once on each machine that opens it (copy it there): {escape(str(tls['ca_file']))}"
        )
        for where, command in trust.items() if how else ():
            console.print(f"    {where + ':':26} {escape(command)}", soft_wrap=True)


def show_status(state: StackStatus) -> None:
    mark = "[green]healthy[/green]" if state["healthy"] else "[red]not healthy[/red]"
    console.print(
        f"[bold]{escape(state['project'])}[/bold] ({state['backend']} on {state['device']}, "
        f"{escape(state['model'])}): {mark}"
    )
    table = Table()
    for col in ("service", "state", "health", "url", "model", "uptime", "restarts"):
        table.add_column(col)
    for s in state["services"]:
        uptime = f"{up // 60} min" if (up := s.get("uptime_s")) is not None else "—"
        restarts = str(s.get("restarts") or 0)
        table.add_row(
            s["service"], s["state"], s.get("health") or "—", s.get("url", ""), s.get("model") or "—", uptime, restarts
        )
    console.print(table)
    if models := state.get("models"):
        show_model_states(models)
    if override := state.get("override"):
        console.print(f"  {override['file']} is in effect on top of compose.yaml.")
    if tls := state.get("tls"):
        show_tls(tls, how=False)


def show_model_states(models: Iterable[ModelStatus]) -> None:
    """Each model of a several-model stack: its state on its server, the plan's figure and the container's.
    Models of one router share its container, so its figure stands beside each of them."""
    table = Table()
    for col in ("model", "service", "backend", "state", "planned", "container"):
        table.add_column(col)
    for m in models:
        name = f"{m['model']} (default)" if m["default"] else m["model"]
        state = m["state"] + (" (on demand)" if m["on_demand"] else "")
        measured = gib(m["container_bytes"]) if m["container_bytes"] is not None else "—"
        table.add_row(escape(name), m["service"], m["backend"], state, gib(m["planned_bytes"]), measured)
    console.print(table)


def show_models_change(change: ModelsChange) -> None:
    said = [f"added {', '.join(change.added)}"] if change.added else []
    said += [f"removed {', '.join(change.removed)}"] if change.removed else []
    console.print(f"[bold]{escape(change.stack_dir)}[/bold]: {'; '.join(said) or 'no change'}.")
    console.print(f"  serves {escape(', '.join(change.models))}")
    if change.started:
        console.print(f"  started {', '.join(change.started)} (the other services kept running)")
    if change.reloaded:
        console.print("  the router read its models again; its other models kept running")
    for note in change.notes:
        console.print(f"  {escape(note)}")


def show_checks(checks: Iterable[Check]) -> None:
    colours = {"pass": "green", "warn": "yellow", "fail": "red"}
    for c in checks:
        console.print(f"[{colours[c.status]}]{c.status.upper():4}[/{colours[c.status]}] {c.name:16} {escape(c.detail)}")
        if c.fix:
            console.print(f"     {'':16} fix: {escape(c.fix)}")


class HostReporter:
    """Progress of one fleet host on stderr, each line prefixed with its name: hosts run side by side,
    so there is no live spinner, only a line per stage and one every 30 s of waiting."""

    def __init__(self, host: str) -> None:
        self.err = Console(stderr=True, highlight=False)
        self.prefix = f"[bold]{host}[/bold] "
        self._name = ""

    def stage(self, name: str) -> None:
        self._name = name

    def tick(self, elapsed: float, detail: str) -> None:
        if int(elapsed) % 30 < 2 and elapsed >= 2:
            self.err.print(f"{self.prefix}… {self._name}: {elapsed:.0f} s, {detail}")

    def done(self, result: StageResult) -> None:
        mark = "[green]✓[/green]" if result.ok else "[red]✗[/red]"
        self.err.print(f"{self.prefix}{mark} {result.name:22} {result.seconds:6.1f} s  {result.detail}")

    def note(self, text: str) -> None:
        self.err.print(f"{self.prefix}{text}")


def show_fleet(title: str, rows: Iterable[HostResult]) -> None:
    """The fleet summary: host, profile, backend, state, URL, error; failures and their hints after it."""
    colours = {"healthy": "green", "failed": "red", "unreachable": "red", "unhealthy": "yellow"}
    table = Table(title=title)
    for col in ("host", "profile", "backend", "state", "URL", "error"):
        table.add_column(col, overflow="fold")
    rows = list(rows)
    for r in rows:
        colour = colours.get(r.state, "white")
        # A host whose stack folder merges a compose.override.yaml says so beside its name.
        host = f"{r.host} [dim](override)[/dim]" if r.details.get("override") else r.host
        table.add_row(
            host, r.profile or "—", r.backend or "—", f"[{colour}]{r.state}[/{colour}]", r.url or "—", r.error or ""
        )
    console.print(table)
    bad = [r for r in rows if not r.ok]
    for r in bad:
        if r.hint:
            console.print(f"[yellow]{r.host}:[/yellow] {r.hint}")
    if bad:
        console.print(f"[red]{len(bad)} of {len(rows)} host(s) failed or unreachable.[/red]")


err_console = Console(stderr=True, highlight=False)

# (label as `vllm bench serve` prints it, key in the JSON, format)
BENCH_ROWS = (
    ("Successful requests", "completed", "{:.0f}"),
    ("Failed requests", "failed", "{:.0f}"),
    ("Benchmark duration (s)", "duration", "{:.2f}"),
    ("Total input tokens", "total_input_tokens", "{:.0f}"),
    ("Total generated tokens", "total_output_tokens", "{:.0f}"),
    ("Request throughput (req/s)", "request_throughput", "{:.2f}"),
    ("Output token throughput (tok/s)", "output_throughput", "{:.1f}"),
    ("Total token throughput (tok/s)", "total_token_throughput", "{:.1f}"),
    ("Output tok/s per request (mean)", "output_throughput_per_request", "{:.1f}"),
    ("Mean TTFT (ms)", "mean_ttft_ms", "{:.1f}"),
    ("Median TTFT (ms)", "median_ttft_ms", "{:.1f}"),
    ("P95 TTFT (ms)", "p95_ttft_ms", "{:.1f}"),
    ("P99 TTFT (ms)", "p99_ttft_ms", "{:.1f}"),
    ("Mean TPOT (ms)", "mean_tpot_ms", "{:.2f}"),
    ("Median TPOT (ms)", "median_tpot_ms", "{:.2f}"),
    ("P99 TPOT (ms)", "p99_tpot_ms", "{:.2f}"),
    ("Mean ITL (ms)", "mean_itl_ms", "{:.2f}"),
    ("Median ITL (ms)", "median_itl_ms", "{:.2f}"),
    ("P99 ITL (ms)", "p99_itl_ms", "{:.2f}"),
    ("Mean E2EL (ms)", "mean_e2el_ms", "{:.0f}"),
    ("P99 E2EL (ms)", "p99_e2el_ms", "{:.0f}"),
)


def _ratio(value: float | None) -> str:
    return f"{value:.1%}" if value is not None else "—"


def show_bench(report: BenchReport) -> None:
    w = report["workload"]
    console.print(
        f"[bold]deploykit bench[/bold] — streaming chat completions, {w['prompt_tokens']} prompt tokens, "
        f"{w['max_tokens']} output tokens each (EOS ignored)"
    )
    table = Table()
    table.add_column("")
    columns = []
    for s in report["stacks"]:
        flags = f"{s['flags']['threads']}t/{s['flags']['parallel']}np"
        for level in s["levels"]:
            columns.append(level)
            table.add_column(
                f"{s['project']}\n{escape(s['model'])}\n{flags} via {s['via']}\nconcurrency {level['concurrency']}",
                justify="right",
            )
    for label, key, fmt in BENCH_ROWS:
        table.add_row(label, *(fmt.format(level["metrics"][key]) for level in columns))
    table.add_row(
        "Server-counted generated tokens",
        *(str(lv["server"].get("server_output_tokens", "—")) for lv in columns),
    )
    table.add_row("  ours ÷ server's", *(_ratio(lv["server"].get("output_tokens_ratio")) for lv in columns))
    table.add_row(
        "Server tok/s over its busy time",
        *(f"{v:.1f}" if (v := lv["server"].get("server_request_tokens_per_s")) else "—" for lv in columns),
    )
    table.add_row(
        "  ours (over latency) ÷ server's", *(_ratio(lv["server"].get("request_speed_ratio")) for lv in columns)
    )
    table.add_row(
        "Server decode tok/s per slot",
        *(f"{v:.1f}" if (v := lv["server"].get("server_decode_tokens_per_s")) else "—" for lv in columns),
    )
    table.add_row("  ours ÷ server's", *(_ratio(lv["server"].get("decode_speed_ratio")) for lv in columns))
    console.print(table)
    for s in report["stacks"]:
        for level in s["levels"]:
            for error in level["errors"]:
                console.print(f"[red]{s['project']} concurrency {level['concurrency']}:[/red] {error}")
    if report.get("chart"):
        console.print(f"Chart: {report['chart']}")


def show_tune_goal(name: str | None, concurrency: int) -> None:
    err_console.print(f"Optimising for {name or f'concurrency {concurrency}'}: {concurrency} chat(s) at once.")


def show_tune(report: TuneReport) -> None:
    w = report.workload
    console.print(f"[bold]deploykit tune[/bold] — optimised for [bold]{w['name']}[/bold]: {w['objective']}")
    if report.model and report.service:
        console.print(f"  Model {report.model}, served by {report.service}.")
    console.print(f"  {report.cpus} CPUs on the engine's machine; {len(report.rows)} settings measured.")
    table = Table()
    for col in ("threads", "parallel", "output tok/s", "tok/s per request", "median TTFT ms", "of best", "note"):
        table.add_column(col, justify="right" if col != "note" else "left")
    for row in report.rows:
        m = row["metrics"]
        note = "current" if row["current"] else ""
        if row["threads"] == report.winner["threads"] and row["parallel"] == report.winner["parallel"]:
            note = (note + ", winner").lstrip(", ")
        if "repeat" in row:
            note = (note + ", measured twice (of best: the mean)").lstrip(", ")
        if row.get("skipped"):
            note = (note + " skipped: " + row["skipped"][:80]).strip()
        elif row["errors"]:
            note = (note + " " + row["errors"][0][:60]).strip()
        table.add_row(
            str(row["threads"]),
            str(row["parallel"]),
            f"{m['output_throughput']:.1f}" if m else "—",
            f"{m['output_throughput_per_request']:.1f}" if m else "—",
            f"{m['median_ttft_ms']:.0f}" if m else "—",
            f"{row['of_best']:.0%}",
            note,
        )
    console.print(table)
    before = next((r for r in report.rows if r["current"]), None)
    if report.settings_file:
        console.print(
            f"Winner: threads={report.winner['threads']} parallel={report.winner['parallel']}, written to "
            f"{report.settings_file}; the stack now runs it."
        )
    if report.confirmed and before and before["metrics"]:
        gain = report.confirmed["output_throughput"] / max(before["metrics"]["output_throughput"], 1e-9)
        console.print(
            f"Re-measured: {report.confirmed['output_throughput']:.1f} tok/s "
            f"(before: {before['metrics']['output_throughput']:.1f} tok/s, ×{gain:.2f})."
        )
    for note in report.notes:
        console.print(f"[yellow]Note:[/yellow] {note}")
    state = "[green]healthy[/green]" if report.healthy else "[red]not healthy[/red]"
    console.print(f"Stack {state}. Check: deploykit bench --dir {report.stack_dir} --concurrency {w['concurrency']}")


# ---------------------------------------------------------------- one line or three: day 2 and data
# Printed as they are (click.echo), not through rich: paths and secrets' hashes must not be wrapped or styled.


def show_restarted(service: str | None) -> None:
    click.echo(f"Restarted {service or 'the whole stack'}.")


def show_stopped(project: str, volumes: bool) -> None:
    kept = "data deleted" if volumes else "chats, accounts and the model cache kept"
    click.echo(f"Stopped {project} ({kept}).")


def show_answer(answer: ChatAnswer) -> None:
    click.echo(answer.text())


def show_smoke(report: SmokeReport) -> None:
    for c in report.checks:
        click.echo(f"{c['status'].upper():5} {c['name']:32} {c['detail']}")


def show_exported(names: list[str], directory: str) -> None:
    click.echo(f"Wrote {len(names)} templates to {directory}: {', '.join(names)}.")
    click.echo("Keep only the ones you change, and point templates_dir at the directory.")


def show_rebased(names: list[str], directory: str) -> None:
    click.echo(f"Recorded {', '.join(names) or 'no shadowed templates'} as current in {directory}.")


def show_backup(report: BackupReport, stack_dir: str) -> None:
    size = report.manifest.size_bytes / MiB
    click.echo(f"Backed up {report.files} files of {report.manifest.volume} to {report.path} ({size:.1f} MiB).")
    click.echo(f"  sha256 {report.manifest.sha256}; Open WebUI paused {report.paused_seconds:.1f} s.")
    click.echo(f"  Restore with: deploykit restore --dir {stack_dir} {report.path}")


def show_restore(report: RestoreReport, stack_dir: str) -> None:
    click.echo(f"Restored {report.path} (taken {report.manifest.created} from {report.manifest.project}).")
    if report.webui_restarted:
        click.echo(f"  Open WebUI was down {report.downtime_seconds:.0f} s and answers again.")
    else:
        click.echo(f"  Open WebUI was not running; start the stack with: deploykit up --dir {stack_dir}")


def show_upgrade(report: UpgradeReport) -> None:
    for service, (old, new) in report.images.items():
        click.echo(f"{service}: {old} → {new}" if old != new else f"{service}: {new} (unchanged)")
    if report.backup:
        click.echo(f"Backup kept: {report.backup}")
    if report.restored:
        click.echo(f"Started on the data of {report.restored}")
    show_up(report.up)


def show_eval(report: Mapping[str, Any]) -> None:
    data = report["data"]
    console.print(
        f"[bold]deploykit eval[/bold] — {escape(str(data['name']))}, {data['items']} items × {report['samples']} "
        f"samples ({escape(str(data['source']))})"
    )
    for stack in report["stacks"]:
        m = stack["metrics"]
        low, high = m["ci95"]
        console.print(
            f"\n[bold]{escape(str(stack['project']))}[/bold] ({escape(str(stack['model']))} via {stack['via']}): "
            f"pass@1 [bold]{100 * m['pass@1']:.1f} %[/bold] (95 % CI {100 * low:.1f}–{100 * high:.1f} %), "
            f"{m['passed']} of {m['samples']} passed"
            + "".join(f", {k} {100 * v:.1f} %" for k, v in m.items() if k.startswith("pass@") and k != "pass@1")
        )
        console.print(f"  cut by the token budget: {m['cut_by_length']}; errors: {m['errors']}")
        published = stack.get("published") or {}
        if published:
            figures = ", ".join(f"{k} {v}" for k, v in published["figures"].items())
            console.print(f"  published: {escape(figures)} ({escape(published['source'])})")
        for item in stack["outcomes"]:
            reasons = "; ".join(sorted({str(o["reason"])[:80] for o in item["outcomes"]}))
            mark = (
                "[green]pass[/green]"
                if item["passed"] == item["samples"]
                else ("[red]fail[/red]" if not item["passed"] else "[yellow]some[/yellow]")
            )
            console.print(
                f"  {mark} {escape(str(item['key'])):24} {item['passed']}/{item['samples']}  {escape(reasons)}"
            )
        console.print(f"  results kept in {escape(str(stack['store']))}")
    comparison = report.get("compare")
    if comparison:
        verdict = "[bold]exceeds noise[/bold]" if comparison["exceeds_noise"] else "within noise"
        console.print(
            f"\nCompared on {comparison['items']} items: difference {100 * comparison['difference']:+.1f} points "
            f"({comparison['only_first']} passed only on the first, {comparison['only_second']} only on the second); "
            f"McNemar exact p = {comparison['p_value']:.3g}: {verdict}."
        )
    if "report" in report:
        console.print(f"Report written to {escape(str(report['report']))}")
