"""The planner, as a table of profile × model, plus the rules behind each decision."""

from __future__ import annotations

import pytest

from deploykit.catalog import builtin_models, builtin_profiles, find_model, find_profile
from deploykit.planning.planner import plan_deployment, suggest_alternative
from deploykit.values.host import Cpu, Gpu, HostProfile, Memory
from deploykit.values.plan import NoFit, PlanSettings
from deploykit.values.units import GiB

R1_15B = "deepseek-r1-distill-qwen-1.5b"
R1_7B = "deepseek-r1-distill-qwen-7b"


def plan_for(profile: str, model: str = R1_15B, **settings: object):
    return plan_deployment(
        find_profile(profile, builtin_profiles()),
        find_model(model, builtin_models()),
        PlanSettings(**settings),
    )


@pytest.mark.parametrize(
    ("profile", "model", "backend", "device", "quant", "gpu_layers"),
    [
        ("rtx3060", R1_15B, "vllm", "cuda", "bf16", None),
        ("rtx4060", R1_15B, "vllm", "cuda", "bf16", None),
        ("rtx4090", R1_15B, "vllm", "cuda", "bf16", None),
        ("a100-80gb", R1_15B, "vllm", "cuda", "bf16", None),
        ("h200", R1_15B, "vllm", "cuda", "bf16", None),
        ("gtx1650", R1_15B, "llamacpp", "cuda", "Q4_K_M", 28),
        ("cpu", R1_15B, "llamacpp", "cpu", "Q4_K_M", 0),
        ("rk3588", R1_15B, "llamacpp", "cpu", "Q4_K_M", 0),
        ("rpi5", R1_15B, "llamacpp", "cpu", "Q4_K_M", 0),
        ("rtx3060", R1_7B, "llamacpp", "cuda", "Q4_K_M", 28),
        ("rtx4090", R1_7B, "vllm", "cuda", "bf16", None),
        ("gtx1650", R1_7B, "llamacpp", "cuda", "Q4_K_M", 20),
        ("cpu", R1_7B, "llamacpp", "cpu", "Q4_K_M", 0),
    ],
)
def test_plan_table(profile: str, model: str, backend: str, device: str, quant: str, gpu_layers: int | None) -> None:
    plan = plan_for(profile, model)
    assert (plan.backend, plan.device, plan.quantization, plan.gpu_layers) == (
        backend,
        device,
        quant,
        gpu_layers,
    )
    assert plan.memory.total_bytes <= plan.memory.budget_bytes
    assert plan.context_length == 4096
    assert plan.reasons, "every plan explains itself"


def test_rtx3060_acceptance() -> None:
    plan = plan_for("rtx3060")
    assert plan.context_length >= 4096
    assert plan.memory.total_bytes <= plan.memory.budget_bytes <= 12 * GiB
    assert plan.dtype == "bfloat16"
    assert plan.reasoning_parser == "deepseek_r1"


def test_kv_cache_uses_the_models_real_numbers() -> None:
    model = find_model(R1_15B, builtin_models())
    # 2 × 28 layers × 2 KV heads × 128 head_dim × 2 bytes
    assert model.kv_bytes_per_token() == 28672
    plan = plan_for("rtx3060")
    assert plan.memory.kv_cache_bytes == 28672 * 4096
    assert plan.memory.weights_bytes == model.params * 2


def test_gtx1650_7b_partial_offload_explains_the_split() -> None:
    plan = plan_for("gtx1650", R1_7B)
    assert 0 < plan.gpu_layers < plan.total_layers  # type: ignore[operator]
    assert plan.memory.ram_bytes is not None and plan.memory.ram_bytes > 0
    assert any("20 of 28 layers" in r for r in plan.reasons)
    assert any("Not vLLM" in r for r in plan.reasons)


def test_turing_gets_half_precision_when_vllm_fits() -> None:
    plan = plan_for("gtx1650", "smollm2-135m-instruct")
    assert plan.backend == "vllm"
    assert plan.dtype == "float16"
    assert any("predates bfloat16" in r for r in plan.reasons)


def test_context_cap_and_raise() -> None:
    assert plan_for("rtx3060", max_context=16384).context_length == 16384
    # capped by the model's own maximum
    assert plan_for("a100-80gb", "smollm2-135m-instruct", max_context=65536).context_length == 8192


def test_busy_gpu_lowers_memory_utilisation() -> None:
    base = find_profile("rtx3060", builtin_profiles())
    gpu = base.gpus[0].model_copy(update={"memory_free_bytes": 8 * GiB})
    host = base.model_copy(update={"gpus": (gpu,)})
    plan = plan_deployment(host, find_model(R1_15B, builtin_models()), PlanSettings())
    assert plan.gpu_memory_utilization is not None and plan.gpu_memory_utilization < 0.67
    assert any("free" in r for r in plan.reasons)


def test_forced_backend() -> None:
    assert plan_for("rtx3060", backend="llamacpp").backend == "llamacpp"
    with pytest.raises(NoFit):
        plan_for("gtx1650", R1_7B, backend="vllm")


def tiny_host(ram_gib: float) -> HostProfile:
    return HostProfile(
        name="tiny",
        cpu=Cpu(arch="aarch64", physical_cores=4, logical_cores=4),
        memory=Memory(total_bytes=int(ram_gib * GiB)),
    )


def test_nothing_fits_names_need_and_budget_and_a_smaller_model() -> None:
    host = tiny_host(4)
    model = find_model(R1_7B, builtin_models())
    with pytest.raises(NoFit) as info:
        plan_deployment(host, model, PlanSettings())
    assert info.value.need_bytes > info.value.budget_bytes
    alternative = suggest_alternative(host, model, PlanSettings(), builtin_models())
    assert alternative is not None and "--model" in alternative


def test_multi_gpu_uses_the_largest() -> None:
    small = Gpu(index=0, name="small", memory_total_bytes=4 * GiB, compute_capability="8.6")
    big = Gpu(index=1, name="big", memory_total_bytes=24 * GiB, compute_capability="8.9")
    host = HostProfile(
        name="two",
        cpu=Cpu(physical_cores=8, logical_cores=16),
        memory=Memory(total_bytes=64 * GiB),
        gpus=(small, big),
    )
    plan = plan_deployment(host, find_model(R1_7B, builtin_models()), PlanSettings())
    assert plan.backend == "vllm" and plan.gpu_index == 1


def test_plan_is_pure_and_repeatable(monkeypatch: pytest.MonkeyPatch) -> None:
    """Planning touches no file, process, socket or clock, and a host that only looks the same (built anew
    from its JSON) gets the plan the reference stack records, byte for byte."""
    import builtins
    import io
    import json
    import os
    import socket
    import subprocess
    import time
    from pathlib import Path

    from tests.unit.conftest import ROOT

    recorded = json.loads((ROOT / "compose" / "cpu" / "plan.json").read_text(encoding="utf-8"))["stack"]["plan"]
    host = HostProfile.model_validate_json(find_profile("cpu", builtin_profiles()).model_dump_json())
    model = find_model(R1_15B, builtin_models())

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"the planner did I/O: {args[:1]}")

    for owner, name in [
        (builtins, "open"),
        (io, "open"),
        (os, "open"),
        (Path, "open"),
        (subprocess, "run"),
        (subprocess, "Popen"),
        (socket, "socket"),
        (time, "time"),
        (time, "monotonic"),
    ]:
        monkeypatch.setattr(owner, name, forbidden)
    first = plan_deployment(host, model, PlanSettings())
    again = plan_deployment(host.model_copy(deep=True), model.model_copy(deep=True), PlanSettings())
    monkeypatch.undo()
    assert first.model_dump(mode="json") == again.model_dump(mode="json") == recorded


def test_h200_plan_from_its_real_detection() -> None:
    """The h200 profile agrees with what `deploykit detect --json` printed on a real H200."""
    import json
    from pathlib import Path

    recorded = Path(__file__).resolve().parents[1] / "fixtures" / "gpu" / "h200" / "detect.json"
    detected = HostProfile.model_validate(json.loads(recorded.read_text()))
    builtin = find_profile("h200", builtin_profiles())
    assert detected.gpus[0].name == builtin.gpus[0].name == "NVIDIA H200"
    assert detected.gpus[0].memory_total_bytes == builtin.gpus[0].memory_total_bytes
    assert detected.gpus[0].compute_capability == builtin.gpus[0].compute_capability == "9.0"
    model = find_model(R1_15B, builtin_models())
    from_detect = plan_deployment(detected, model, PlanSettings())
    assert (from_detect.backend, from_detect.dtype, from_detect.gpu_index) == ("vllm", "bfloat16", 0)
    # 139.8 GiB were free, more than 90% of the card: the default utilisation stands.
    assert from_detect.gpu_memory_utilization == 0.9
    assert from_detect.memory == plan_deployment(builtin, model, PlanSettings()).memory


def test_a_forced_backend_that_cannot_serve_is_refused_not_swapped() -> None:
    # The catalog model without its Hugging Face repository: vLLM on the CPU has nothing to load. Asked for by
    # --backend it is refused with the reason; only a profile's preference falls back to llama.cpp.
    cpu = find_profile("cpu", builtin_profiles())
    model = find_model("smollm2-135m-instruct", builtin_models()).model_copy(update={"hf_repo": None})
    with pytest.raises(NoFit) as refused:
        plan_deployment(cpu, model, PlanSettings(backend="vllm"))
    assert refused.value.detail.startswith("--backend vllm was asked for and cannot serve it (Not vLLM: ")
    preferred = cpu.model_copy(update={"preferred_backend": "vllm"})
    assert plan_deployment(preferred, model, PlanSettings()).backend == "llamacpp"
