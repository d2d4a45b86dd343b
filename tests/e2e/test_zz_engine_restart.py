"""Fault matrix: the Docker daemon restarts under a running stack, which must come back by itself.

This restarts the engine every stack on the machine shares, so it runs LAST: the file name sorts after
every other e2e file, and the ``engine_restart`` marker lets a run order or deselect it
(``-m 'not engine_restart'``). The daemon is stopped with SIGTERM and started again the way provisioning
starts it (scripts/provision/engine.sh; systemd's `systemctl restart docker` where systemd runs it).
Ports 21870-21871.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import ROOT, Stack, container_ids, make_stack, running
from tests.e2e.test_data_safety import UP_ARGS, chat_titles, new_chat, project_objects, wait_status

pytestmark = [pytest.mark.e2e, pytest.mark.engine_restart]

PIDFILE = Path("/var/run/docker.pid")


def engine_answers() -> bool:
    return subprocess.run(["docker", "info"], capture_output=True, check=False, timeout=30).returncode == 0


def restart_engine() -> None:
    systemd = Path("/run/systemd/system").is_dir() and subprocess.run(
        ["systemctl", "is-active", "--quiet", "docker"], check=False
    ).returncode == 0
    if systemd:
        subprocess.run(["systemctl", "restart", "docker"], check=True, timeout=300)
        return
    pid = int(PIDFILE.read_text().strip())
    os.kill(pid, signal.SIGTERM)  # dockerd stops its containers (shutdown timeout) and exits
    deadline = time.monotonic() + 120
    while Path(f"/proc/{pid}").exists():
        assert time.monotonic() < deadline, "dockerd did not exit within 120 s of SIGTERM"
        time.sleep(0.5)
    subprocess.run(["bash", str(ROOT / "scripts" / "provision" / "engine.sh")], check=True, timeout=300)


@pytest.fixture(scope="module")
def restart_stack(engine: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = make_stack(tmp_path_factory.mktemp("restart"), "e2e-trust-restart", 21870, 21871)
    with running(stack, engine, *UP_ARGS, "--json"):
        yield stack


def test_docker_daemon_restart_the_stack_returns_by_itself(restart_stack: Stack) -> None:
    stack = restart_stack
    kept = new_chat(stack, "kept across a daemon restart", "yes")
    ids = container_ids(stack)
    objects = project_objects(stack)

    started = time.monotonic()
    restart_engine()
    assert engine_answers()
    # No deploykit command in between: the restart policy alone brings the stack back.
    state = wait_status(stack, 420)
    took = time.monotonic() - started
    print(f"daemon restart: stack healthy again {took:.0f} s after the stop")
    assert state["healthy"] is True, state
    assert container_ids(stack) == ids  # the same containers, restarted, not recreated
    assert project_objects(stack) == objects
    assert chat_titles(stack, [kept]) == {kept: "kept across a daemon restart"}
