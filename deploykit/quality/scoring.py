"""Scores of a deployed model's answers: the answer taken out of a reply, math answers normalised and compared,
the 95 % Wilson interval of a pass rate, and the exact paired test of two stacks on the same items. Pure."""

from __future__ import annotations

import math
import re
from fractions import Fraction

THINK_END = "</think>"


def final_answer(content: str, reasoning: str = "") -> str:
    """What a reply answers: the text after the last ``</think>`` (a reasoning model whose server does not
    split its thinking off); when the reply has no text at all, its ``reasoning_content`` (a reply cut off
    while thinking still has its last figures there)."""
    if THINK_END in content:
        content = content.rsplit(THINK_END, 1)[1]
    content = content.strip()
    return content if content else reasoning.strip()


_FENCE = re.compile(r"```[ \t]*(?:python|py|Python)?[ \t]*\n(.*?)(?:```|\Z)", re.S)


def code_completion(prompt: str, entry_point: str, answer: str) -> str:
    """The completion to append to a HumanEval prompt from a chat answer: the code of its first fenced block
    that defines ``entry_point`` (else its first block, else the whole answer). A whole function is kept as
    it is (it replaces the prompt's, defined after it); a body alone is indented under the prompt's."""
    blocks = _FENCE.findall(answer)
    code = next((b for b in blocks if f"def {entry_point}" in b), blocks[0] if blocks else answer)
    if f"def {entry_point}" in code:
        return "\n" + code
    lines = code.splitlines()
    if lines and not lines[0].startswith((" ", "\t")):
        code = "\n".join("    " + line if line.strip() else line for line in lines)
    return code if prompt.endswith("\n") else "\n" + code


def last_boxed(text: str) -> str | None:
    """The contents of the last ``\\boxed{…}`` (or ``\\fbox{…}``), braces balanced; None without one."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    spaced = re.match(r"\\(?:boxed|fbox)\s+([^\s$]+)", text[start:])  # "\boxed 5"
    if spaced:
        return spaced.group(1)
    brace = text.find("{", start)
    if brace < 0:
        return None
    depth = 0
    for i in range(brace, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[brace + 1 : i]
    return None


_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?|-?\.\d+")


def last_number(text: str) -> str | None:
    """The last number written in ``text`` (thousands separators allowed), None without one."""
    found = _NUMBER.findall(text)
    return found[-1] if found else None


def gsm8k_reference(answer: str) -> str:
    """GSM8K's reference answer: what follows its ``####``."""
    return answer.rsplit("####", 1)[-1].strip()


def as_number(text: str) -> Fraction | None:
    """``text`` as an exact number ("1,234", "-3.5", "7/2", "\\frac{7}{2}", "50\\%", "$12"), None if it is not."""
    s = normalise_math(text).replace(",", "").rstrip(".%")
    s = s.removeprefix("$").removesuffix("$")
    m = re.fullmatch(r"(-?)\\frac\{(-?\d+)\}\{(-?\d+)\}", s) or re.fullmatch(r"(-?)\\frac(\d)(\d)", s)
    try:
        if m:
            value = Fraction(int(m.group(2)), int(m.group(3)))
            return -value if m.group(1) else value
        return Fraction(s)
    except (ValueError, ZeroDivisionError):
        return None


_DROPPED = ("\\left", "\\right", "\\!", "\\,", "\\;", "\\:", "\\displaystyle", "^\\circ", "^{\\circ}", "\\$", "$")


def normalise_math(text: str) -> str:
    """A math answer in one spelling: no spacing, ``\\left``/``\\right``, ``\\dfrac``/``\\tfrac``, degrees,
    dollar signs, ``\\text{…}`` units or a leading ``x =``."""
    s = text.strip()
    s = re.sub(r"\\text\{\s*([^{}]*)\}", r"\1", s)
    s = re.sub(r"\\(?:mbox|mathrm|textbf)\{([^{}]*)\}", r"\1", s)
    for dropped in _DROPPED:
        s = s.replace(dropped, "")
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").replace("\\%", "%")
    s = re.sub(r"\s+", "", s)
    s = re.sub(r"^[a-zA-Z]=", "", s)  # "x=5"
    s = re.sub(r"(\d),(\d{3})(?!\d)", r"\1\2", s)  # 1,000 (not the comma of a pair "(1,2)")
    s = s.rstrip(".")
    return s


def math_equal(predicted: str, reference: str) -> bool:
    """The same answer: equal numbers when both are numbers, else equal once normalised."""
    a, b = as_number(predicted), as_number(reference)
    if a is not None and b is not None:
        return a == b
    return normalise_math(predicted) == normalise_math(reference)


def wilson_interval(passed: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """The 95 % Wilson score interval of a pass rate of ``passed`` out of ``n`` (0..1; (0, 1) for n = 0)."""
    if n <= 0:
        return 0.0, 1.0
    p = passed / n
    centre = p + z * z / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    denominator = 1 + z * z / n
    return max(0.0, (centre - spread) / denominator), min(1.0, (centre + spread) / denominator)


def paired_sign_test(only_first: int, only_second: int) -> float:
    """The exact two-sided p-value of McNemar's test (a sign test on the discordant items): how likely a split
    at least this uneven is if both stacks were as good. 1.0 without a discordant item."""
    n = only_first + only_second
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(only_first, only_second) + 1)) / 2**n
    return float(min(1.0, 2 * tail))
