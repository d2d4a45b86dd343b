"""Several models on one memory budget: loaded together, served on demand, shrunk until they fit, or refused.

Pure: per-model demands (what each model needs, as its backend works it out) and the budgets (one GPU,
several GPUs, or RAM) in, a ``Packing`` out, or a ``PackingRefused`` that names the model that does not fit
and the nearest alternative. No files, no processes, no clock; every figure in bytes, every decision with a
sentence in ``reasons``. The packer never asks which backend a model runs on: what matters is in the demand
(``on_demand``: a router can load and unload it; ``takes_share``: it is sized by a fraction of the device).

The order it tries, first fit wins (docs/several-models.md says why):
1. together, as asked: every model loaded at once;
2. together with fewer slots (halving, down to each model's ``min_slots``): a side-by-side chat still gets
   every answer without a swap, a request beyond the slots waits its turn;
3. on demand: the models a router can swap share what the always-loaded ones leave, the router keeping at
   most ``models_max`` loaded (sized so that the largest ones fit at once), ``keep_loaded`` ones outside it;
4. together with a shorter context (halving, down to each model's ``min_context``), with the fewest slots;
5. refuse, naming the model and the nearest alternative: another way to serve it (e.g. GGUF Q4), on demand
   instead of ``keep_loaded``, or fewer models.

Two models sized by a device fraction (vLLM's ``--gpu-memory-utilization``) on one GPU each get the fraction
of the whole device that holds their share, and start one after the other before anything else on that GPU:
each checks at start that its fraction is free and measures its own use by the device's free memory, so
another process allocating or freeing while it starts is counted against it (vLLM #10533, #14376, #55827).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

from deploykit.values.plan import DeploymentPlan
from deploykit.values.stackplan import BudgetUse, MemoryKind, Mode, Packing, Placement
from deploykit.values.units import gib

# The result types are plain data in deploykit.values.stackplan (a StackPlan holds its Packing); named here too.
__all__ = [
    "BudgetUse",
    "MemoryPool",
    "ModelDemand",
    "Packing",
    "PackingRefused",
    "Placement",
    "demand_from_plan",
    "pack",
]


@dataclass(frozen=True)
class ModelDemand:
    """What one model needs at the context and slots asked for, and how far it may shrink."""

    model_id: str
    backend: str  # opaque here: recorded in the placement for whoever renders the service
    weights_bytes: int
    kv_bytes_per_token: int  # one token of context in one slot, the KV cache type applied
    overhead_bytes: int  # runtime and compute buffers, whatever the context
    context: int  # context per slot asked for
    slots: int  # llama.cpp slots (-np) or vLLM full-length sequences asked for
    min_context: int  # the shortest context still worth serving
    min_slots: int = 1
    memory: MemoryKind = "vram"
    keep_loaded: bool = False  # never unloaded, even when the others are served on demand
    on_demand: bool = False  # a router can load it on its first request and unload it when idle
    takes_share: bool = False  # takes a fraction of the device and gives what is spare to its KV cache
    kv_granularity_bytes: int = 1  # KV space reserved in whole multiples (vLLM's CPU build: GiB)
    overhead_bytes_per_token: int = 0  # compute buffers growing with the context (attention without flash)
    label: str = ""  # how a person names it, e.g. "DeepSeek-R1-Distill-Qwen-1.5B (vLLM bf16)"
    alternatives: tuple[ModelDemand, ...] = ()  # the same model served another way, for a refusal's hint

    @property
    def name(self) -> str:
        return self.label or self.model_id

    def kv_bytes(self, context: int, slots: int) -> int:
        raw = self.kv_bytes_per_token * context * slots
        step = max(1, self.kv_granularity_bytes)
        return -(-raw // step) * step

    def overhead_at(self, context: int, slots: int) -> int:
        return self.overhead_bytes + self.overhead_bytes_per_token * context * slots

    def bytes_at(self, context: int, slots: int) -> int:
        return self.weights_bytes + self.kv_bytes(context, slots) + self.overhead_at(context, slots)


def demand_from_plan(
    plan: DeploymentPlan,
    *,
    on_demand: bool,
    takes_share: bool,
    min_context: int,
    kv_bytes_per_token: int | None = None,
    kv_granularity_bytes: int = 1,
    **options: object,
) -> ModelDemand:
    """A model's demand from its single-model plan (the arithmetic stays the planner's, once).

    The traits a backend knows about itself come from the caller (later: from the backend): whether a router
    can swap it (``on_demand``), whether it takes a device fraction (``takes_share``), and for KV space
    reserved in steps (vLLM's CPU build, whole GiB) the raw bytes per token and the step. ``options`` are
    further ``ModelDemand`` fields (``keep_loaded``, ``min_slots``, ``alternatives``, ``model_id`` …).
    """
    memory = plan.memory
    tokens = max(1, plan.context_length * plan.parallel)
    fields: dict[str, object] = {
        "model_id": plan.model_id,
        "backend": plan.backend,
        "weights_bytes": memory.weights_bytes,
        "kv_bytes_per_token": kv_bytes_per_token if kv_bytes_per_token is not None else memory.kv_cache_bytes // tokens,
        "overhead_bytes": memory.overhead_bytes,
        "context": plan.context_length,
        "slots": plan.parallel,
        "min_context": min(min_context, plan.context_length),
        "memory": memory.budget_kind,
        "on_demand": on_demand,
        "takes_share": takes_share,
        "kv_granularity_bytes": kv_granularity_bytes,
        "label": f"{plan.model_name} ({plan.backend} {plan.quantization})",
        **options,
    }
    return ModelDemand(**fields)  # type: ignore[arg-type]


@dataclass(frozen=True)
class MemoryPool:
    """Memory the stack's models may hold on one device."""

    name: str  # "GPU 0 (NVIDIA GeForce RTX 3060)", "RAM"
    memory: MemoryKind
    usable_bytes: int  # VRAM × the share the stack may use, or RAM after Open WebUI and the OS
    device_bytes: int  # the whole device: a device fraction (--gpu-memory-utilization) is of this


@dataclass  # not frozen: raising assigns __traceback__
class PackingRefused(Exception):
    """The models cannot be served on these budgets in any of the ways tried."""

    model_id: str
    need_bytes: int
    budget_bytes: int
    detail: str
    alternative: str | None = None

    def __str__(self) -> str:
        return self.detail + (f" Nearest alternative: {self.alternative}" if self.alternative else "")


@dataclass(frozen=True)
class _Size:
    """A demand at one context and slot count."""

    demand: ModelDemand
    context: int
    slots: int

    @property
    def total(self) -> int:
        return self.demand.bytes_at(self.context, self.slots)


@dataclass
class _Room:
    budget: MemoryPool
    used: int = 0
    held: list[_Size] = field(default_factory=list)

    @property
    def free(self) -> int:
        return self.budget.usable_bytes - self.used


@dataclass(frozen=True)
class _Fit:
    """A successful arrangement before shares and sentences are worked out."""

    rooms: tuple[_Room, ...]
    where: dict[str, str]  # model id -> budget name
    sizes: dict[str, _Size]
    pool: tuple[str, ...] = ()  # on demand: the router's swappable models
    pool_budget: str | None = None
    models_max: int | None = None


def _rooms(budgets: Sequence[MemoryPool]) -> tuple[_Room, ...]:
    return tuple(_Room(b) for b in budgets)


def _place_worst_fit(rooms: Sequence[_Room], sizes: Iterable[_Size]) -> tuple[dict[str, str], _Size | None]:
    """Largest first, each onto the budget of its kind with the most room: ({id: budget}, the one that did not fit)."""
    where: dict[str, str] = {}
    for size in sorted(sizes, key=lambda s: -s.total):  # sorted() is stable: ties keep the given order
        fitting = [r for r in rooms if r.budget.memory == size.demand.memory]
        if not fitting:
            return where, size
        room = max(fitting, key=lambda r: r.free)
        if size.total > room.free:
            return where, size
        room.used += size.total
        room.held.append(size)
        where[size.demand.model_id] = room.budget.name
    return where, None


def _router_room(rooms: Sequence[_Room], demands: Sequence[ModelDemand], router_bytes: int) -> None:
    """The router's own process, once, on the first budget of the kind its models use."""
    routed = [d for d in demands if d.on_demand]
    if not routed or router_bytes <= 0:
        return
    for room in rooms:
        if room.budget.memory == routed[0].memory:
            room.used += router_bytes
            return


def _together(
    demands: Sequence[ModelDemand], budgets: Sequence[MemoryPool], sizes: dict[str, _Size], router_bytes: int
) -> _Fit | _Size:
    rooms = _rooms(budgets)
    _router_room(rooms, demands, router_bytes)
    where, failed = _place_worst_fit(rooms, sizes.values())
    return failed if failed is not None else _Fit(rooms, where, sizes)


def _on_demand(
    demands: Sequence[ModelDemand], budgets: Sequence[MemoryPool], sizes: dict[str, _Size], router_bytes: int
) -> _Fit | None:
    """Always-loaded models first; the router's pool onto the budget they leave most room on."""
    pool = [d for d in demands if d.on_demand and not d.keep_loaded]
    if len(pool) < 2 or len({d.memory for d in pool}) > 1:
        return None
    rooms = _rooms(budgets)
    where, failed = _place_worst_fit(rooms, (sizes[d.model_id] for d in demands if d not in pool))
    candidates = [r for r in rooms if r.budget.memory == pool[0].memory]
    if failed is not None or not candidates:
        return None
    room = max(candidates, key=lambda r: r.free)
    room.used += router_bytes
    largest = sorted((sizes[d.model_id].total for d in pool), reverse=True)
    models_max = 0
    while models_max < len(largest) and sum(largest[: models_max + 1]) <= room.free:
        models_max += 1
    if models_max == 0:
        return None
    room.used += sum(largest[:models_max])
    for d in pool:
        room.held.append(sizes[d.model_id])
        where[d.model_id] = room.budget.name
    ids = tuple(d.model_id for d in pool)
    return _Fit(rooms, where, sizes, ids, room.budget.name, models_max)


def _sizes(demands: Sequence[ModelDemand], slot_step: int = 0, context_step: int = 0) -> dict[str, _Size]:
    """Every demand with its slots and context halved ``slot_step``/``context_step`` times, never below its floor."""
    return {
        d.model_id: _Size(
            d,
            max(min(d.min_context, d.context), d.context >> context_step),
            max(min(d.min_slots, d.slots), d.slots >> slot_step),
        )
        for d in demands
    }


def _steps(demands: Sequence[ModelDemand], of: Literal["slots", "context"]) -> int:
    """How many halvings until every demand is at its floor."""
    most = 0
    for d in demands:
        value, floor = (d.slots, d.min_slots) if of == "slots" else (d.context, d.min_context)
        n = 0
        while (value >> n) > floor:
            n += 1
        most = max(most, n)
    return most


def pack(demands: Sequence[ModelDemand], budgets: Sequence[MemoryPool], *, router_overhead_bytes: int = 0) -> Packing:
    """Place every model on the budgets, together or on demand, or raise ``PackingRefused``.

    ``router_overhead_bytes`` is what the router's own process holds on the memory of the models it serves
    (counted once when any demand is ``on_demand``). The first demand is the stack's default model.
    """
    _check(demands, budgets)
    asked = _sizes(demands)
    fit = _together(demands, budgets, asked, router_overhead_bytes)
    if isinstance(fit, _Fit):
        return _result(demands, fit, "together", [_together_why(fit, budgets)])
    need_together = sum(s.total for s in asked.values()) + router_overhead_bytes
    first_failure = fit
    for step in range(1, _steps(demands, "slots") + 1):
        fewer = _sizes(demands, slot_step=step)
        fit = _together(demands, budgets, fewer, router_overhead_bytes)
        if isinstance(fit, _Fit):
            return _result(demands, fit, "together", [_fewer_slots_why(asked, fit, need_together, budgets)])
    swapped = _on_demand(demands, budgets, asked, router_overhead_bytes)
    if swapped is not None:
        return _result(demands, swapped, "on_demand", [_on_demand_why(swapped, need_together, budgets)])
    fewest = _steps(demands, "slots")
    for step in range(1, _steps(demands, "context") + 1):
        shorter = _sizes(demands, slot_step=fewest, context_step=step)
        fit = _together(demands, budgets, shorter, router_overhead_bytes)
        if isinstance(fit, _Fit):
            return _result(demands, fit, "together", [_shorter_context_why(asked, fit, need_together, budgets)])
    raise _refusal(demands, budgets, first_failure, router_overhead_bytes)


def _check(demands: Sequence[ModelDemand], budgets: Sequence[MemoryPool]) -> None:
    if not demands:
        raise ValueError("pack() needs at least one model")
    ids = [d.model_id for d in demands]
    if len(set(ids)) != len(ids):
        raise ValueError(f"model ids must be unique, got {ids}")
    if len({b.name for b in budgets}) != len(budgets):
        raise ValueError("budget names must be unique")
    for d in demands:
        if d.takes_share and d.on_demand:
            raise ValueError(f"{d.model_id}: a model sized by a device fraction cannot be swapped by a router")
        if not any(b.memory == d.memory for b in budgets):
            kind = "GPU memory" if d.memory == "vram" else "RAM"
            need = d.bytes_at(d.min_context, d.min_slots)
            raise PackingRefused(d.model_id, need, 0, f"{d.name} needs {kind}, and the host offers none.")


# ----------------------------------------------------------------------------------------------------------
# The result: shares, start order and the sentences.


def _share(size: _Size, budget: MemoryPool, spare: int) -> tuple[int, float | None, str | None]:
    """(share, device fraction, its sentence) for a model sized by a fraction of the device."""
    total = size.total
    if not size.demand.takes_share or budget.memory != "vram" or budget.device_bytes <= 0:
        return total, None, None
    share = total + spare
    fraction = math.floor(share / budget.device_bytes * 1000) / 1000
    if fraction * budget.device_bytes < total:  # the spare is too small to survive rounding down
        fraction = math.ceil(total / budget.device_bytes * 1000) / 1000
    held = int(fraction * budget.device_bytes)
    why = (
        f"{size.demand.name}: --gpu-memory-utilization {fraction:.3f} = ({gib(total)} it needs + {gib(spare)} "
        f"spare) / {gib(budget.device_bytes)} of {budget.name}: a fraction of the whole device for this "
        f"instance alone, which must be free when it starts; what its weights and runtime leave of {gib(held)} "
        "becomes its KV cache."
    )
    return held, fraction, why


def _result(demands: Sequence[ModelDemand], fit: _Fit, mode: Mode, why: list[str]) -> Packing:
    budgets = {r.budget.name: r for r in fit.rooms}
    routed = [d.model_id for d in demands if d.on_demand and (mode == "together" or d.model_id in fit.pool)]
    models_max = fit.models_max if mode == "on_demand" else (len(routed) or None)
    at_start = tuple(routed[: models_max or 0])  # the default model first: demands come in the stack's order
    placements, reasons = [], list(why)
    for d in demands:
        size, room = fit.sizes[d.model_id], budgets[fit.where[d.model_id]]
        sharing = [s for s in room.held if s.demand.takes_share]
        # What the budget has left (after the largest on-demand set) goes to the fraction-sized models on it.
        spare = max(0, room.free) * size.total // (sum(s.total for s in sharing) or 1) if d.takes_share else 0
        share, fraction, share_why = _share(size, room.budget, spare)
        on_demand = d.model_id in fit.pool and mode == "on_demand"
        kv, overhead = d.kv_bytes(size.context, size.slots), d.overhead_at(size.context, size.slots)
        placements.append(
            Placement(
                d.model_id,
                d.backend,
                room.budget.name,
                "on_demand" if on_demand else "always",
                size.context,
                size.slots,
                d.weights_bytes,
                kv,
                overhead,
                size.total,
                share,
                fraction,
            )
        )
        reasons.append(_placement_why(size, room.budget, on_demand, d.model_id in at_start))
        if share_why:
            reasons.append(share_why)
    order = _start_order(demands, placements)
    reasons.extend(_start_why(demands, placements, order))
    return Packing(
        mode,
        tuple(placements),
        models_max,
        at_start,
        order,
        tuple(BudgetUse(r.budget.name, r.budget.usable_bytes, r.used) for r in fit.rooms),
        tuple(reasons),
    )


def _start_order(demands: Sequence[ModelDemand], placements: Sequence[Placement]) -> tuple[str, ...]:
    """Models sized by a device fraction first (given order), then the rest: nothing allocates while they measure."""
    fraction = [p.model_id for p in placements if p.device_fraction is not None]
    return (*fraction, *(d.model_id for d in demands if d.model_id not in fraction))


def _start_why(demands: Sequence[ModelDemand], placements: Sequence[Placement], order: Sequence[str]) -> list[str]:
    fraction = [p for p in placements if p.device_fraction is not None]
    if not fraction or len(order) < 2:
        return []
    names = {d.model_id: d.name for d in demands}
    return [
        "Start order " + " → ".join(names[m] for m in order) + ": a server sized by a fraction of the GPU "
        "checks at start that its fraction is free and counts whatever else allocates or frees on that GPU while "
        "it loads and profiles as its own (vLLM #10533, #14376, #55827), so each starts only when the one before "
        "is ready."
    ]


def _placement_why(size: _Size, budget: MemoryPool, on_demand: bool, at_start: bool) -> str:
    d = size.demand
    if on_demand:
        how = "loaded at start, unloaded when another needs the room" if at_start else "loaded on its first request"
    else:
        how = "kept loaded" if d.keep_loaded else "loaded at start"
    return (
        f"{d.name}: {gib(d.weights_bytes)} weights + {gib(d.kv_bytes(size.context, size.slots))} KV cache for "
        f"{size.context} tokens × {size.slots} slot(s) + {gib(d.overhead_at(size.context, size.slots))} runtime "
        f"= {gib(size.total)} on {budget.name}, {how}."
    )


def _sum_line(fit: _Fit, budgets: Sequence[MemoryPool]) -> str:
    return "; ".join(f"{gib(r.used)} of {gib(r.budget.usable_bytes)} on {r.budget.name}" for r in fit.rooms if r.held)


def _together_why(fit: _Fit, budgets: Sequence[MemoryPool]) -> str:
    if len(fit.sizes) == 1:
        return f"One model: {_sum_line(fit, budgets)}."
    parts = " + ".join(gib(s.total) for s in fit.sizes.values())
    return (
        f"Together: every model loaded at once ({parts} = {_sum_line(fit, budgets)}), so no request waits for a "
        "load and a side-by-side chat gets every answer at once."
    )


def _changes(asked: dict[str, _Size], fit: _Fit, what: Literal["slots", "context"]) -> str:
    out = []
    for model_id, size in fit.sizes.items():
        before, after = (
            (asked[model_id].slots, size.slots) if what == "slots" else (asked[model_id].context, size.context)
        )
        if before != after:
            out.append(f"{size.demand.name} {before} → {after}")
    return ", ".join(out)


def _fewer_slots_why(asked: dict[str, _Size], fit: _Fit, need: int, budgets: Sequence[MemoryPool]) -> str:
    return (
        f"As asked the models need {gib(need)} together, more than the budget; with fewer slots "
        f"({_changes(asked, fit, 'slots')}) they need {_sum_line(fit, budgets)}: all stay loaded, so a side-by-side "
        "chat gets every answer without a swap, and a request beyond the slots waits its turn. This beats serving "
        "on demand, where every switch between models waits for a load."
    )


def _shorter_context_why(asked: dict[str, _Size], fit: _Fit, need: int, budgets: Sequence[MemoryPool]) -> str:
    return (
        f"As asked the models need {gib(need)} together, and neither fewer slots nor serving on demand fits; with "
        f"a shorter context ({_changes(asked, fit, 'context')}) and the fewest slots they need "
        f"{_sum_line(fit, budgets)}. Long conversations are cut sooner: fewer models (or a smaller quantisation) "
        "keep the context."
    )


def _on_demand_why(fit: _Fit, need: int, budgets: Sequence[MemoryPool]) -> str:
    pool = [fit.sizes[m] for m in fit.pool]
    largest = sorted((s.total for s in pool), reverse=True)[: fit.models_max or 0]
    kept = [s.demand.name for s in fit.sizes.values() if s.demand.model_id not in fit.pool]
    kept_line = f" {', '.join(kept)} stay loaded outside the router, never unloaded." if kept else ""
    return (
        f"On demand: together the models need {gib(need)}, more than the budget, even with the fewest slots. The "
        f"router serves {', '.join(s.demand.name for s in pool)} with --models-max {fit.models_max} (the largest "
        f"{fit.models_max} need {gib(sum(largest))}; {_sum_line(fit, budgets)} at most): it loads a model on its "
        "first request and unloads the least recently used idle one, so a request for an unloaded model waits for "
        "a loaded one to finish and then for its load." + kept_line
    )


# ----------------------------------------------------------------------------------------------------------
# Refusals: which model, and what would fit instead.


def _refusal(
    demands: Sequence[ModelDemand], budgets: Sequence[MemoryPool], failed: _Size, router_bytes: int
) -> PackingRefused:
    culprit = _culprit(demands, budgets, failed)
    smallest = culprit.bytes_at(min(culprit.min_context, culprit.context), min(culprit.min_slots, culprit.slots))
    kind = [b for b in budgets if b.memory == culprit.memory]
    biggest = max(b.usable_bytes for b in kind)
    if smallest > biggest:
        detail = (
            f"{culprit.name} does not fit even alone: {gib(smallest)} with {culprit.min_context} tokens and "
            f"{culprit.min_slots} slot(s), and the largest budget is {gib(biggest)}."
        )
    else:
        others = [d.name for d in demands if d is not culprit]
        detail = (
            f"{culprit.name} does not fit beside {', '.join(others)}: not together (even with the fewest slots "
            "and the shortest context), and not on demand."
        )
    alternative = _alternative(demands, budgets, culprit, router_bytes)
    return PackingRefused(culprit.model_id, smallest, biggest, detail, alternative)


def _culprit(demands: Sequence[ModelDemand], budgets: Sequence[MemoryPool], failed: _Size) -> ModelDemand:
    """A model that cannot fit even alone, else the last one (in the order given) that overflows the others."""
    for d in demands:
        floor = d.bytes_at(min(d.min_context, d.context), min(d.min_slots, d.slots))
        if all(floor > b.usable_bytes for b in budgets if b.memory == d.memory):
            return d
    fewest = _sizes(demands, _steps(demands, "slots"), _steps(demands, "context"))
    rooms = _rooms(budgets)
    for d in demands:
        _, over = _place_worst_fit(rooms, [fewest[d.model_id]])
        if over is not None:
            return d
    return failed.demand


def _alternative(
    demands: Sequence[ModelDemand], budgets: Sequence[MemoryPool], culprit: ModelDemand, router_bytes: int
) -> str | None:
    def fits(candidate: Sequence[ModelDemand]) -> Packing | None:
        try:
            return pack(candidate, budgets, router_overhead_bytes=router_bytes)
        except PackingRefused:
            return None

    index = demands.index(culprit)
    for alt in culprit.alternatives:
        swapped = [*demands[:index], replace(alt, alternatives=()), *demands[index + 1 :]]
        if (packing := fits(swapped)) is not None:
            return f"{alt.name} instead fits ({_mode_words(packing)})."
    if culprit.keep_loaded and culprit.on_demand:
        unpinned = [*demands[:index], replace(culprit, keep_loaded=False), *demands[index + 1 :]]
        if (packing := fits(unpinned)) is not None:
            return f"without keep_loaded, {culprit.name} can be served {_mode_words(packing)}."
    rest = [d for d in demands if d is not culprit]
    if rest and (packing := fits(rest)) is not None:
        return f"fewer models: without {culprit.name} the others fit ({_mode_words(packing)})."
    return None


def _mode_words(packing: Packing) -> str:
    if packing.mode == "on_demand":
        return f"on demand, --models-max {packing.models_max}"
    return "together"
