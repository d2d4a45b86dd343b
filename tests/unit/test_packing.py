"""Several models on one budget: the acceptance figures of issue 17, each decision and its arithmetic.

Every demand is built from today's single-model planner (plan_deployment(...).memory), so a change to a
per-model figure there shows here too: 4.4 GiB (R1 1.5B FP16 on vLLM, rtx3060), 5.9 GiB (R1 7B Q4_K_M on
llama.cpp, rtx3060), 2.1 GiB (1.5B Q4_K_M with 4 slots of 4096 tokens, gtx1650).
"""

from __future__ import annotations

import dataclasses

import pytest

from deploykit.catalog import builtin_models, builtin_profiles, find_model, find_profile
from deploykit.planning.packing import MemoryPool, ModelDemand, PackingRefused, demand_from_plan, pack
from deploykit.planning.planner import plan_deployment
from deploykit.values.plan import PlanSettings
from deploykit.values.units import GiB, MiB, gib

R1_15B = "deepseek-r1-distill-qwen-1.5b"
R1_7B = "deepseek-r1-distill-qwen-7b"
QWEN_15B = "qwen2.5-1.5b-instruct"
SMOLLM = "smollm2-135m-instruct"
# What a router's own llama-server process held beside its children: VmRSS 18.9 MiB (b11669, CPU, measured
# with `docker exec … /proc/*/status` on this project's test host, 2026-12-02; docs/several-models.md).
ROUTER_RAM = 19 * MiB


def demand(profile: str, model: str, *, min_context: int = 2048, **options: object) -> ModelDemand:
    """A model's demand as its backend would state it, from today's planner for ``profile``."""
    settings = {k: v for k, v in options.items() if k in PlanSettings.model_fields}
    extra = {k: v for k, v in options.items() if k not in settings}
    spec = find_model(model, builtin_models())
    plan = plan_deployment(find_profile(profile, builtin_profiles()), spec, PlanSettings(**settings))  # type: ignore[arg-type]
    cpu_vllm = plan.backend == "vllm" and plan.device == "cpu"
    return demand_from_plan(
        plan,
        on_demand=plan.backend == "llamacpp",
        takes_share=plan.backend == "vllm" and plan.device == "cuda",
        min_context=min_context,
        kv_bytes_per_token=spec.kv_bytes_per_token() if cpu_vllm else None,
        kv_granularity_bytes=GiB if cpu_vllm else 1,
        **extra,
    )


def gpu_budget(profile: str) -> MemoryPool:
    host = find_profile(profile, builtin_profiles())
    gpu = host.gpus[0]
    return MemoryPool(f"GPU 0 ({gpu.name})", "vram", int(gpu.memory_total_bytes * 0.90), gpu.memory_total_bytes)


def test_demands_match_todays_planner() -> None:
    assert gib(demand("rtx3060", R1_15B).bytes_at(4096, 1)) == "4.4 GiB"
    assert gib(demand("rtx3060", R1_7B).bytes_at(4096, 4)) == "5.9 GiB"
    assert gib(demand("gtx1650", R1_15B).bytes_at(4096, 4)) == "2.1 GiB"
    assert gib(demand("gtx1650", QWEN_15B).bytes_at(4096, 4)) == "2.1 GiB"
    assert gib(gpu_budget("rtx3060").usable_bytes) == "10.8 GiB"
    assert gib(gpu_budget("gtx1650").usable_bytes) == "3.6 GiB"


def test_rtx3060_fp16_on_vllm_and_q4_7b_on_llamacpp_fit_together() -> None:
    vllm, llama = demand("rtx3060", R1_15B), demand("rtx3060", R1_7B)
    budget = gpu_budget("rtx3060")
    packing = pack([vllm, llama], [budget])

    assert packing.mode == "together"
    first, second = packing.placements
    assert (first.loaded, second.loaded) == ("always", "always")
    assert (second.context, second.slots) == (4096, 4), "nothing had to shrink"
    # vLLM gets the fraction of the whole 12 GiB card that holds its 4.4 GiB and the spare, rounded down.
    spare = budget.usable_bytes - vllm.bytes_at(4096, 1) - llama.bytes_at(4096, 4)
    assert spare > 0
    assert first.device_fraction == pytest.approx(0.404)
    assert first.device_fraction == int((vllm.bytes_at(4096, 1) + spare) / budget.device_bytes * 1000) / 1000
    assert first.device_fraction * budget.device_bytes >= vllm.bytes_at(4096, 1)
    assert first.share_bytes + second.total_bytes <= budget.usable_bytes
    assert second.device_fraction is None, "llama.cpp allocates what it needs; no fraction"
    assert packing.start_order == (R1_15B, R1_7B), "vLLM measures free memory while it starts: it goes first"
    assert packing.models_max == 1 and packing.load_on_start == (R1_7B,)
    text = "\n".join(packing.reasons)
    assert "--gpu-memory-utilization 0.404 = (4.4 GiB it needs + 456 MiB spare) / 12.0 GiB" in text
    assert "4.4 GiB + 5.9 GiB = 10.4 GiB of 10.8 GiB" in text
    assert "Start order DeepSeek-R1-Distill-Qwen-1.5B (vllm bf16) → DeepSeek-R1-Distill-Qwen-7B" in text


def test_gtx1650_two_q4_models_with_4_slots_shrink_to_one_slot_each() -> None:
    r1, qwen = demand("gtx1650", R1_15B), demand("gtx1650", QWEN_15B)
    budget = gpu_budget("gtx1650")
    assert r1.bytes_at(4096, 4) + qwen.bytes_at(4096, 4) > budget.usable_bytes, "as they are: 4.2 > 3.6 GiB"
    assert r1.bytes_at(4096, 2) + qwen.bytes_at(4096, 2) > budget.usable_bytes, "2 slots each: 3.8 > 3.6 GiB"
    assert r1.bytes_at(4096, 1) + qwen.bytes_at(4096, 1) <= budget.usable_bytes, "1 slot each: 3.6 GiB"

    packing = pack([r1, qwen], [budget])

    assert packing.mode == "together"
    assert [(p.context, p.slots) for p in packing.placements] == [(4096, 1), (4096, 1)]
    why = packing.reasons[0]
    assert "As asked the models need 4.3 GiB together" in why
    assert "fewer slots (DeepSeek-R1-Distill-Qwen-1.5B (llamacpp Q4_K_M) 4 → 1, Qwen2.5-1.5B-Instruct" in why
    assert "side-by-side chat gets every answer without a swap" in why


def test_gtx1650_two_q4_models_served_on_demand_when_two_slots_are_the_floor() -> None:
    r1, qwen = demand("gtx1650", R1_15B, min_slots=2), demand("gtx1650", QWEN_15B, min_slots=2)
    packing = pack([r1, qwen], [gpu_budget("gtx1650")])

    assert packing.mode == "on_demand"
    assert packing.models_max == 1, "one 2.1 GiB model at a time in 3.6 GiB"
    assert [(p.loaded, p.slots) for p in packing.placements] == [("on_demand", 4), ("on_demand", 4)]
    assert packing.load_on_start == (R1_15B,), "the default model is loaded at start"
    assert packing.budgets[0].planned_bytes == r1.bytes_at(4096, 4) <= packing.budgets[0].usable_bytes
    why = packing.reasons[0]
    assert why.startswith("On demand: together the models need 4.3 GiB, more than the budget")
    assert "--models-max 1" in why and "unloads the least recently used idle one" in why
    assert "loaded at start, unloaded when another needs the room" in packing.reasons[1]
    assert packing.reasons[2].endswith("loaded on its first request.")


def test_a_router_process_that_holds_memory_tips_the_tight_fit_to_on_demand() -> None:
    r1, qwen = demand("gtx1650", R1_15B), demand("gtx1650", QWEN_15B)
    packing = pack([r1, qwen], [gpu_budget("gtx1650")], router_overhead_bytes=ROUTER_RAM)
    assert packing.mode == "on_demand" and packing.models_max == 1


def test_a_model_that_fits_nowhere_is_refused_with_its_q4_alternative() -> None:
    # R1 7B in FP16 on vLLM (15.5 GiB, its figures from the h200 plan) cannot run on a 12 GiB card at all.
    fp16 = demand("h200", R1_7B, min_context=4096, alternatives=(demand("rtx3060", R1_7B),))
    with pytest.raises(PackingRefused) as refused:
        pack([demand("rtx3060", R1_15B), fp16], [gpu_budget("rtx3060")])
    assert refused.value.model_id == R1_7B
    assert "DeepSeek-R1-Distill-Qwen-7B (vllm bf16) does not fit even alone: 15.5 GiB" in refused.value.detail
    assert refused.value.alternative == "DeepSeek-R1-Distill-Qwen-7B (llamacpp Q4_K_M) instead fits (together)."


def test_a_set_that_does_not_fit_names_the_model_that_overflows_and_the_nearest_alternative() -> None:
    qwen_q4 = demand("rtx3060", QWEN_15B, backend="llamacpp")
    qwen_fp16 = demand("rtx3060", QWEN_15B, min_context=4096, alternatives=(qwen_q4,))
    models = [demand("rtx3060", R1_15B, min_context=4096), demand("rtx3060", R1_7B), qwen_fp16]
    with pytest.raises(PackingRefused) as refused:
        pack(models, [gpu_budget("rtx3060")])
    assert refused.value.model_id == QWEN_15B, "the default model and the 7B are placed first"
    assert "does not fit beside DeepSeek-R1-Distill-Qwen-1.5B (vllm bf16), DeepSeek-R1-Distill-Qwen-7B" in str(
        refused.value
    )
    assert (
        refused.value.alternative == "Qwen2.5-1.5B-Instruct (llamacpp Q4_K_M) instead fits (on demand, --models-max 1)."
    )


def test_without_an_alternative_the_refusal_suggests_fewer_models() -> None:
    models = [
        demand("rtx3060", R1_15B, min_context=4096),
        demand("rtx3060", QWEN_15B, min_context=4096),
        demand("rtx3060", R1_7B),
    ]
    with pytest.raises(PackingRefused) as refused:
        pack(models, [gpu_budget("rtx3060")])
    assert refused.value.model_id == R1_7B
    assert (
        refused.value.alternative
        == "fewer models: without DeepSeek-R1-Distill-Qwen-7B (llamacpp Q4_K_M) the others fit (together)."
    )


def test_keep_loaded_stays_outside_the_router_pool() -> None:
    # Three GGUF models on a 12 GiB card: the 7B (5.9 GiB) pinned, the two 1.5B (2.1 GiB each) swap in what is left.
    pinned = demand("rtx3060", R1_7B, keep_loaded=True, min_slots=4)
    r1 = demand("rtx3060", R1_15B, backend="llamacpp", min_slots=4)
    qwen = demand("rtx3060", QWEN_15B, backend="llamacpp", min_slots=4)
    budget = dataclasses.replace(gpu_budget("rtx3060"), usable_bytes=9 * GiB)
    packing = pack([r1, pinned, qwen], [budget])

    assert packing.mode == "on_demand"
    assert packing.placement(R1_7B).loaded == "always"
    assert {packing.placement(m).loaded for m in (R1_15B, QWEN_15B)} == {"on_demand"}
    assert packing.models_max == 1 and packing.load_on_start == (R1_15B,)
    assert "DeepSeek-R1-Distill-Qwen-7B (llamacpp Q4_K_M) stay loaded outside the router" in packing.reasons[0]


def test_shorter_context_is_the_last_resort_before_refusing() -> None:
    r1, qwen = demand("gtx1650", R1_15B, min_slots=2), demand("gtx1650", QWEN_15B, min_slots=2, keep_loaded=True)
    # keep_loaded leaves nothing to swap; two slots are the floor: only a shorter context fits 3.6 GiB.
    packing = pack([r1, qwen], [gpu_budget("gtx1650")])
    assert packing.mode == "together"
    assert [(p.context, p.slots) for p in packing.placements] == [(2048, 2), (2048, 2)]
    assert "shorter context (DeepSeek-R1-Distill-Qwen-1.5B (llamacpp Q4_K_M) 4096 → 2048" in packing.reasons[0]


def test_two_vllm_instances_on_one_gpu_share_it_and_start_one_after_the_other() -> None:
    r1, qwen = demand("rtx3060", R1_15B), demand("rtx3060", QWEN_15B)
    budget = gpu_budget("rtx3060")
    packing = pack([r1, qwen], [budget])
    first, second = packing.placements
    assert first.device_fraction is not None and second.device_fraction is not None
    assert (first.device_fraction + second.device_fraction) * budget.device_bytes <= budget.usable_bytes
    assert first.device_fraction * budget.device_bytes >= r1.bytes_at(4096, 1)
    assert second.device_fraction * budget.device_bytes >= qwen.bytes_at(4096, 1)
    # The spare is shared in proportion to what each needs.
    assert first.share_bytes - first.total_bytes > second.share_bytes - second.total_bytes > 0
    assert packing.start_order == (R1_15B, QWEN_15B) and packing.models_max is None


def test_several_gpus_take_one_model_each_when_one_cannot_hold_both() -> None:
    budgets = [dataclasses.replace(gpu_budget("gtx1650"), name=f"GPU {i}") for i in (0, 1)]
    r1, qwen = demand("gtx1650", R1_15B), demand("gtx1650", QWEN_15B)
    packing = pack([r1, qwen], budgets)
    assert packing.mode == "together"
    assert {p.budget for p in packing.placements} == {"GPU 0", "GPU 1"}
    assert [p.slots for p in packing.placements] == [4, 4], "each has a GPU to itself: nothing shrinks"


def test_on_the_cpu_vllm_reserves_whole_gib_of_kv_and_takes_no_fraction() -> None:
    vllm = demand("cpu-vllm", SMOLLM, model_id="smollm2-fp16")
    llama = demand("cpu", SMOLLM, model_id="smollm2-q4")
    ram = MemoryPool("RAM", "ram", 14 * GiB, 16 * GiB)
    packing = pack([vllm, llama], [ram], router_overhead_bytes=ROUTER_RAM)
    first, second = packing.placements
    assert first.kv_cache_bytes == GiB, "VLLM_CPU_KVCACHE_SPACE is whole GiB"
    assert first.device_fraction is None and first.share_bytes == first.total_bytes
    assert packing.budgets[0].planned_bytes == first.total_bytes + second.total_bytes + ROUTER_RAM
    assert packing.mode == "together"


def test_one_model_is_just_itself() -> None:
    only = demand("rtx3060", R1_7B)
    packing = pack([only], [gpu_budget("rtx3060")])
    assert packing.mode == "together" and packing.placements[0].total_bytes == only.bytes_at(4096, 4)
    assert packing.reasons[0].startswith("One model: 5.9 GiB of 10.8 GiB")


def test_every_placement_explains_itself_and_packing_is_repeatable() -> None:
    models = [demand("rtx3060", R1_15B), demand("rtx3060", R1_7B)]
    first, again = pack(models, [gpu_budget("rtx3060")]), pack(models, [gpu_budget("rtx3060")])
    assert first == again
    for placement in first.placements:
        assert any(
            r.startswith(next(m.name for m in models if m.model_id == placement.model_id)) for r in first.reasons
        )


def test_bad_input_is_a_value_error_and_a_missing_memory_kind_a_refusal() -> None:
    r1 = demand("rtx3060", R1_15B)
    with pytest.raises(ValueError, match="unique"):
        pack([r1, r1], [gpu_budget("rtx3060")])
    with pytest.raises(ValueError, match="at least one"):
        pack([], [gpu_budget("rtx3060")])
    with pytest.raises(PackingRefused, match="needs GPU memory, and the host offers none"):
        pack([r1], [MemoryPool("RAM", "ram", 14 * GiB, 16 * GiB)])
