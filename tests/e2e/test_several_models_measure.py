"""`bench --model` and `tune --model` on a real stack of several models (issue 17): two GGUF models behind
llama.cpp's router (the shipped Q4_1 SmolLM2 and its Q8_0), each measured by bench, then one of them swept by
tune while the other's [[models]] entry stays as it was; and tune refused without --model, nothing written.

The stack comes from its deploykit.toml's [[models]] tables (as a user writes them), so "the other entry is
untouched" is checked byte for byte. A small grid and few short requests: CI has 2 cores."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.conftest import GGUF, ROOT, Stack, deploykit, make_stack, need
from tests.e2e.test_several_models import Q4_ID, Q8, Q8_ID, ask, children, several_running, status, ui_client

pytestmark = pytest.mark.e2e

PORTS = (28100, 28101)  # Open WebUI, then the router's loopback port
LOAD = ("--requests", "4", "--prompt-tokens", "32", "--max-tokens", "16")
ENTRY_A = f'[[models]]\nid = "{Q4_ID}"  # the default: tune --model {Q8_ID} leaves it alone\nfile = "{GGUF}"\n'
ENTRY_B = f'[[models]]\nid = "{Q8_ID}"\nfile = "{Q8}"\n'
SETTINGS = f"# written by the test\n\n{ENTRY_A}\n{ENTRY_B}"


def stack_files(stack: Stack) -> dict[str, bytes]:
    return {
        p.relative_to(stack.dir).as_posix(): p.read_bytes()
        for p in sorted(stack.dir.rglob("*"))
        if p.is_file() and not p.name.startswith(".deploykit")
    }


@pytest.fixture(scope="module")
def pair(engine: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, dict[str, Any]]]:
    """The two GGUF models loaded together through one router, listed in the stack's deploykit.toml."""
    need(Q8.is_file(), f"the second GGUF {Q8} is missing (scripts/provision/provision.sh model-second)")
    stack = make_stack(tmp_path_factory.mktemp("tune"), "e2e-tune-pair", *PORTS)
    stack.dir.mkdir(parents=True)
    (stack.dir / "deploykit.toml").write_text(SETTINGS, encoding="utf-8")
    with several_running(stack, engine, "--profile", "cpu") as up:
        yield stack, up


def test_bench_measures_each_model_of_the_stack_on_its_own_row(pair: tuple[Stack, dict[str, Any]]) -> None:
    stack, up = pair
    assert [row["model"] for row in up["models"]] == [Q4_ID, Q8_ID]
    result = deploykit(
        "bench", "--dir", str(stack.dir), "--model", Q4_ID, "--model", Q8_ID, "--concurrency", "1", *LOAD, "--json",
        env=stack.env, timeout=600,
    )  # fmt: skip
    assert result.code == 0, result.err[-4000:]
    report = json.loads(result.out)
    rows = report["stacks"]
    assert [row["model"] for row in rows] == [Q4_ID, Q8_ID]
    for row in rows:
        level = row["levels"][0]
        assert level["concurrency"] == 1
        assert level["metrics"]["completed"] == 4 and level["metrics"]["failed"] == 0, level
        assert level["metrics"]["output_throughput"] > 0
        assert row["url"].startswith(f"http://127.0.0.1:{PORTS[1]}/"), "both through the router's port"
    print({row["model"]: round(row["levels"][0]["metrics"]["output_throughput"], 1) for row in rows})


def test_tune_without_model_is_refused_and_writes_nothing(pair: tuple[Stack, dict[str, Any]]) -> None:
    stack, _ = pair
    before = stack_files(stack)
    result = deploykit("tune", "--dir", str(stack.dir), *LOAD, env=stack.env)
    assert result.code == 2, result.err
    assert f"serves several models ({Q4_ID}, {Q8_ID})" in result.err
    assert f"--model {Q4_ID}" in result.err, "the hint names how"
    assert stack_files(stack) == before


def test_tune_model_sweeps_that_model_writes_its_entry_only_and_leaves_the_stack_healthy(
    pair: tuple[Stack, dict[str, Any]],
) -> None:
    stack, _ = pair
    plan_before = json.loads((stack.dir / "plan.json").read_text())
    a_before = next(m for m in plan_before["stack"]["models"] if m["model_id"] == Q4_ID)["plan"]
    preset_before = (stack.dir / "presets" / "models.ini").read_text()
    pids_before = children(stack)
    result = deploykit(
        "tune", "--dir", str(stack.dir), "--model", Q8_ID, "--threads", "1,2", "--parallel", "1", *LOAD,
        "--time-limit", "60", "--json", env=stack.env, timeout=900,
    )  # fmt: skip
    assert result.code == 0, result.err[-4000:]
    report = json.loads(result.out)
    assert report["model"] == Q8_ID and report["service"] == "router"
    measured = [(r["threads"], r["parallel"]) for r in report["rows"]]
    assert {(1, 1), (2, 1)} <= set(measured), measured
    assert report["rows"][0]["current"] is True
    assert all(r["metrics"] and r["metrics"]["completed"] == 4 for r in report["rows"]), report["rows"]
    assert any(f"only {Q8_ID} reloaded, its other models ({Q4_ID}) kept running" in n for n in report["notes"]), report[
        "notes"
    ]
    # The router re-read its preset in place: A's llama-server is the same process, B's a new one.
    pids_after = children(stack)
    assert pids_after[Q4_ID] == pids_before[Q4_ID], (pids_before, pids_after)
    assert pids_after[Q8_ID] != pids_before[Q8_ID], (pids_before, pids_after)
    assert report["healthy"] is True
    winner = report["winner"]

    # The winner is in B's [[models]] entry; A's table is as the user wrote it, byte for byte.
    text = (stack.dir / "deploykit.toml").read_text()
    assert text.startswith(f"# written by the test\n\n{ENTRY_A}\n"), text
    entries = tomllib.loads(text)["models"]
    assert entries[0] == {"id": Q4_ID, "file": str(GGUF)}
    assert entries[1] == {"id": Q8_ID, "file": str(Q8), **winner}

    # The stack runs it: B's plan and preset section have the winner; A is served as before (its flags: its
    # plan's sentences may name the budget B's new slots left).
    plan_after = json.loads((stack.dir / "plan.json").read_text())
    b_after = next(m for m in plan_after["stack"]["models"] if m["model_id"] == Q8_ID)["plan"]
    assert (b_after["threads"], b_after["parallel"]) == (winner["threads"], winner["parallel"])
    a_after = next(m for m in plan_after["stack"]["models"] if m["model_id"] == Q4_ID)["plan"]
    flags = ("threads", "parallel", "context_length", "backend", "quantization", "device")
    assert {k: a_after[k] for k in flags} == {k: a_before[k] for k in flags}
    recorded = {m["model"]["id"]: m for m in plan_after["inputs"]["models"]}
    assert (recorded[Q8_ID]["threads"], recorded[Q8_ID]["parallel"]) == (winner["threads"], winner["parallel"])
    assert "threads" not in recorded[Q4_ID] and "parallel" not in recorded[Q4_ID]
    preset = (stack.dir / "presets" / "models.ini").read_text()
    b_section = preset.split(f"[{Q8_ID}]\n", 1)[1].split("\n\n", 1)[0]
    a_section = preset.split(f"[{Q4_ID}]\n", 1)[1].split("\n\n", 1)[0]
    assert a_section == preset_before.split(f"[{Q4_ID}]\n", 1)[1].split("\n\n", 1)[0]
    assert f"threads = {winner['threads']}\n" in b_section and f"parallel = {winner['parallel']}\n" in b_section

    state = status(stack)
    assert state["healthy"] is True
    assert {m["model"]: m["state"] for m in state["models"]} == {Q4_ID: "loaded", Q8_ID: "loaded"}
    with ui_client(stack) as ui:
        assert all(ask(ui, m)[0] for m in (Q4_ID, Q8_ID))
    print({(r["threads"], r["parallel"]): round(r["score"], 1) for r in report["rows"]}, "winner", winner)


def test_tune_model_interrupted_puts_the_files_back_and_the_router_runs_them(
    pair: tuple[Stack, dict[str, Any]],
) -> None:
    """Ctrl-C once the sweep has written another candidate's preset: every stack file as before, the router
    restarted with them (both models loaded again), exit code 130."""
    stack, _ = pair
    before = stack_files(stack)
    preset = stack.dir / "presets" / "models.ini"
    command = [
        sys.executable, "-m", "deploykit", "tune", "--dir", str(stack.dir), "--model", Q8_ID,
        "--threads", "1", "--parallel", "1,2,3", *LOAD,
    ]  # fmt: skip
    proc = subprocess.Popen(
        command,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ) | stack.env,
        cwd=ROOT,
    )
    deadline = time.monotonic() + 300
    while preset.read_bytes() == before["presets/models.ini"]:
        assert proc.poll() is None, "tune ended before another candidate was written: " + (
            proc.stderr.read() if proc.stderr else ""
        )
        assert time.monotonic() < deadline, "no candidate written within 300 s"
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err
    assert stack_files(stack) == before, "every stack file (deploykit.toml too) as before the sweep"
    # tune exits without waiting for the restarted router: wait (not timed) for its models to load again.
    deadline = time.monotonic() + 180
    while deploykit("status", "--dir", str(stack.dir), env=stack.env).code != 0 and time.monotonic() < deadline:
        time.sleep(1)
    state = status(stack)
    assert state["healthy"] is True, state
    assert {m["model"]: m["state"] for m in state["models"]} == {Q4_ID: "loaded", Q8_ID: "loaded"}
    with ui_client(stack) as ui:
        assert all(ask(ui, m)[0] for m in (Q4_ID, Q8_ID))
