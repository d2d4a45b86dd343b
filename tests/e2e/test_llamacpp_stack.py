"""The llama.cpp stack on a real engine: up to a chat through Open WebUI, and the day-2 commands."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import (
    GGUF,
    MODEL_ID,
    ROOT,
    Stack,
    container_ids,
    deploykit,
    docker,
    make_stack,
    webui_token,
)

pytestmark = pytest.mark.e2e


def test_up_reaches_a_chat_through_open_webui(llama_stack: Stack) -> None:
    report = json.loads(llama_stack.up_result.out)  # type: ignore[union-attr]
    assert report["healthy"] is True
    names = [s["name"] for s in report["stages"]]
    assert names == [
        "inference /health",
        "inference /v1/models",
        "open-webui /health",
        "open-webui admin",
        "open-webui model",
        "chat via open-webui",
    ]
    assert all(s["ok"] for s in report["stages"])
    assert report["admin_created"] is True
    assert report["drift"] == []
    # progress went to stderr, stage by stage
    assert "chat via open-webui" in llama_stack.up_result.err  # type: ignore[union-attr]


def test_status_health_and_ports(llama_stack: Stack) -> None:
    result = deploykit("status", "--dir", str(llama_stack.dir), "--json", env=llama_stack.env)
    assert result.code == 0, result.err
    state = json.loads(result.out)
    assert state["healthy"] is True
    inference = state["services"][0]
    assert inference["model"] == MODEL_ID
    assert all(p.startswith("127.0.0.1:") for p in inference["ports"])
    r = httpx.get(f"http://127.0.0.1:{llama_stack.webui_port}/health", timeout=10)
    assert r.json() == {"status": True}
    # the inference port answers on loopback only, and wants the key
    assert httpx.get(f"http://127.0.0.1:{llama_stack.inference_port}/v1/models", timeout=10).status_code == 401


def test_chat_through_webui_and_direct(llama_stack: Stack) -> None:
    result = deploykit("chat", "--dir", str(llama_stack.dir), "Say hello", env=llama_stack.env)
    assert result.code == 0, result.err
    assert result.out.strip()
    direct = deploykit("chat", "--direct", "--dir", str(llama_stack.dir), "Say hello", "--json", env=llama_stack.env)
    assert json.loads(direct.out)["model"] == MODEL_ID


def test_logs(llama_stack: Stack) -> None:
    logs = deploykit("logs", "inference", "--dir", str(llama_stack.dir), "--tail", "20", env=llama_stack.env)
    assert logs.code == 0
    assert "inference" in logs.out
    bad = deploykit("logs", "nonsense", "--dir", str(llama_stack.dir), env=llama_stack.env)
    assert bad.code == 2


def test_second_up_recreates_nothing_and_keeps_secrets(llama_stack: Stack) -> None:
    before = container_ids(llama_stack)
    env_before = (llama_stack.dir / ".env").read_text()
    again = deploykit("up", "--dir", str(llama_stack.dir), "--json", env=llama_stack.env)
    assert again.code == 0, again.err
    assert container_ids(llama_stack) == before
    assert (llama_stack.dir / ".env").read_text() == env_before
    assert json.loads(again.out)["admin_created"] is False


def test_drift_in_open_webui_settings_is_reported(llama_stack: Stack) -> None:
    token = webui_token(llama_stack)
    headers = {"Authorization": f"Bearer {token}"}
    base = f"http://127.0.0.1:{llama_stack.webui_port}"
    config = httpx.get(f"{base}/openai/config", headers=headers, timeout=30).json()
    changed = dict(config, OPENAI_API_BASE_URLS=["http://elsewhere:9999/v1"])
    assert httpx.post(f"{base}/openai/config/update", headers=headers, json=changed, timeout=30).status_code == 200
    try:
        result = deploykit("up", "--dir", str(llama_stack.dir), "--timeout", "120", env=llama_stack.env)
        assert "elsewhere:9999" in result.out + result.err
    finally:
        httpx.post(f"{base}/openai/config/update", headers=headers, json=config, timeout=30)


def test_down_then_up_keeps_admin_and_chats(llama_stack: Stack) -> None:
    token = webui_token(llama_stack)
    headers = {"Authorization": f"Bearer {token}"}
    base = f"http://127.0.0.1:{llama_stack.webui_port}"
    chat = {"chat": {"title": "kept across down/up", "models": [MODEL_ID], "messages": []}}
    created = httpx.post(f"{base}/api/v1/chats/new", headers=headers, json=chat, timeout=30)
    assert created.status_code == 200, created.text
    chat_id = created.json()["id"]

    assert deploykit("down", "--dir", str(llama_stack.dir), env=llama_stack.env).code == 0
    assert container_ids(llama_stack) == {}
    up = deploykit("up", "--dir", str(llama_stack.dir), "--json", env=llama_stack.env)
    assert up.code == 0, up.err
    assert json.loads(up.out)["admin_created"] is False

    headers = {"Authorization": f"Bearer {webui_token(llama_stack)}"}
    chats = httpx.get(f"{base}/api/v1/chats/", headers=headers, timeout=30).json()
    assert chat_id in [c["id"] for c in chats]


def test_doctor_on_a_healthy_stack(llama_stack: Stack) -> None:
    result = deploykit("doctor", "--dir", str(llama_stack.dir), "--json", env=llama_stack.env)
    report = json.loads(result.out)
    by_name = {c["name"]: c for c in report["checks"]}
    assert by_name["engine"]["status"] == "pass"
    assert by_name["compose"]["status"] == "pass"
    assert by_name["stack"]["status"] == "pass"
    assert by_name[f"port {llama_stack.webui_port}"]["detail"] == "published by this stack"


def test_doctor_on_a_broken_setup() -> None:
    result = deploykit("--docker-host", "unix:///nonexistent/docker.sock", "doctor", "--json")
    assert result.code == 1
    report = json.loads(result.out)
    engine = next(c for c in report["checks"] if c["name"] == "engine")
    assert engine["status"] == "fail" and engine["fix"]


def test_port_in_use_refuses_before_starting_anything(engine: dict[str, str], tmp_path: Path) -> None:
    stack = make_stack(tmp_path, "e2e-portclash", 27860, 27861)
    with socket.socket() as blocker:
        blocker.bind(("0.0.0.0", 27860))
        blocker.listen()
        result = stack.up(engine, "--profile", "cpu", "--model", MODEL_ID, "--model-file", str(GGUF))
    assert result.code == 7, result.err
    assert "port 27860 on 0.0.0.0: in use" in result.err
    assert "Traceback" not in result.err
    assert container_ids(stack) == {}
    assert not stack.dir.exists()


def test_a_failing_stage_names_itself_and_shows_the_log(engine: dict[str, str], tmp_path: Path) -> None:
    # A real GGUF header with no real weights: llama-server starts, fails to load it, and exits.
    broken = tmp_path / "models" / "broken.gguf"
    broken.parent.mkdir()
    broken.write_bytes((ROOT / "tests" / "fixtures" / "gguf" / "tiny.gguf").read_bytes())
    stack = make_stack(tmp_path, "e2e-broken", 37860, 37861)
    try:
        result = stack.up(engine, "--profile", "cpu", "--model-file", str(broken), "--timeout", "90")
        assert result.code == 8, result.err
        assert "stage 'inference /health' failed" in result.err
        assert "--- last lines of inference ---" in result.err
        assert "Hint:" in result.err
        assert "Traceback" not in result.err
    finally:
        stack.remove()


def test_smoke_checks_pass_on_llamacpp(llama_stack: Stack) -> None:
    result = deploykit("smoke", "--dir", str(llama_stack.dir), "--json", env=llama_stack.env)
    assert result.code == 0, result.out + result.err
    checks = {c["name"]: c for c in json.loads(result.out)["checks"]}
    assert checks["structured output (json_schema)"]["status"] == "pass"
    assert checks["tool calling"]["status"] == "skip"


def test_restart_inference_comes_back(llama_stack: Stack) -> None:
    assert deploykit("restart", "inference", "--dir", str(llama_stack.dir), env=llama_stack.env).code == 0
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        status = deploykit("status", "--dir", str(llama_stack.dir), "--json", env=llama_stack.env)
        if status.code == 0:
            break
        time.sleep(2)
    assert json.loads(status.out)["healthy"] is True


def test_a_same_named_stack_elsewhere_is_refused(llama_stack: Stack, engine: dict[str, str], tmp_path: Path) -> None:
    # Compose names projects after the directory: a second "e2e-llama" elsewhere must not take over
    # the first one's containers and volume (its accounts and chats).
    twin = make_stack(tmp_path, llama_stack.dir.name, 57860, 57861)
    before = container_ids(llama_stack)
    result = twin.up(engine, "--profile", "cpu", "--model", MODEL_ID, "--model-file", str(GGUF))
    assert result.code == 7, result.err
    assert "already belongs to another stack" in result.err
    assert f"`deploykit down --volumes` in {llama_stack.dir}" in result.err
    assert container_ids(llama_stack) == before
    assert not twin.dir.exists()


def test_a_volume_left_by_a_stack_taken_down_is_not_taken_over(engine: dict[str, str], tmp_path: Path) -> None:
    # After `deploykit down` only the data volume remains, and nothing records the directory it came
    # from (a deleted clone, say): the refusal must still say how to free the name.
    stack = make_stack(tmp_path, "e2e-orphan", 57870, 57871)
    volume = f"{stack.project}_open-webui-data"
    labels = {
        "com.docker.compose.project": stack.project,
        "org.deploykit.stack": stack.project,
        "org.deploykit.stack-id": "0123456789abcdef",
    }
    docker("volume", "create", *[f"--label={k}={v}" for k, v in labels.items()], volume)
    try:
        result = stack.up(engine, "--profile", "cpu", "--model", MODEL_ID, "--model-file", str(GGUF))
        assert result.code == 7, result.err
        assert f"already belongs to another stack (volume {volume})" in result.err
        assert f"`docker volume rm {volume}`" in result.err
        assert "Traceback" not in result.err
        assert not stack.dir.exists()
        assert docker("volume", "ls", "-q", "--filter", f"name={volume}").split() == [volume]
    finally:
        stack.remove()
