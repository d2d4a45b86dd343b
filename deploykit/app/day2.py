"""Day two of one running stack: status, logs, restart, down, chat, smoke, doctor; the catalog and templates."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from deploykit.app.resolve import detect, engine_for
from deploykit.catalog import builtin_models
from deploykit.config.settings import Settings
from deploykit.values.model import ModelSpec

if TYPE_CHECKING:
    # Running stacks needs httpx and the docker SDK: plan and render should not pay for them.
    from deploykit.running.doctor import Check
    from deploykit.running.lifecycle import ModelStatus, SmokeCheck, StackStatus
    from deploykit.running.models_change import ModelsChange
    from deploykit.running.stack import LoadedStack
    from deploykit.running.stages import Reporter
    from deploykit.values.stackplan import ModelChoice


def load_stack(stack_dir: Path) -> LoadedStack:
    """The stack rendered into ``stack_dir`` (relative to the working directory)."""
    from deploykit.running import stack

    return stack.load_stack(stack_dir.absolute())


def stack_status(settings: Settings, stack: LoadedStack) -> StackStatus:
    """Each service's state, health and model, and whether the whole stack is healthy."""
    from deploykit.running import lifecycle

    return lifecycle.status(stack, engine_for(settings))


def stack_logs(settings: Settings, stack: LoadedStack, service: str | None, tail: int, follow: bool) -> int:
    """Show the logs on this terminal (compose's own output); the exit code of `docker compose logs`."""
    from deploykit.running import lifecycle
    from deploykit.seams.engine import client, compose_version, require_compose_v2
    from deploykit.seams.proc import run_attached

    lifecycle.check_service(stack, service)
    docker_host = engine_for(settings)
    engine_stack = stack.engine_stack(docker_host)
    client(docker_host)  # an unreachable engine is said as such (exit 6), not as compose's raw text
    require_compose_v2(compose_version())
    return run_attached(engine_stack.logs_command(service, tail, follow), env=engine_stack.env())


def restart_stack(settings: Settings, stack: LoadedStack, service: str | None) -> None:
    from deploykit.running import lifecycle

    lifecycle.restart(stack, engine_for(settings), service)


def stop_stack(settings: Settings, stack: LoadedStack, volumes: bool) -> None:
    from deploykit.running import lifecycle

    lifecycle.down(stack, engine_for(settings), volumes)


@dataclass(frozen=True)
class ChatAnswer:
    response: dict[str, object]  # the server's JSON answer as it came (printed by `chat --json`)

    def text(self) -> str:
        """The answer without its reasoning; an answer with no text is a failed chat."""
        from deploykit.seams.health import split_answer
        from deploykit.values.errors import HealthError

        _, text = split_answer(self.response)
        if not text:
            raise HealthError(
                "the model answered with no text.", "Try a larger --max-tokens; reasoning models think first."
            )
        return text


def chat(stack: LoadedStack, message: str, direct: bool, max_tokens: int) -> ChatAnswer:
    """One message through Open WebUI as the stack's admin, or straight to the inference server."""
    from deploykit.running import lifecycle

    return ChatAnswer(lifecycle.chat(stack, message, direct, max_tokens))


@dataclass(frozen=True)
class SmokeReport:
    checks: list[SmokeCheck]

    @property
    def ok(self) -> bool:
        return all(c["status"] != "fail" for c in self.checks)


def smoke(stack: LoadedStack) -> SmokeReport:
    """Structured output, reasoning wiring and tool calling, for the served model."""
    from deploykit.running import lifecycle
    from deploykit.seams.stackdir import read_stack_file

    return SmokeReport(lifecycle.smoke(stack, read_stack_file(stack.dir, stack.stack_file.name)))


def doctor(settings: Settings, stack_dir: Path | None) -> list[Check]:
    """What the host offers stacks (and the stack in ``stack_dir``, if given), each with its fix."""
    from deploykit.running.doctor import run_checks
    from deploykit.running.lifecycle import published_ports

    stack = load_stack(stack_dir) if stack_dir else None
    ports = published_ports(settings)
    return run_checks(detect(settings), engine_for(settings), settings.model_cache, stack, ports)


def models() -> tuple[ModelSpec, ...]:
    """The model catalog."""
    return builtin_models()


def export_templates(directory: Path, force: bool) -> list[str]:
    """Write the built-in templates into ``directory`` for a site to change; the names written."""
    from deploykit.running.customise import export_templates as export

    return export(directory, force)


def rebase_templates(directory: Path) -> list[str]:
    """Record the site's copies in ``directory`` as current with this deploykit's built-ins."""
    from deploykit.running.customise import rebase_templates as rebase

    return rebase(directory)


def stack_models(settings: Settings, stack: LoadedStack) -> list[ModelStatus]:
    """The models ``stack`` serves, each with its state on its server and its memory."""
    from deploykit.running import lifecycle

    return lifecycle.model_list(stack, engine_for(settings))


def model_choice(model: str, model_file: Path | None, backend: str | None) -> ModelChoice:
    """What `models add` was asked for, checked: a model id, its weights' absolute path, a backend's name."""
    from pydantic import ValidationError

    from deploykit import backends
    from deploykit.values.errors import UsageError
    from deploykit.values.stackplan import ModelChoice

    if backend:  # a name the registry knows (any backend may serve an added model)
        try:
            backends.named(backend)
        except ValueError as exc:
            raise UsageError(f"backend {backend!r} is not known: {exc}.", "Leave --backend out, or name one.") from None
    try:
        return ModelChoice(id=model, file=str(model_file.resolve()) if model_file else None, backend=backend)
    except ValidationError:
        raise UsageError(
            f"{model!r} is not a model id: use letters, digits, '.', '_' and '-'.",
            "`deploykit models` lists the catalog; with --model-file, MODEL names the file's model.",
        ) from None


def change_stack_models(
    settings: Settings, stack_dir: Path, *, add: tuple[ModelChoice, ...], remove: tuple[str, ...], reporter: Reporter
) -> ModelsChange:
    """Add or remove models of a running stack: deploykit.toml's [[models]] updated, the stack planned and
    rendered again, and only what changed started (running.models_change.change_models)."""
    from deploykit.app.stack import reprepare_with_models
    from deploykit.config.settings import write_stack_models
    from deploykit.running import models_change
    from deploykit.running.stack import load_stack

    before = load_stack(stack_dir.expanduser().absolute()).require_compose(
        "models add|remove changes a running Compose stack only",
        "Render the stack again with the models you want (`deploykit render --model …`) and deploy it.",
    )
    prepared, choices = reprepare_with_models(settings, before, add=add, remove=remove)
    for note in prepared.notes:
        reporter.note(note)

    def write() -> list[str]:
        changed = prepared.write()
        write_stack_models(before.dir, [c.model_dump(exclude_defaults=True) for c in choices])
        return changed

    return models_change.change_models(before, prepared.loaded(), engine_for(settings), write, reporter)
