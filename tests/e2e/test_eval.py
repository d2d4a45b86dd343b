"""`deploykit eval` on the real engine: the llama.cpp demo stack answers HumanEval through its inference server
and through Open WebUI, its completions are checked in the sandbox, a GSM8K-format file is scored and compared
with the FP16 build of the same model on vLLM's CPU build (`make demo-vllm`'s stack), and a run killed midway
continues where it stopped."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from html import escape
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import ARTIFACTS, FP16_DIR, GGUF, MODEL_ID, ROOT, Stack, deploykit, make_stack, need, running

pytestmark = pytest.mark.e2e
# Arithmetic word problems in GSM8K's format (question; worked answer ending "#### N"), written for this test.
GSM8K_ITEMS = [
    ("Tom has 3 apples and buys 2 more. How many apples does he have now?", "3 + 2 = 5\n#### 5"),
    ("A box holds 12 eggs. How many eggs are in 2 boxes?", "12 * 2 = 24\n#### 24"),
    ("Sara had 10 pencils and gave away 4. How many pencils does she have left?", "10 - 4 = 6\n#### 6"),
    ("A ticket costs 7 dollars. How much do 3 tickets cost, in dollars?", "7 * 3 = 21\n#### 21"),
    ("There are 9 birds on a tree and 5 fly away. How many birds are left on the tree?", "9 - 5 = 4\n#### 4"),
    ("Mia reads 6 pages a day. How many pages does she read in 5 days?", "6 * 5 = 30\n#### 30"),
    ("A class has 14 girls and 13 boys. How many children are in the class?", "14 + 13 = 27\n#### 27"),
    ("Ben shares 20 sweets equally among 4 friends. How many sweets does each friend get?", "20 / 4 = 5\n#### 5"),
]


@pytest.fixture(scope="module")
def demo(engine: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = make_stack(tmp_path_factory.mktemp("evc"), "e2e-evc-demo", 38862, 38863)
    with running(stack, engine, "--profile", "cpu", "--model", MODEL_ID, "--model-file", str(GGUF)):
        yield stack


@pytest.fixture(scope="module")
def fp16(engine: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The same model in FP16 on vLLM's CPU build: what Q4 is compared with."""
    need("VLLM_CPU_IMAGE" in engine, "the offline vLLM CPU image is not built (scripts/provision/image-vllm.sh)")
    need((FP16_DIR / "config.json").is_file(), f"the FP16 model {FP16_DIR} is missing (model-smollm2-fp16.sh)")
    stack = make_stack(tmp_path_factory.mktemp("evc"), "e2e-evc-fp16", 38864, 38865)
    args = ("--profile", "cpu-vllm", "--model", MODEL_ID, "--model-file", str(FP16_DIR))
    with running(stack, engine, *args, backend_image="VLLM_CPU_IMAGE"):
        yield stack


def gsm8k_file(folder: Path) -> Path:
    path = folder / "gsm8k-mini.jsonl"
    path.write_text("".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a in GSM8K_ITEMS))
    return path


def eval_json(stack: Stack, *args: str) -> dict[str, Any]:
    result = deploykit("eval", "--dir", str(stack.dir), *args, "--json", env=stack.env, timeout=1800)
    assert result.code == 0, result.err
    report = result.json
    assert isinstance(report, dict)
    return report


def agrees(stack_report: dict[str, Any], items: int) -> None:
    """The figures are the per-item outcomes counted."""
    m, outcomes = stack_report["metrics"], stack_report["outcomes"]
    rows = [o for item in outcomes for o in item["outcomes"]]
    assert len(outcomes) == m["items"] == items
    assert m["passed"] == sum(item["passed"] for item in outcomes) == sum(o["passed"] for o in rows)
    assert m["pass@1"] == pytest.approx(m["passed"] / len(rows))
    assert m["cut_by_length"] == sum(o["finish_reason"] == "length" for o in rows)
    assert m["errors"] == sum(bool(o["error"]) for o in rows) == 0
    assert m["ci95"][0] <= m["pass@1"] <= m["ci95"][1]
    assert all(o["reason"] for o in rows)


def record(name: str, report: dict[str, Any]) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / f"eval-{name}.json").write_text(json.dumps(report, indent=1))


def test_humaneval_via_the_inference_server(demo: Stack) -> None:
    report = eval_json(demo, "--suite", "humaneval", "--limit", "10", "--max-tokens", "256")
    record("humaneval-inference", report)
    stack = report["stacks"][0]
    agrees(stack, 10)
    assert [o["key"] for o in stack["outcomes"]] == [f"HumanEval/{i}" for i in range(10)]
    # Each reason is the sandbox's: a pass, or why the program failed (never "not checked").
    assert all(o["reason"] == "passed" or o["reason"].startswith(("failed", "timed out", "crashed", "output"))
               for item in stack["outcomes"] for o in item["outcomes"])  # fmt: skip
    store = Path(stack["store"])
    assert store.parent == demo.dir / "eval" and store.is_file()
    # The same settings again: read back from the store, the same outcomes, nothing asked or checked anew.
    lines = store.read_text().count("\n")
    again = eval_json(demo, "--suite", "humaneval", "--limit", "10", "--max-tokens", "256")["stacks"][0]
    assert again["outcomes"] == stack["outcomes"] and store.read_text().count("\n") == lines


def test_humaneval_via_open_webui(demo: Stack) -> None:
    report = eval_json(demo, "--suite", "humaneval", "--limit", "10", "--max-tokens", "128", "--via", "open-webui")
    record("humaneval-open-webui", report)
    stack = report["stacks"][0]
    agrees(stack, 10)
    assert stack["via"] == "open-webui" and stack["url"].endswith("/api/chat/completions")


def test_an_interrupted_run_continues(demo: Stack, tmp_path: Path) -> None:
    data = gsm8k_file(tmp_path)
    args = ["eval", "--dir", str(demo.dir), "--dataset", str(data), "--max-tokens", "48", "--json"]
    run = subprocess.Popen(
        [sys.executable, "-m", "deploykit", *args],
        env=dict(os.environ) | demo.env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    answered: list[str] = []
    try:
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline and run.poll() is None:
            stores = list((demo.dir / "eval").glob("*.jsonl"))
            rows = [json.loads(x) for s in stores for x in s.read_text().splitlines() if x.endswith("}")]
            answered = [
                r["key"] for r in rows if r["key"].startswith("line-") and "content" in r and not r.get("error")
            ]
            if answered:
                break
            time.sleep(0.5)
    finally:
        run.send_signal(signal.SIGKILL)
        run.wait()
    assert 0 < len(answered) < len(GSM8K_ITEMS), "the run was not stopped midway"
    report = eval_json(demo, "--dataset", str(data), "--max-tokens", "48")
    stack = report["stacks"][0]
    agrees(stack, len(GSM8K_ITEMS))
    # Every item was asked once in all: the second run asked only what the first had not answered.
    rows = [json.loads(x) for x in Path(stack["store"]).read_text().splitlines() if x.endswith("}")]
    asked = [r["key"] for r in rows if "content" in r]
    assert sorted(asked) == sorted(f"line-{i}#0" for i in range(1, len(GSM8K_ITEMS) + 1))


def test_a_dataset_compared_with_the_fp16_stack(demo: Stack, fp16: Stack, tmp_path: Path) -> None:
    data = gsm8k_file(tmp_path)
    page = tmp_path / "report.html"
    report = eval_json(demo, "--dataset", str(data), "--max-tokens", "48", "--compare", str(fp16.dir), "--report",
                       str(page))  # fmt: skip
    record("gsm8k-compare", report)
    first, second = report["stacks"]
    agrees(first, len(GSM8K_ITEMS))
    agrees(second, len(GSM8K_ITEMS))
    assert (first["project"], second["project"]) == (demo.project, fp16.project)
    assert (first["backend"], second["backend"]) == ("llamacpp", "vllm")
    c = report["compare"]
    assert c["both"] + c["neither"] + c["only_first"] + c["only_second"] == c["items"] == len(GSM8K_ITEMS)
    pairs = zip(first["outcomes"], second["outcomes"], strict=True)
    assert c["only_first"] == sum(bool(a["passed"] and not b["passed"]) for a, b in pairs)
    assert 0 < c["p_value"] <= 1 and c["exceeds_noise"] == (c["p_value"] < 0.05)
    html = page.read_text()
    assert all(f"{key}#0" in html for key in (o["key"] for o in first["outcomes"]))
    for o in first["outcomes"]:  # every answer on the page is escaped text
        assert escape(o["outcomes"][0]["text"][:2000]) in html
