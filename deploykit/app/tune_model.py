"""`tune --model`: one model of a stack of several swept inside its own placement (docs/several-models.md).

Which model tune sweeps, the stack re-planned with that model's [[models]] knobs changed (and whether the result
stays inside its placement), and where the winner is written. Pure but for reading and writing deploykit.toml.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from deploykit.app.resolve import plan_models
from deploykit.planning.render import render_files
from deploykit.values.errors import PlanError, UsageError
from deploykit.values.stackplan import StackPlan

if TYPE_CHECKING:
    from deploykit.running.stack import LoadedStack


def replan_model(stack: LoadedStack, model_id: str, knobs: dict[str, int]) -> tuple[StackPlan, dict[str, str]]:
    """A stack of several models re-planned from plan.json's inputs with ``model_id``'s own knobs changed (its
    [[models]] entry's ``threads``, ``parallel``): the whole stack packed again, the rest as recorded.

    Raises PlanError when the stack no longer fits, or when the knobs are out of a model's bounds."""
    from pydantic import ValidationError

    from deploykit.values.plan import ModelInput

    stack_plan = stack.spec.stack_plan
    assert stack_plan is not None
    index = [m.model_id for m in stack_plan.models].index(model_id)
    recorded = stack.inputs
    models = list(recorded.models)
    try:
        models[index] = ModelInput.model_validate({**models[index].model_dump(), **knobs})
    except ValidationError as exc:
        said = "; ".join(f"{e['loc'][-1]} {e['msg']}" for e in exc.errors())
        raise PlanError(f"{model_id} cannot take {_words(knobs)}: {said}.", "Leave it out of the grid.") from None
    planned = plan_models(recorded.host, tuple(models), recorded.settings, stack.spec.inference_port, recorded.runs_on)
    inputs = recorded.model_copy(update={"models": tuple(models)})
    spec = stack.spec.model_copy(update={"plan": planned.plan, "models": planned.models, "packing": planned.packing})
    return planned, render_files(spec, stack.secrets, inputs)


def _words(knobs: dict[str, int]) -> str:
    return " ".join(f"{k}={v}" for k, v in knobs.items())


def placement_change(before: StackPlan, after: StackPlan, model_id: str) -> str | None:
    """Why a re-plan of ``model_id`` reaches beyond its own placement (`tune --model` stays inside it): the
    stack served another way, the model on another server, or another model's context, slots or loading changed.
    None when only ``model_id`` changed."""
    old, new = before.packing, after.packing
    if (old.mode, old.models_max) != (new.mode, new.models_max):
        return (
            f"the stack would be served {new.mode.replace('_', ' ')} (--models-max {new.models_max}) instead of "
            f"{old.mode.replace('_', ' ')} (--models-max {old.models_max})"
        )
    for model in before.models:
        moved = after.model(model.model_id)
        if moved.service != model.service:
            return f"{model.model_id} would move from {model.service} to {moved.service}"
        if model.model_id == model_id:
            continue
        a, b = old.placement(model.model_id), new.placement(model.model_id)
        if (a.context, a.slots, a.loaded) != (b.context, b.slots, b.loaded):
            return (
                f"{model.model_id} would go from {a.context} tokens × {a.slots} slot(s), {a.loaded.replace('_', ' ')}, "
                f"to {b.context} × {b.slots}, {b.loaded.replace('_', ' ')}"
            )
    return None


def tuned_model(stack_dir: Path, models: Sequence[str], asked: str | None) -> str | None:
    """Which model `tune` sweeps: ``asked`` (``--model``), which a stack of several models needs; None for a
    one-model stack asked for nothing or for its model. A UsageError names the stack's models otherwise."""
    listed = ", ".join(models)
    if asked is None:
        if len(models) > 1:
            raise UsageError(
                f"{stack_dir} serves several models ({listed}), and tune sweeps one of them at a time.",
                f"Name it: `deploykit tune --model {models[0]} --dir {stack_dir}`.",
            )
        return None
    if asked not in models:
        raise UsageError(
            f"the stack in {stack_dir} does not serve a model '{asked}'.",
            f"It serves {listed}; give one of them to --model.",
        )
    return asked if len(models) > 1 else None


def write_winner(stack: LoadedStack, model_id: str | None, knobs: dict[str, int]) -> Path:
    """Tune's winner into the stack's deploykit.toml: ``model_id``'s [[models]] entry (a stack of several), else
    the top-level knobs, or the one [[models]] table when that sets its own (it would win over them)."""
    from deploykit.config.settings import write_stack_settings

    if model_id is None and not _models_table_wins(stack):
        return write_stack_settings(stack.dir, knobs)
    return write_model_knobs(stack, model_id or stack.spec.plan.model_id, knobs)


def write_model_knobs(stack: LoadedStack, model_id: str, knobs: dict[str, int]) -> Path:
    """``knobs`` into ``model_id``'s [[models]] entry of the stack's deploykit.toml, the others as they are."""
    from deploykit.app.stack import stack_choices
    from deploykit.config.settings import write_stack_model

    stack_plan = stack.spec.stack_plan
    index = [m.model_id for m in stack_plan.models].index(model_id) if stack_plan is not None else 0
    entries = [c.model_dump(exclude_defaults=True) for c in stack_choices(stack)]
    return write_stack_model(stack.dir, entries, index, knobs)


def _models_table_wins(stack: LoadedStack) -> bool:
    """Whether the one model of ``stack`` comes from the one [[models]] table of its deploykit.toml and sets
    threads or parallel there: that table's knobs win over the top-level ones, so tune's winner goes into it."""
    import tomllib

    from deploykit.config.settings import STACK_SETTINGS_FILE

    path = stack.dir / STACK_SETTINGS_FILE
    try:
        tables = tomllib.loads(path.read_text(encoding="utf-8")).get("models") if path.is_file() else None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return False  # writing the top-level keys says what is wrong with the file
    if not isinstance(tables, list) or len(tables) != 1 or not isinstance(tables[0], dict):
        return False
    entry = tables[0]
    return entry.get("id") == stack.spec.plan.model_id and ("threads" in entry or "parallel" in entry)
