"""A stack of several models planned together (issue 17's planner acceptance): each model alone, packed on the
shared memory, planned again into its place; the flags that ask for them; `deploykit plan`'s table, JSON and
refusals."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from deploykit.catalog import builtin_models, builtin_profiles, find_model, find_profile
from deploykit.cli import cli
from deploykit.planning.planner import plan_deployment
from deploykit.planning.stackplan import StackRefused, plan_stack
from deploykit.values.plan import ModelInput, PlanSettings
from deploykit.values.services import INFERENCE
from deploykit.values.stackplan import ROUTER, inference_service
from deploykit.values.units import gib

R1_15B = "deepseek-r1-distill-qwen-1.5b"
R1_7B = "deepseek-r1-distill-qwen-7b"
QWEN_15B = "qwen2.5-1.5b-instruct"
SMOLLM = "smollm2-135m-instruct"


def entry(model_id: str, **asked: object) -> ModelInput:
    return ModelInput(model=find_model(model_id, builtin_models()), **asked)  # type: ignore[arg-type]


def host(name: str):  # type: ignore[no-untyped-def]
    return find_profile(name, builtin_profiles())


def test_rtx3060_fp16_on_vllm_and_q4_7b_on_llamacpp_are_served_together_with_vllms_share() -> None:
    stack = plan_stack(
        host("rtx3060"), [entry(R1_15B), entry(R1_7B, quantization="Q4_K_M")], PlanSettings(), inference_port=7861
    )
    vllm, llama = stack.models
    assert stack.packing.mode == "together" and stack.default_model == R1_15B
    assert (vllm.plan.backend, vllm.plan.quantization) == ("vllm", "bf16")
    assert (llama.plan.backend, llama.plan.quantization) == ("llamacpp", "Q4_K_M")
    # vLLM re-planned into its placement: the packer's fraction is the flag it is started with.
    assert vllm.plan.gpu_memory_utilization == pytest.approx(0.404)
    assert stack.packing.placement(R1_15B).device_fraction == vllm.plan.gpu_memory_utilization
    assert gib(stack.packing.placement(R1_7B).total_bytes) == "5.9 GiB"
    # One llama.cpp model goes to a server of its own, not the router; each service its own port.
    assert [m.service for m in stack.models] == [inference_service(R1_15B), inference_service(R1_7B)]
    assert [m.published_port for m in stack.models] == [7861, 7862]
    assert vllm.server_url == f"http://{inference_service(R1_15B)}:8000/v1"
    assert stack.services == (inference_service(R1_15B), inference_service(R1_7B)), "vLLM starts first"
    text = "\n".join(stack.packing.reasons)
    assert "--gpu-memory-utilization 0.404 = (4.4 GiB it needs + 456 MiB spare) / 12.0 GiB" in text
    assert "4.4 GiB + 5.9 GiB = 10.4 GiB of 10.8 GiB" in text


def test_gtx1650_pair_of_q4_models_shrinks_to_fewer_slots_behind_the_router_and_says_why() -> None:
    stack = plan_stack(host("gtx1650"), [entry(R1_15B), entry(QWEN_15B)], PlanSettings(), inference_port=7861)
    assert stack.packing.mode == "together"
    assert [(m.plan.parallel, m.plan.context_length) for m in stack.models] == [(1, 4096), (1, 4096)]
    assert {m.service for m in stack.models} == {ROUTER} and all(m.behind_router for m in stack.models)
    assert stack.packing.models_max == 2 and stack.packing.load_on_start == (R1_15B, QWEN_15B)
    assert "As asked the models need 4.3 GiB together" in stack.packing.reasons[0]
    assert "fewer slots" in stack.packing.reasons[0]


def test_keep_loaded_is_recorded_and_a_together_router_never_unloads_it() -> None:
    stack = plan_stack(
        host("gtx1650"), [entry(R1_15B), entry(QWEN_15B, keep_loaded=True)], PlanSettings(), inference_port=1
    )
    kept = stack.model(QWEN_15B)
    assert kept.keep_loaded and kept.loaded == "always" and kept.load_at_start
    assert stack.packing.models_max == len(stack.routed) == 2, "together: --models-max holds every model"


def test_a_set_that_cannot_be_served_is_refused_naming_the_model_and_the_nearest_alternative() -> None:
    with pytest.raises(StackRefused) as refused:
        plan_stack(host("rtx3060"), [entry(R1_15B), entry(R1_7B), entry(QWEN_15B)], PlanSettings(), inference_port=1)
    assert refused.value.model_id == QWEN_15B
    assert "Qwen2.5-1.5B-Instruct (vllm bf16) does not fit beside" in refused.value.detail
    alternative = "Qwen2.5-1.5B-Instruct (llamacpp Q4_K_M) instead fits (on demand, --models-max 1)."
    assert refused.value.alternative == alternative


def test_a_model_forced_onto_a_backend_that_cannot_hold_it_is_refused_with_what_would_run() -> None:
    with pytest.raises(StackRefused) as refused:
        plan_stack(host("rtx3060"), [entry(R1_15B), entry(R1_7B, backend="vllm")], PlanSettings(), inference_port=1)
    assert refused.value.model_id == R1_7B
    assert "15.5 GiB" in refused.value.detail
    assert refused.value.alternative is not None and "llamacpp Q4_K_M fits" in refused.value.alternative


def test_one_model_is_todays_plan_and_todays_inference_service() -> None:
    alone = plan_deployment(host("rtx3060"), find_model(R1_15B, builtin_models()), PlanSettings())
    stack = plan_stack(host("rtx3060"), [entry(R1_15B)], PlanSettings(), inference_port=7861)
    assert stack.plan == alone, "one model is never re-planned"
    assert [(m.service, m.published_port, m.behind_router) for m in stack.models] == [(INFERENCE, 7861, False)]
    assert not stack.several


def test_two_ids_with_one_service_name_are_refused() -> None:
    with pytest.raises(StackRefused, match="given twice"):
        plan_stack(host("cpu"), [entry(SMOLLM), entry(SMOLLM)], PlanSettings(), inference_port=1)


# ---------------------------------------------------------------- the command line


def test_plan_prints_a_row_per_model_the_total_and_the_reasons() -> None:
    result = CliRunner().invoke(cli, ["plan", "--profile", "rtx3060", "--model", R1_15B, "--model", R1_7B])
    assert result.exit_code == 0, result.output
    assert "2 models on rtx3060: together" in result.output
    assert "0.404" in result.output and "10.4 GiB of 10.8 GiB" in result.output
    assert "--gpu-memory-utilization 0.404" in result.output


def test_plan_json_keeps_the_default_plan_and_adds_models_and_packing() -> None:
    args = ["plan", "--profile", "gtx1650", "--model", R1_15B, "--model", QWEN_15B, "--json"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["plan"]["model_id"] == R1_15B
    assert [m["model_id"] for m in data["models"]] == [R1_15B, QWEN_15B]
    assert data["packing"]["mode"] == "together" and data["packing"]["models_max"] == 2


def test_plan_refusal_names_the_model_and_the_alternative_with_the_plan_exit_code() -> None:
    args = ["plan", "--profile", "rtx3060", "--model", R1_15B, "--model", R1_7B, "--model", QWEN_15B]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 5, result.output
    assert "model qwen2.5-1.5b-instruct cannot be served" in result.output
    assert "Hint: Qwen2.5-1.5B-Instruct (llamacpp Q4_K_M) instead fits" in result.output


def test_model_and_model_file_counts_that_cannot_pair_are_one_sentence() -> None:
    result = CliRunner().invoke(cli, ["plan", "--profile", "cpu", "--model", "a", "--model", "b", "--model-file", "x"])
    assert result.exit_code == 2
    assert "2 --model and 1 --model-file flags cannot be paired" in result.output


def test_models_tables_in_the_stack_settings_are_a_stack_of_several(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from deploykit.config.settings import load_settings

    (tmp_path / "deploykit.toml").write_text(
        f'[[models]]\nid = "{R1_15B}"\n\n[[models]]\nid = "{QWEN_15B}"\nkeep_loaded = true\ncontext = 2048\n',
        encoding="utf-8",
    )
    settings = load_settings(stack_dir=tmp_path)
    asked = [(m.id, m.keep_loaded, m.context) for m in settings.models]
    assert asked == [(R1_15B, False, None), (QWEN_15B, True, 2048)]


def test_a_models_entry_with_an_unknown_backend_is_named() -> None:
    from deploykit.config.settings import load_settings
    from deploykit.values.errors import ConfigError

    with pytest.raises(ConfigError, match="--model"):
        load_settings(models=({"id": R1_15B}, {"id": QWEN_15B, "backend": "ollama"}))


@pytest.mark.parametrize("profile", [p.name for p in builtin_profiles()])
def test_every_model_planned_into_its_place_holds_no_more_than_the_packing_gave_it(profile: str) -> None:
    # Every pair of catalog models on every built-in profile: what each backend plans inside its placement
    # stays within what the packer counted (a split model may not put more layers on the GPU than it did).
    from itertools import permutations

    from deploykit.planning.stackplan import REPLAN_SLACK_BYTES

    planned = 0
    for first, second in permutations([m.id for m in builtin_models()], 2):
        try:
            stack = plan_stack(host(profile), [entry(first), entry(second)], PlanSettings(), inference_port=1)
        except StackRefused:
            continue
        planned += 1
        for served in stack.models:
            place = stack.packing.placement(served.model_id)
            memory = served.plan.memory
            assert memory.total_bytes <= place.share_bytes + REPLAN_SLACK_BYTES, (profile, served.model_id)
            assert (served.plan.context_length, served.plan.parallel) == (place.context, place.slots)
        used = {b.name: b for b in stack.packing.budgets}
        assert all(b.planned_bytes <= b.usable_bytes for b in used.values())
    assert planned, f"no pair of catalog models plans on {profile}"


def test_the_same_model_in_another_quantisation_is_served_under_its_own_id() -> None:
    stack = plan_stack(
        host("rtx3060"), [entry(R1_15B), entry(R1_15B, quantization="Q4_K_M")], PlanSettings(), inference_port=1
    )
    assert [(m.model_id, m.plan.quantization) for m in stack.models] == [
        (R1_15B, "bf16"),
        (f"{R1_15B}-q4_k_m", "Q4_K_M"),
    ]
    with pytest.raises(StackRefused) as twice:
        plan_stack(host("rtx3060"), [entry(R1_15B), entry(R1_15B)], PlanSettings(), inference_port=1)
    assert twice.value.alternative is not None and "its own quantization or backend" in twice.value.alternative
