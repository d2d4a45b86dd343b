"""The llama.cpp stack on a single-node Docker Swarm: `up --target swarm` to a chat, then gone without a trace.

The engine joins a swarm only for this test when it is not in one already, and leaves it afterwards;
an engine that was a swarm manager before stays one. Ports 20860-20869 are this test's.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import GGUF, MODEL_ID, deploykit, docker, make_stack, need

pytestmark = pytest.mark.e2e

WEBUI_PORT, INFERENCE_PORT = 20860, 20861


def swarm_state() -> str:
    return docker("info", "--format", "{{.Swarm.LocalNodeState}}").strip()


def leftovers(project: str) -> dict[str, list[str]]:
    """Everything of the stack that is still on the engine, by kind."""
    label = f"label=com.docker.stack.namespace={project}"
    kinds = {
        "services": ["service", "ls", "-q", "--filter", label],
        "secrets": ["secret", "ls", "-q", "--filter", label],
        "networks": ["network", "ls", "-q", "--filter", label],
        "volumes": ["volume", "ls", "-q", "--filter", label],
        "containers": ["ps", "-aq", "--filter", label],
    }
    found = {}
    for kind, args in kinds.items():
        if kind in ("services", "secrets") and swarm_state() != "active":
            found[kind] = []  # no swarm, none can exist
            continue
        found[kind] = docker(*args).split()
    return found


@pytest.fixture(scope="module")
def single_node_swarm(engine: dict[str, str]) -> Iterator[None]:
    before = swarm_state()
    need(before in ("inactive", "active"), f"the engine's swarm state is {before!r}")
    networks_before = set(docker("network", "ls", "--format", "{{.Name}}").split())
    initialised = before == "inactive"
    if initialised:
        init = subprocess.run(
            ["docker", "swarm", "init", "--advertise-addr", "127.0.0.1"], capture_output=True, text=True, check=False
        )
        assert init.returncode == 0, init.stderr
    try:
        yield
    finally:
        if initialised:
            subprocess.run(["docker", "swarm", "leave", "--force"], capture_output=True, check=False)
            # `swarm init` creates docker_gwbridge and `leave` keeps it: remove it when it is new and unused.
            if "docker_gwbridge" not in networks_before:
                subprocess.run(["docker", "network", "rm", "docker_gwbridge"], capture_output=True, check=False)
    assert swarm_state() == before
    networks = set(docker("network", "ls", "--format", "{{.Name}}").split())
    assert not {n for n in networks if n.startswith("deploykit-e2e-swarm")}
    if initialised:
        assert not {"ingress", "docker_gwbridge"} & (networks - networks_before)


def test_swarm_up_reaches_a_chat_and_down_leaves_nothing(
    engine: dict[str, str], single_node_swarm: None, tmp_path: Path
) -> None:
    stack = make_stack(tmp_path, "e2e-swarm", WEBUI_PORT, INFERENCE_PORT)
    try:
        result = stack.up(
            engine, "--target", "swarm", "--profile", "cpu", "--model", MODEL_ID, "--model-file", str(GGUF), "--json"
        )
        assert result.code == 0, result.err
        report = json.loads(result.out)
        assert report["healthy"] is True
        assert [s["name"] for s in report["stages"]][-1] == "chat via open-webui"
        assert all(s["ok"] for s in report["stages"])
        assert report["drift"] == []
        # deployed as a stack: two services, the secrets as Swarm secrets, nothing in the stack file
        ns = f"label=com.docker.stack.namespace={stack.project}"
        services = docker("service", "ls", "--format", "{{.Name}}", "--filter", ns).split()
        assert sorted(services) == [f"{stack.project}_inference", f"{stack.project}_open-webui"]
        secrets = docker("secret", "ls", "--format", "{{.Name}}", "--filter", ns).split()
        assert sorted(secrets) == [f"{stack.project}_inference_api_key", f"{stack.project}_webui_secret_key"]
        key = next(
            line.split("=", 1)[1].strip("'")
            for line in (stack.dir / ".env").read_text().splitlines()
            if line.startswith("INFERENCE_API_KEY=")
        )
        assert key not in (stack.dir / "swarm.yaml").read_text()
        status = deploykit("status", "--dir", str(stack.dir), "--json", env=stack.env)
        assert status.code == 0, status.err
        assert json.loads(status.out)["healthy"] is True
        chat = deploykit("chat", "--dir", str(stack.dir), "Say hello", env=stack.env)
        assert chat.code == 0, chat.err
        assert chat.out.strip()
        smoke = deploykit("smoke", "--dir", str(stack.dir), "--json", env=stack.env)
        assert smoke.code == 0, smoke.out + smoke.err
    finally:
        down = deploykit("down", "--dir", str(stack.dir), "--volumes", "--yes", env=stack.env)
    assert down.code == 0, down.err
    assert leftovers(stack.project) == {k: [] for k in ("services", "secrets", "networks", "volumes", "containers")}
