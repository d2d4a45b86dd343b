"""Human-readable output for the CLI (the ``--json`` forms bypass this module)."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from deploykit.plan import gib

if TYPE_CHECKING:
    from deploykit.app import RenderResult
    from deploykit.catalog import ModelSpec
    from deploykit.host import HostProfile
    from deploykit.plan import DeploymentPlan

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
            console.print(f"  Docker  not reachable: {d.error}")


def show_profiles(rows: Iterable[dict[str, Any]]) -> None:
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
        f"[bold]{plan.model_name}[/bold] on [bold]{plan.profile}[/bold]: "
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
        console.print(f"    - {reason}")


def show_rendered(result: RenderResult) -> None:
    plan = result.spec.plan
    changed = ", ".join(result.changed) if result.changed else "nothing changed"
    console.print(f"Stack written to [bold]{result.stack_dir}[/bold] ({changed}).")
    console.print(f"  {plan.backend} on {plan.device}, {plan.quantization}, {plan.context_length} tokens of context")
    if result.spec.target == "kubernetes":
        console.print("  Secrets are in .env and in kubernetes.yaml's Secret (both mode 0600).")
        console.print(f"  Next: kubectl apply -n NAMESPACE -f {result.stack_dir / 'kubernetes.yaml'}")
        return
    console.print(f"  Open WebUI will listen on port {result.spec.webui_port}; secrets are in .env (mode 0600).")
    from rich.markup import escape

    for note in result.notes:
        Console(stderr=True, highlight=False).print(f"[yellow]Note:[/yellow] {escape(note)}")
    console.print(f"  Next: deploykit up --dir {result.stack_dir}")


class ConsoleReporter:
    """Progress for `up` on stderr: one line per stage, a live elapsed counter on a terminal."""

    def __init__(self) -> None:
        self.err = Console(stderr=True, highlight=False)
        self._status: Any = None
        self._name = ""

    def stage(self, name: str) -> None:
        self._name = name
        if self.err.is_terminal:
            self._status = self.err.status(f"{name} …")
            self._status.start()

    def tick(self, elapsed: float, detail: str) -> None:
        if self._status is not None:
            self._status.update(f"{self._name} … {elapsed:.0f} s ({detail})")
        elif int(elapsed) % 30 < 2 and elapsed >= 2:
            self.err.print(f"  … {self._name}: {elapsed:.0f} s, {detail}")

    def done(self, result: Any) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None
        mark = "[green]✓[/green]" if result.ok else "[red]✗[/red]"
        self.err.print(f"{mark} {result.name:22} {result.seconds:6.1f} s  {result.detail}")

    def note(self, text: str) -> None:
        self.err.print(text, markup=False)  # notes quote settings such as [webui_env] literally


def show_up(report: Any) -> None:
    console.print(f"\n[bold green]Ready:[/bold green] open [bold]{report.url}[/bold]")
    if report.reachable:
        console.print("  Open WebUI answers on:")
        for row in report.reachable:
            console.print(f"    {row['url']:28} {row['who']}")
    if report.admin_created:
        console.print("  An admin account was created for you.")
    console.print(f"  Admin sign-in: {report.credentials}")
    console.print("  Try: deploykit chat --dir " + report.stack_dir + ' "Say hello"')
    for drift in report.drift:
        console.print(
            f"[yellow]Warning:[/yellow] {drift} (Open WebUI's saved settings override the stack's;"
            " fix it under Admin Panel → Settings → Connections)."
        )


def show_status(state: dict[str, Any]) -> None:
    mark = "[green]healthy[/green]" if state["healthy"] else "[red]not healthy[/red]"
    console.print(
        f"[bold]{state['project']}[/bold] ({state['backend']} on {state['device']}, {state['model']}): {mark}"
    )
    table = Table()
    for col in ("service", "state", "health", "url", "model", "uptime", "restarts"):
        table.add_column(col)
    for s in state["services"]:
        uptime = f"{s['uptime_s'] // 60} min" if s.get("uptime_s") is not None else "—"
        restarts = str(s.get("restarts") or 0)
        table.add_row(
            s["service"], s["state"], s.get("health") or "—", s.get("url", ""), s.get("model") or "—", uptime, restarts
        )
    console.print(table)
    if state.get("override"):
        console.print(f"  {state['override']['file']} is in effect on top of compose.yaml.")


def show_checks(checks: Iterable[Any]) -> None:
    colours = {"pass": "green", "warn": "yellow", "fail": "red"}
    for c in checks:
        console.print(f"[{colours[c.status]}]{c.status.upper():4}[/{colours[c.status]}] {c.name:16} {c.detail}")
        if c.fix:
            console.print(f"     {'':16} fix: {c.fix}")
