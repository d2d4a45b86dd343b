"""The device check's pieces that run without a GPU: the server arguments taken from a rendered stack,
the plan's estimate, the forced partial offload, llama.cpp's buffer lines, and the model maker's
config. The stacks are planned from the real H200's detection (tests/fixtures/gpu/h200/detect.json)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import yaml

from deploykit.app.stack import StackRequest, render_stack
from deploykit.config.settings import load_settings
from tests.unit.conftest import H200, ROOT
from tests.unit.conftest import TINY_GGUF as GGUF


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / "device" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


gpu_args = _load("gpu_args")
make_tiny_model = _load("make_tiny_model")


def render(stack_dir: Path, host: Path = H200) -> Path:
    render_stack(load_settings(), StackRequest(stack_dir, profile="auto", host_file=host, model_path=GGUF))
    return stack_dir


def test_server_args_are_the_rendered_command_with_the_key_and_the_host_path(tmp_path: Path) -> None:
    stack = render(tmp_path / "full")
    argv = gpu_args.server_args(stack)
    command = yaml.safe_load((stack / "compose.yaml").read_text())["services"]["inference"]["command"]
    key = gpu_args.read_env(stack / ".env")["INFERENCE_API_KEY"]
    assert len(argv) == len(command)
    assert argv[argv.index("-m") + 1] == str(GGUF)
    assert argv[argv.index("--api-key") + 1] == key and key.startswith("sk-")
    others = [(a, c) for a, c in zip(argv, command, strict=True) if a != c]
    assert [a for a, _ in others] == [str(GGUF), key]  # nothing else differs from compose.yaml
    assert argv[argv.index("-ngl") + 1] == str(int(argv[argv.index("-ngl") + 1]))


def test_estimate_is_the_plans_vram_total(tmp_path: Path) -> None:
    stack = render(tmp_path / "full")
    est = gpu_args.estimate(stack)
    plan = json.loads((stack / "plan.json").read_text())["stack"]["plan"]
    assert est["device"] == "cuda" and est["backend"] == "llamacpp"
    assert est["gpu_layers"] == est["total_layers"] == plan["total_layers"]
    assert est["vram_estimate_bytes"] == plan["memory"]["total_bytes"]


def test_partial_host_makes_the_planner_split_the_layers(tmp_path: Path) -> None:
    host = gpu_args.partial_host(H200, GGUF)
    path = tmp_path / "partial.json"
    path.write_text(json.dumps(host))
    est = gpu_args.estimate(render(tmp_path / "partial", path))
    assert 0 < est["gpu_layers"] < est["total_layers"]
    assert host["gpus"][0]["name"] == "NVIDIA H200"
    assert host["gpus"][0]["memory_total_bytes"] < 2 * 1024**3


def test_buffers_from_a_real_llama_cpp_log() -> None:
    log = ROOT / "tests" / "fixtures" / "gpu" / "llamacpp-0.7.0-cpu-buffers.log"
    assert gpu_args.buffers(log) == {
        "CPU_Mapped": {"model": 57.14},
        "CPU": {"output": 0.19, "KV": 32.0, "compute": 130.52},
    }


def test_the_tiny_model_has_qwen2_0_5b_proportions() -> None:
    config = make_tiny_model.qwen2_config(8, 896)
    assert (config["num_attention_heads"], config["num_key_value_heads"], config["intermediate_size"]) == (14, 2, 4864)
    assert config["vocab_size"] == make_tiny_model.VOCAB and config["architectures"] == ["Qwen2ForCausalLM"]


def test_the_fixture_tokenizer_loses_its_note_and_keeps_its_template(tmp_path: Path) -> None:
    make_tiny_model.write_tokenizer(tmp_path)
    tokenizer = json.loads((tmp_path / "tokenizer.json").read_text())
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert "_fixture" not in tokenizer and "_fixture" not in config
    assert tokenizer["model"]["type"] == "BPE" and "<|im_start|>" in config["chat_template"]


def test_the_verify_scripts_dry_run_renders_both_plans_and_says_what_it_would_run(tmp_path: Path) -> None:
    """DRY_RUN=1, as on a machine without a GPU: the real renders from the recorded H200 and the real argument
    extraction, with the two steps that need torch (the model, its GGUF) standing in for by the tiny GGUF."""
    import os
    import shutil
    import tarfile

    tree = tmp_path / "tree"  # the script finds its carry folder and the recorded host beside itself
    shutil.copytree(ROOT / "scripts" / "device", tree / "scripts" / "device")
    (tree / "tests" / "fixtures" / "gpu" / "h200").mkdir(parents=True)
    shutil.copy(H200, tree / "tests" / "fixtures" / "gpu" / "h200" / "detect.json")
    carry = tree / ".gpucheck"
    (carry / "llama.cpp" / "gguf-py").mkdir(parents=True)
    (carry / "MANIFEST.json").write_text('{"llama.cpp": "stand-in"}')
    with tarfile.open(carry / "llama.cpp-src.tar.gz", "w:gz") as tar:
        tar.add(carry / "llama.cpp", arcname="llama.cpp")
    python = tmp_path / "python"
    python.write_text(
        "#!/bin/bash\n"
        'case "$1" in\n'
        '  */make_tiny_model.py) mkdir -p "$2"; echo \'{"layers": 4}\'; exit 0;;\n'
        f'  */to_gguf.py) cp {GGUF} "$4"; exit 0;;\n'
        "esac\n"
        f'exec {sys.executable} "$@"\n'
    )
    python.chmod(0o755)
    out, work = tmp_path / "out", tmp_path / "work"
    env = os.environ | {
        "OUT": str(out),
        "DRY_RUN": "1",
        "PYTHON": str(python),
        "GPU_CHECK_WORK": str(work),
        "PYTHONPATH": str(ROOT),
    }
    result = subprocess.run(
        ["bash", str(tree / "scripts" / "device" / "verify_gpu.sh")], env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    steps = {s["step"]: s["rc"] for s in summary["steps"]}
    assert summary["dry_run"] is True
    assert {steps[name] for name in ("unpack", "model", "gguf", "render-full", "partial-host", "render-partial")} == {0}
    assert "configure" not in steps and "build" not in steps  # no CUDA build without a GPU
    full = json.loads((work / "argv-full.json").read_text())
    partial = json.loads((work / "estimate-partial.json").read_text())
    assert full[full.index("--api-key") + 1] == "<INFERENCE_API_KEY>"  # the key is not written down
    assert 0 < partial["gpu_layers"] < partial["total_layers"]
    assert "dry run: full plan would run: llama-server -m" in result.stdout
    assert not list((work / "logs").glob("stack-*/.env"))
