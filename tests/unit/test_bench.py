"""bench's statistics and tune's choices on fixed numbers; the per-stack settings file."""

from __future__ import annotations

import re
import tomllib
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from click.testing import CliRunner

from deploykit.app.measure import (
    Candidate,
    candidates,
    leaders,
    mean_score,
    parallel_choices,
    pick,
    score,
    thread_choices,
)
from deploykit.backends import named
from deploykit.cli import cli
from deploykit.config.settings import load_settings, write_stack_settings
from deploykit.running.bench import (
    RequestResult,
    chart_html,
    compare_counters,
    make_prompt,
    new_run,
    parse_prometheus,
    percentile,
    summarize,
)
from deploykit.values.errors import ConfigError


def test_percentile_interpolates_like_numpy() -> None:
    values = [10.0, 20.0, 30.0, 40.0, 100.0]
    # numpy.percentile(values, [50, 95, 99]) == [30., 88., 97.6]
    assert percentile(values, 50) == 30.0
    assert percentile(values, 95) == pytest.approx(88.0)
    assert percentile(values, 99) == pytest.approx(97.6)
    assert percentile([5.0], 99) == 5.0
    assert percentile([], 50) == 0.0


def _req(latency: float, ttft: float, out: int, prompt: int = 100) -> RequestResult:
    gap = (latency - ttft) / (out - 1)
    return RequestResult(True, latency, ttft, [gap] * (out - 1), prompt, out)


def test_summarize_uses_vllm_names_and_definitions() -> None:
    results = [_req(2.0, 0.2, 10), _req(3.0, 0.3, 10), RequestResult(False, 0.1, error="HTTP 500")]
    m = summarize(results, duration=4.0)
    assert m["completed"] == 2 and m["failed"] == 1
    assert m["total_input_tokens"] == 200 and m["total_output_tokens"] == 20
    assert m["request_throughput"] == 0.5
    assert m["output_throughput"] == 5.0
    assert m["total_token_throughput"] == 55.0
    assert m["mean_ttft_ms"] == pytest.approx(250.0)
    assert m["median_ttft_ms"] == pytest.approx(250.0)
    # TPOT excludes the first token: (2.0 - 0.2) / 9 = 200 ms, (3.0 - 0.3) / 9 = 300 ms
    assert m["mean_tpot_ms"] == pytest.approx(250.0)
    assert m["p99_tpot_ms"] == pytest.approx(299.0)
    assert m["mean_itl_ms"] == pytest.approx(250.0)
    assert m["output_throughput_per_request"] == pytest.approx((10 / 2 + 10 / 3) / 2)
    assert m["mean_e2el_ms"] == pytest.approx(2500.0)


def test_summarize_with_no_success_is_zeros() -> None:
    m = summarize([RequestResult(False, 1.0, error="x")], 1.0)
    assert m["completed"] == 0 and m["output_throughput"] == 0 and m["mean_ttft_ms"] == 0


LLAMA_METRICS = """# HELP llamacpp:prompt_tokens_total Number of prompt tokens processed.
# TYPE llamacpp:prompt_tokens_total counter
llamacpp:prompt_tokens_total 300
llamacpp:prompt_seconds_total {seconds}
llamacpp:tokens_predicted_total {predicted}
llamacpp:tokens_predicted_seconds_total {seconds}
"""
VLLM_METRICS = """vllm:generation_tokens_total{engine="0",model_name="m"} 7.0
vllm:generation_tokens_total{engine="1",model_name="m"} 3.0
vllm:prompt_tokens_total{engine="0",model_name="m"} 5.0
"""


def test_parse_prometheus_sums_label_sets() -> None:
    parsed = parse_prometheus(VLLM_METRICS)
    assert parsed["vllm:generation_tokens_total"] == 10.0
    assert parsed["vllm:prompt_tokens_total"] == 5.0


def test_counters_agree_with_our_counts() -> None:
    before = parse_prometheus(LLAMA_METRICS.format(predicted=100, seconds=1.0))
    after = parse_prometheus(LLAMA_METRICS.format(predicted=120, seconds=3.0))
    check = compare_counters([_req(2.0, 0.2, 10), _req(2.0, 0.2, 10)], before, after, named("llamacpp").metrics)
    assert check["server_output_tokens"] == 20
    assert check["output_tokens_ratio"] == 1.0
    assert check["server_decode_tokens_per_s"] == 10.0
    assert check["decode_tokens_per_s"] == pytest.approx(20 / 3.6)  # tokens over first-to-last-token time
    assert check["server_request_tokens_per_s"] == 5.0  # 20 tokens over 2 s of prompt + 2 s of generation
    assert check["request_tokens_per_s"] == 5.0  # 20 tokens over 4 s of latency
    assert check["request_speed_ratio"] == 1.0
    assert compare_counters([], {}, {}, named("vllm").metrics) == {"available": False}


def test_prompts_differ_and_have_the_asked_length() -> None:
    a, b = make_prompt(0, 50), make_prompt(1, 50)
    assert a != b and make_prompt(0, 50) == a
    assert len(a.split()) == 50 + 5
    # Each load's prompts are its own: a server's prompt cache from an earlier load cannot shorten them.
    first, second = make_prompt(0, 50, new_run()), make_prompt(0, 50, new_run())
    assert first != second and first.split()[1] != second.split()[1]


def test_chart_is_self_contained_svg() -> None:
    levels = [
        {"concurrency": c, "metrics": {"output_throughput": t, "output_throughput_per_request": t / c,
                                       "median_ttft_ms": 50.0 * c, "p99_ttft_ms": 80.0 * c}}
        for c, t in ((1, 100.0), (4, 150.0))
    ]  # fmt: skip
    html = chart_html({"a <b>": levels, "b": levels}, "bench")
    assert "<script" not in html and "http" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "")
    svgs = re.findall(r"<svg.*?</svg>", html, re.S)
    assert len(svgs) == 4
    for svg in svgs:
        ET.fromstring(svg)  # well-formed
    assert "a &lt;b&gt;" in html


def test_thread_and_parallel_choices() -> None:
    assert thread_choices(2, 4) == [1, 2, 4]
    assert thread_choices(16, 8) == [8, 16]
    assert parallel_choices(1, 1) == [1, 2]
    assert parallel_choices(4, 1) == [1, 2, 4]
    assert parallel_choices(8, 1) == [1, 2, 4, 8]
    assert parallel_choices(1, 6) == [1, 2, 6]


def test_candidates_start_with_the_current_setting() -> None:
    grid = candidates(Candidate(4, 1), cpus=2, concurrency=4)
    assert grid[0] == Candidate(4, 1)
    assert len(grid) == len(set(grid)) == 9
    assert candidates(Candidate(2, 1), 2, 1, threads=[2], parallel=[1, 2]) == [Candidate(2, 1), Candidate(2, 2)]


def test_pick_takes_the_highest_score_and_skips_failures() -> None:
    ok = summarize([_req(1.0, 0.1, 10)], 1.0)
    fast = summarize([_req(1.0, 0.1, 10), _req(1.0, 0.1, 10)], 1.0)
    failed = summarize([_req(1.0, 0.1, 10), RequestResult(False, 1.0, error="x")], 0.1)
    scored = [(Candidate(4, 1), score(ok)), (Candidate(2, 2), score(fast)), (Candidate(1, 1), score(failed))]
    assert pick([*scored, (Candidate(2, 4), 0.0)]) == (Candidate(2, 2), 20.0)
    assert pick([(Candidate(1, 1), 0.0)]) is None
    # a tie keeps the one measured first: the current setting
    assert pick([(Candidate(4, 1), 10.0), (Candidate(2, 1), 10.0)]) == (Candidate(4, 1), 10.0)


def test_leaders_close_to_the_best_are_measured_again_and_averaged() -> None:
    assert leaders([54.4, 42.9, 47.9, 53.3, 53.4, 51.9]) == [0, 3, 4, 5]
    assert leaders([100.0, 50.0]) == []  # a clear winner needs no second run
    assert leaders([0.0, 0.0]) == []
    ok = summarize([_req(1.0, 0.1, 10)], 1.0)
    assert mean_score([ok, None]) == score(ok) / 2  # a failed second run counts as 0
    assert mean_score([ok, ok]) == score(ok)


# ---------------------------------------------------------------- the stack's deploykit.toml


def test_stack_file_sits_between_config_file_and_environment(
    tmp_path: Path, isolated_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = isolated_home / "config" / "deploykit"
    config.mkdir(parents=True)
    (config / "config.toml").write_text("parallel = 3\nthreads = 8\nmax_context = 2048\n")
    write_stack_settings(tmp_path, {"threads": 2, "parallel": 4})
    s = load_settings(stack_dir=tmp_path)
    assert (s.threads, s.parallel, s.max_context) == (2, 4, 2048)
    assert load_settings().threads == 8  # without the stack, only the config file
    monkeypatch.setenv("DEPLOYKIT_THREADS", "1")
    assert load_settings(stack_dir=tmp_path).threads == 1
    assert load_settings(stack_dir=tmp_path, threads=3).threads == 3
    assert s.plan_settings().threads == 2


def test_write_stack_settings_keeps_other_keys_and_comments(tmp_path: Path) -> None:
    path = tmp_path / "deploykit.toml"
    path.write_text('# mine\nmax_context = 2048\nthreads = 9\n\n[images]\nopen_webui = "mirror/ow:v1"\n')
    write_stack_settings(tmp_path, {"threads": 2, "parallel": 4})
    text = path.read_text()
    assert text.startswith("# mine\n")
    assert tomllib.loads(text) == {
        "max_context": 2048,
        "threads": 2,
        "parallel": 4,
        "images": {"open_webui": "mirror/ow:v1"},
    }


def test_a_broken_stack_file_is_named(tmp_path: Path) -> None:
    (tmp_path / "deploykit.toml").write_text("threads = = 2\n")
    with pytest.raises(ConfigError, match=re.escape(str(tmp_path / "deploykit.toml"))):
        load_settings(stack_dir=tmp_path)
    (tmp_path / "deploykit.toml").write_text("threads = 0\n")
    with pytest.raises(ConfigError, match="threads"):
        load_settings(stack_dir=tmp_path)


def test_render_keeps_the_stack_file_settings(tmp_path: Path) -> None:
    stack = tmp_path / "s"
    stack.mkdir()
    write_stack_settings(stack, {"threads": 3, "parallel": 2})
    runner = CliRunner()
    result = runner.invoke(cli, ["render", "--profile", "cpu", "--model", "smollm2-135m-instruct", "--dir", str(stack)])
    assert result.exit_code == 0, result.output
    compose = (stack / "compose.yaml").read_text()
    assert '"-t"\n      - "3"' in compose
    assert '"-np"\n      - "2"' in compose


def test_bench_and_tune_refuse_bad_input(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(cli, ["bench", "--dir", str(tmp_path), "--concurrency", "1,x"])
    assert result.exit_code == 2
    assert "--concurrency '1,x'" in result.output
    result = runner.invoke(cli, ["tune", "--dir", str(tmp_path), "--workload", "chat", "--concurrency", "2"])
    assert result.exit_code == 2
    result = runner.invoke(cli, ["bench", "--dir", str(tmp_path / "none")])
    assert result.exit_code == 3
    assert "no deploykit stack" in result.output


def test_replan_reproduces_the_stack_and_changes_only_the_knobs(tmp_path: Path) -> None:
    from deploykit.app.measure import replan_files
    from deploykit.running.stack import load_stack
    from tests.unit.conftest import ROOT

    gguf = ROOT / "tests" / "fixtures" / "gguf"
    model_file = next(iter(sorted(gguf.glob("*.gguf"))), None)
    stack_dir = tmp_path / "s"
    args = ["render", "--profile", "cpu", "--model", "smollm2-135m-instruct", "--dir", str(stack_dir)]
    if model_file is not None:
        args += ["--model-file", str(model_file)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    before = {n: (stack_dir / n).read_text() for n in ("compose.yaml", ".env", "plan.json")}
    stack = load_stack(stack_dir)
    _, same = replan_files(stack)
    assert same == before  # nothing asked, nothing changes: tune does not churn the stack
    plan, files = replan_files(stack, threads=2, parallel=4)
    assert (plan.threads, plan.parallel) == (2, 4)
    assert files[".env"] == before[".env"]
    assert '"-t"\n      - "2"' in files["compose.yaml"] and '"-np"\n      - "4"' in files["compose.yaml"]
