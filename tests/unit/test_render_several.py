"""A stack of several models rendered (issue 17): the llama.cpp router and its models.ini, one service per other
model started in order, Open WebUI's connections to all of them; one model stays byte for byte as before."""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading
from pathlib import Path, PurePosixPath
from typing import Any

import kubernetes_validate
import pytest
import yaml

from deploykit.app.stack import StackRequest, render_stack
from deploykit.config.settings import load_settings
from deploykit.planning import templating
from deploykit.planning.render import ini_value
from deploykit.values.errors import UsageError
from deploykit.values.stackplan import ROUTER, inference_service
from tests.unit.conftest import compose_config
from tests.unit.test_targets import KUBERNETES_VERSION

R1_15B = "deepseek-r1-distill-qwen-1.5b"
R1_7B = "deepseek-r1-distill-qwen-7b"
QWEN_15B = "qwen2.5-1.5b-instruct"
SMOLLM = "smollm2-135m-instruct"
KEY = "${INFERENCE_API_KEY:?run deploykit render to create .env}"


def render_models(tmp_path: Path, profile: str, *models: dict[str, object]) -> Path:
    settings = load_settings(models=models)
    stack_dir = tmp_path / "s"
    render_stack(settings, StackRequest(stack_dir=stack_dir, profile=profile))
    return stack_dir


def services(stack_dir: Path) -> dict[str, dict[str, object]]:
    doc = yaml.safe_load((stack_dir / "compose.yaml").read_text(encoding="utf-8"))
    found: dict[str, dict[str, object]] = doc["services"]
    return found


def test_two_gguf_models_on_the_cpu_share_one_router_with_its_presets(tmp_path: Path) -> None:
    stack_dir = render_models(tmp_path, "cpu", {"id": SMOLLM}, {"id": QWEN_15B})
    found = services(stack_dir)
    assert set(found) == {ROUTER, "open-webui"}
    router = found[ROUTER]
    command = router["command"]
    assert isinstance(command, list)
    # Together: the most a stack holds (8), so that adding or removing a model later leaves the command as it is.
    assert command[:4] == ["--models-preset", "/presets/models.ini", "--models-max", "8"]
    assert "-m" not in command and "-c" not in command, "per-model flags live in the preset only"
    assert command[command.index("--port") + 1] == "8080", "always pass --port (the build's default is 9931)"
    volumes = router["volumes"]
    assert isinstance(volumes, list)
    assert {"type": "bind", "source": "./presets", "target": "/presets", "read_only": True} in volumes, (
        "the presets folder, not the stack folder (.env, the TLS key)"
    )
    # Both are catalog models in deploykit's model cache: the cache is mounted once, read-only, not file by file
    # (a model added later then changes the preset only).
    cache = str(load_settings().model_cache)
    binds = [v for v in volumes if v["target"] != "/presets"]
    assert binds == [{"type": "bind", "source": cache, "target": "/model-cache", "read_only": True}]

    preset = (stack_dir / "presets" / "models.ini").read_text(encoding="utf-8")
    templating.check_preset(preset)
    recorded = json.loads((stack_dir / "plan.json").read_text(encoding="utf-8"))["stack"]
    assert recorded["model_cache"] == cache
    path = PurePosixPath(recorded["model_paths"][SMOLLM]).relative_to(cache)
    assert f"[{SMOLLM}]\nmodel = /model-cache/{path}\nctx-size = 16384\nparallel = 4\n" in preset
    assert preset.count("load-on-startup = true") == 2, "together: both loaded at start"

    env = found["open-webui"]["environment"]
    assert isinstance(env, dict)
    assert env["OPENAI_API_BASE_URLS"] == "http://router:8080/v1"
    assert env["OPENAI_API_KEYS"] == KEY
    assert json.loads(env["OPENAI_API_CONFIGS"]) == {"0": {"provider": "llama.cpp"}}
    assert env["DEFAULT_MODELS"] == SMOLLM
    assert "OPENAI_API_BASE_URL" not in env and "TASK_MODEL_EXTERNAL" not in env

    plan = json.loads((stack_dir / "plan.json").read_text(encoding="utf-8"))
    assert plan["stack"]["plan"]["model_id"] == SMOLLM, "plan.json keeps the default model's plan"
    assert [m["model_id"] for m in plan["stack"]["models"]] == [SMOLLM, QWEN_15B]
    assert plan["stack"]["packing"]["mode"] == "together"
    assert [m["model"]["id"] for m in plan["inputs"]["models"]] == [SMOLLM, QWEN_15B]


def test_rtx3060_vllm_and_llamacpp_each_their_service_started_in_order(tmp_path: Path) -> None:
    stack_dir = render_models(tmp_path, "rtx3060", {"id": R1_15B}, {"id": R1_7B, "quantization": "Q4_K_M"})
    found = services(stack_dir)
    vllm, llama = found[inference_service(R1_15B)], found[inference_service(R1_7B)]
    command = vllm["command"]
    assert isinstance(command, list)
    assert command[command.index("--gpu-memory-utilization") + 1] == "0.404", "its share, with the third decimal"
    assert "depends_on" not in vllm
    assert llama["depends_on"] == {inference_service(R1_15B): {"condition": "service_healthy"}}
    assert [p for p in (vllm["ports"], llama["ports"])] == [["127.0.0.1:7861:8000"], ["127.0.0.1:7862:8080"]]
    env = found["open-webui"]["environment"]
    assert isinstance(env, dict)
    assert env["OPENAI_API_BASE_URLS"] == (
        f"http://{inference_service(R1_15B)}:8000/v1;http://{inference_service(R1_7B)}:8080/v1"
    )
    assert env["OPENAI_API_KEYS"] == f"{KEY};{KEY}"
    assert json.loads(env["OPENAI_API_CONFIGS"]) == {}, "no router: no llama.cpp provider"
    assert not (stack_dir / "presets" / "models.ini").exists()


def test_on_demand_points_open_webuis_tasks_at_the_model_that_stays_loaded_and_starts_the_router_last(
    tmp_path: Path,
) -> None:
    # gtx1650: the two 1.5B Q4 models take turns behind the router; SmolLM2 in FP16 on vLLM stays loaded.
    stack_dir = render_models(tmp_path, "gtx1650", {"id": R1_15B}, {"id": QWEN_15B}, {"id": SMOLLM})
    found = services(stack_dir)
    assert found[ROUTER]["depends_on"] == {inference_service(SMOLLM): {"condition": "service_healthy"}}
    command = found[ROUTER]["command"]
    assert isinstance(command, list) and command[command.index("--models-max") + 1] == "1"
    preset = (stack_dir / "presets" / "models.ini").read_text(encoding="utf-8")
    assert preset.count("load-on-startup = true") == 1, "the default model only"
    env = found["open-webui"]["environment"]
    assert isinstance(env, dict)
    assert env["TASK_MODEL_EXTERNAL"] == SMOLLM
    assert env["DEFAULT_MODELS"] == R1_15B
    urls = env["OPENAI_API_BASE_URLS"].split(";")
    assert urls == [f"http://{inference_service(SMOLLM)}:8000/v1", "http://router:8080/v1"], "start order"
    assert json.loads(env["OPENAI_API_CONFIGS"]) == {"1": {"provider": "llama.cpp"}}


def test_the_rendered_several_model_stack_passes_docker_compose_config(tmp_path: Path) -> None:
    stack_dir = render_models(tmp_path, "gtx1650", {"id": R1_15B}, {"id": QWEN_15B}, {"id": SMOLLM})
    config = compose_config(stack_dir)
    assert set(config["services"]) == {ROUTER, inference_service(SMOLLM), "open-webui"}


@pytest.mark.parametrize("value", ["a\nb", "[x]", "a#b", "a;b", " lead"])
def test_ini_values_llama_cpp_would_misread_are_refused(value: str) -> None:
    with pytest.raises(UsageError, match=r"cannot be written into the router's models\.ini"):
        ini_value(value)


@pytest.mark.parametrize("text", ["[m]\nmodel = /a#b\n", "[m]\nnot a key line\n", "version = 1\n[*]\njinja = true\n"])
def test_a_preset_llama_cpp_would_misread_is_not_written(text: str) -> None:
    with pytest.raises(templating.RenderedFileError):
        templating.check_preset(text)


def test_one_models_entry_is_todays_single_model_stack(tmp_path: Path) -> None:
    one = render_models(tmp_path, "cpu", {"id": SMOLLM})
    plain = tmp_path / "plain"
    render_stack(load_settings(), StackRequest(stack_dir=plain, profile="cpu", model_id=SMOLLM))
    mine = (one / "compose.yaml").read_text(encoding="utf-8").replace("deploykit-s", "deploykit-plain")
    assert mine == (plain / "compose.yaml").read_text(encoding="utf-8")


def test_one_models_entry_narrows_that_model_as_asked(tmp_path: Path) -> None:
    stack_dir = render_models(tmp_path, "cpu", {"id": SMOLLM, "context": 2048})
    plan = json.loads((stack_dir / "plan.json").read_text(encoding="utf-8"))
    assert (plan["stack"]["plan"]["model_id"], plan["stack"]["plan"]["context_length"]) == (SMOLLM, 2048)
    assert "models" not in plan["stack"], "one model: plan.json as before"


def test_one_model_flag_wins_over_the_stacks_models_tables(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from deploykit.cli import cli

    stack_dir = tmp_path / "s"
    stack_dir.mkdir()
    (stack_dir / "deploykit.toml").write_text(
        f'[[models]]\nid = "{SMOLLM}"\n\n[[models]]\nid = "{QWEN_15B}"\n', encoding="utf-8"
    )
    result = CliRunner().invoke(cli, ["render", "-p", "cpu", "--model", QWEN_15B, "--dir", str(stack_dir)])
    assert result.exit_code == 0, result.output
    assert set(services(stack_dir)) == {"inference", "open-webui"}
    result = CliRunner().invoke(cli, ["render", "-p", "cpu", "--dir", str(stack_dir)])
    assert result.exit_code == 0, result.output
    assert set(services(stack_dir)) == {ROUTER, "open-webui"}, "without the flag, the tables"


def test_swarm_serves_the_router_with_its_preset_as_a_config_named_by_its_content(tmp_path: Path) -> None:
    from tests.unit.test_targets import stack_config

    settings = load_settings(models=({"id": SMOLLM}, {"id": QWEN_15B}))
    stack_dir = tmp_path / "s"
    render_stack(settings, StackRequest(stack_dir=stack_dir, profile="cpu", target="swarm"))
    result = stack_config(stack_dir / "swarm.yaml")
    assert result.returncode == 0, result.stderr
    doc = yaml.safe_load((stack_dir / "swarm.yaml").read_text(encoding="utf-8"))
    router = doc["services"][ROUTER]
    assert router["command"][router["command"].index("--api-key-file") + 1] == "/run/secrets/inference_api_key"
    assert router["configs"] == [{"source": "models_preset", "target": "/presets/models.ini"}]
    assert "depends_on" not in router and "restart" not in router
    config = doc["configs"]["models_preset"]
    assert config["file"] == "./presets/models.ini" and config["name"].startswith("deploykit-s-models-")
    webui = doc["services"]["open-webui"]
    assert "OPENAI_API_KEYS" not in webui["environment"], "from the secret, by the wrapper"
    assert 'OPENAI_API_KEYS="$$(cat /run/secrets/inference_api_key)"' in " ".join(webui["entrypoint"])
    (stack_dir / "presets" / "models.ini").write_text("changed", encoding="utf-8")
    settings = load_settings(models=({"id": SMOLLM}, {"id": QWEN_15B, "context": 2048}))
    render_stack(settings, StackRequest(stack_dir=stack_dir, profile="cpu", target="swarm", force=True))
    again = yaml.safe_load((stack_dir / "swarm.yaml").read_text(encoding="utf-8"))
    assert again["configs"]["models_preset"]["name"] != config["name"], "another preset, another config"


def test_a_rendered_stack_of_several_models_loads_back_as_it_was_planned(tmp_path: Path) -> None:
    # What the running part reads: plan.json's models and packing validate back into the same StackPlan.
    from deploykit.running.stack import load_stack

    settings = load_settings(models=({"id": R1_15B}, {"id": QWEN_15B}, {"id": SMOLLM}))
    request = StackRequest(stack_dir=tmp_path / "s", profile="gtx1650")
    result = render_stack(settings, request)
    loaded = load_stack(tmp_path / "s")
    assert loaded.spec.stack_plan == result.spec.stack_plan
    assert loaded.spec.stack_plan is not None and loaded.spec.stack_plan.services == (
        inference_service(SMOLLM),
        ROUTER,
    )
    assert [m.model.id for m in loaded.inputs.models] == [R1_15B, QWEN_15B, SMOLLM]


# ---------------------------------------------------------------- Kubernetes


def render_kubernetes(tmp_path: Path, profile: str, *models: dict[str, object]) -> tuple[Path, list[dict[str, Any]]]:
    """The stack rendered for Kubernetes, each manifest validated against the cluster's schemas."""
    settings = load_settings(models=models)
    stack_dir = tmp_path / "k"
    render_stack(settings, StackRequest(stack_dir=stack_dir, profile=profile, target="kubernetes"))
    docs = [d for d in yaml.safe_load_all((stack_dir / "kubernetes.yaml").read_text(encoding="utf-8")) if d]
    for doc in docs:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    return stack_dir, docs


def objects(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    """The manifests of one kind by their component (app.kubernetes.io/name)."""
    return {d["metadata"]["labels"]["app.kubernetes.io/name"]: d for d in docs if d["kind"] == kind}


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    (found,) = deployment["spec"]["template"]["spec"]["containers"]
    return dict(found)


def webui_env(docs: list[dict[str, Any]]) -> dict[str, Any]:
    env = container(objects(docs, "Deployment")["open-webui"])["env"]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in env}


def test_kubernetes_serves_two_ggufs_on_the_cpu_from_one_router_with_the_compose_renders_preset(
    tmp_path: Path,
) -> None:
    stack_dir, docs = render_kubernetes(tmp_path, "cpu", {"id": SMOLLM}, {"id": QWEN_15B})
    deployments, services_ = objects(docs, "Deployment"), objects(docs, "Service")
    assert set(deployments) == set(services_) == {ROUTER, "open-webui"}
    router = container(deployments[ROUTER])
    args = router["args"]
    assert args[:4] == ["--models-preset", "/presets/models.ini", "--models-max", "2"]
    assert "-m" not in args and "-c" not in args, "per-model flags live in the preset only"
    assert args[args.index("--api-key-file") + 1] == "/run/secrets/deploykit/inference-api-key"
    assert {"name": "presets", "mountPath": "/presets", "readOnly": True} in router["volumeMounts"]
    assert "initContainers" not in deployments[ROUTER]["spec"]["template"]["spec"], "the first server waits on none"

    (config_map,) = [d for d in docs if d["kind"] == "ConfigMap"]
    volumes = {v["name"]: v for v in deployments[ROUTER]["spec"]["template"]["spec"]["volumes"]}
    assert volumes["presets"]["configMap"]["name"] == config_map["metadata"]["name"]
    compose_dir = render_models(tmp_path, "cpu", {"id": SMOLLM}, {"id": QWEN_15B})
    written = (compose_dir / "presets" / "models.ini").read_text(encoding="utf-8")
    # The same preset as the Compose render's, but for where each GGUF is: Compose loads it from the mounted
    # model cache, Kubernetes from the copy in its models volume.
    k8s = config_map["data"]["models.ini"]

    def flags(preset: str) -> list[str]:
        return [line for line in preset.splitlines() if not line.startswith("model = ")]

    assert flags(k8s) == flags(written), "the same sections and flags as the Compose render's models.ini"
    assert f"model = /models/{SMOLLM}.gguf\n" in k8s and f"model = /models/{QWEN_15B}.gguf\n" in k8s
    assert f"model = /model-cache/{SMOLLM}/" in written
    header = (stack_dir / "kubernetes.yaml").read_text(encoding="utf-8").split("---", 1)[0]
    assert f"as {SMOLLM}.gguf" in header and f"as {QWEN_15B}.gguf" in header, "what to copy into the volume"

    env = webui_env(docs)
    router_service = services_[ROUTER]["metadata"]["name"]
    assert env["OPENAI_API_BASE_URLS"] == f"http://{router_service}:8080/v1"
    assert env["OPENAI_API_KEYS"] == "$(INFERENCE_API_KEY)"
    (secret,) = [d for d in docs if d["kind"] == "Secret"]
    assert env["INFERENCE_API_KEY"] == {
        "secretKeyRef": {"name": secret["metadata"]["name"], "key": "inference-api-key"}
    }
    assert json.loads(env["OPENAI_API_CONFIGS"]) == {"0": {"provider": "llama.cpp"}}
    assert env["DEFAULT_MODELS"] == SMOLLM
    assert "OPENAI_API_BASE_URL" not in env and "TASK_MODEL_EXTERNAL" not in env


def test_kubernetes_serves_vllm_and_llamacpp_on_rtx3060_each_its_deployment_the_second_waiting_for_the_first(
    tmp_path: Path,
) -> None:
    _, docs = render_kubernetes(tmp_path, "rtx3060", {"id": R1_15B}, {"id": R1_7B, "quantization": "Q4_K_M"})
    first, second = inference_service(R1_15B), inference_service(R1_7B)
    deployments, services_ = objects(docs, "Deployment"), objects(docs, "Service")
    assert set(deployments) == set(services_) == {first, second, "open-webui"}
    vllm, llama = container(deployments[first]), container(deployments[second])
    assert vllm["args"][vllm["args"].index("--served-model-name") + 1] == R1_15B
    assert vllm["args"][vllm["args"].index("--gpu-memory-utilization") + 1] == "0.404", "its share, as in Compose"
    assert llama["args"][llama["args"].index("--alias") + 1] == R1_7B
    assert vllm["resources"]["limits"] == llama["resources"]["limits"] == {"nvidia.com/gpu": 1}
    first_name, second_name = services_[first]["metadata"]["name"], services_[second]["metadata"]["name"]
    assert first_name == deployments[first]["metadata"]["name"] and first_name.endswith(first)
    assert "initContainers" not in deployments[first]["spec"]["template"]["spec"]
    (wait,) = deployments[second]["spec"]["template"]["spec"]["initContainers"]
    assert wait["image"] == llama["image"], "its own image's curl"
    assert f"curl -fsS http://{first_name}:8000/health;" in wait["command"][-1], "waits for vLLM's /health"

    env = webui_env(docs)
    assert env["OPENAI_API_BASE_URLS"] == f"http://{first_name}:8000/v1;http://{second_name}:8080/v1"
    assert env["OPENAI_API_KEYS"] == "$(INFERENCE_API_KEY);$(INFERENCE_API_KEY)"
    assert json.loads(env["OPENAI_API_CONFIGS"]) == {}, "no router: no llama.cpp provider"
    assert not [d for d in docs if d["kind"] == "ConfigMap"]


def test_kubernetes_on_demand_starts_the_router_after_vllm_and_points_open_webuis_tasks_at_the_kept_model(
    tmp_path: Path,
) -> None:
    _, docs = render_kubernetes(tmp_path, "gtx1650", {"id": R1_15B}, {"id": QWEN_15B}, {"id": SMOLLM})
    deployments, services_ = objects(docs, "Deployment"), objects(docs, "Service")
    vllm_name = services_[inference_service(SMOLLM)]["metadata"]["name"]
    (wait,) = deployments[ROUTER]["spec"]["template"]["spec"]["initContainers"]
    assert f"http://{vllm_name}:8000/health" in wait["command"][-1]
    assert "initContainers" not in deployments[inference_service(SMOLLM)]["spec"]["template"]["spec"]
    args = container(deployments[ROUTER])["args"]
    assert args[args.index("--models-max") + 1] == "1"
    env = webui_env(docs)
    assert env["TASK_MODEL_EXTERNAL"] == SMOLLM
    assert env["DEFAULT_MODELS"] == R1_15B
    router_name = services_[ROUTER]["metadata"]["name"]
    assert env["OPENAI_API_BASE_URLS"].split(";") == [f"http://{vllm_name}:8000/v1", f"http://{router_name}:8080/v1"]
    assert json.loads(env["OPENAI_API_CONFIGS"]) == {"1": {"provider": "llama.cpp"}}


def test_a_second_vllm_on_the_gpu_waits_in_python_and_the_wait_ends_when_the_first_answers(tmp_path: Path) -> None:
    # rtx3060, two vLLM servers each sized by a fraction of the GPU: the second starts once the first is ready.
    models = ({"id": R1_15B}, {"id": SMOLLM, "backend": "vllm"})
    _, docs = render_kubernetes(tmp_path, "rtx3060", *models)
    deployments, services_ = objects(docs, "Deployment"), objects(docs, "Service")
    first_name = services_[inference_service(R1_15B)]["metadata"]["name"]
    assert "initContainers" not in deployments[inference_service(R1_15B)]["spec"]["template"]["spec"]
    (wait,) = deployments[inference_service(SMOLLM)]["spec"]["template"]["spec"]["initContainers"]
    assert wait["image"] == container(deployments[inference_service(SMOLLM)])["image"]
    assert wait["command"][:2] == ["python3", "-c"], "vLLM's image has Python, not necessarily curl"
    url = f"http://{first_name}:8000/health"
    assert f'"{url}"' in wait["command"][2]

    # The wait itself, run against a real /health on the loopback: it returns once that answers 200.
    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/health" else 404)
            self.end_headers()

        def log_message(self, *_: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        code = wait["command"][2].replace(url, f"http://127.0.0.1:{server.server_port}/health")
        env = {"PATH": os.environ["PATH"]}  # no proxy variables: the loopback is asked directly
        done = subprocess.run([sys.executable, "-c", code], env=env, timeout=60, check=False)
        assert done.returncode == 0
    finally:
        server.shutdown()


def test_a_kubernetes_file_without_a_servers_deployment_is_not_written(tmp_path: Path) -> None:
    stack_dir, docs = render_kubernetes(tmp_path, "cpu", {"id": SMOLLM}, {"id": QWEN_15B})
    text = (stack_dir / "kubernetes.yaml").read_text(encoding="utf-8")
    templating.check_stack_file("kubernetes.yaml", text, (ROUTER, "open-webui"))
    router = objects(docs, "Deployment")[ROUTER]
    without = yaml.safe_dump_all([d for d in docs if d is not router])
    with pytest.raises(templating.RenderedFileError, match="the Deployments of router are missing"):
        templating.check_stack_file("kubernetes.yaml", without, (ROUTER, "open-webui"))


def test_a_router_binds_files_outside_the_cache_or_with_names_the_preset_cannot_carry_one_by_one(
    tmp_path: Path,
) -> None:
    """Only deploykit's model cache is mounted whole: a user's file elsewhere (its folder may hold anything) or a
    cached file whose name the preset's parser would cut (``#``) is bound alone, at a path deploykit chooses."""
    from tests.unit.conftest import TINY_GGUF

    cache = Path(load_settings().model_cache)
    odd = cache / "odd#name.gguf"
    cache.mkdir(parents=True, exist_ok=True)
    odd.write_bytes(TINY_GGUF.read_bytes())
    elsewhere = tmp_path / "downloads" / "mine.gguf"
    elsewhere.parent.mkdir()
    elsewhere.write_bytes(TINY_GGUF.read_bytes())
    stack_dir = render_models(tmp_path, "cpu", {"id": "mine", "file": str(elsewhere)}, {"id": "odd", "file": str(odd)})
    volumes = services(stack_dir)[ROUTER]["volumes"]
    assert isinstance(volumes, list)
    binds = {v["source"]: v["target"] for v in volumes if v["target"] != "/presets"}
    assert binds == {str(elsewhere): "/models/mine.gguf", str(odd): "/models/odd.gguf"}, "no folder mounted whole"
    preset = (stack_dir / "presets" / "models.ini").read_text(encoding="utf-8")
    assert "model = /models/mine.gguf\n" in preset and "model = /models/odd.gguf\n" in preset
