"""Safe defaults, backup/restore/upgrade and the fault matrix, on one real stack (ports 21860-21865).

Every case is a row of the "Fault matrix" table in docs/reliability.md: what the user sees, and what was
checked to be unchanged. The stack is created by the Ctrl-C case (an interrupted `up`, then a second one)
and reused by the cases after it, in file order; the destructive ones (restore, upgrade) come last.
The Docker-daemon restart lives in test_zz_engine_restart.py so that it runs after everything else.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import (
    GGUF,
    MODEL_ID,
    ROOT,
    Result,
    Stack,
    container_ids,
    deploykit,
    docker,
    make_stack,
    remove_by_label,
    secrets,
    webui_token,
)

pytestmark = pytest.mark.e2e

UP_ARGS = ("--profile", "cpu", "--model", MODEL_ID, "--model-file", str(GGUF))


def up_command(stack: Stack, images: dict[str, str], *args: str) -> list[str]:
    return [
        sys.executable, "-m", "deploykit", "up", *args,
        "--image", f"inference={images['LLAMACPP_IMAGE']}", "--image", f"open-webui={images['OPENWEBUI_IMAGE']}",
        "--dir", str(stack.dir),
    ]  # fmt: skip


def interrupted_up(stack: Stack, images: dict[str, str], after: str) -> tuple[int, str]:
    """Run `up`, press Ctrl-C (SIGINT) once ``after`` appears in its progress; (exit code, stderr)."""
    proc = subprocess.Popen(
        up_command(stack, images, *UP_ARGS),
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        env=dict(os.environ) | stack.env,
        cwd=ROOT,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stderr.readline, "")), daemon=True)  # type: ignore[union-attr]
    reader.start()
    deadline = time.monotonic() + 600
    while not any(after in line for line in lines):
        assert proc.poll() is None, "up ended before it could be interrupted:\n" + "".join(lines)
        assert time.monotonic() < deadline, "".join(lines)
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    code = proc.wait(timeout=60)
    reader.join(timeout=10)
    return code, "".join(lines)


def webui(stack: Stack) -> httpx.Client:
    return httpx.Client(
        base_url=f"http://127.0.0.1:{stack.webui_port}",
        headers={"Authorization": f"Bearer {webui_token(stack)}"},
        timeout=300,
    )


def new_chat(stack: Stack, title: str, answer: str = "") -> str:
    messages = [{"role": "user", "content": title}] + ([{"role": "assistant", "content": answer}] if answer else [])
    with webui(stack) as ui:
        r = ui.post("/api/v1/chats/new", json={"chat": {"title": title, "models": [MODEL_ID], "messages": messages}})
    assert r.status_code == 200, r.text
    return str(r.json()["id"])


def chat_titles(stack: Stack, ids: list[str]) -> dict[str, str | None]:
    """Each chat's stored title, or None when it is not there."""
    out: dict[str, str | None] = {}
    with webui(stack) as ui:
        for chat_id in ids:
            r = ui.get(f"/api/v1/chats/{chat_id}")
            out[chat_id] = r.json()["chat"]["title"] if r.status_code == 200 else None
    return out


def wait_status(stack: Stack, timeout: float, healthy: bool = True) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        result = deploykit("status", "--dir", str(stack.dir), "--json", env=stack.env)
        state: dict[str, Any] = json.loads(result.out)
        if state["healthy"] is healthy or time.monotonic() > deadline:
            return state
        time.sleep(3)


def wait_model_listed(stack: Stack, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    with webui(stack) as ui:
        while MODEL_ID not in [m["id"] for m in ui.get("/api/models").json().get("data", [])]:
            assert time.monotonic() < deadline, "Open WebUI does not list the model"
            time.sleep(2)


def host_pid(stack: Stack, service: str) -> int:
    name = f"{stack.project}-{service}-1"
    return int(docker("inspect", "-f", "{{.State.Pid}}", name).strip())


def crash(stack: Stack, service: str) -> None:
    """kill -9 of the container's main process from the host: what an OOM kill or a segfault looks like."""
    os.kill(host_pid(stack, service), signal.SIGKILL)


def project_objects(stack: Stack) -> dict[str, list[str]]:
    label = f"label=com.docker.compose.project={stack.project}"
    return {
        "containers": sorted(docker("ps", "-a", "--filter", label, "--format", "{{.Names}}").split()),
        "volumes": sorted(docker("volume", "ls", "-q", "--filter", label).split()),
        "networks": sorted(docker("network", "ls", "--filter", label, "--format", "{{.Name}}").split()),
    }


@pytest.fixture(scope="module")
def trust(engine: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The shared stack, made the hard way: `up` interrupted by Ctrl-C while Open WebUI starts, then `up` again."""
    stack = make_stack(tmp_path_factory.mktemp("trust"), "e2e-trust", 21860, 21861)
    remove_by_label(f"org.deploykit.stack={stack.project}")
    code, progress = interrupted_up(stack, engine, after="inference /v1/models")
    env_after_interrupt = (stack.dir / ".env").read_text() if (stack.dir / ".env").exists() else ""
    objects_after_interrupt = project_objects(stack)
    again = stack.up(engine, *UP_ARGS, "--json")
    stack.up_result = again
    try:
        yield {
            "stack": stack,
            "images": engine,
            "interrupt_code": code,
            "interrupt_progress": progress,
            "env_after_interrupt": env_after_interrupt,
            "objects_after_interrupt": objects_after_interrupt,
        }
    finally:
        stack.remove()
        for path in (stack.dir / "backups").glob("*"):
            path.unlink()


# ---------------------------------------------------------------- Ctrl-C during up, and safe defaults


def test_ctrl_c_during_up_then_up_again(trust: dict[str, Any]) -> None:
    stack: Stack = trust["stack"]
    assert trust["interrupt_code"] == 130, trust["interrupt_progress"]
    assert "interrupted" in trust["interrupt_progress"]
    assert "Traceback" not in trust["interrupt_progress"]
    again: Result = stack.up_result  # type: ignore[assignment]
    if again.code != 0:  # say what the network looked like: a failure here once was "inference" not resolving
        dns = docker("exec", f"{stack.project}-open-webui-1", "getent", "hosts", "inference")
        networks = docker("inspect", "-f", "{{.Name}} {{json .NetworkSettings.Networks}}",
                          f"{stack.project}-open-webui-1", f"{stack.project}-inference-1")  # fmt: skip
        pytest.fail(f"{again.err}\nafter the interrupt: {trust['objects_after_interrupt']}\ndns: {dns!r}\n{networks}")
    report = json.loads(again.out)
    assert report["healthy"] is True
    # same secrets as the interrupted run wrote; nothing duplicated
    assert trust["env_after_interrupt"] and (stack.dir / ".env").read_text() == trust["env_after_interrupt"]
    objects = project_objects(stack)
    assert objects["containers"] == [f"{stack.project}-inference-1", f"{stack.project}-open-webui-1"]
    assert objects["volumes"] == [f"{stack.project}_open-webui-data"]
    assert objects["networks"] == [f"{stack.project}_default"]
    with webui(stack) as ui:
        users = ui.get("/api/v1/users/").json()
    users = users.get("users", users) if isinstance(users, dict) else users
    assert [u["email"] for u in users] == [secrets(stack)["DEPLOYKIT_ADMIN_EMAIL"]]


def test_public_signup_is_closed_once_the_admin_exists(trust: dict[str, Any]) -> None:
    stack: Stack = trust["stack"]
    base = f"http://127.0.0.1:{stack.webui_port}"
    config = httpx.get(f"{base}/api/config", timeout=30).json()
    assert config.get("onboarding") is not True
    assert config["features"]["enable_signup"] is False
    stranger = {"name": "stranger", "email": "stranger@example.com", "password": "a-long-password-1"}
    r = httpx.post(f"{base}/api/v1/auths/signup", json=stranger, timeout=30)
    assert r.status_code == 403, r.text
    assert httpx.post(f"{base}/api/v1/auths/signin", json=stranger, timeout=30).status_code in (400, 401, 403)


def test_up_says_every_address_the_ui_answers_on(trust: dict[str, Any]) -> None:
    stack: Stack = trust["stack"]
    report = json.loads(stack.up_result.out)  # type: ignore[union-attr]
    urls = [row["url"] for row in report["reachable"]]
    assert urls[0] == f"http://localhost:{stack.webui_port}"
    addresses = json.loads(subprocess.run(["ip", "-j", "-4", "addr", "show"], capture_output=True, text=True).stdout)
    for link in addresses:
        for info in link["addr_info"]:
            bridge = link["ifname"] == "docker0" or link["ifname"].startswith(("br-", "veth"))
            if not info["local"].startswith("127.") and not bridge:
                url = f"http://{info['local']}:{stack.webui_port}"
                assert url in urls
                # and it really answers there
                assert httpx.get(f"{url}/health", timeout=10).status_code == 200


def test_containers_run_without_new_privileges_and_with_rotated_logs(trust: dict[str, Any]) -> None:
    stack: Stack = trust["stack"]
    for service in ("inference", "open-webui"):
        inspect = json.loads(docker("inspect", f"{stack.project}-{service}-1"))[0]
        assert "no-new-privileges:true" in inspect["HostConfig"]["SecurityOpt"]
        log = inspect["HostConfig"]["LogConfig"]
        assert log == {"Type": "json-file", "Config": {"max-file": "3", "max-size": "10m"}}


# ---------------------------------------------------------------- faults on the running stack


def test_kill_9_inference_during_a_chat(trust: dict[str, Any]) -> None:
    stack: Stack = trust["stack"]
    kept = new_chat(stack, "kept across an inference crash", "yes")
    seen: dict[str, Any] = {}

    def long_chat() -> None:
        body = {
            "model": MODEL_ID,
            "messages": [{"role": "user", "content": "Count from 1 to 1000, separated by commas."}],
            "max_tokens": 2000,
            "ignore_eos": True,  # llama-server: keep generating, so the answer is still running at the crash
            "stream": False,
        }
        try:
            with webui(stack) as ui:
                r = ui.post("/api/chat/completions", json=body)
            seen.update(status=r.status_code, body=r.text[:300])
        except httpx.HTTPError as exc:
            seen.update(error=type(exc).__name__)

    for _ in range(3):  # a tiny model can still end its answer early: try again until one is in flight
        seen.clear()
        chatting = threading.Thread(target=long_chat)
        chatting.start()
        time.sleep(1.5)
        if chatting.is_alive():
            break
    assert chatting.is_alive(), f"the chat finished before the crash: {seen}"
    crash(stack, "inference")
    chatting.join(timeout=120)
    # What the user sees: the answer in flight fails with an HTTP error, not a hang.
    assert not chatting.is_alive()
    assert seen.get("status", 0) >= 400 or "error" in seen or '"error"' in seen.get("body", ""), seen
    state = wait_status(stack, 180)
    assert state["healthy"] is True
    inference = state["services"][0]
    assert inference["restarts"] >= 1
    assert chat_titles(stack, [kept]) == {kept: "kept across an inference crash"}
    answer = deploykit("chat", "--dir", str(stack.dir), "Say hello", "--max-tokens", "16", env=stack.env)
    assert answer.code == 0 and answer.out.strip(), answer.err


def test_kill_9_open_webui(trust: dict[str, Any]) -> None:
    stack: Stack = trust["stack"]
    kept = new_chat(stack, "kept across an Open WebUI crash", "yes")
    crash(stack, "open-webui")
    time.sleep(2)
    assert wait_status(stack, 10, healthy=False)["healthy"] is False  # status says it is down while it restarts
    state = wait_status(stack, 300)
    assert state["healthy"] is True
    webui_state = state["services"][1]
    assert webui_state["restarts"] >= 1
    assert chat_titles(stack, [kept]) == {kept: "kept across an Open WebUI crash"}


def test_30_concurrent_chats_through_open_webui(trust: dict[str, Any]) -> None:
    stack: Stack = trust["stack"]
    token = webui_token(stack)
    # Open WebUI answers "400 Model not found" until it has reached the inference server again.
    wait_model_listed(stack)

    def one(i: int) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {token}"}
        body = {
            "model": MODEL_ID,
            "messages": [{"role": "user", "content": f"Say the number {i}."}],
            "max_tokens": 12,
            "temperature": 0,
            "stream": False,
        }
        base = f"http://127.0.0.1:{stack.webui_port}"
        try:
            r = httpx.post(f"{base}/api/chat/completions", json=body, headers=headers, timeout=600)
        except httpx.HTTPError as exc:
            return {"i": i, "outcome": "failed", "detail": type(exc).__name__}
        if r.status_code != 200:
            return {"i": i, "outcome": "refused", "status": r.status_code, "detail": r.text[:200]}
        text = r.json()["choices"][0]["message"]["content"]
        messages = [*body["messages"], {"role": "assistant", "content": text}]
        chat = {"title": f"concurrent {i}", "models": [MODEL_ID], "messages": messages}
        saved = httpx.post(f"{base}/api/v1/chats/new", json={"chat": chat}, headers=headers, timeout=600)
        if saved.status_code != 200:
            return {"i": i, "outcome": "not stored", "status": saved.status_code, "detail": saved.text[:200]}
        return {"i": i, "outcome": "answered", "id": saved.json()["id"], "text": text}

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=30) as pool:
        results = list(pool.map(one, range(30)))
    seconds = time.monotonic() - started
    outcomes = {r["outcome"] for r in results}
    print(f"30 concurrent chats in {seconds:.0f} s: {sorted((r['outcome'], r.get('status')) for r in results)}")
    assert outcomes <= {"answered", "refused"}, [r for r in results if r["outcome"] not in ("answered", "refused")]
    for refused in (r for r in results if r["outcome"] == "refused"):
        assert refused["detail"], refused  # a clean refusal says something
    answered = [r for r in results if r["outcome"] == "answered"]
    assert answered
    stored = chat_titles(stack, [r["id"] for r in answered])
    assert stored == {r["id"]: f"concurrent {r['i']}" for r in answered}


# ---------------------------------------------------------------- before anything starts


def rendered_with_own_model(images: dict[str, str], tmp_path: Path, name: str, port: int) -> tuple[Stack, Path]:
    """A stack rendered (not started) for a private copy of the model, which the test may then break."""
    model = tmp_path / "models" / f"{name}.gguf"
    model.parent.mkdir()
    shutil.copyfile(GGUF, model)
    stack = make_stack(tmp_path, name, port, port + 1)
    result = deploykit(
        "render", "--profile", "cpu", "--model-file", str(model), "--dir", str(stack.dir),
        "--image", f"inference={images['LLAMACPP_IMAGE']}", "--image", f"open-webui={images['OPENWEBUI_IMAGE']}",
        env=stack.env,
    )  # fmt: skip
    assert result.code == 0, result.err
    return stack, model


def test_model_file_moved_away_is_a_clear_error_before_anything_starts(
    engine: dict[str, str], tmp_path: Path
) -> None:
    stack, model = rendered_with_own_model(engine, tmp_path, "e2e-trust-moved", 21862)
    model.rename(tmp_path / "moved.gguf")
    try:
        result = deploykit("up", "--dir", str(stack.dir), env=stack.env)
        assert result.code == 3, result.err
        assert f"model file {model} is missing (moved or deleted?); nothing was started" in result.err
        assert "Hint:" in result.err and "Traceback" not in result.err
        assert project_objects(stack) == {"containers": [], "volumes": [], "networks": []}
    finally:
        stack.remove()


def test_a_server_that_never_becomes_healthy_times_out_naming_the_stage(
    engine: dict[str, str], tmp_path: Path
) -> None:
    # A FIFO where the weights should be: llama-server blocks reading it forever, alive but never ready.
    # The planner reads the file's header, so the FIFO replaces the file after rendering.
    stack, model = rendered_with_own_model(engine, tmp_path, "e2e-trust-stuck", 21864)
    model.unlink()
    os.mkfifo(model)
    try:
        started = time.monotonic()
        result = deploykit("up", "--dir", str(stack.dir), "--timeout", "40", env=stack.env)
        took = time.monotonic() - started
        assert result.code == 8, result.err
        assert "stage 'inference /health' failed after" in result.err
        assert "--- last lines of inference ---" in result.err
        assert "Hint:" in result.err and "--timeout" in result.err
        assert "Traceback" not in result.err
        assert took < 150
    finally:
        stack.remove()


# ---------------------------------------------------------------- backup, restore, upgrade


def backup_of(stack: Stack) -> Path:
    result = deploykit("backup", "--dir", str(stack.dir), "--json", env=stack.env)
    assert result.code == 0, result.err
    report = json.loads(result.out)
    path = Path(report["path"])
    assert path.name.startswith(f"{stack.project}-") and path.name.endswith("Z.tar.gz")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    manifest = json.loads(Path(report["manifest_path"]).read_text())
    assert manifest["stack_id"] == secrets(stack)["DEPLOYKIT_STACK_ID"]
    assert manifest["image"] == stack_images(stack)["open-webui"]
    assert manifest["sha256"] and manifest["size_bytes"] == path.stat().st_size
    with tarfile.open(path, "r:gz") as tar:
        assert "data/webui.db" in tar.getnames()
    return path


def stack_images(stack: Stack) -> dict[str, str]:
    return dict(json.loads((stack.dir / "plan.json").read_text())["stack"]["images"])


def test_backup_delete_the_volume_restore_find_the_chat(trust: dict[str, Any]) -> None:
    stack: Stack = trust["stack"]
    before = new_chat(stack, "made before the backup", "kept")
    ids_before = container_ids(stack)
    archive = backup_of(stack)
    assert container_ids(stack) == ids_before  # paused for the copy, never restarted
    after = new_chat(stack, "made after the backup", "gone after the restore")

    down = deploykit("down", "--dir", str(stack.dir), "--volumes", "--yes", env=stack.env)
    assert down.code == 0, down.err
    assert project_objects(stack)["volumes"] == []

    restored = deploykit("restore", "--dir", str(stack.dir), str(archive), env=stack.env)
    assert restored.code == 0, restored.err
    assert "start the stack with" in restored.out
    up = deploykit("up", "--dir", str(stack.dir), "--json", env=stack.env, timeout=1200)
    assert up.code == 0, up.err
    assert json.loads(up.out)["admin_created"] is False  # the accounts came back with the data
    assert chat_titles(stack, [before, after]) == {before: "made before the backup", after: None}


def test_restore_on_a_running_stack_and_a_failed_restore_leaves_the_old_data(
    trust: dict[str, Any], tmp_path: Path
) -> None:
    stack: Stack = trust["stack"]
    archive = backup_of(stack)
    later = new_chat(stack, "made after the second backup", "x")

    # damaged on disk: refused by its sha256 before anything is touched
    damaged = tmp_path / archive.name
    damaged.write_bytes(archive.read_bytes()[:-2048])
    sidecar_name = archive.name.replace(".tar.gz", ".json")
    shutil.copyfile(archive.with_name(sidecar_name), tmp_path / sidecar_name)
    result = deploykit("restore", "--dir", str(stack.dir), str(damaged), env=stack.env)
    assert result.code == 2 and "is damaged" in result.err, result.err

    # damaged before its manifest was written (the digest matches): every member is vetted before the engine is
    # asked for anything, so the cut is found there; old data stays
    manifest = json.loads((tmp_path / sidecar_name).read_text())
    manifest["sha256"] = subprocess.run(["sha256sum", str(damaged)], capture_output=True, text=True).stdout.split()[0]
    manifest["size_bytes"] = damaged.stat().st_size
    (tmp_path / sidecar_name).write_text(json.dumps(manifest))
    ids = container_ids(stack)
    result = deploykit("restore", "--dir", str(stack.dir), str(damaged), env=stack.env)
    assert result.code == 2, result.err
    assert "cannot be read to the end" in result.err and "nothing was changed" in result.err
    assert "Traceback" not in result.err
    assert container_ids(stack) == ids  # Open WebUI was not even stopped
    assert chat_titles(stack, [later]) == {later: "made after the second backup"}
    leftovers = docker("ps", "-a", "--filter", "label=org.deploykit.helper", "--filter",
                       f"label=org.deploykit.stack={stack.project}", "-q")  # fmt: skip
    assert leftovers.strip() == ""

    # a good restore while it runs: Open WebUI stopped only for the swap, back afterwards, later chat gone
    result = deploykit("restore", "--dir", str(stack.dir), str(archive), "--json", env=stack.env)
    assert result.code == 0, result.err
    report = json.loads(result.out)
    assert report["webui_restarted"] is True
    print(f"restore on a running stack: Open WebUI down {report['downtime_seconds']} s")
    assert wait_status(stack, 120)["healthy"] is True
    assert chat_titles(stack, [later]) == {later: None}


def test_restore_refuses_a_backup_of_another_stack(trust: dict[str, Any], tmp_path: Path) -> None:
    stack: Stack = trust["stack"]
    archive = sorted((stack.dir / "backups").glob("*.tar.gz"))[-1]
    other = tmp_path / "other"
    assert deploykit("render", "--profile", "cpu", "--dir", str(other), env=stack.env).code == 0
    result = deploykit("restore", "--dir", str(other), str(archive), env=stack.env)
    assert result.code == 2, result.err
    assert "holds the data of another stack" in result.err and "--force" in result.err


def test_upgrade_backs_up_first_and_reports_old_and_new_images(trust: dict[str, Any]) -> None:
    stack: Stack = trust["stack"]
    images: dict[str, str] = trust["images"]
    kept = new_chat(stack, "kept across the upgrade", "yes")
    new_ref = "deploykit-e2e-trust/open-webui:upgrade-test"  # a new pinned name for the local image: no registry
    docker("tag", images["OPENWEBUI_IMAGE"], new_ref)
    backups_before = set((stack.dir / "backups").glob("*.tar.gz"))
    try:
        result = deploykit(
            "upgrade", "--dir", str(stack.dir), "--image", f"open-webui={new_ref}",
            "--image", f"inference={images['LLAMACPP_IMAGE']}", "--json", env=stack.env, timeout=1200,
        )  # fmt: skip
        assert result.code == 0, result.err
        report = json.loads(result.out)
        assert report["images"]["open-webui"] == [images["OPENWEBUI_IMAGE"], new_ref]
        assert report["images"]["inference"] == [images["LLAMACPP_IMAGE"], images["LLAMACPP_IMAGE"]]
        assert report["up"]["healthy"] is True
        taken = set((stack.dir / "backups").glob("*.tar.gz")) - backups_before
        assert [str(p) for p in taken] == [report["backup"]]
        assert stack_images(stack)["open-webui"] == new_ref
        running = docker("inspect", "-f", "{{.Config.Image}}", f"{stack.project}-open-webui-1").strip()
        assert running == new_ref
        assert chat_titles(stack, [kept]) == {kept: "kept across the upgrade"}
    finally:
        stack.remove()  # the container uses the tag: remove it before the tag
        docker("rmi", new_ref)
