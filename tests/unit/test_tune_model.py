"""`tune --model` on a stack of several models (issue 17): a [[models]] entry's own threads and parallel, which
model tune may sweep, the candidate that does not fit skipped with the planner's reason, the winner written into
that model's [[models]] entry only."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, cast

import pytest
from click.testing import CliRunner
from pydantic import ValidationError

from deploykit.app.measure import Candidate, TuneRequest, _Sweep
from deploykit.app.tune_model import replan_model, tuned_model, write_model_knobs, write_winner
from deploykit.cli import cli
from deploykit.config.settings import write_stack_model
from deploykit.running.stack import load_stack
from deploykit.values.errors import ConfigError, PlanError, UsageError
from deploykit.values.stackplan import PRESET_PATH, ModelChoice
from tests.unit.test_render_several import QWEN_15B, R1_7B, R1_15B, SMOLLM, render_models

FILES = ("compose.yaml", "plan.json", PRESET_PATH, ".env")


def files_of(stack_dir: Path) -> dict[str, bytes]:
    return {p.relative_to(stack_dir).as_posix(): p.read_bytes() for p in sorted(stack_dir.rglob("*")) if p.is_file()}


def section(preset: str, model_id: str) -> dict[str, str]:
    """One model's section of the router's models.ini."""
    lines = preset.split(f"[{model_id}]\n", 1)[1].split("\n\n", 1)[0].splitlines()
    return dict(line.split(" = ", 1) for line in lines if " = " in line)


# ---------------------------------------------------------------- a [[models]] entry's own knobs


@pytest.mark.parametrize("knob", ["threads", "parallel"])
def test_a_models_entry_refuses_knobs_the_stack_wide_settings_refuse(knob: str) -> None:
    with pytest.raises(ValidationError, match=knob):
        ModelChoice(id=SMOLLM, **{knob: 0})
    with pytest.raises(ValidationError, match=knob):
        ModelChoice(id=SMOLLM, **{knob: 1.5})
    assert getattr(ModelChoice(id=SMOLLM, **{knob: 2}), knob) == 2


def test_a_models_entry_with_threads_0_in_deploykit_toml_is_refused_naming_the_file(tmp_path: Path) -> None:
    from deploykit.config.settings import load_settings

    entries = f'[[models]]\nid = "{SMOLLM}"\nthreads = 0\n[[models]]\nid = "{QWEN_15B}"\n'
    (tmp_path / "deploykit.toml").write_text(entries)
    with pytest.raises(ConfigError, match="threads"):
        load_settings(stack_dir=tmp_path)


def test_a_models_own_threads_and_slots_go_into_its_preset_section_and_the_others_keep_theirs(tmp_path: Path) -> None:
    plain = render_models(tmp_path / "a", "cpu", {"id": SMOLLM}, {"id": QWEN_15B})
    tuned = render_models(tmp_path / "b", "cpu", {"id": SMOLLM, "threads": 1, "parallel": 2}, {"id": QWEN_15B})
    before, after = (d.joinpath(PRESET_PATH).read_text() for d in (plain, tuned))
    assert (section(before, SMOLLM)["threads"], section(before, SMOLLM)["parallel"]) != ("1", "2")
    assert (section(after, SMOLLM)["threads"], section(after, SMOLLM)["parallel"]) == ("1", "2")
    assert section(after, QWEN_15B) == section(before, QWEN_15B)


def test_slots_asked_for_a_model_are_kept_where_the_packer_would_shrink_them() -> None:
    from deploykit.app.resolve import plan_several, resolve_models
    from deploykit.catalog import builtin_profiles, find_profile
    from deploykit.config.settings import load_settings

    host = find_profile("rpi5", builtin_profiles())
    settings = load_settings(models=({"id": R1_7B, "parallel": 16}, {"id": QWEN_15B}))
    planned = plan_several(host, resolve_models(settings)[1], settings)
    assert planned.packing.placement(R1_7B).slots == 16  # the context shrinks, or it swaps; never fewer slots
    assert planned.model(R1_7B).plan.parallel == 16
    too_many = load_settings(models=({"id": R1_7B, "parallel": 64}, {"id": QWEN_15B}))
    with pytest.raises(PlanError, match="DeepSeek-R1-Distill-Qwen-7B"):
        plan_several(host, resolve_models(too_many)[1], too_many)


# ---------------------------------------------------------------- which model tune sweeps


def test_tune_needs_model_on_a_stack_of_several_and_names_them() -> None:
    with pytest.raises(UsageError) as caught:
        tuned_model(Path("/s"), ["a", "b"], None)
    assert "serves several models (a, b)" in caught.value.message
    assert "--model a" in (caught.value.hint or "")
    with pytest.raises(UsageError, match="does not serve a model 'c'"):
        tuned_model(Path("/s"), ["a", "b"], "c")
    assert tuned_model(Path("/s"), ["a", "b"], "b") == "b"


def test_tune_model_on_a_one_model_stack_may_name_that_model_only() -> None:
    assert tuned_model(Path("/s"), ["a"], None) is None
    assert tuned_model(Path("/s"), ["a"], "a") is None  # today's sweep of the stack-wide knobs
    with pytest.raises(UsageError, match="does not serve a model 'b'"):
        tuned_model(Path("/s"), ["a"], "b")


def test_tune_without_model_on_a_several_model_stack_exits_2_and_writes_nothing(tmp_path: Path) -> None:
    stack_dir = render_models(tmp_path, "cpu", {"id": SMOLLM}, {"id": QWEN_15B})
    before = files_of(stack_dir)
    result = CliRunner().invoke(cli, ["tune", "--dir", str(stack_dir)])
    assert result.exit_code == UsageError.exit_code, result.output
    assert f"serves several models ({SMOLLM}, {QWEN_15B})" in result.output
    result = CliRunner().invoke(cli, ["tune", "--dir", str(stack_dir), "--model", "nope"])
    assert result.exit_code == UsageError.exit_code, result.output
    assert "does not serve a model 'nope'" in result.output
    assert files_of(stack_dir) == before


# ---------------------------------------------------------------- a candidate re-planned


def test_replan_model_with_its_own_knobs_reproduces_the_files_and_changes_only_that_model(tmp_path: Path) -> None:
    stack_dir = render_models(tmp_path, "cpu", {"id": SMOLLM}, {"id": QWEN_15B})
    stack = load_stack(stack_dir)
    current = stack.spec.stack_plan.model(SMOLLM).plan  # type: ignore[union-attr]
    _, same = replan_model(stack, SMOLLM, {"threads": current.threads, "parallel": current.parallel})
    old_preset = (stack_dir / PRESET_PATH).read_text()
    assert same[PRESET_PATH] == old_preset and same["compose.yaml"] == (stack_dir / "compose.yaml").read_text()
    planned, files = replan_model(stack, SMOLLM, {"threads": 1, "parallel": 1})
    assert (planned.model(SMOLLM).plan.threads, planned.model(SMOLLM).plan.parallel) == (1, 1)
    assert section(files[PRESET_PATH], SMOLLM)["parallel"] == "1"
    assert section(files[PRESET_PATH], QWEN_15B) == section(old_preset, QWEN_15B)
    assert files[".env"] == (stack_dir / ".env").read_text()


def _sweep(stack_dir: Path, model_id: str) -> _Sweep:
    """A sweep whose engine, target and load are never reached: a candidate refused before anything runs."""
    stack = load_stack(stack_dir)
    request = TuneRequest(stack_dir, 1, "chat", 16, 16, model=model_id)
    none = cast(Any, None)
    return _Sweep(stack, none, none, none, none, request, Candidate(2, 4), lambda _r: None, model=model_id)


def test_a_candidate_beyond_the_memory_is_skipped_with_the_planners_reason_and_nothing_written(tmp_path: Path) -> None:
    stack_dir = render_models(tmp_path, "rpi5", {"id": R1_7B}, {"id": R1_15B, "quantization": "Q4_K_M"})
    before = files_of(stack_dir)
    row = _sweep(stack_dir, R1_7B).measure(Candidate(2, 64))
    assert row["metrics"] is None
    assert "DeepSeek-R1-Distill-Qwen-7B cannot run on profile rpi5" in row["skipped"]
    assert files_of(stack_dir) == before


def test_a_candidate_that_would_move_the_other_models_is_skipped_naming_the_change(tmp_path: Path) -> None:
    stack_dir = render_models(tmp_path, "rpi5", {"id": SMOLLM}, {"id": QWEN_15B})
    before = files_of(stack_dir)
    row = _sweep(stack_dir, SMOLLM).measure(Candidate(2, 64))  # fits only with both swapped on demand
    assert row["metrics"] is None
    assert f"threads=2 parallel=64 does not fit in {SMOLLM}'s placement" in row["skipped"]
    assert "on demand" in row["skipped"]
    assert files_of(stack_dir) == before


# ---------------------------------------------------------------- the winner into its [[models]] entry


def test_the_winner_goes_into_its_models_entry_and_the_rest_of_deploykit_toml_is_kept(tmp_path: Path) -> None:
    text = (
        "# my stack\n"
        'kv_cache_type = "q8_0"  # keep\n\n'
        "[[models]]\n"
        f'id = "{SMOLLM}"  # the default\n'
        "context = 2048\n\n"
        "[[models]]\n"
        f'id = "{QWEN_15B}"\n'
        "threads = 2\n"
    )
    (tmp_path / "deploykit.toml").write_text(text)
    entries = [{"id": SMOLLM, "context": 2048}, {"id": QWEN_15B, "threads": 2}]
    write_stack_model(tmp_path, entries, 1, {"threads": 1, "parallel": 2})
    after = (tmp_path / "deploykit.toml").read_text()
    assert after.split("[[models]]")[:2] == text.split("[[models]]")[:2], "the first entry and the top untouched"
    data = tomllib.loads(after)
    assert data["models"] == [{"id": SMOLLM, "context": 2048}, {"id": QWEN_15B, "threads": 1, "parallel": 2}]
    assert data["kv_cache_type"] == "q8_0"


def test_a_stack_made_from_flags_gets_every_models_entry_the_winner_in_its_own(tmp_path: Path) -> None:
    stack_dir = render_models(tmp_path, "cpu", {"id": SMOLLM}, {"id": QWEN_15B})
    (stack_dir / "deploykit.toml").write_text('kv_cache_type = "q8_0"\n')
    write_model_knobs(load_stack(stack_dir), QWEN_15B, {"threads": 1, "parallel": 1})
    data = tomllib.loads((stack_dir / "deploykit.toml").read_text())
    assert data["kv_cache_type"] == "q8_0"
    assert data["models"] == [{"id": SMOLLM}, {"id": QWEN_15B, "threads": 1, "parallel": 1}]


def test_a_one_model_stack_whose_models_table_sets_its_knobs_gets_the_winner_there(tmp_path: Path) -> None:
    stack_dir = render_models(tmp_path, "cpu", {"id": SMOLLM, "threads": 1})
    assert load_stack(stack_dir).spec.plan.threads == 1, "the entry's own threads are planned"
    text = f'kv_cache_type = "q8_0"\n\n[[models]]\nid = "{SMOLLM}"\nthreads = 1\n'
    (stack_dir / "deploykit.toml").write_text(text)
    write_winner(load_stack(stack_dir), None, {"threads": 2, "parallel": 1})
    data = tomllib.loads((stack_dir / "deploykit.toml").read_text())
    assert data["models"] == [{"id": SMOLLM, "threads": 2, "parallel": 1}], "the table that wins gets it"
    assert "threads" not in data and data["kv_cache_type"] == "q8_0"


def test_a_one_model_stack_without_such_a_table_gets_todays_top_level_knobs(tmp_path: Path) -> None:
    stack_dir = render_models(tmp_path, "cpu", {"id": SMOLLM})
    write_winner(load_stack(stack_dir), None, {"threads": 2, "parallel": 1})
    assert tomllib.loads((stack_dir / "deploykit.toml").read_text()) == {"threads": 2, "parallel": 1}
