"""plan.json's "inputs" as one typed value: read once by load_stack, written back byte for byte."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from deploykit.app.resolve import resolve_host, resolve_model
from deploykit.app.stack import REFERENCE_SECRETS, prepare_for_host, reprepare_stack
from deploykit.cli import cli
from deploykit.config.settings import load_settings
from deploykit.planning.render import StackSpec, render_files
from deploykit.running.stack import load_stack
from deploykit.values.errors import StackDirError
from deploykit.values.plan import PlanInputs, RunHost
from tests.unit.conftest import ROOT, TINY_GGUF

REFERENCE_PLANS = sorted((ROOT / "compose").glob("*/plan.json"))


@pytest.mark.parametrize("path", REFERENCE_PLANS, ids=[p.parent.name for p in REFERENCE_PLANS])
def test_a_reference_plan_round_trips_byte_for_byte(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    data = json.loads(text)
    inputs = PlanInputs.model_validate(data["inputs"])
    assert inputs.weights is None and inputs.runs_on is None
    assert list(inputs.recorded()) == ["host", "model", "settings"]  # a reference records neither
    spec = StackSpec.model_validate(data["stack"])
    assert render_files(spec, REFERENCE_SECRETS, inputs)["plan.json"] == text


def _render(stack_dir: Path, *extra: str) -> None:
    args = ["render", "--profile", "cpu", "--model", "smollm2-135m-instruct", "--dir", str(stack_dir), *extra]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output


def test_a_rendered_stack_records_weights_and_reloads_unchanged(tmp_path: Path) -> None:
    _render(tmp_path / "catalog")
    recorded = json.loads((tmp_path / "catalog" / "plan.json").read_text())["inputs"]
    assert list(recorded) == ["host", "model", "settings", "weights"] and recorded["weights"] is None
    _render(tmp_path / "file", "--model-file", str(TINY_GGUF))
    for name in ("catalog", "file"):
        stack_dir = tmp_path / name
        text = (stack_dir / "plan.json").read_text(encoding="utf-8")
        stack = load_stack(stack_dir)
        assert stack.model is stack.inputs.model
        assert stack.inputs.recorded() == json.loads(text)["inputs"]
        assert reprepare_stack(load_settings(), stack_dir).files["plan.json"] == text
    assert load_stack(tmp_path / "file").inputs.weights is not None


def test_runs_on_is_recorded_only_when_measured(tmp_path: Path) -> None:
    settings = load_settings()
    host = resolve_host(settings, "cpu", None)
    model = resolve_model(settings, "smollm2-135m-instruct", None)
    prepared = prepare_for_host(settings, host, model, {}, tmp_path / "s", runs_on=RunHost(cores=2))
    recorded = json.loads(prepared.files["plan.json"])["inputs"]
    assert list(recorded) == ["host", "model", "settings", "weights", "runs_on"]
    assert recorded["runs_on"] == {"cores": 2, "where": "this host"}
    prepared.write()
    assert load_stack(tmp_path / "s").inputs.runs_on == RunHost(cores=2)


def test_a_broken_inputs_block_is_refused_with_a_hint(tmp_path: Path) -> None:
    stack_dir = tmp_path / "s"
    _render(stack_dir)
    data = json.loads((stack_dir / "plan.json").read_text())
    del data["inputs"]["host"]["cpu"]
    data["inputs"]["settings"]["max_context"] = "lots"
    (stack_dir / "plan.json").write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(StackDirError) as raised:
        load_stack(stack_dir)
    assert "(inputs: host.cpu, settings.max_context)" in raised.value.message
    assert "deploykit render" in (raised.value.hint or "")
    result = CliRunner().invoke(cli, ["status", "--dir", str(stack_dir)])
    assert result.exit_code == StackDirError.exit_code == 10
    assert "Hint: Render the stack again" in result.output
