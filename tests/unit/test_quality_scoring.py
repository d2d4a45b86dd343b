"""`deploykit eval`'s scoring: answers taken out of replies, math answers compared, data-set files read,
the interval and the paired test against their textbook values, the results store and the HTML report."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from deploykit.app.quality import compare, metrics
from deploykit.quality.datasets import Item, is_correct, parse_dataset, predicted
from deploykit.quality.humaneval import humaneval_problems
from deploykit.quality.report import report_html
from deploykit.quality.scoring import (
    code_completion,
    final_answer,
    last_boxed,
    last_number,
    math_equal,
    normalise_math,
    paired_sign_test,
    wilson_interval,
)
from deploykit.values.errors import UsageError


def test_the_answer_is_what_follows_the_thinking() -> None:
    assert final_answer("<think>it is 3, no 4</think>\nThe answer is 5.") == "The answer is 5."
    assert final_answer("The answer is 5.", "thinking about it") == "The answer is 5."
    # A reply cut off while thinking has no text: its reasoning_content is what there is.
    assert final_answer("", "so the total is \\boxed{12}") == "so the total is \\boxed{12}"


def test_boxed_and_numbers_are_found_last_first() -> None:
    assert last_boxed("\\boxed{1} then \\boxed{\\frac{1}{2}}.") == "\\frac{1}{2}"
    assert last_boxed("x = \\boxed{\\left(3, \\frac{\\pi}{2}\\right)}") == "\\left(3, \\frac{\\pi}{2}\\right)"
    assert last_boxed("\\boxed 5") == "5"
    assert last_boxed("no box") is None
    assert last_number("She pays $1,234.50 then 7 more") == "7"
    assert last_number("no figures") is None


@pytest.mark.parametrize(
    ("ours", "reference"),
    [
        ("\\dfrac{1}{2}", "0.5"),
        ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3,\\frac{\\pi}{2})"),
        ("1,000", "1000"),
        ("x = 5", "5"),
        ("10\\%", "10"),
        ("90^\\circ", "90"),
        ("\\text{(B)}", "(B)"),
        ("$18", "18"),
    ],
)
def test_math_answers_in_other_spellings_are_equal(ours: str, reference: str) -> None:
    assert math_equal(ours, reference)


def test_different_math_answers_are_not_equal() -> None:
    assert not math_equal("\\frac{1}{3}", "0.3")
    assert not math_equal("(1,2)", "(2,1)")
    assert normalise_math("\\left(1, 2\\right)") == "(1,2)"


def test_gsm8k_math_and_plain_files_are_read() -> None:
    gsm = '{"question": "How many?", "answer": "2 + 2 = 4\\n#### 4"}\n\n{"question": "And?", "answer": "#### 1,200"}\n'
    name, items = parse_dataset(gsm, "g")
    assert name == "gsm8k" and [i.reference for i in items] == ["4", "1,200"] and items[1].key == "line-3"
    assert all(i.scoring == "numeric" and "\\boxed{}" in i.prompt for i in items)
    math_file = '{"problem": "p", "solution": "so \\\\boxed{\\\\frac{2}{3}}", "unique_id": "test/a/1.json"}\n'
    name, items = parse_dataset(math_file, "m")
    assert (name, items[0].reference, items[0].key) == ("math", "\\frac{2}{3}", "test/a/1.json")
    name, items = parse_dataset('{"prompt": "Capital of France?", "answer": "Paris"}\n', "p")
    assert (name, items[0].scoring) == ("plain", "exact")


def test_replies_are_scored_against_the_reference() -> None:
    gsm = Item("a", "q", "1200", "numeric")
    assert is_correct(gsm, predicted(gsm, "They pay 1,200 dollars."))
    assert is_correct(gsm, predicted(gsm, "<think>1000?</think> \\boxed{1200}"))
    assert not is_correct(gsm, predicted(gsm, "It is 1100."))
    assert not is_correct(gsm, predicted(gsm, "I do not know."))
    math_item = Item("b", "q", "\\frac{1}{2}", "math")
    assert is_correct(math_item, predicted(math_item, "so \\boxed{0.5}"))
    assert not is_correct(math_item, predicted(math_item, "0.5"))  # MATH asks for a box; none is no answer
    plain = Item("c", "q", "Paris", "exact")
    assert is_correct(plain, predicted(plain, " paris "))


def test_a_bad_line_is_named() -> None:
    with pytest.raises(UsageError, match=r"line 2 of f is not JSON"):
        parse_dataset('{"prompt": "p", "answer": "1"}\n{oops\n', "f")
    with pytest.raises(UsageError, match=r"same id"):
        parse_dataset('{"id": 1, "prompt": "p", "answer": "1"}\n{"id": 1, "prompt": "q", "answer": "2"}\n', "f")


def test_code_is_taken_from_a_chat_answer() -> None:
    problem = humaneval_problems()[0]  # has_close_elements
    whole = (
        "Here:\n```python\nfrom typing import List\n\ndef has_close_elements(numbers, threshold):\n    return 1\n```"
    )
    assert code_completion(problem.prompt, problem.entry_point, whole).startswith("\nfrom typing import List\n")
    body = "```python\nfor a in numbers:\n    pass\nreturn False\n```"
    assert (
        code_completion(problem.prompt, problem.entry_point, body)
        == "    for a in numbers:\n        pass\n    return False"
    )
    assert code_completion(problem.prompt, problem.entry_point, "    return True") == "    return True"


def test_the_wilson_interval_matches_its_formula() -> None:
    low, high = wilson_interval(8, 10)
    # Wilson (1927) with z = 1.96: 0.4902 to 0.9433 for 8 of 10.
    assert (round(low, 4), round(high, 4)) == (0.4902, 0.9433)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == pytest.approx(1.0)
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_the_paired_test_is_the_exact_binomial() -> None:
    assert paired_sign_test(0, 0) == 1.0
    assert paired_sign_test(6, 0) == pytest.approx(2 / 64)
    assert paired_sign_test(7, 2) == pytest.approx(2 * sum(math.comb(9, i) for i in range(3)) / 512)
    assert paired_sign_test(3, 3) == 1.0


def _stack(passes: list[bool], finish: str = "stop") -> dict[str, object]:
    outcomes = [
        {
            "key": f"k{i}",
            "samples": 1,
            "passed": int(p),
            "outcomes": [{"passed": p, "reason": "passed" if p else "failed", "finish_reason": finish, "error": ""}],
        }
        for i, p in enumerate(passes)
    ]
    return {"outcomes": outcomes}


def test_counts_agree_with_the_outcomes_and_the_comparison_is_paired() -> None:
    first, second = _stack([True, True, False, True]), _stack([False, True, False, False], finish="length")
    figures = metrics(first["outcomes"], 1)  # type: ignore[arg-type]
    assert (figures["items"], figures["passed"], figures["pass@1"], figures["cut_by_length"]) == (4, 3, 0.75, 0)
    assert metrics(second["outcomes"], 1)["cut_by_length"] == 4  # type: ignore[arg-type]
    result = compare(first, second)
    assert (result["both"], result["neither"], result["only_first"], result["only_second"]) == (1, 1, 2, 0)
    assert result["difference"] == 0.5 and result["p_value"] == 0.5 and not result["exceeds_noise"]


def test_pass_at_k_over_several_samples() -> None:
    outcomes = [
        {
            "key": "a",
            "samples": 4,
            "passed": 1,
            "outcomes": [{"passed": i == 0, "finish_reason": "", "error": ""} for i in range(4)],
        }
    ]
    figures = metrics(outcomes, 4)
    assert figures["pass@1"] == 0.25 and figures["pass@4"] == 1.0 and figures["samples"] == 4


def test_the_report_escapes_every_model_text(tmp_path: Path) -> None:
    stack = _stack([True])
    row = stack["outcomes"][0]["outcomes"][0]  # type: ignore[index]
    row |= {"text": "<script>alert(1)</script>", "answer": "<img src=x onerror=alert(1)>", "reason": "<u>"}
    stack |= {"project": "p<i>", "model": "m", "via": "inference", "published": {}}
    stack["metrics"] = metrics(stack["outcomes"], 1)  # type: ignore[arg-type]
    report = {"date": "d", "command": "c", "data": {"name": "n", "items": 1}, "samples": 1, "stacks": [stack]}
    page = report_html(report)
    assert "<script>" not in page and "<img" not in page and "<u>" not in page and "p<i>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    json.dumps(report)  # the same report is what --json prints


def test_the_store_survives_a_line_torn_by_a_kill(tmp_path: Path) -> None:
    from deploykit.running.evaluation import ResultStore

    path = tmp_path / "eval" / "x.jsonl"
    store = ResultStore(path)
    store.add("a#0", content="4", error="")
    store.add("a#0", passed=True, reason="passed")
    with path.open("a") as f:
        f.write('{"key": "b#0", "cont')  # the kill came mid-write
    again = ResultStore(path)
    assert again.get("a#0") == {"key": "a#0", "content": "4", "error": "", "passed": True, "reason": "passed"}
    assert again.get("b#0") == {}  # asked again
    again.add("c#0", content="5", error="")
    assert ResultStore(path).get("c#0")["content"] == "5"  # not swallowed by the torn line
