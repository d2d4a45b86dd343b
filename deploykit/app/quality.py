"""`deploykit eval`: how good a deployed model's answers are, on HumanEval (completions checked in the sandbox)
or a question-and-answer file (GSM8K, MATH, plain), with pass@1 and its 95 % interval, per-item outcomes, and
a second stack compared on the same items with an exact paired test.

The items are read and checked before any stack is touched; each stack's answers are kept in its folder
(``eval/<settings hash>.jsonl``) as they come, so a run continues where an interrupted one stopped and a
finished one is read back at once.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deploykit.app.resolve import engine_for
from deploykit.config.settings import Settings
from deploykit.quality.datasets import Item, is_correct, parse_dataset, predicted
from deploykit.quality.humaneval import CodeProblem, check_program, humaneval_problems, pass_at_k
from deploykit.quality.scoring import code_completion, final_answer, paired_sign_test, wilson_interval
from deploykit.values.errors import HealthError, UsageError

if TYPE_CHECKING:
    from deploykit.running.evaluation import Question, ResultStore, Sampling
    from deploykit.running.stack import LoadedStack
    from deploykit.values.plan import DeploymentPlan

SUITES = ("humaneval",)
STORE_FOLDER = "eval"  # in the stack folder: one file of results per settings
PROMPT_VERSION = 1  # part of the settings hash: a change to how questions are asked starts afresh
MAX_DATASET_BYTES = 256 << 20
CODE_MAX_TOKENS = 512
MATH_MAX_TOKENS = 1024
ANSWER_ROOM = 1024  # tokens of context kept for the question when the answer's budget is cut to fit
SIGNIFICANCE = 0.05
CHECK_TIMEOUT_S = 10.0
CODE_INSTRUCTION = (
    "Complete the following Python function. Answer with the whole function, in one ```python code block.\n\n"
)

Progress = Callable[[str, int, int], None]  # (what, done, total)


@dataclass(frozen=True)
class EvalItems:
    """What is asked: a suite's problems or a file's items, ``--limit`` applied; ``digest`` names the data."""

    name: str  # "humaneval", or the file's format ("gsm8k", "math", "plain")
    source: str  # "humaneval" or the file's path
    digest: str
    problems: tuple[CodeProblem, ...] = ()
    items: tuple[Item, ...] = ()

    @property
    def keys(self) -> list[str]:
        return [p.task_id for p in self.problems] or [i.key for i in self.items]


@dataclass(frozen=True)
class EvalRequest:
    suite: str | None
    dataset: Path | None
    limit: int | None
    samples: int
    via: str
    max_tokens: int | None


def eval_items(request: EvalRequest) -> EvalItems:
    """The items to ask, read and checked: a bad data set is refused here, before any stack is touched."""
    from deploykit.seams import textfile

    if request.suite and request.dataset:
        raise UsageError("--suite and --dataset both say what to ask.", "Give one of them.")
    if request.dataset is not None:
        path = request.dataset
        hint = "Give a JSON Lines file of GSM8K (question, answer), MATH (problem, answer) or prompt/answer items."
        text = textfile.read_text(path, "--dataset file", hint, limit=MAX_DATASET_BYTES)
        name, items = parse_dataset(text, f"--dataset file {path}")
        digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
        return EvalItems(name, str(path), digest, items=tuple(items[: request.limit]))
    suite = request.suite or "humaneval"
    if suite not in SUITES:
        raise UsageError(f"suite {suite!r} is not known.", f"Known suites: {', '.join(SUITES)}.")
    problems = humaneval_problems()
    digest = hashlib.sha256("".join(p.task_id + p.prompt + p.test for p in problems).encode()).hexdigest()
    return EvalItems(suite, suite, digest, problems=tuple(problems[: request.limit]))


def _model_plan(stack: LoadedStack, served_id: str) -> DeploymentPlan:
    """The plan of the model served as ``served_id``: in a stack of several, its own (its catalog id, its
    context), else the stack's one plan."""
    several = stack.spec.stack_plan
    if several is not None:
        for model in several.models:
            if model.model_id == served_id:
                return model.plan
    return stack.spec.plan


def _sampling(plan: DeploymentPlan, request: EvalRequest, items: EvalItems) -> tuple[Sampling, dict[str, Any]]:
    """What each request asks for: the model card's sampling where the catalog has it (R1 distills:
    temperature 0.6, top-p 0.95), else greedy for one sample and temperature 0.8 for several (Codex's
    pass@k setting); an answer budget that fits the stack's context."""
    from deploykit.catalog.loader import model_evaluation
    from deploykit.running.evaluation import Sampling

    card = model_evaluation(plan.model_id)
    default_tokens = CODE_MAX_TOKENS if items.problems else MATH_MAX_TOKENS
    wanted = request.max_tokens or int(card.get("max_tokens", default_tokens))
    context = plan.context_length
    budget = min(wanted, max(64, context - ANSWER_ROOM))
    temperature = float(card.get("temperature", 0.0 if request.samples == 1 else 0.8))
    top_p = float(card.get("top_p", 1.0 if request.samples == 1 else 0.95))
    return Sampling(budget, temperature, top_p), card


def _questions(items: EvalItems, samples: int) -> list[Question]:
    from deploykit.running.evaluation import Question

    prompts = [(p.task_id, CODE_INSTRUCTION + "```python\n" + p.prompt + "```") for p in items.problems]
    prompts += [(i.key, i.prompt) for i in items.items]
    # No system prompt: the R1 cards ask for none, and the same messages go to every model.
    return [
        Question(f"{key}#{s}", [{"role": "user", "content": text}]) for key, text in prompts for s in range(samples)
    ]


def settings_digest(items: EvalItems, request: EvalRequest, sampling: Sampling, model_id: str) -> str:
    """What the results of one run depend on; the same digest means the stored answers are these settings'."""
    settings = {
        "data": items.digest,
        "name": items.name,
        "samples": request.samples,
        "via": request.via,
        "model": model_id,
        "sampling": [sampling.max_tokens, sampling.temperature, sampling.top_p],
        "prompts": PROMPT_VERSION,
    }
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def eval_runs(dirs: list[Path], model_ids: tuple[str, ...]) -> list[tuple[Path, str | None]]:
    """What one `eval` asks: each --model on each stack (a second stack: the same names, or its default),
    two runs at most, since a comparison is between two."""
    runs: list[tuple[Path, str | None]] = [(d, m) for d in dirs for m in (model_ids or (None,))]
    hint = "Give two different --model names of one stack, or one stack and --compare with another."
    if len(set(model_ids)) < len(model_ids):
        raise UsageError("the same --model is given twice; a comparison is between two models.", hint)
    if len(runs) > 2:
        raise UsageError(f"eval compares two runs, and {len(runs)} were asked for.", hint)
    return runs


def eval_stack(
    settings: Settings,
    stack_dir: Path,
    request: EvalRequest,
    items: EvalItems,
    on: Progress,
    model_id: str | None = None,
) -> dict[str, Any]:
    """Ask one running stack's model (``model_id``; None: its default) every item it has not answered with
    these settings, check the answers, and return its figures and per-item outcomes as plain data."""
    from deploykit.app.measure import bench_target
    from deploykit.running.evaluation import ResultStore, ask_all
    from deploykit.running.stack import identity, load_stack

    stack = load_stack(stack_dir.expanduser().absolute())
    target = bench_target(stack, request.via, model_id)  # an unknown model is refused here, naming the served
    plan = _model_plan(stack, target.model)
    sampling, card = _sampling(plan, request, items)
    digest = settings_digest(items, request, sampling, target.model)
    store = ResultStore(stack.dir / STORE_FOLDER / f"{digest}.jsonl")
    questions = _questions(items, request.samples)
    done = sum(1 for q in questions if "content" in store.get(q.key) and not store.get(q.key).get("error"))
    counter = _Counter("answers " + stack.dir.name, done, len(questions), on)
    ask_all(target, questions, sampling, store, concurrency=plan.parallel, on_reply=counter.step)
    replies = [store.get(q.key) for q in questions]
    if replies and all(r.get("error") for r in replies):
        raise HealthError(
            f"{stack.spec.project} answered none of the {len(replies)} questions through {request.via}: "
            f"{replies[0]['error']}.",
            f"Check `deploykit status --dir {stack.dir}`; the run continues where it stopped once it answers.",
        )
    if items.problems:
        _check_code(settings, stack, items, request.samples, store, on)
    outcomes = _outcomes(items, request.samples, store)
    return {
        **identity(stack),
        "model": target.model,
        "via": request.via,
        "url": target.base_url + target.path,
        "store": str(store.path),
        "sampling": {"max_tokens": sampling.max_tokens, "temperature": sampling.temperature, "top_p": sampling.top_p},
        "metrics": metrics(outcomes, request.samples),
        "published": {"figures": card["published"], "source": card.get("source", "")} if "published" in card else {},
        "outcomes": outcomes,
    }


class _Counter:
    def __init__(self, what: str, done: int, total: int, on: Progress) -> None:
        self.what, self.done, self.total, self.on = what, done, total, on
        on(what, done, total)

    def step(self, _key: str) -> None:
        self.done += 1
        self.on(self.what, self.done, self.total)


def _check_code(
    settings: Settings, stack: LoadedStack, items: EvalItems, samples: int, store: ResultStore, on: Progress
) -> None:
    """Every completion without an outcome checked in the sandbox; each outcome kept as it comes."""
    from deploykit.running.sandbox import CheckOutcome, CodeCheck, check_programs, sandbox_image

    checks = []
    for problem in items.problems:
        for s in range(samples):
            row = store.get(f"{problem.task_id}#{s}")
            if row.get("error") or row.get("passed") is not None:
                continue
            answer = final_answer(row.get("content", ""), row.get("reasoning", ""))
            completion = code_completion(problem.prompt, problem.entry_point, answer)
            checks.append(CodeCheck(f"{problem.task_id}#{s}", check_program(problem, completion), CHECK_TIMEOUT_S))
    if not checks:
        return
    counter = _Counter("checks " + stack.dir.name, 0, len(checks), on)

    def keep(outcome: CheckOutcome) -> None:
        store.add(outcome.key, passed=outcome.passed, reason=outcome.reason)
        counter.step(outcome.key)

    check_programs(
        engine_for(settings),
        sandbox_image(stack),
        checks,
        project=stack.spec.project,
        on_outcome=keep,
    )


def _outcomes(items: EvalItems, samples: int, store: ResultStore) -> list[dict[str, Any]]:
    by_key = {i.key: i for i in items.items}
    out = []
    for key in items.keys:
        rows = []
        for s in range(samples):
            row = store.get(f"{key}#{s}")
            error = str(row.get("error") or "")
            outcome: dict[str, Any] = {"finish_reason": row.get("finish_reason", ""), "error": error}
            if key in by_key:
                item = by_key[key]
                answer = None if error else predicted(item, row.get("content", ""), row.get("reasoning", ""))
                outcome |= {"answer": answer, "reference": item.reference}
                outcome["passed"] = not error and is_correct(item, answer)
                outcome["reason"] = f"error: {error}" if error else ("passed" if outcome["passed"] else "wrong answer")
            else:
                outcome["passed"] = bool(row.get("passed")) and not error
                outcome["reason"] = f"error: {error}" if error else str(row.get("reason") or "not checked")
            outcome["text"] = str(row.get("content", ""))
            rows.append(outcome)
        out.append({"key": key, "samples": samples, "passed": sum(r["passed"] for r in rows), "outcomes": rows})
    return out


def metrics(outcomes: list[dict[str, Any]], samples: int) -> dict[str, Any]:
    """pass@1 (and pass@k for k = samples) over the items, the 95 % Wilson interval of the pass rate, and the
    answers cut off by the token budget and the errors (both counted as failed)."""
    n_items = len(outcomes)
    total = n_items * samples
    passed = sum(o["passed"] for o in outcomes)
    rows = [r for o in outcomes for r in o["outcomes"]]
    low, high = wilson_interval(passed, total)
    figures: dict[str, Any] = {
        "items": n_items,
        "samples": total,
        "passed": passed,
        "pass@1": sum(pass_at_k(samples, o["passed"], 1) for o in outcomes) / n_items if n_items else 0.0,
        "ci95": [low, high],
        "cut_by_length": sum(1 for r in rows if r["finish_reason"] == "length"),
        "errors": sum(1 for r in rows if r["error"]),
    }
    if samples > 1:
        figures[f"pass@{samples}"] = sum(pass_at_k(samples, o["passed"], samples) for o in outcomes) / n_items
    return figures


def compare(first: dict[str, Any], second: dict[str, Any]) -> dict[str, Any]:
    """The two stacks on the same items, paired on each item's first sample: the difference in pass rate and
    McNemar's exact test on the items only one of them passed."""
    a = {o["key"]: o["outcomes"][0]["passed"] for o in first["outcomes"]}
    b = {o["key"]: o["outcomes"][0]["passed"] for o in second["outcomes"]}
    keys = [k for k in a if k in b]
    only_first = sum(1 for k in keys if a[k] and not b[k])
    only_second = sum(1 for k in keys if b[k] and not a[k])
    p_value = paired_sign_test(only_first, only_second)
    n = len(keys)
    return {
        "items": n,
        "both": sum(1 for k in keys if a[k] and b[k]),
        "neither": sum(1 for k in keys if not a[k] and not b[k]),
        "only_first": only_first,
        "only_second": only_second,
        "difference": (only_first - only_second) / n if n else 0.0,
        "test": "McNemar exact (two-sided sign test on the discordant items)",
        "p_value": p_value,
        "exceeds_noise": p_value < SIGNIFICANCE,
    }


def eval_report(
    items: EvalItems, request: EvalRequest, stacks: list[dict[str, Any]], command: str, html: Path | None
) -> dict[str, Any]:
    """The whole `eval` result; with ``html`` also written as a self-contained page."""
    from datetime import UTC, datetime

    report: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": command,
        "data": {"name": items.name, "source": items.source, "items": len(items.keys), "limit": request.limit},
        "samples": request.samples,
        "stacks": stacks,
    }
    if len(stacks) == 2:
        report["compare"] = compare(stacks[0], stacks[1])
    if html is not None:
        from deploykit.quality.report import report_html

        html.write_text(report_html(report), encoding="utf-8")
        report["report"] = str(html.absolute())
    return report


def check_report(path: Path) -> None:
    """Refuse a --report path the page could not be written to, before anything is asked."""
    from deploykit.seams.textfile import check_writable

    check_writable(path, "--report file", "Give the path of a new or regular .html file.", UsageError)
