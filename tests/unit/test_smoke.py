"""The reasoning wiring and the smoke checks' own logic.

A real DeepSeek-R1 model cannot run on this machine, so the reasoning path is tested as wiring: the
rendered servers get their reasoning flags, and an answer carrying <think>…</think> (separated by the
server into reasoning_content, or left inline by one that is not wired) lands in the reasoning field.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from deploykit.app.stack import StackRequest, render_stack
from deploykit.config.settings import load_settings
from deploykit.seams.health import PERSON_SCHEMA, NotReady, chat_verdict, schema_errors, split_answer


def command_of(tmp_path: Path, profile: str, model: str) -> list[str]:
    result = render_stack(
        load_settings(), StackRequest(tmp_path / f"{profile}-{model}", profile=profile, model_id=model)
    )
    compose = yaml.safe_load((result.stack_dir / "compose.yaml").read_text())
    return list(compose["services"]["inference"]["command"])


@pytest.mark.parametrize(
    ("profile", "flag", "value"),
    [("rtx3060", "--reasoning-parser", "deepseek_r1"), ("cpu", "--reasoning-format", "deepseek")],
)
def test_r1_models_get_their_reasoning_flag(tmp_path: Path, profile: str, flag: str, value: str) -> None:
    command = command_of(tmp_path, profile, "deepseek-r1-distill-qwen-1.5b")
    assert command[command.index(flag) + 1] == value


@pytest.mark.parametrize("profile", ["rtx3060", "cpu"])
def test_other_models_get_no_reasoning_flag(tmp_path: Path, profile: str) -> None:
    command = command_of(tmp_path, profile, "qwen2.5-1.5b-instruct")
    assert "--reasoning-parser" not in command and "--reasoning-format" not in command


def test_reasoning_content_from_a_wired_server_is_kept_apart() -> None:
    data = {"choices": [{"message": {"content": "4", "reasoning_content": "2 and 2 make 4."}}]}
    assert split_answer(data) == ("2 and 2 make 4.", "4")


def test_inline_think_block_lands_in_the_reasoning_field() -> None:
    data = {"choices": [{"message": {"content": "<think>\nThe user greets me.\n</think>\n\nHello!"}}]}
    assert split_answer(data) == ("The user greets me.", "Hello!")


def test_plain_answer_has_no_reasoning() -> None:
    assert split_answer({"choices": [{"message": {"content": " Hi "}}]}) == ("", "Hi")


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ({"name": "Ava", "age": 23}, True),
        ({"name": "Ava"}, False),
        ({"name": "Ava", "age": "23"}, False),
        ({"name": "Ava", "age": True}, False),
        (["Ava", 23], False),
        ({"name": "A" * 41, "age": 1}, False),
    ],
)
def test_schema_check(value: object, ok: bool) -> None:
    assert (schema_errors(value, PERSON_SCHEMA) == []) is ok


def test_chat_stage_accepts_a_model_still_thinking_when_the_budget_ends() -> None:
    # R1 at the probe's 32-token budget: the server's reasoning parser puts everything in reasoning_content.
    data = {"choices": [{"message": {"content": "", "reasoning_content": "Okay, the user wants a greeting"}}]}
    assert chat_verdict(data).startswith("answered (still thinking)")


def test_chat_stage_waits_on_an_empty_completion() -> None:
    with pytest.raises(NotReady):
        chat_verdict({"choices": [{"message": {"content": ""}}]})
