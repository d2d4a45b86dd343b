"""vLLM's OpenAI server for real: the CPU build with the converted FP16 SmolLM2, behind Open WebUI."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import pytest

from tests.e2e.conftest import FP16_DIR, MODEL_ID, Stack, deploykit, make_stack, need, remove_by_label

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def vllm_stack(engine: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    need("VLLM_CPU_IMAGE" in engine, "the offline vLLM CPU image is not built (scripts/provision/image-vllm.sh)")
    need((FP16_DIR / "config.json").is_file(), f"the FP16 model {FP16_DIR} is missing (model-smollm2-fp16.sh)")
    stack = make_stack(tmp_path_factory.mktemp("stacks"), "e2e-vllm", 47860, 47861)
    remove_by_label(f"org.deploykit.stack={stack.project}")
    result = stack.up(
        engine,
        "--profile",
        "cpu-vllm",
        "--model",
        MODEL_ID,
        "--model-file",
        str(FP16_DIR),
        "--json",
        backend_image="VLLM_CPU_IMAGE",
    )
    stack.up_result = result
    try:
        assert result.code == 0, result.err
        yield stack
    finally:
        stack.remove()


def test_vllm_cpu_stack_is_healthy(vllm_stack: Stack) -> None:
    report = json.loads(vllm_stack.up_result.out)  # type: ignore[union-attr]
    assert report["healthy"] is True
    plan = json.loads((vllm_stack.dir / "plan.json").read_text())["stack"]["plan"]
    assert (plan["backend"], plan["device"], plan["dtype"]) == ("vllm", "cpu", "bfloat16")
    compose = (vllm_stack.dir / "compose.yaml").read_text()
    assert "VLLM_CPU_KVCACHE_SPACE" in compose and "shm_size" in compose
    status = deploykit("status", "--dir", str(vllm_stack.dir), "--json", env=vllm_stack.env)
    assert json.loads(status.out)["healthy"] is True


def test_vllm_answers_in_readable_english(vllm_stack: Stack) -> None:
    result = deploykit("chat", "--dir", str(vllm_stack.dir), "Say hello in one sentence.", env=vllm_stack.env)
    assert result.code == 0, result.err
    text = result.out.strip()
    assert text
    # The naive GGUF→HF conversion decodes to byte-level pieces; the fixed tokenizer must not.
    assert "Ġ" not in text and "Ċ" not in text
    assert re.search(r"[A-Za-z]{3,} [A-Za-z]{2,}", text), text


def test_smoke_checks_pass_on_vllm(vllm_stack: Stack) -> None:
    result = deploykit("smoke", "--dir", str(vllm_stack.dir), "--json", env=vllm_stack.env)
    assert result.code == 0, result.out + result.err
    checks = {c["name"]: c for c in json.loads(result.out)["checks"]}
    assert checks["structured output (json_schema)"]["status"] == "pass"
