"""A stack of one or more models planned together: each alone, then packed on the shared memory, then each
planned again into its place.

Pure: the host, the models (``ModelInput``, default first) and the plan settings in, a ``StackPlan`` out, or
a ``StackRefused`` (the packer's refusal, naming the model that does not fit and the nearest alternative).

1. Each model is planned alone on the whole budget, as a one-model stack is today (backend choice, a backend
   or quantisation asked for this model, its context cap).
2. Its backend states its traits (``Backend.stack_traits``): a router can swap it, it takes a device
   fraction, its floors. The packer (``planning.packing.pack``) places every model on the host's memory:
   together, with fewer slots, on demand behind the router, with a shorter context, or refused.
3. Each model is planned again by its backend into its placement (its slots, context and, for a model sized
   by a device fraction, ``--gpu-memory-utilization``), so every flag and sentence stays the backend's.

One model never goes through the router or the packer's re-plan: its plan is ``plan_deployment``'s, and the
stack renders byte for byte as before.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from deploykit import backends
from deploykit.backends.base import ModelRequest, StackTraits
from deploykit.backends.memory import Budget, best_gpu, gpu_budget, usable_ram
from deploykit.planning.packing import MemoryPool, ModelDemand, PackingRefused, demand_from_plan, pack
from deploykit.planning.planner import choose_threads, plan_deployment
from deploykit.values.host import HostProfile
from deploykit.values.plan import DeploymentPlan, ModelInput, NoFit, PlanSettings, RunHost
from deploykit.values.services import INFERENCE
from deploykit.values.stackplan import (
    MAX_MODELS,
    ROUTER,
    Packing,
    Placement,
    StackModel,
    StackPlan,
    inference_service,
)
from deploykit.values.units import MiB, gib

RAM_POOL = "RAM"
# What a model re-planned into its placement may have beyond the packer's figure: the per-token KV the packer
# works with is rounded down, so exactly its total could fall a few bytes short of the backend's own sum.
REPLAN_SLACK_BYTES = 8 * MiB


@dataclass  # not frozen: raising assigns __traceback__
class StackRefused(Exception):
    """The models cannot be served together on this host: which one, why, and what would fit instead."""

    model_id: str
    detail: str
    alternative: str | None = None

    def __str__(self) -> str:
        return self.detail


def model_settings(settings: PlanSettings, entry: ModelInput) -> PlanSettings:
    """The stack's settings with what was asked of this model alone laid over them."""
    update: dict[str, object] = {}
    if (wanted := entry.backend) is not None:
        update["backend"] = wanted
    if entry.context is not None:
        update["max_context"] = entry.context
    for knob in ("threads", "parallel"):  # this model's serving knobs win over the stack's
        if (value := getattr(entry, knob)) is not None:
            update[knob] = value
    return settings.model_copy(update=update) if update else settings


def plan_alone(
    host: HostProfile, entry: ModelInput, settings: PlanSettings, runs_on: RunHost | None = None
) -> DeploymentPlan:
    """One model on the whole budget, as a one-model stack plans it; with a quantisation asked for, the first
    backend (in order of preference, or the one asked for) whose plan serves that quantisation."""
    mine = model_settings(settings, entry)
    if entry.quantization is None:
        return plan_deployment(host, entry.model, mine, entry.weights, runs_on)
    wanted = entry.quantization.lower()
    tried: list[str] = []
    for name in (mine.backend,) if mine.backend else backends.names():
        try:
            plan = plan_deployment(host, entry.model, mine.model_copy(update={"backend": name}), entry.weights, runs_on)
        except NoFit as nofit:
            tried.append(f"{name}: {nofit.detail}")
            continue
        if plan.quantization.lower() == wanted:
            return plan
        tried.append(f"{name} serves it as {plan.quantization}")
    raise NoFit(
        entry.model.name,
        0,
        0,
        "vram" if host.gpus else "ram",
        f"no backend serves it as {entry.quantization} ({'; '.join(tried)})",
    )


def plan_stack(
    host: HostProfile,
    models: Sequence[ModelInput],
    settings: PlanSettings,
    *,
    inference_port: int,
    runs_on: RunHost | None = None,
) -> StackPlan:
    """Every model of a stack, the default (``models[0]``) first, planned, packed and planned into its place.

    ``inference_port`` is the first loopback port the stack publishes its servers on: the default model's
    service gets it, each further service the next one, in the order of their first model.
    Raises ``NoFit`` when one model cannot run on the host even alone, ``StackRefused`` when they do not fit
    together in any way the packer tries.
    """
    if not models:
        raise ValueError("a stack needs at least one model")
    if len(models) > MAX_MODELS:
        raise StackRefused(
            models[-1].model.id, f"a stack serves at most {MAX_MODELS} models; {len(models)} were given."
        )
    models = _distinct(models)
    _check_ids(models)
    if len(models) == 1:
        return _single(plan_alone(host, models[0], settings, runs_on), models[0], inference_port)
    alone = [_alone_in_stack(host, entry, settings, runs_on) for entry in models]
    traits = [backends.named(p.backend).stack_traits(p, e.model) for p, e in zip(alone, models, strict=True)]
    routed = _routable(alone, traits)
    demands = [
        _demand(host, entry, plan, trait, plan.model_id in routed, settings, runs_on)
        for entry, plan, trait in zip(models, alone, traits, strict=True)
    ]
    pools = _pools(host, settings)
    router_bytes = _router_bytes(alone, routed)
    try:
        packing = pack(demands, pools, router_overhead_bytes=router_bytes)
    except PackingRefused as refused:
        raise StackRefused(refused.model_id, refused.detail, refused.alternative) from None
    plans = [
        _plan_placed(host, entry, plan, packing.placement(plan.model_id), pools, packing, settings, runs_on)
        for entry, plan in zip(models, alone, strict=True)
    ]
    return _stack(models, plans, packing, routed, inference_port)


def _alone_in_stack(
    host: HostProfile, entry: ModelInput, settings: PlanSettings, runs_on: RunHost | None
) -> DeploymentPlan:
    """A model of a stack of several alone; one that cannot run as asked is refused with what would run."""
    try:
        return plan_alone(host, entry, settings, runs_on)
    except NoFit as nofit:
        if not (entry.backend or entry.quantization):
            raise
        free = entry.model_copy(update={"backend": None, "quantization": None})
        try:
            other = plan_alone(host, free, settings, runs_on)
        except NoFit:
            raise nofit from None
        raise StackRefused(
            entry.model.id,
            f"{nofit.model_name} does not fit as asked: {nofit.detail}",
            f"{other.model_name} as {other.backend} {other.quantization} fits "
            f"({gib(other.memory.total_bytes)}): leave out the backend or quantisation asked for it.",
        ) from None


def _distinct(models: Sequence[ModelInput]) -> list[ModelInput]:
    """The same model asked for again in another quantisation or backend (the article's FP16 against Q4) is
    served under its id with that choice appended ("deepseek-r1-distill-qwen-1.5b-q4_k_m")."""
    seen: set[str] = set()
    out = []
    for entry in models:
        model_id = entry.model.id
        asked = entry.quantization or entry.backend
        if model_id in seen and asked:
            renamed = entry.model.model_copy(update={"id": f"{model_id}-{asked.lower()}"})
            entry = entry.model_copy(update={"model": renamed})
        seen.add(entry.model.id)
        out.append(entry)
    return out


def _check_ids(models: Sequence[ModelInput]) -> None:
    seen: dict[str, str] = {}
    for entry in models:
        model_id = entry.model.id
        service = inference_service(model_id)
        if service in seen:
            raise StackRefused(
                model_id,
                f"model {model_id} is given twice."
                if seen[service] == model_id
                else f"models {seen[service]} and {model_id} would share the service name {service}.",
                "Give the second its own quantization or backend (it is then served as "
                f"{model_id}-<quantization>), or leave it out.",
            )
        seen[service] = model_id


def _single(plan: DeploymentPlan, entry: ModelInput, inference_port: int) -> StackPlan:
    """One model: today's plan, today's ``inference`` service, nothing packed or re-planned."""
    backend = backends.named(plan.backend)
    memory = plan.memory
    placement = Placement(
        plan.model_id,
        plan.backend,
        memory.budget_kind,
        "always",
        plan.context_length,
        plan.parallel,
        memory.weights_bytes,
        memory.kv_cache_bytes,
        memory.overhead_bytes,
        memory.total_bytes,
        memory.total_bytes,
        plan.gpu_memory_utilization,
    )
    packing = Packing("together", (placement,), None, (), (plan.model_id,), (), ())
    served = StackModel(
        model_id=plan.model_id,
        plan=plan,
        service=INFERENCE,
        container_port=backend.container_port,
        server_url=f"http://{INFERENCE}:{backend.container_port}/v1",
        published_port=inference_port,
        behind_router=False,
        loaded="always",
        load_at_start=True,
        keep_loaded=entry.keep_loaded,
    )
    return StackPlan(models=(served,), packing=packing, default_model=plan.model_id)


def _routable(plans: Sequence[DeploymentPlan], traits: Sequence[StackTraits]) -> set[str]:
    """The models a router may serve: those of a backend that routes (which of them the router serves in the
    end is the packing's: two or more of them, loaded together or swapped on demand)."""
    if len({p.backend for p, t in zip(plans, traits, strict=True) if t.routable}) > 1:
        raise ValueError("two backends that route in one stack: one router each is not written yet")
    return {p.model_id for p, t in zip(plans, traits, strict=True) if t.routable}


def _router_bytes(plans: Sequence[DeploymentPlan], routed: set[str]) -> int:
    for plan in plans:
        if plan.model_id in routed:
            return backends.named(plan.backend).router_overhead(plan.device)
    return 0


def _demand(
    host: HostProfile,
    entry: ModelInput,
    plan: DeploymentPlan,
    trait: StackTraits,
    routed: bool,
    settings: PlanSettings,
    runs_on: RunHost | None,
) -> ModelDemand:
    """The model's demand, and the same model served by each other backend (the refusal's alternatives)."""
    alternatives = []
    mine = backends.named(plan.backend)
    asked = bool(entry.backend or entry.quantization)
    for way in () if asked else backends.BACKENDS:
        if way is mine:
            continue
        try:
            other = plan_deployment(
                host, entry.model, settings.model_copy(update={"backend": way.name}), entry.weights, runs_on
            )
        except NoFit:
            continue
        other_trait = backends.named(other.backend).stack_traits(other, entry.model)
        alternatives.append(_as_demand(other, other_trait, other_trait.routable, entry, ()))
    return _as_demand(plan, trait, routed, entry, tuple(alternatives))


def _as_demand(
    plan: DeploymentPlan, trait: StackTraits, routed: bool, entry: ModelInput, alternatives: tuple[ModelDemand, ...]
) -> ModelDemand:
    return demand_from_plan(
        plan,
        on_demand=routed,
        takes_share=trait.takes_share,
        min_context=trait.min_context,
        kv_bytes_per_token=trait.kv_bytes_per_token,
        kv_granularity_bytes=trait.kv_granularity_bytes,
        keep_loaded=entry.keep_loaded,
        alternatives=alternatives,
        # Slots asked for this model are kept: the packer serves it on demand or with a shorter context, or
        # refuses it, rather than give it fewer.
        **({"min_slots": plan.parallel} if entry.parallel is not None else {}),
    )


def _pools(host: HostProfile, settings: PlanSettings) -> list[MemoryPool]:
    """The memory the stack's models share: the GPU the planner plans on (its share), and the RAM."""
    pools = []
    if host.gpus:
        gpu = best_gpu(host)
        budget = gpu_budget(host, settings)
        pools.append(MemoryPool(f"GPU {gpu.index} ({gpu.name})", "vram", budget.bytes, gpu.memory_total_bytes))
    pools.append(MemoryPool(RAM_POOL, "ram", usable_ram(host), usable_ram(host)))
    return pools


def _plan_placed(
    host: HostProfile,
    entry: ModelInput,
    alone: DeploymentPlan,
    placement: Placement,
    pools: Sequence[MemoryPool],
    packing: Packing,
    settings: PlanSettings,
    runs_on: RunHost | None,
) -> DeploymentPlan:
    """The model planned again by its backend into its placement: its slots and context, its share."""
    backend = backends.named(alone.backend)
    mine = model_settings(settings, entry).model_copy(
        update={"backend": alone.backend, "parallel": placement.slots, "max_context": placement.context}
    )
    request = ModelRequest(host, entry.model, entry.weights, mine, choose_threads(host, mine, runs_on))
    budget = _placed_budget(host, alone, placement, pools, packing, settings)
    plan = backend.plan(request, budget)
    if isinstance(plan, NoFit):  # the packer's arithmetic is the backend's: this is a bug, said as one
        raise AssertionError(f"{alone.model_id} planned into its placement does not fit: {plan.detail}")
    return plan


def _placed_budget(
    host: HostProfile,
    alone: DeploymentPlan,
    placement: Placement,
    pools: Sequence[MemoryPool],
    packing: Packing,
    settings: PlanSettings,
) -> Budget:
    pool = next(p for p in pools if p.name == placement.budget)
    used = next(b for b in packing.budgets if b.name == placement.budget)
    spare = max(0, used.usable_bytes - used.planned_bytes)
    ram = usable_ram(host)
    if pool.memory == "ram":
        return Budget("cpu", placement.total_bytes + spare, ram)
    gpu = best_gpu(host)
    if placement.device_fraction is not None:
        why = f"this model's share of the {gpu.name} beside the stack's other models (the packing below)"
        return Budget("cuda", placement.share_bytes, ram, gpu, placement.device_fraction, why)
    # Its own total and no more (a little for rounding): more VRAM would put more of a split model's layers on the
    # GPU than the packing counted.
    share = gpu_budget(host, settings)
    room = placement.total_bytes + min(spare, REPLAN_SLACK_BYTES)
    return Budget("cuda", room, ram, gpu, share.share, "its share beside the stack's other models")


def _stack(
    models: Sequence[ModelInput],
    plans: Sequence[DeploymentPlan],
    packing: Packing,
    routed: set[str],
    inference_port: int,
) -> StackPlan:
    on_demand_pool = {p.model_id for p in packing.placements if p.loaded == "on_demand"}
    behind = {m for m in routed if packing.mode == "together" or m in on_demand_pool}
    if len(behind) < 2:  # one routable model is served by a server of its own, as a one-model stack is
        behind = set()
    ports: dict[str, int] = {}
    served = []
    for entry, plan in zip(models, plans, strict=True):
        backend = backends.named(plan.backend)
        service = ROUTER if plan.model_id in behind else inference_service(plan.model_id)
        ports.setdefault(service, inference_port + len(ports))
        placement = packing.placement(plan.model_id)
        served.append(
            StackModel(
                model_id=plan.model_id,
                plan=plan,
                service=service,
                container_port=backend.container_port,
                server_url=f"http://{service}:{backend.container_port}/v1",
                published_port=ports[service],
                behind_router=plan.model_id in behind,
                loaded=placement.loaded,
                load_at_start=placement.loaded == "always" or plan.model_id in packing.load_on_start,
                keep_loaded=entry.keep_loaded,
            )
        )
    return StackPlan(models=tuple(served), packing=packing, default_model=plans[0].model_id)
