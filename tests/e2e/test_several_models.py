"""Several models in one stack on a real engine (issue 17): `deploykit up` with two GGUF files through llama.cpp's
router, the same two on a budget that holds one (served on demand, the swap timed), vLLM's CPU build beside
llama.cpp, `models remove|add` on a running stack, and a real Chromium asking two models side by side.

The models: the shipped Q4_1 SmolLM2 GGUF, its Q8_0 (scripts/provision/model-smollm2-q8.sh) and the FP16
folder for vLLM. One stack serves several tests where it can: CI has 2 cores."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.browser import signed_in
from tests.e2e.conftest import (
    ARTIFACTS,
    FP16_DIR,
    GGUF,
    MODEL_CACHE,
    Stack,
    container_ids,
    deploykit,
    docker,
    make_stack,
    need,
    remove_by_label,
    webui_token,
)

pytestmark = pytest.mark.e2e

Q8 = MODEL_CACHE / "SmolLM2-135M-Instruct.Q8_0.gguf"
Q4_ID, Q8_ID = "smollm2-q4", "smollm2-q8"
TWO_GGUF = ("--model", Q4_ID, "--model-file", str(GGUF), "--model", Q8_ID, "--model-file", str(Q8))
# Ports of this file's stacks: Open WebUI, then the servers' loopback ports from the next one on.
PAIR_PORTS = (35870, 35871)
ON_DEMAND_PORTS = (35874, 35875)
MIXED_PORTS = (35878, 35879)


def with_images(stack: Stack, images: dict[str, str]) -> Stack:
    """The offline images for every command of the stack: each backend's under its [images] key (a stack of
    several models has a server per backend, so no single --image inference=…), Open WebUI's too."""
    stack.env |= {
        "DEPLOYKIT_IMAGES__LLAMA_SERVER": images["LLAMACPP_IMAGE"],
        "DEPLOYKIT_IMAGES__OPEN_WEBUI": images["OPENWEBUI_IMAGE"],
        **({"DEPLOYKIT_IMAGES__VLLM_CPU": images["VLLM_CPU_IMAGE"]} if "VLLM_CPU_IMAGE" in images else {}),
    }
    return stack


@contextlib.contextmanager
def several_running(stack: Stack, images: dict[str, str], *args: str) -> Iterator[dict[str, Any]]:
    """The stack up for a fixture's lifetime (its `up --json` report), then removed, also when `up` failed."""
    remove_by_label(f"org.deploykit.stack={stack.project}")
    with_images(stack, images)
    try:
        result = deploykit("up", *args, "--dir", str(stack.dir), "--json", env=stack.env, timeout=1800)
        assert result.code == 0, result.err[-4000:]
        yield json.loads(result.out)
    finally:
        stack.remove()


def ui_client(stack: Stack) -> httpx.Client:
    token = webui_token(stack)
    return httpx.Client(
        base_url=f"http://127.0.0.1:{stack.webui_port}",
        headers={"Authorization": f"Bearer {token}"},
        timeout=600,
        trust_env=False,
    )


def ask(ui: httpx.Client, model: str, question: str = "Say hello.") -> tuple[str, float]:
    """One chat through Open WebUI, as a person's would go: (the answer, seconds it took)."""
    begun = time.monotonic()
    body = {"model": model, "messages": [{"role": "user", "content": question}], "stream": False, "max_tokens": 24}
    r = ui.post("/api/chat/completions", json=body)
    assert r.status_code == 200, r.text
    answer = r.json()["choices"][0]["message"]["content"]
    assert answer.strip(), f"{model} answered nothing"
    return str(answer), time.monotonic() - begun


def listed(ui: httpx.Client) -> dict[str, Any]:
    """Open WebUI's model list, by id (a router's models carry their "loaded" state)."""
    r = ui.get("/api/models", params={"refresh": "true"})
    r.raise_for_status()
    return {m["id"]: m for m in r.json()["data"]}


def status(stack: Stack) -> dict[str, Any]:
    result = deploykit("status", "--dir", str(stack.dir), "--json", env=stack.env)
    assert result.code == 0, result.err
    state: dict[str, Any] = json.loads(result.out)
    return state


def started_at(stack: Stack, service: str) -> str:
    ids = docker("ps", "-q", "--filter", f"label=com.docker.compose.project={stack.project}",
                 "--filter", f"label=com.docker.compose.service={service}").split()  # fmt: skip
    assert ids, f"no running {service} container"
    return docker("inspect", "-f", "{{.State.StartedAt}}", ids[0]).strip()


def host_file(folder: Path, total_mib: int) -> Path:
    """The built-in `cpu` profile with 2 cores and ``total_mib`` of RAM, as `deploykit detect --json` writes a
    host: the budget the planner packs the models into."""
    from deploykit.catalog import builtin_profiles, find_profile

    host = find_profile("cpu", builtin_profiles()).model_dump(mode="json")
    host |= {"name": "small", "description": "2 cores, little RAM", "source": "file"}
    host["cpu"] |= {"physical_cores": 2, "logical_cores": 2}
    host["memory"]["total_bytes"] = total_mib * 2**20
    path = folder / "small-host.json"
    path.write_text(json.dumps(host), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def pair(engine: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, dict[str, Any]]]:
    """Two GGUF models loaded together through one router."""
    need(Q8.is_file(), f"the second GGUF {Q8} is missing (scripts/provision/provision.sh model-second)")
    stack = make_stack(tmp_path_factory.mktemp("several"), "e2e-mmr-pair", *PAIR_PORTS)
    with several_running(stack, engine, "--profile", "cpu", *TWO_GGUF) as up:
        yield stack, up


def children(stack: Stack) -> dict[str, str]:
    """The router's llama-server children: model id -> host PID (docker top; a model's --alias names it)."""
    [router] = [cid for name, cid in container_ids(stack).items() if "-router-" in name]
    out: dict[str, str] = {}
    # -ww: ps cuts command lines to 80 columns unless told, and dockerd runs it without a terminal or COLUMNS.
    for line in docker("top", router, "-ww", "-o", "pid,args").splitlines()[1:]:
        pid, *words = line.split()
        if "--alias" in words:
            out[words[words.index("--alias") + 1]] = pid
    return out


def test_two_gguf_models_together_are_listed_and_each_answers_through_open_webui(
    pair: tuple[Stack, dict[str, Any]],
) -> None:
    stack, up = pair
    assert up["healthy"] is True
    models = [row["model"] for row in up["models"]]
    assert len(models) == 2 and all(row["served"] == "loaded at start" for row in up["models"])
    assert up["models"][0]["default"] is True
    names = [s["name"] for s in up["stages"]]
    assert "router models loaded" in names
    assert [f"chat {m} via open-webui" for m in models] == [n for n in names if n.startswith("chat ")]
    with ui_client(stack) as ui:
        seen = listed(ui)
        assert set(models) <= set(seen)
        assert all(seen[m].get("loaded") is True for m in models), "both are loaded at once"
        answers = {m: ask(ui, m)[0] for m in models}
    assert all(answers.values())
    state = status(stack)
    assert state["healthy"] is True
    rows = {m["model"]: m for m in state["models"]}
    assert {rows[m]["state"] for m in models} == {"loaded"}
    # One router serves both: one container, its memory beside the plan's per-model figures.
    assert rows[models[0]]["service"] == rows[models[1]]["service"] == "router"
    measured = rows[models[0]]["container_bytes"]
    planned = rows[models[0]]["planned_bytes"] + rows[models[1]]["planned_bytes"]
    # Both models answered, so every page of their mmapped weights is in the processes' RSS (the cgroup's own
    # figure misses them when another container read the files first: docs/benchmarks.md).
    placements = json.loads((stack.dir / "plan.json").read_text())["stack"]["packing"]["placements"]
    assert measured is not None and measured > sum(p["weights_bytes"] for p in placements)
    print(f"router container {measured / 2**20:.0f} MiB, planned {planned / 2**20:.0f} MiB for both")


def test_eval_compares_two_models_of_one_stack_on_the_same_items(
    pair: tuple[Stack, dict[str, Any]], tmp_path: Path
) -> None:
    """`eval --model A --model B`: the same items asked of each model of one stack, scored and paired."""
    stack, _ = pair
    items = [{"question": f"What is {a} + {b}?", "answer": f"{a} + {b} = {a + b}\n#### {a + b}"} for a, b in
             ((2, 3), (10, 5), (7, 1))]  # fmt: skip
    data = tmp_path / "sums.jsonl"
    data.write_text("".join(json.dumps(i) + "\n" for i in items), encoding="utf-8")
    result = deploykit("eval", "--dir", str(stack.dir), "--dataset", str(data), "--max-tokens", "16",
                       "--model", Q4_ID, "--model", Q8_ID, "--json", env=stack.env, timeout=1200)  # fmt: skip
    assert result.code == 0, result.err[-3000:]
    report: Any = result.json
    first, second = report["stacks"]
    assert (first["model"], second["model"]) == (Q4_ID, Q8_ID)
    assert first["store"] != second["store"], "each model's answers are kept apart"
    for run in (first, second):
        assert [o["key"] for o in run["outcomes"]] == [o["key"] for o in first["outcomes"]]
        assert run["metrics"]["passed"] == sum(o["outcomes"][0]["passed"] for o in run["outcomes"])
    c = report["compare"]
    assert c["both"] + c["neither"] + c["only_first"] + c["only_second"] == c["items"] == len(items)


def test_add_then_remove_a_model_on_the_running_stack_keeps_the_others_and_a_chat_made_before(
    pair: tuple[Stack, dict[str, Any]],
) -> None:
    stack, up = pair
    default, second = (row["model"] for row in up["models"])
    with ui_client(stack) as ui:
        messages = [{"id": "m1", "role": "user", "content": "Remember the word teal.", "timestamp": 0}]
        r = ui.post("/api/v1/chats/new", json={"chat": {"title": "before", "models": [default], "messages": messages}})
        r.raise_for_status()
        chat_id = r.json()["id"]
    webui_started = started_at(stack, "open-webui")
    servers_before = children(stack)

    # A third model: the shipped file again, under an id of its own.
    third = "smollm2-third"
    added = deploykit("models", "add", third, "--model-file", str(GGUF), "--dir", str(stack.dir), "--json",
                      env=stack.env, timeout=600)  # fmt: skip
    assert added.code == 0, added.err
    change = json.loads(added.out)
    assert change["added"] == [third] and change["models"] == [default, second, third]
    assert "open-webui" not in change["started"]
    # The router re-read its preset in place (the third model is in deploykit's model cache, which it mounts
    # whole): not recreated, the other two models' llama-server processes the same ones.
    assert "router" not in change["started"] and change["reloaded"] is True, change
    assert {m: pid for m, pid in children(stack).items() if m != third} == servers_before
    assert [s["name"] for s in change["stages"]][-2:] == [f"open-webui lists {third}", f"chat {third} via open-webui"]
    assert "[[models]]" in (stack.dir / "deploykit.toml").read_text()
    with ui_client(stack) as ui:
        assert {default, second, third} <= set(listed(ui))
        ask(ui, third)

    removed = deploykit("models", "remove", third, "--dir", str(stack.dir), "--json", env=stack.env, timeout=600)
    assert removed.code == 0, removed.err
    change = json.loads(removed.out)
    assert change["removed"] == [third] and change["models"] == [default, second]
    with ui_client(stack) as ui:
        models = listed(ui)
        assert third not in models and {default, second} <= set(models)
        ask(ui, default)
        ask(ui, second)
        assert children(stack) == servers_before, "removing it left the other two running"
        kept = ui.get(f"/api/v1/chats/{chat_id}")
        assert kept.status_code == 200 and kept.json()["chat"]["title"] == "before"
    # Open WebUI (its accounts, its chats, its process) was not touched by either change.
    assert started_at(stack, "open-webui") == webui_started
    listing = deploykit("models", "--dir", str(stack.dir), "--json", env=stack.env)
    assert listing.code == 0, listing.err
    assert [m["model"] for m in json.loads(listing.out)] == [default, second]


def test_chromium_asks_two_models_side_by_side(
    pair: tuple[Stack, dict[str, Any]], tmp_path_factory: pytest.TempPathFactory
) -> None:
    stack, up = pair
    default, second = (row["model"] for row in up["models"])
    profile = tmp_path_factory.mktemp("chromium-profile")
    with signed_in(stack, profile, "open-webui-side-by-side-failure.png") as page:
        # The stack's default model is preselected; Compare adds the second beside it.
        selector = page.locator('button[aria-label^="Selected model"]').first
        selector.wait_for(state="visible", timeout=60_000)
        assert default in selector.inner_text()
        selector.click()
        page.locator('button[aria-label="Compare"]').click(timeout=30_000)
        page.locator(f'button[aria-label="Select {second} model"]').click(timeout=30_000)
        page.keyboard.press("Escape")
        page.locator("#chat-input").click()
        page.keyboard.type("What is the capital of France?")
        page.keyboard.press("Enter")
        answers = page.locator("#response-content-container")
        texts = _settled(page, answers)
        page.screenshot(path=str(ARTIFACTS / "open-webui-side-by-side.png"))
        assert len(texts) == 2 and all(t.strip() for t in texts), texts
        assert f"{default} +1" in selector.inner_text()
        assert second in page.content()


def _settled(page: Any, answers: Any, timeout: float = 240) -> list[str]:
    """The answer columns' texts once there are two and neither has changed for two seconds (streaming done)."""
    deadline = time.monotonic() + timeout
    last: list[str] = []
    steady = 0
    while time.monotonic() < deadline:
        texts = [answers.nth(i).inner_text() for i in range(answers.count())]
        steady = steady + 1 if texts == last and len(texts) == 2 and all(t.strip() for t in texts) else 0
        if steady >= 4:
            return texts
        last = texts
        page.wait_for_timeout(500)
    raise AssertionError(f"two settled answers did not appear: {last}")


@pytest.fixture(scope="module")
def on_demand(
    engine: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Stack, dict[str, Any]]]:
    """The same two GGUF models on a host whose RAM holds one of them at a time."""
    need(Q8.is_file(), f"the second GGUF {Q8} is missing (scripts/provision/provision.sh model-second)")
    folder = tmp_path_factory.mktemp("several-on-demand")
    stack = make_stack(folder, "e2e-mmr-ondemand", *ON_DEMAND_PORTS)
    small = host_file(folder, SMALL_HOST_MIB)
    args = ("--host", str(small), *TWO_GGUF)
    with several_running(stack, engine, *args) as up:
        yield stack, up


# RAM that leaves 452 MiB after the 2 GiB kept for Open WebUI and the OS: the two models need 772 MiB together
# even with 2 slots each, one of them 399 MiB, so the planner serves them on demand (--models-max 1).
SMALL_HOST_MIB = 2500


def test_two_models_on_a_budget_for_one_swap_on_demand_and_each_answers(
    on_demand: tuple[Stack, dict[str, Any]],
) -> None:
    stack, up = on_demand
    served = {row["model"]: row["served"] for row in up["models"]}
    default, second = served
    assert served == {default: "loaded at start", second: "on demand"}
    first = up["models"][1]
    assert first["detail"].startswith("loaded on demand and answered")
    print(f"up: {second}'s first answer, its load included, {first['first_answer_s']:.2f} s")
    plan = json.loads((stack.dir / "plan.json").read_text())
    packing = plan["stack"]["packing"]
    assert packing["mode"] == "on_demand" and packing["models_max"] == 1
    with ui_client(stack) as ui:
        ask(ui, default)  # warm: the default is loaded
        _, swap_to_second = ask(ui, second)
        assert listed(ui)[second].get("loaded") is True and listed(ui)[default].get("loaded") is False
        _, swap_back = ask(ui, default)
        _, warm = ask(ui, default)
    print(f"swap to {second}: {swap_to_second:.2f} s, back: {swap_back:.2f} s, warm answer {warm:.2f} s")
    states = {m["model"]: m["state"] for m in status(stack)["models"]}
    assert states == {default: "loaded", second: "unloaded"}


@pytest.fixture(scope="module")
def mixed(engine: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, dict[str, Any]]]:
    """vLLM's CPU build serving the FP16 folder beside llama.cpp serving the Q4_1 GGUF."""
    need("VLLM_CPU_IMAGE" in engine, "the vLLM CPU image is not built (scripts/provision/provision.sh vllm-cpu)")
    need(FP16_DIR.is_dir(), f"the FP16 model folder {FP16_DIR} is missing")
    stack = make_stack(tmp_path_factory.mktemp("several-mixed"), "e2e-mmr-mixed", *MIXED_PORTS)
    args = ("--profile", "cpu-vllm", "--model", "smollm2-fp16", "--model-file", str(FP16_DIR),
            "--model", Q4_ID, "--model-file", str(GGUF))  # fmt: skip
    with several_running(stack, engine, *args) as up:
        yield stack, up


def test_vllm_fp16_and_llamacpp_q4_in_one_stack_both_answer(mixed: tuple[Stack, dict[str, Any]]) -> None:
    stack, up = mixed
    backends = {row["model"]: row["service"] for row in up["models"]}
    assert len(backends) == 2
    with ui_client(stack) as ui:
        seen = listed(ui)
        assert set(backends) <= set(seen)
        for model in backends:
            ask(ui, model)
    rows = status(stack)["models"]
    for row in rows:
        print(f"{row['model']} on {row['service']}: planned {row['planned_bytes'] / 2**20:.0f} MiB, "
              f"container {(row['container_bytes'] or 0) / 2**20:.0f} MiB")  # fmt: skip
    assert all(row["state"] == "loaded" for row in rows)
