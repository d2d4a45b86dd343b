"""The Swarm and Kubernetes renderings: accepted by the targets' own schemas, for every built-in profile."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from deploykit.app.stack import RenderResult, StackRequest, reference_stack, render_stack
from deploykit.catalog import builtin_profiles
from deploykit.config.settings import load_settings
from tests.unit.conftest import ROOT

PROFILES = [p.name for p in builtin_profiles()]
# The Kubernetes release the manifests are validated against (schemas bundled by kubernetes-validate).
KUBERNETES_VERSION = "1.33.0"
GPU_PROFILES = {"a100-80gb", "gtx1650", "h200", "rtx3060", "rtx4060", "rtx4090"}


def manifests(profile: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(reference_stack(profile)["kubernetes.yaml"]) if d]


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def deployment(docs: list[dict[str, Any]], component: str) -> dict[str, Any]:
    (found,) = [
        d for d in by_kind(docs, "Deployment") if d["metadata"]["labels"]["app.kubernetes.io/name"] == component
    ]
    return found


@pytest.mark.parametrize("profile", PROFILES)
def test_kubernetes_manifests_validate(profile: str) -> None:
    docs = manifests(profile)
    assert sorted(d["kind"] for d in docs) == sorted(
        ["Secret", "PersistentVolumeClaim", "PersistentVolumeClaim", "Deployment", "Deployment", "Service", "Service"]
    )
    for doc in docs:
        # strict: an unknown or misspelt field fails, not only a wrong type
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_the_validator_is_strict() -> None:
    doc = manifests("cpu")[-1]
    doc["spec"]["bogus"] = 1
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("profile", PROFILES)
def test_kubernetes_wiring(profile: str) -> None:
    docs = manifests(profile)
    services = {s["metadata"]["labels"]["app.kubernetes.io/name"]: s for s in by_kind(docs, "Service")}
    inference_svc = services["inference"]
    assert inference_svc["spec"]["type"] == "ClusterIP"
    port = inference_svc["spec"]["ports"][0]["port"]
    inference = deployment(docs, "inference")["spec"]["template"]["spec"]
    server = inference["containers"][0]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert server[probe]["httpGet"]["path"] == "/health"  # what deploykit's own first stage asks
    gpu = profile in GPU_PROFILES
    assert (server["resources"].get("limits") or {}).get("nvidia.com/gpu") == (1 if gpu else None)
    assert inference.get("runtimeClassName") == ("nvidia" if gpu else None)
    webui = deployment(docs, "open-webui")["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in webui["env"]}
    assert env["ENABLE_OLLAMA_API"]["value"] == "false"
    assert env["OPENAI_API_BASE_URL"]["value"] == f"http://{inference_svc['metadata']['name']}:{port}/v1"
    (secret,) = by_kind(docs, "Secret")
    for name in ("OPENAI_API_KEY", "WEBUI_SECRET_KEY"):
        ref = env[name]["valueFrom"]["secretKeyRef"]
        assert ref["name"] == secret["metadata"]["name"]
        assert ref["key"] in secret["stringData"]
    claims = {c["metadata"]["name"] for c in by_kind(docs, "PersistentVolumeClaim")}
    for spec in (inference, deployment(docs, "open-webui")["spec"]["template"]["spec"]):
        used = {v["persistentVolumeClaim"]["claimName"] for v in spec["volumes"] if "persistentVolumeClaim" in v}
        assert used <= claims


def docker_cli() -> str:
    docker = shutil.which("docker")
    if docker is None:
        if os.environ.get("CI") == "true":
            pytest.fail("the docker CLI is required in CI (make provision installs it)")
        pytest.skip("docker CLI not installed")
    return docker


def stack_config(path: Path) -> subprocess.CompletedProcess[str]:
    """docker/cli's own loader and compose schema 3.x, as `docker stack deploy` uses them (no swarm needed)."""
    env = dict(os.environ, DEPLOYKIT_STACK_ID="test", DEPLOYKIT_SECRETS_DIR="/run/deploykit-test")
    return subprocess.run(
        [docker_cli(), "stack", "config", "-c", str(path)], capture_output=True, text=True, env=env, check=False
    )


@pytest.mark.parametrize("profile", PROFILES)
def test_swarm_stack_passes_docker_stack_schema(profile: str, tmp_path: Path) -> None:
    path = tmp_path / "swarm.yaml"
    path.write_text(reference_stack(profile)["swarm.yaml"])
    result = stack_config(path)
    assert result.returncode == 0, result.stderr
    stack = yaml.safe_load(path.read_text())
    for service in stack["services"].values():
        assert "depends_on" not in service and "restart" not in service
        assert not str(service).count("${INFERENCE_API_KEY") and not str(service).count("${WEBUI_SECRET_KEY")
    inference = stack["services"]["inference"]
    reservations = (inference["deploy"].get("resources") or {}).get("reservations") or {}
    assert "devices" not in reservations
    if profile in GPU_PROFILES:
        assert reservations["generic_resources"][0]["discrete_resource_spec"]["kind"] == "NVIDIA-GPU"
        assert inference["deploy"]["placement"]["constraints"] == ["node.labels.org.deploykit.gpu == nvidia"]
    assert set(stack["secrets"]) == {"inference_api_key", "webui_secret_key"}
    # the secret files come from the directory deploykit names at deploy time
    resolved = yaml.safe_load(result.stdout)
    assert resolved["secrets"]["inference_api_key"]["file"] == "/run/deploykit-test/inference_api_key"


def test_swarm_schema_rejects_what_compose_v2_accepts(tmp_path: Path) -> None:
    # The check above is a real one: the compose stack of a GPU profile does not pass it.
    path = tmp_path / "compose.yaml"
    path.write_text(reference_stack("rtx3060")["compose.yaml"])
    assert stack_config(path).returncode != 0


def render(tmp_path: Path, target: str, **kwargs: object) -> RenderResult:
    args: dict[str, object] = {
        "profile": "cpu",
        "host_file": None,
        "model_id": None,
        "model_path": None,
        "image_overrides": {},
        "target": target,
    }
    args.update(kwargs)
    return render_stack(load_settings(), StackRequest(stack_dir=tmp_path / "stack", **args))  # type: ignore[arg-type]


def test_kubernetes_render_keeps_its_secret_private(tmp_path: Path) -> None:
    result = render(tmp_path, "kubernetes")
    names = sorted(p.name for p in result.stack_dir.iterdir())
    assert names == [".env", "kubernetes.yaml", "plan.json"]
    assert stat.S_IMODE((result.stack_dir / "kubernetes.yaml").stat().st_mode) == 0o600
    env = dict(
        line.split("=", 1) for line in (result.stack_dir / ".env").read_text().splitlines() if not line.startswith("#")
    )
    (secret,) = by_kind(list(yaml.safe_load_all((result.stack_dir / "kubernetes.yaml").read_text())), "Secret")
    assert secret["stringData"]["inference-api-key"] == env["INFERENCE_API_KEY"].strip("'")


def test_hostile_model_path_reaches_kubernetes_args_exactly(tmp_path: Path) -> None:
    gguf = ROOT / "tests" / "fixtures" / "gguf" / "tiny.gguf"
    model = tmp_path / "models" / 'it\'s "$HOME" a:b\nnew: line.gguf'
    model.parent.mkdir()
    shutil.copy(gguf, model)
    result = render(tmp_path, "kubernetes", model_path=model)
    docs = list(yaml.safe_load_all((result.stack_dir / "kubernetes.yaml").read_text()))
    args = deployment([d for d in docs if d], "inference")["spec"]["template"]["spec"]["containers"][0]["args"]
    # Kubernetes reads "$$" in args as "$" (its escape for $(VAR) expansion).
    assert args[args.index("-m") + 1].replace("$$", "$") == f"/models/{model.name}"
    for doc in docs:
        if doc:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_swarm_render_writes_the_stack_file(tmp_path: Path) -> None:
    result = render(tmp_path, "swarm")
    assert sorted(p.name for p in result.stack_dir.iterdir()) == [".env", "plan.json", "swarm.yaml"]
    assert stack_config(result.stack_dir / "swarm.yaml").returncode == 0


def test_cli_render_kubernetes_and_what_deploykit_does_not_run(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from deploykit.cli import cli

    runner = CliRunner()
    stack_dir = str(tmp_path / "k8s")
    rendered = runner.invoke(cli, ["render", "--profile", "rtx3060", "--target", "kubernetes", "--dir", stack_dir])
    assert rendered.exit_code == 0, rendered.output
    assert "kubectl apply" in rendered.output
    # deploykit runs compose and swarm stacks; Kubernetes manifests are kubectl's
    assert runner.invoke(cli, ["up", "--target", "kubernetes", "--dir", stack_dir]).exit_code == 2
    status = runner.invoke(cli, ["status", "--dir", stack_dir])
    assert status.exit_code == 2
    assert "Kubernetes manifests" in status.output


def test_swarm_up_on_an_engine_that_is_no_manager_says_so_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    from deploykit.cli import cli
    from deploykit.seams import compose, engine
    from deploykit.values.host import DockerEngine

    monkeypatch.setattr(engine, "probe_engine", lambda docker_host: DockerEngine(reachable=True))
    monkeypatch.setattr(compose, "swarm_state", lambda docker_host: ("inactive", False))
    target = tmp_path / "stack"
    result = CliRunner().invoke(cli, ["up", "--target", "swarm", "-p", "cpu", "--dir", str(target)])
    assert result.exit_code == 7, result.output
    assert "not a swarm manager" in result.output and "docker swarm init" in result.output
    assert not target.exists()


def test_tune_refuses_a_swarm_stack_in_one_sentence_and_changes_nothing(tmp_path: Path) -> None:
    """`tune` restarts a Compose service: on a Swarm stack it says so (a UsageError with a hint), instead of
    failing on a compose.yaml that is not there."""
    from click.testing import CliRunner

    from deploykit.cli import cli

    stack_dir = render(tmp_path, "swarm").stack_dir
    before = {p.name: p.read_bytes() for p in stack_dir.iterdir() if p.is_file()}
    result = CliRunner().invoke(cli, ["tune", "--dir", str(stack_dir)])
    assert result.exit_code == 2, result.output
    assert "is a swarm stack; tune restarts a Compose stack's inference service" in result.output
    assert "Hint: Tune a Compose stack of the same plan" in result.output
    assert "Traceback" not in result.output and "compose.yaml" not in result.output.split("Hint:")[0]
    assert {p.name: p.read_bytes() for p in stack_dir.iterdir() if p.is_file()} == before
