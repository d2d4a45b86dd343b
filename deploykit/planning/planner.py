"""The planner: memory arithmetic that picks a backend, a context length and an offload split.

Pure: a host profile, a model and the plan settings in, a ``DeploymentPlan`` (or a ``NoFit``) out.
No files, no processes, no clock. Every figure in the plan is in bytes; every decision comes with a
sentence in ``reasons`` that a person can check against the arithmetic.

Order of preference (the design's rule), the order of ``deploykit.backends.BACKENDS``:
1. vLLM in FP16/BF16 on the GPU when weights + KV cache for at least 4096 tokens + runtime overhead
   fit in VRAM × utilisation;
2. llama.cpp with the GGUF-Q4 file fully offloaded to the GPU, else with as many layers on the GPU as fit;
3. llama.cpp on the CPU, in RAM (``CPU_FALLBACK``).
A profile may prefer a backend (``cpu-vllm`` runs vLLM's CPU build) and ``--backend`` forces one.
Each backend plans one model on the budget it is handed; the budget is worked out here, once.
"""

from __future__ import annotations

from deploykit import backends
from deploykit.backends.base import ModelRequest, ThreadChoice
from deploykit.backends.memory import gpu_budget, ram_budget
from deploykit.values.host import HostProfile
from deploykit.values.model import ModelSpec
from deploykit.values.plan import DeploymentPlan, LocalWeights, NoFit, PlanSettings, RunHost
from deploykit.values.units import gib

NO_GPU = "No NVIDIA GPU in this profile: the model runs on the CPU."


def choose_threads(host: HostProfile, settings: PlanSettings, runs_on: RunHost | None) -> ThreadChoice:
    """Threads for the server: physical cores (SMT siblings only contend), never more than the
    cores of the host that runs it unless the user says so."""
    cores = max(1, host.cpu.physical_cores)
    if settings.threads is not None:
        n = settings.threads
        if runs_on is not None and n > runs_on.cores:
            note = (
                f"threads={n} is set, and {runs_on.where} has {runs_on.cores} cores: threads beyond the cores "
                "contend (4 threads on 2 cores served a third as fast as 2, docs/benchmarks.md)."
            )
            return ThreadChoice(n, f"{n} threads: set in settings. {note}", (note,))
        return ThreadChoice(n, f"{n} threads: set in settings.")
    if runs_on is not None and runs_on.cores != cores:
        n = min(cores, runs_on.cores)
        if runs_on.cores < cores:
            note = (
                f"Profile {host.name} describes {cores} physical cores and {runs_on.where} has {runs_on.cores}: "
                f"{n} threads, since threads beyond the cores only contend."
            )
        else:
            note = (
                f"Profile {host.name} describes {cores} physical cores and {runs_on.where} has {runs_on.cores}: "
                f"keeping the profile's {n} threads (--profile auto, or threads = {runs_on.cores}, uses them all)."
            )
        return ThreadChoice(n, note, (note,))
    return ThreadChoice(
        cores,
        f"{cores} threads, one per physical core" + (f" ({runs_on.where} agrees)." if runs_on is not None else "."),
    )


def _with_skipped(plan: DeploymentPlan, skipped: list[str]) -> DeploymentPlan:
    """The plan with the backends passed over said first."""
    return plan.model_copy(update={"reasons": (*skipped, *plan.reasons)}) if skipped else plan


def plan_deployment(
    host: HostProfile,
    model: ModelSpec,
    settings: PlanSettings,
    weights: LocalWeights | None = None,
    runs_on: RunHost | None = None,
) -> DeploymentPlan:
    """Choose backend, device, quantisation, context, offload and serving flags for ``model`` on ``host``.

    ``runs_on`` is the machine that will run the stack, when the caller knows it (``up`` on a local
    engine): the flags are fitted to it while the memory arithmetic stays the profile's.
    Raises ``NoFit`` when nothing fits.
    """
    request = ModelRequest(host, model, weights, settings, choose_threads(host, settings, runs_on))
    wanted = settings.backend or host.preferred_backend
    if wanted is not None and wanted not in backends.names():
        raise NoFit(model.name, 0, 0, "vram" if host.gpus else "ram", f"no backend is named {wanted!r}")
    skipped: list[str] = []
    asked_on_cpu, fallback = backends.on_cpu(wanted, bool(host.gpus))
    forced = backends.named(settings.backend) if settings.backend else None
    if forced is not None and fallback is not forced:
        fallback = None  # a backend the user forced is never swapped for another without a word
    ways = [(b, gpu_budget(host, settings)) for b in backends.on_gpu(wanted)] if host.gpus else []
    # On a GPU every backend asked for (all, unless one is) tries its share of it, in order of preference.
    for backend, budget in [*ways, *((b, ram_budget(host)) for b in asked_on_cpu)]:
        plan = backend.plan(request, budget)
        if isinstance(plan, DeploymentPlan):
            return _with_skipped(plan, skipped)
        skipped.append(f"{backend.skipped_as}: {plan.detail}.")
    if fallback is None:
        kind = "vram" if host.gpus else "ram"
        if forced is not None:
            tried = " ".join(skipped).rstrip(".")
            raise NoFit(model.name, 0, 0, kind, f"--backend {forced.name} was asked for and cannot serve it ({tried}).")
        raise NoFit(model.name, 0, 0, "vram", " ".join(skipped))
    last = fallback.plan(request, ram_budget(host))
    if isinstance(last, NoFit):
        raise last
    # What serves what is left says why: no GPU here, and what it passed over.
    return _with_skipped(last, [NO_GPU, *skipped] if not host.gpus else skipped)


def suggest_alternative(
    host: HostProfile,
    model: ModelSpec,
    settings: PlanSettings,
    catalog: tuple[ModelSpec, ...],
) -> str | None:
    """The nearest thing that would fit: a shorter context first, then a smaller catalog model."""
    for ctx in (2048, 1024, 512):
        if ctx >= settings.max_context:
            continue
        try:
            plan = plan_deployment(host, model, settings.model_copy(update={"max_context": ctx}))
        except NoFit:
            continue
        return f"a shorter context fits: --context {ctx} ({plan.backend}, {gib(plan.memory.total_bytes)})."
    smaller = sorted((m for m in catalog if m.params < model.params), key=lambda m: -m.params)
    for candidate in smaller:
        try:
            plan = plan_deployment(host, candidate, settings)
        except NoFit:
            continue
        return (
            f"a smaller model fits: --model {candidate.id} "
            f"({plan.backend} {plan.quantization}, {gib(plan.memory.total_bytes)})."
        )
    return None
