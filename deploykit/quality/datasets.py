"""Question-and-answer data sets a user gives `deploykit eval --dataset`, as JSON Lines: GSM8K
(``question``, ``answer`` ending ``#### N``), MATH / MATH-500 (``problem``, ``answer`` or a ``solution`` with
a ``\\boxed{}``), or plain ``prompt`` + ``answer``. Pure: the file's text in, items out; a file that is none
of these is refused with the line that is not."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal

from deploykit.quality.scoring import as_number, final_answer, gsm8k_reference, last_boxed, last_number, math_equal
from deploykit.values.errors import UsageError

Scoring = Literal["numeric", "math", "exact"]
MAX_LINE_CHARS = 1 << 20  # one item; a longer line is not a question (a file of another kind, or one line)
MAX_ITEMS = 100_000
MATH_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
FORMATS = "GSM8K (question, answer), MATH (problem, answer) or plain (prompt, answer)"


@dataclass(frozen=True)
class Item:
    """One question: its key (``line-N`` or the file's ``id``), the prompt sent, the reference, and how the
    answer is compared with it."""

    key: str
    prompt: str
    reference: str
    scoring: Scoring


def parse_dataset(text: str, name: str) -> tuple[str, list[Item]]:
    """(format name, items) of a JSON Lines file's text; ``name`` is how messages call the file."""
    hint = f"Give a JSON Lines file, one object a line: {FORMATS}."
    items: list[Item] = []
    kinds: set[str] = set()
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        if len(line) > MAX_LINE_CHARS:
            raise UsageError(f"line {number} of {name} is {len(line):,} characters; an item may be 1 MiB.", hint)
        try:
            row = json.loads(line)
        except ValueError:
            raise UsageError(f"line {number} of {name} is not JSON.", hint) from None
        if not isinstance(row, dict):
            raise UsageError(f"line {number} of {name} is JSON {type(row).__name__}, not an object.", hint)
        kind, item = _item(row, number)
        if item is None:
            fields = ", ".join(sorted(map(str, row))[:6]) or "none"
            raise UsageError(f"line {number} of {name} has no question and answer (its fields: {fields}).", hint)
        kinds.add(kind)
        items.append(item)
        if len(items) > MAX_ITEMS:
            raise UsageError(
                f"{name} has more than {MAX_ITEMS:,} items.", "Split it, or give --limit on a shorter file."
            )
    if not items:
        raise UsageError(f"{name} holds no items.", hint)
    if len(kinds) > 1:
        raise UsageError(f"{name} mixes formats ({', '.join(sorted(kinds))}).", "Keep one format a file.")
    keys = [i.key for i in items]
    if len(set(keys)) != len(keys):
        raise UsageError(f"{name} gives the same id to two items.", "Give each item its own id, or none.")
    return kinds.pop(), items


def _text(row: dict[str, object], field: str) -> str | None:
    value = row.get(field)
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return str(value)
    return value if isinstance(value, str) and value.strip() else None


def _item(row: dict[str, object], number: int) -> tuple[str, Item | None]:
    ident = row.get("id", row.get("unique_id"))
    key = str(ident) if isinstance(ident, str | int) and not isinstance(ident, bool) else f"line-{number}"
    question, answer = _text(row, "question"), _text(row, "answer")
    if question and answer:  # GSM8K
        reference = gsm8k_reference(answer)
        scoring: Scoring = "numeric" if as_number(reference) is not None else "exact"
        return "gsm8k", Item(key, f"{question}\n{MATH_INSTRUCTION}", reference, scoring)
    problem = _text(row, "problem")
    solution = _text(row, "solution")
    boxed = answer or (last_boxed(solution) if solution else None)
    if problem and boxed:  # MATH, MATH-500
        return "math", Item(key, f"{problem}\n{MATH_INSTRUCTION}", boxed, "math")
    prompt = _text(row, "prompt")
    if prompt and answer:
        scoring = "numeric" if as_number(answer) is not None else "exact"
        return "plain", Item(key, prompt, answer, scoring)
    return "", None


def predicted(item: Item, content: str, reasoning: str = "") -> str | None:
    """The answer a reply gives to ``item``: its last ``\\boxed{}``, else (numbers) its last number, else
    (exact) its text; None when it gives none."""
    answer = final_answer(content, reasoning)
    boxed = last_boxed(answer)
    if boxed is not None:
        return boxed
    if item.scoring == "numeric":
        return last_number(answer)
    if item.scoring == "exact":
        return answer.strip() or None
    return None


def is_correct(item: Item, answer: str | None) -> bool:
    if answer is None:
        return False
    if item.scoring == "exact":
        return answer.strip().casefold() == item.reference.strip().casefold() or math_equal(answer, item.reference)
    return math_equal(answer, item.reference)
