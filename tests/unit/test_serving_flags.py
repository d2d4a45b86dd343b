"""Serving flags: slots, threads, batches, flash attention, KV cache type, vLLM's scheduler — each with its
reason, the user's choice above the planner's, and the plan fitted to the host that runs it."""

from __future__ import annotations

import re

import pytest

from deploykit.backends.llamacpp import LLAMACPP_DEFAULT_SLOTS
from deploykit.catalog import builtin_models, builtin_profiles, find_model, find_profile
from deploykit.config.settings import load_settings
from deploykit.planning.planner import plan_deployment
from deploykit.planning.render import SECRET_KEYS, StackSpec, render_files
from deploykit.values.host import Cpu, HostProfile, Memory
from deploykit.values.plan import PlanInputs, PlanSettings, RunHost
from deploykit.values.units import GiB

SMOL = "smollm2-135m-instruct"
R1_15B = "deepseek-r1-distill-qwen-1.5b"


def plan_for(profile: str, model: str = SMOL, runs_on: RunHost | None = None, **settings: object):
    return plan_deployment(
        find_profile(profile, builtin_profiles()),
        find_model(model, builtin_models()),
        PlanSettings(**settings),
        None,
        runs_on,
    )


def test_llamacpp_gets_several_slots_when_memory_allows() -> None:
    plan = plan_for("cpu")
    assert plan.parallel == LLAMACPP_DEFAULT_SLOTS > 1
    per_token = find_model(SMOL, builtin_models()).kv_bytes_per_token()
    assert plan.memory.kv_cache_bytes == plan.context_length * plan.parallel * per_token
    assert any("Open WebUI sends title" in r for r in plan.reasons)


def test_slots_step_down_before_the_context_shrinks() -> None:
    host = HostProfile(
        name="small", cpu=Cpu(physical_cores=4, logical_cores=4), memory=Memory(total_bytes=int(3.6 * GiB))
    )
    model = find_model(R1_15B, builtin_models())
    plan = plan_deployment(host, model, PlanSettings(max_context=8192))
    assert plan.context_length == 8192 and plan.parallel < LLAMACPP_DEFAULT_SLOTS
    assert any("memory holds the full context for no more" in r for r in plan.reasons)


def test_explicit_knobs_win_and_say_so() -> None:
    plan = plan_for(
        "cpu", parallel=2, threads=3, batch_size=1024, ubatch_size=256, kv_cache_type="q8_0", flash_attn="on"
    )
    assert (plan.parallel, plan.threads, plan.batch_size, plan.ubatch_size, plan.kv_cache_type) == (
        2, 3, 1024, 256, "q8_0",
    )  # fmt: skip
    assert sum("set in settings" in r for r in plan.reasons) >= 4
    # q8_0 K and V: 34 bytes per 32 values instead of 64
    per_token = find_model(SMOL, builtin_models()).kv_bytes_per_token()
    assert plan.memory.kv_cache_bytes == int(per_token * 34 / 64) * plan.context_length * 2


def test_quantised_v_cache_turns_flash_attention_on() -> None:
    plan = plan_for("cpu", kv_cache_type="q4_0", flash_attn="off")
    assert plan.flash_attention is True
    assert any("quantised V cache" in r for r in plan.reasons)


def test_threads_never_above_the_cores_of_the_host_that_runs_it() -> None:
    # The cpu profile describes 4 cores; this machine kind has 2: 4 threads served a third as fast.
    plan = plan_for("cpu", runs_on=RunHost(cores=2))
    assert plan.threads == 2
    assert plan.notes and "Profile cpu describes 4 physical cores and this host has 2" in plan.notes[0]
    assert plan.notes[0] in plan.reasons


def test_a_bigger_host_keeps_the_profile_and_says_so() -> None:
    plan = plan_for("cpu", runs_on=RunHost(cores=16))
    assert plan.threads == 4 and "keeping the profile's 4 threads" in plan.notes[0]


def test_agreeing_host_and_no_host_give_no_note() -> None:
    assert plan_for("cpu", runs_on=RunHost(cores=4)).notes == ()
    assert plan_for("cpu").notes == ()


def test_explicit_threads_above_the_host_are_kept_with_a_note() -> None:
    plan = plan_for("cpu", runs_on=RunHost(cores=2), threads=4)
    assert plan.threads == 4 and "contend" in plan.notes[0]


def test_vllm_flags() -> None:
    gpu = plan_for("rtx3060", R1_15B)
    assert (gpu.max_num_seqs, gpu.prefix_caching, gpu.chunked_prefill, gpu.batch_size) == (256, True, True, 2048)
    cpu = plan_for("cpu-vllm", runs_on=RunHost(cores=2))
    assert cpu.backend == "vllm" and cpu.max_num_seqs == 8 and cpu.threads == 2
    assert plan_for("rtx3060", R1_15B, max_num_seqs=32).max_num_seqs == 32


@pytest.mark.parametrize(
    ("knobs", "seqs", "batched"),
    [
        ({"batch_size": 128}, 128, 128),  # the default 256 sequences give way to the batch set
        ({"max_num_seqs": 4096}, 4096, 4096),  # the default 2048-token batch gives way to the sequences set
        ({"batch_size": 64, "max_num_seqs": 512}, 64, 64),  # both set: the sequences give way
        ({"batch_size": 512, "max_num_seqs": 64}, 64, 512),  # no conflict: both kept
    ],
)
def test_vllm_never_gets_fewer_batched_tokens_than_sequences(knobs: dict[str, int], seqs: int, batched: int) -> None:
    # vLLM's SchedulerConfig refuses max_num_batched_tokens < max_num_seqs (tests/e2e/test_gpu_args.py).
    plan = plan_for("rtx3060", R1_15B, **knobs)
    assert (plan.backend, plan.max_num_seqs, plan.batch_size) == ("vllm", seqs, batched)
    lowered = any("lowered to the batch" in r for r in plan.reasons)
    assert lowered == (seqs < knobs.get("max_num_seqs", 256))


def test_rendered_llama_server_flags() -> None:
    plan = plan_for("cpu", runs_on=RunHost(cores=2), kv_cache_type="q8_0")
    spec = StackSpec(
        project="deploykit-t",
        plan=plan,
        model_host_path="/m/smol.gguf",
        images={"inference": "a:1", "open-webui": "b:1"},
        webui_port=7860,
        webui_bind="0.0.0.0",
        inference_port=7861,
    )
    secrets = dict.fromkeys(SECRET_KEYS, "x")
    inputs = PlanInputs(
        host=find_profile("cpu", builtin_profiles()), model=find_model(SMOL, builtin_models()), settings=PlanSettings()
    )
    compose = render_files(spec, secrets, inputs)["compose.yaml"]
    flat = " ".join(re.findall(r'^\s+- "([^"]*)"$', compose, flags=re.MULTILINE))
    assert f"-c {4096 * LLAMACPP_DEFAULT_SLOTS} -np {LLAMACPP_DEFAULT_SLOTS} -t 2 -b 2048 -ub 512" in flat
    assert "--flash-attn on -ctk q8_0 -ctv q8_0" in flat


def test_settings_carry_the_knobs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEPLOYKIT_PARALLEL", "3")
    monkeypatch.setenv("DEPLOYKIT_KV_CACHE_TYPE", "q8_0")
    plan_settings = load_settings(threads=2).plan_settings()
    assert (plan_settings.parallel, plan_settings.kv_cache_type, plan_settings.threads) == (3, "q8_0", 2)
