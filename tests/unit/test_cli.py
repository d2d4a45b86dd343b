"""Every command through Click's runner: output, exit codes, and the error contract."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from deploykit.cli import cli


def run(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


def test_version_and_help() -> None:
    assert run("--version").output.startswith("deploykit, version ")
    out = run("--help").output
    for command in ("detect", "profiles", "models", "plan", "render"):
        assert command in out


def test_help_does_not_import_heavy_modules() -> None:
    code = (
        "import sys; from deploykit.cli import cli\n"
        "try:\n    cli(['--help'])\nexcept SystemExit:\n    pass\n"
        "bad = [m for m in ('docker', 'httpx', 'pydantic_settings', 'pydantic', 'jinja2', 'rich')\n"
        "       if m in sys.modules]\n"
        "print('HEAVY', bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().endswith("HEAVY []")


def test_plan_json_rtx3060() -> None:
    result = run("plan", "--profile", "rtx3060", "--json")
    assert result.exit_code == 0
    plan = json.loads(result.output)
    assert plan["backend"] == "vllm" and plan["device"] == "cuda"
    assert plan["quantization"] in ("fp16", "bf16")
    assert plan["context_length"] >= 4096
    assert plan["memory"]["total_bytes"] <= plan["memory"]["budget_bytes"] <= 12 * 1024**3
    for key in ("weights_bytes", "kv_cache_bytes", "overhead_bytes"):
        assert plan["memory"][key] > 0
    assert plan["reasons"]


@pytest.mark.parametrize(
    ("profile", "backend", "device"), [("gtx1650", "llamacpp", "cuda"), ("cpu", "llamacpp", "cpu")]
)
def test_plan_json_llamacpp(profile: str, backend: str, device: str) -> None:
    plan = json.loads(run("plan", "-p", profile, "--json").output)
    assert (plan["backend"], plan["device"]) == (backend, device)
    assert plan["quantization"].startswith("Q4")
    if device == "cuda":
        assert plan["gpu_layers"] == plan["total_layers"]


def test_plan_human_output_explains() -> None:
    out = run("plan", "-p", "gtx1650", "--model", "deepseek-r1-distill-qwen-7b").output
    assert "GPU layers  20 of 28" in out
    assert "Why:" in out


def test_profiles_and_models_json() -> None:
    profiles = json.loads(run("profiles", "--json").output)
    names = {p["name"] for p in profiles}
    assert {"cpu", "gtx1650", "rtx4060", "rtx3060", "rtx4090", "a100-80gb", "h200", "rk3588", "rpi5"} <= names
    rtx = next(p for p in profiles if p["name"] == "rtx3060")
    assert rtx["vram_bytes"] == 12 * 1024**3 and rtx["backend"] == "vllm"
    models = json.loads(run("models", "--json").output)
    default = next(m for m in models if m["id"] == "deepseek-r1-distill-qwen-1.5b")
    assert (default["layers"], default["hidden_size"], default["kv_heads"], default["head_dim"]) == (
        28,
        1536,
        2,
        128,
    )
    assert default["gguf"]["file"] == "DeepSeek-R1-Distill-Qwen-1.5B-Q4_K_M.gguf"
    assert "Model catalog" in run("models").output
    assert "rtx3060" in run("profiles").output


def test_unknown_profile_suggests_and_writes_nothing(tmp_path: Path) -> None:
    target = tmp_path / "stack"
    result = run("render", "--profile", "rtx306", "--dir", str(target))
    assert result.exit_code == 3
    assert "profile 'rtx306' is not known" in result.output
    assert "rtx3060" in result.output
    assert "Traceback" not in result.output
    assert not target.exists()


def test_unknown_model_suggests() -> None:
    result = run("plan", "-p", "cpu", "--model", "deepseek-r1-distil-qwen-1.5b")
    assert result.exit_code == 3
    assert "did you mean 'deepseek-r1-distill-qwen-1.5b'" in result.output


def test_invalid_settings_list_every_bad_field(tmp_path: Path) -> None:
    target = tmp_path / "stack"
    env = {"DEPLOYKIT_MAX_CONTEXT": "lots", "DEPLOYKIT_WEBUI_PORT": "99999"}
    result = run("render", "-p", "cpu", "--dir", str(target), env=env)
    assert result.exit_code == 4
    assert "DEPLOYKIT_MAX_CONTEXT" in result.output and "DEPLOYKIT_WEBUI_PORT" in result.output
    assert not target.exists()


def test_config_file_env_and_flags_layer(isolated_home: Path) -> None:
    config = isolated_home / "config" / "deploykit"
    config.mkdir(parents=True)
    (config / "config.toml").write_text("max_context = 8192\n")
    assert json.loads(run("plan", "-p", "rtx3060", "--json").output)["context_length"] == 8192
    env = {"DEPLOYKIT_MAX_CONTEXT": "16384"}
    assert json.loads(run("plan", "-p", "rtx3060", "--json", env=env).output)["context_length"] == 16384
    flags = run("plan", "-p", "rtx3060", "--json", "--context", "2048", env=env)
    assert json.loads(flags.output)["context_length"] == 2048


def test_bad_image_override_refused(tmp_path: Path) -> None:
    for bad, code in (("webui=x:1", 2), ("open-webui=x/y:latest", 2), ("open-webui", 2)):
        result = run("render", "-p", "cpu", "--dir", str(tmp_path / "s"), "--image", bad)
        assert result.exit_code == code, result.output
        assert "Error:" in result.output
    assert not (tmp_path / "s").exists()


def test_image_override_lands_in_compose(tmp_path: Path) -> None:
    result = run(
        "render",
        "-p",
        "cpu",
        "--dir",
        str(tmp_path / "s"),
        "--image",
        "open-webui=mirror.example/owui:0.12.4",
    )
    assert result.exit_code == 0, result.output
    assert 'image: "mirror.example/owui:0.12.4"' in (tmp_path / "s" / "compose.yaml").read_text()


def test_nothing_fits_is_a_clear_refusal(tmp_path: Path) -> None:
    profiles = tmp_path / "profiles.toml"
    profiles.write_text(
        "[profiles.tiny-board]\n[profiles.tiny-board.cpu]\narch = 'aarch64'\nphysical_cores = 4\nlogical_cores = 4\n"
        "[profiles.tiny-board.memory]\ntotal_gib = 4\n"
    )
    result = run("--profiles-file", str(profiles), "plan", "-p", "tiny-board", "--model", "deepseek-r1-distill-qwen-7b")
    assert result.exit_code == 5
    assert "needs" in result.output and "tiny-board has" in result.output
    assert "--model deepseek-r1-distill-qwen-1.5b" in result.output


def test_user_profile_file_errors_are_one_sentence(tmp_path: Path) -> None:
    bad = tmp_path / "profiles.toml"
    bad.write_text("[profiles.x]\n[profiles.x.cpu]\nphysical_cores = 0\nlogical_cores = 1\n")
    result = run("--profiles-file", str(bad), "profiles")
    assert result.exit_code == 4
    assert "physical_cores" in result.output and "memory" in result.output


def test_detect_json_round_trips_through_host(tmp_path: Path) -> None:
    result = run("detect", "--json")
    assert result.exit_code == 0, result.output
    host = json.loads(result.output)
    assert host["source"] == "detected" and host["memory"]["total_bytes"] > 0
    saved = tmp_path / "host.json"
    saved.write_text(result.output)
    plan = json.loads(run("plan", "--host", str(saved), "--json").output)
    assert plan["backend"] in ("vllm", "llamacpp")


def test_bad_host_file(tmp_path: Path) -> None:
    bad = tmp_path / "host.json"
    bad.write_text("{not json")
    result = run("plan", "--host", str(bad))
    assert result.exit_code == 2 and "is not JSON" in result.output
    bad.write_text(json.dumps({"name": "x"}))
    result = run("plan", "--host", str(bad))
    assert result.exit_code == 4 and "cpu" in result.output


def test_model_file_gguf(tmp_path: Path) -> None:
    gguf = Path(__file__).resolve().parents[1] / "fixtures" / "gguf" / "tiny.gguf"
    plan = json.loads(run("plan", "-p", "cpu", "--model-file", str(gguf), "--json").output)
    assert plan["backend"] == "llamacpp" and plan["model_id"] == "tiny"
    missing = run("plan", "-p", "cpu", "--model-file", str(tmp_path / "nope.gguf"))
    assert missing.exit_code == 2 and "does not exist" in missing.output
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a gguf at all")
    result = run("plan", "-p", "cpu", "--model-file", str(junk))
    assert result.exit_code == 2 and "GGUF" in result.output


def test_down_volumes_without_a_terminal_asks_for_yes(tmp_path: Path) -> None:
    stack = tmp_path / "stack"
    assert run("render", "-p", "cpu", "--dir", str(stack)).exit_code == 0
    result = run("down", "--dir", str(stack), "--volumes")
    assert result.exit_code == 2
    assert "--yes" in result.output
    assert sorted(p.name for p in stack.iterdir()) == [".env", "compose.yaml", "plan.json"]


def test_stack_commands_name_a_missing_stack(tmp_path: Path) -> None:
    for command in (["status"], ["chat", "hi"], ["down"], ["logs"], ["smoke"]):
        result = run(*command, "--dir", str(tmp_path / "nothing"))
        assert result.exit_code == 3, command
        assert "no deploykit stack" in result.output
