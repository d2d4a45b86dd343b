"""A fleet of two real engines and one that cannot be reached.

The local engine, a second Docker Engine on this machine reached over ssh:// through Debian's OpenSSH
on loopback (scripts/provision/engine-second.sh), and an ssh:// entry where nothing listens. Both real
hosts must come up healthy to a chat through Open WebUI; the third is reported unreachable; the exit
code says so. The second engine starts each run without the model volume and the llama-server image,
so delivery over ssh:// runs every time (Open WebUI's 3 GB image is loaded once and then kept).
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import GGUF, MODEL_ID, Result, deploykit, images, need, remove_by_label

pytestmark = pytest.mark.e2e

LOCAL, SECOND, GONE = "fleet-e2e-local", "fleet-e2e-second", "fleet-e2e-gone"
# Named by the inventory for the second host only (a path relative to the inventory's folder).
SECOND_OVERRIDE = b"""\
# copied byte for byte into the host's stack folder
services:
  open-webui:
    environment:
      WEBUI_NAME: "Second Room"
"""


def second_engine() -> str:
    return images().get("SECOND_ENGINE", "ssh://root@127.0.0.1:22879")


def docker_at(host: str, *args: str) -> str:
    cp = subprocess.run(
        ["docker", *args], capture_output=True, text=True, check=False, env=dict(os.environ, DOCKER_HOST=host)
    )
    return cp.stdout


def remove_on_second(project: str) -> None:
    host = second_engine()
    ids = docker_at(host, "ps", "-aq", "--filter", f"label=org.deploykit.stack={project}").split()
    if ids:
        docker_at(host, "rm", "-f", *ids)
    vols = docker_at(host, "volume", "ls", "-q", "--filter", f"label=org.deploykit.stack={project}").split()
    if vols:
        docker_at(host, "volume", "rm", "-f", *vols)
    nets = docker_at(host, "network", "ls", "-q", "--filter", f"label=com.docker.compose.project={project}").split()
    if nets:
        docker_at(host, "network", "rm", *nets)


@dataclass
class Fleet:
    inventory: Path
    dir: Path
    images: dict[str, str]
    up: Result

    def run(self, command: str, *args: str) -> Result:
        extra: tuple[str, ...] = ()
        if command in ("up", "render", "plan"):
            extra = (
                "--model", MODEL_ID, "--model-file", str(GGUF),
                "--image", f"inference={self.images['LLAMACPP_IMAGE']}",
                "--image", f"open-webui={self.images['OPENWEBUI_IMAGE']}",
            )  # fmt: skip
        return deploykit(
            "fleet", command, "--inventory", str(self.inventory), "--dir", str(self.dir), *extra, *args, timeout=1800
        )


def container_ids(host: str | None, project: str) -> set[str]:
    args = ("ps", "-q", "--filter", f"label=com.docker.compose.project={project}")
    out = docker_at(host, *args) if host else subprocess.run(["docker", *args], capture_output=True, text=True).stdout
    return set(out.split())


@pytest.fixture(scope="module")
def fleet(engine: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    second = second_engine()
    reachable = subprocess.run(
        ["docker", "info"], capture_output=True, check=False, env=dict(os.environ, DOCKER_HOST=second)
    ).returncode == 0  # fmt: skip
    need(reachable, f"the second engine {second} does not answer (scripts/provision/engine-second.sh)")
    tmp = tmp_path_factory.mktemp("fleet")
    inventory = tmp / "inventory.toml"
    # The room's customisation: a fleet-wide Open WebUI name, and one host whose override renames it.
    (tmp / "second.override.yaml").write_bytes(SECOND_OVERRIDE)
    inventory.write_text(
        f"""
[webui_env]
WEBUI_NAME = "Fleet E2E"

[[hosts]]
name = "{LOCAL}"
engine = "unix:///var/run/docker.sock"
profile = "cpu"
labels = {{ room = "here" }}
ui_port = 22860
inference_port = 22861

[[hosts]]
name = "{SECOND}"
engine = "{second}"
profile = "cpu"
labels = {{ room = "loopback-ssh" }}
override = "second.override.yaml"
ui_port = 22862
inference_port = 22863

[[hosts]]
name = "{GONE}"
engine = "ssh://root@127.0.0.1:22878"
ui_port = 22864
inference_port = 22865
""",
        encoding="utf-8",
    )
    for name in (LOCAL, SECOND):
        remove_by_label(f"org.deploykit.stack=deploykit-{name}")
        remove_on_second(f"deploykit-{name}")
    # Delivery runs every time: no model volume and no llama-server image on the second engine.
    for vol in docker_at(second, "volume", "ls", "-q", "--filter", "label=org.deploykit.model-sha256").split():
        docker_at(second, "volume", "rm", "-f", vol)
    docker_at(second, "image", "rm", "-f", engine["LLAMACPP_IMAGE"])
    result = Fleet(inventory, tmp / "stacks", engine, Result(0, "", ""))
    result.up = result.run("up", "--parallel", "3", "--json")
    yield result
    result.run("down")
    for name in (LOCAL, SECOND):
        remove_by_label(f"org.deploykit.stack=deploykit-{name}")
        remove_on_second(f"deploykit-{name}")


def hosts(result: Result) -> dict[str, dict[str, object]]:
    data = json.loads(result.out)
    return {h["host"]: h for h in data["hosts"]}


def test_two_engines_come_up_to_a_chat_and_the_third_is_unreachable(fleet: Fleet) -> None:
    assert fleet.up.code == 1, fleet.up.err  # one host could not be reached
    data = json.loads(fleet.up.out)
    assert data["ok"] is False
    errors = {h["host"]: h["error"] for h in data["hosts"]}
    assert data["unreachable"] == [GONE] and data["failed"] == [], errors
    by_host = hosts(fleet.up)
    for name, port in ((LOCAL, 22860), (SECOND, 22862)):
        row = by_host[name]
        assert row["state"] == "healthy", row
        assert row["url"] == f"http://127.0.0.1:{port}"
        stages = row["details"]["stages"]  # type: ignore[index]
        assert stages[-1]["name"] == "chat via open-webui" and all(s["ok"] for s in stages)
    gone = by_host[GONE]
    assert gone["state"] == "unreachable" and "22878" in str(gone["error"])
    delivery = by_host[SECOND]["details"]["delivery"]  # type: ignore[index]
    assert delivery["inference image"].startswith("loaded (")
    assert delivery["model"].startswith("sent into volume deploykit-model-")
    # The local engine sees the controller's disk: no volume, no image copy.
    assert "model" not in by_host[LOCAL]["details"]["delivery"]  # type: ignore[index]


def test_the_remote_stack_mounts_the_delivered_volume(fleet: Fleet) -> None:
    compose = (fleet.dir / SECOND / "compose.yaml").read_text()
    assert "type: volume\n        source: model" in compose and "external: true" in compose
    assert str(GGUF.parent) not in compose  # no path of the controller's disk
    volume = json.loads((fleet.dir / SECOND / "plan.json").read_text())["stack"]["model_volume"]
    inspect = json.loads(docker_at(second_engine(), "volume", "inspect", "--format", "{{json .Labels}}", volume))
    assert len(inspect["org.deploykit.model-sha256"]) == 64
    answer = deploykit("chat", "--dir", str(fleet.dir / SECOND), "Say hello")
    assert answer.code == 0 and answer.out.strip(), answer.err


def test_status_json_lists_each_host_with_state_url_and_error(fleet: Fleet) -> None:
    status = fleet.run("status", "--json")
    assert status.code == 1, status.err
    by_host = hosts(status)
    assert list(by_host) == [LOCAL, SECOND, GONE]
    for row in by_host.values():
        assert {"state", "url", "error"} <= row.keys()
    assert by_host[LOCAL]["state"] == by_host[SECOND]["state"] == "healthy"
    assert by_host[SECOND]["url"] == "http://127.0.0.1:22862" and by_host[SECOND]["error"] is None
    # The inference port stays on the host's loopback: the controller went through an ssh -L forward.
    inference = by_host[SECOND]["details"]["services"][0]  # type: ignore[index]
    assert inference["model"] == MODEL_ID and not inference["url"].endswith(":22863/v1"), inference
    assert by_host[GONE]["state"] == "unreachable" and by_host[GONE]["error"]
    table = fleet.run("status")
    assert table.code == 1 and GONE in table.out and "unreachable" in table.out


def test_rerun_converges_without_resending_or_recreating(fleet: Fleet) -> None:
    before = {
        LOCAL: container_ids(None, f"deploykit-{LOCAL}"),
        SECOND: container_ids(second_engine(), f"deploykit-{SECOND}"),
    }
    again = fleet.run("up", "--hosts", "fleet-e2e-local,fleet-e2e-second", "--json")
    assert again.code == 0, again.err
    by_host = hosts(again)
    assert all(row["state"] == "healthy" for row in by_host.values())
    delivery = by_host[SECOND]["details"]["delivery"]  # type: ignore[index]
    assert delivery["inference image"] == delivery["open-webui image"] == "already there"
    assert delivery["model"].startswith("already in volume")
    after = {
        LOCAL: container_ids(None, f"deploykit-{LOCAL}"),
        SECOND: container_ids(second_engine(), f"deploykit-{SECOND}"),
    }
    assert after == before and all(after.values())


def test_the_inventory_customises_each_host(fleet: Fleet) -> None:
    """Fleet-wide [webui_env] reaches both hosts; the second host's override (copied from the inventory's
    folder) merges over it on that host only; up and status say which host runs with an override."""
    names = {
        host: httpx.get(f"http://127.0.0.1:{port}/api/config", timeout=30).json()["name"]
        for host, port in ((LOCAL, 22860), (SECOND, 22862))
    }
    # Open WebUI appends its own name to a custom one.
    assert names == {LOCAL: "Fleet E2E (Open WebUI)", SECOND: "Second Room (Open WebUI)"}
    assert (fleet.dir / SECOND / "compose.override.yaml").read_bytes() == SECOND_OVERRIDE
    assert not (fleet.dir / LOCAL / "compose.override.yaml").exists()
    up = hosts(fleet.up)
    assert up[SECOND]["details"]["override"]["from"] == str(fleet.inventory.parent / "second.override.yaml")  # type: ignore[index]
    assert up[LOCAL]["details"]["override"] is None  # type: ignore[index]
    status = hosts(fleet.run("status", "--json"))
    assert status[SECOND]["details"]["override"]["file"] == "compose.override.yaml"  # type: ignore[index]
    assert status[LOCAL]["details"]["override"] is None  # type: ignore[index]
