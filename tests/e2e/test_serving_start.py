"""Serving flags and the parallel start on a real engine: Open WebUI starts beside llama-server (not after
its healthcheck), still lists the model, and the plan is fitted to the cores of the host that runs it."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
import yaml

from tests.e2e.conftest import GGUF, MODEL_ID, Stack, docker, make_stack, running

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def started(engine: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = make_stack(tmp_path_factory.mktemp("stacks"), "e2e-perfflags", 19866, 19867)
    with running(stack, engine, "--profile", "cpu", "--model", MODEL_ID, "--model-file", str(GGUF), "--json"):
        yield stack


def started_at(stack: Stack, service: str) -> datetime:
    name = docker(
        "ps", "-q", "--filter", f"label=com.docker.compose.project={stack.project}",
        "--filter", f"label=com.docker.compose.service={service}",
    ).split()[0]  # fmt: skip
    return datetime.fromisoformat(docker("inspect", "-f", "{{.State.StartedAt}}", name).strip()[:26])


def test_open_webui_starts_beside_the_server_and_lists_the_model(started: Stack) -> None:
    report = json.loads(started.up_result.out)  # type: ignore[union-attr]
    stages = {s["name"]: s for s in report["stages"]}
    assert all(s["ok"] for s in stages.values())
    assert stages["open-webui model"]["detail"] == f"lists '{MODEL_ID}'"
    # every stage says when it passed, from the start of up, in order
    ats = [s["at"] for s in report["stages"]]
    assert ats == sorted(ats) and ats[-1] > 0
    # started together, not after the inference healthcheck (5 s interval)
    gap = (started_at(started, "open-webui") - started_at(started, "inference")).total_seconds()
    assert abs(gap) < 4, gap


def test_flags_fit_the_host_that_runs_the_stack(started: Stack) -> None:
    plan = json.loads((started.dir / "plan.json").read_text())["stack"]["plan"]
    cores = len(os.sched_getaffinity(0))
    assert plan["threads"] <= max(cores, 1)
    assert plan["parallel"] > 1
    command = docker("inspect", "-f", "{{json .Config.Cmd}}", f"{started.project}-inference-1")
    args = json.loads(command)
    assert args[args.index("-np") + 1] == str(plan["parallel"])
    assert args[args.index("-c") + 1] == str(plan["context_length"] * plan["parallel"])
    if plan["notes"]:
        assert "Profile cpu describes 4 physical cores" in started.up_result.err  # type: ignore[union-attr]
    compose = yaml.safe_load(Path(started.dir / "compose.yaml").read_text())
    assert "depends_on" not in compose["services"]["open-webui"]  # started beside the server
