"""One stack from nothing to running: detect, profiles, models, plan, render, up."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from deploykit.cli.common import (
    force_option,
    image_option,
    model_flags,
    path_or_none,
    plan_options,
    print_json,
    settings_from,
    show,
    stack_dir_option,
    timeout_option,
    tls_option,
)

if TYPE_CHECKING:
    from deploykit.app.stack import StackRequest
    from deploykit.config.settings import Settings
    from deploykit.values.stackplan import ModelChoice


@click.command(short_help="Detect GPUs, CPU, RAM, disk and Docker.")
@click.option("--json", "as_json", is_flag=True, help="Print the host profile as JSON (reusable with --host).")
@click.pass_context
def detect(ctx: click.Context, as_json: bool) -> None:
    """Detect this host: NVIDIA GPUs, CPU, RAM, disk and the Docker Engine."""
    from deploykit.app import resolve as api
    from deploykit.cli import output

    host = api.detect(settings_from(ctx))
    show(as_json, host.model_dump(mode="json"), output.show_host, host)


@click.command(short_help="List hardware profiles and their backends.")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.pass_context
def profiles(ctx: click.Context, as_json: bool) -> None:
    """List hardware profiles with their memory and the backend the default model would get."""
    from deploykit.app import stack as api
    from deploykit.cli import output

    rows = api.profile_rows(settings_from(ctx))
    show(as_json, rows, output.show_profiles, rows)


@click.group(short_help="List the model catalog, or a stack's models; add or remove one.", invoke_without_command=True)
@click.option("--dir", "stack_dir", type=click.Path(file_okay=False), help="List what this stack serves instead.")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.pass_context
def models(ctx: click.Context, stack_dir: str | None, as_json: bool) -> None:
    """List the model catalog; with --dir, the models a stack serves (each one's state and memory).

    `deploykit models add MODEL --dir D` and `deploykit models remove MODEL --dir D` change a running stack's
    models: Open WebUI and its accounts and chats keep running, and so do the other models (a GGUF file from
    outside deploykit's model cache recreates the llama.cpp router, which reloads its models in seconds)."""
    if ctx.invoked_subcommand is not None:
        return
    from deploykit.app import day2 as api
    from deploykit.cli import output

    if stack_dir is not None:
        from pathlib import Path

        rows = api.stack_models(settings_from(ctx), api.load_stack(Path(stack_dir)))
        show(as_json, rows, output.show_model_states, rows)
        return
    catalog = api.models()
    show(as_json, [m.model_dump(mode="json") for m in catalog], output.show_models, catalog)


def _change_models(
    ctx: click.Context, stack_dir: str, add: tuple[ModelChoice, ...], remove: tuple[str, ...], as_json: bool
) -> None:
    from dataclasses import asdict
    from pathlib import Path

    from deploykit.app import day2 as api
    from deploykit.cli import output

    reporter = output.ConsoleReporter()
    change = api.change_stack_models(settings_from(ctx), Path(stack_dir), add=add, remove=remove, reporter=reporter)
    show(as_json, asdict(change), output.show_models_change, change)


@models.command("add", short_help="Add a model to a running stack.")
@click.argument("model")
@click.option(
    "--model-file",
    "model_file",
    type=click.Path(exists=True),
    help="Local weights (a .gguf file or a Hugging Face model directory); MODEL names the model they hold.",
)
@click.option("--backend", help="The backend to serve it with [default: the planner's choice].")
@stack_dir_option()
@click.option("--json", "as_json", is_flag=True, help="Print what changed as JSON.")
@click.pass_context
def models_add(
    ctx: click.Context, model: str, model_file: str | None, backend: str | None, stack_dir: str, as_json: bool
) -> None:
    """Add MODEL (a catalog id, or the id of --model-file's model) to the stack in --dir, planned beside its
    models; it is written into the stack's deploykit.toml as one of its [[models]].

    Only what changes starts: a vLLM model's own service, or a GGUF model in the running llama.cpp router,
    which re-reads its presets (a file from outside deploykit's model cache recreates the router, its other
    models reloading in seconds); Open WebUI lists it at once. Accounts and chats are left as they are."""
    from deploykit.app import day2 as api

    _change_models(ctx, stack_dir, (api.model_choice(model, path_or_none(model_file), backend),), (), as_json)


@models.command("remove", short_help="Remove a model from a running stack.")
@click.argument("model")
@stack_dir_option()
@click.option("--json", "as_json", is_flag=True, help="Print what changed as JSON.")
@click.pass_context
def models_remove(ctx: click.Context, model: str, stack_dir: str, as_json: bool) -> None:
    """Remove MODEL (its id in the stack) from the stack in --dir; the other models keep running (unless the
    llama.cpp router must be recreated: its mounts or its --models-max change)."""
    _change_models(ctx, stack_dir, (), (model,), as_json)


@click.command(short_help="Choose backend, context and offload, with reasons.")
@plan_options()
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
@click.pass_context
def plan(
    ctx: click.Context,
    profile: str,
    host_file: str | None,
    max_context: int | None,
    backend: str | None,
    model_id: tuple[str, ...],
    model_path: tuple[str, ...],
    as_json: bool,
) -> None:
    """Decide backend, quantisation, context and offload for a model on a profile, with reasons."""
    from deploykit.app import stack as api
    from deploykit.cli import output

    one_id, one_path, several = model_flags(model_id, model_path)
    settings = settings_from(ctx, max_context=max_context, backend=backend, **several)
    if api.several_models(settings):
        stack = api.plan_stack_only(settings, profile=profile, host_file=path_or_none(host_file))
        show(as_json, api.stack_plan_record(stack), output.show_stack_plan, stack)
        return
    _, _, deployment = api.plan_only(
        settings,
        profile=profile,
        host_file=path_or_none(host_file),
        model_id=one_id,
        model_path=path_or_none(one_path),
    )
    show(as_json, deployment.model_dump(mode="json"), output.show_plan, deployment)


@click.command(short_help="Write the stack: compose.yaml (or swarm/kubernetes), .env, plan.json.")
@plan_options()
@stack_dir_option()
@image_option
@tls_option
@click.option(
    "--target",
    type=click.Choice(["compose", "swarm", "kubernetes"]),
    default="compose",
    show_default=True,
    help="What to write: compose.yaml (Docker Compose), swarm.yaml (`docker stack deploy`) or "
    "kubernetes.yaml (manifests for kubectl apply).",
)
@force_option
@click.option("--json", "as_json", is_flag=True, help="Print what was written as JSON.")
@click.pass_context
def render(
    ctx: click.Context,
    profile: str,
    host_file: str | None,
    max_context: int | None,
    backend: str | None,
    model_id: tuple[str, ...],
    model_path: tuple[str, ...],
    stack_dir: str,
    images: tuple[str, ...],
    target: str,
    force: bool,
    as_json: bool,
    tls: str | None,
) -> None:
    """Write the stack: compose.yaml (or swarm.yaml, or kubernetes.yaml), .env (secrets, 0600) and plan.json."""
    from deploykit.app import stack as api
    from deploykit.cli import output

    settings, request = _stack_request(ctx)
    result = api.render_stack(settings, request)
    if as_json:
        print_json(
            {
                "dir": str(result.stack_dir),
                "changed": result.changed,
                "notes": result.notes,
                "project": result.spec.project,
                "plan": result.spec.plan.model_dump(mode="json"),
            }
        )
    else:
        output.show_rendered(result)


def _stack_request(ctx: click.Context) -> tuple[Settings, StackRequest]:
    """Settings and the stack request render and up share, from their common options (``ctx.params``)."""
    from pathlib import Path

    from deploykit.app.stack import StackRequest
    from deploykit.config.settings import parse_image_overrides

    p = ctx.params
    overrides = parse_image_overrides(p["images"])  # before settings: a bad --image is the first thing said
    # The stack's own deploykit.toml (written by `deploykit tune`) is one of the layers.
    stack_dir = Path(p["stack_dir"])
    model_id, model_path, several = model_flags(p["model_id"], p["model_path"])
    settings = settings_from(
        ctx,
        stack_dir=stack_dir.expanduser().absolute(),
        max_context=p["max_context"],
        backend=p["backend"],
        tls=p["tls"],
        **several,
    )
    return settings, StackRequest(
        stack_dir=stack_dir,
        profile=p["profile"],
        host_file=path_or_none(p["host_file"]),
        model_id=model_id,
        model_path=path_or_none(model_path),
        image_overrides=overrides,
        target=p["target"],
        force=p["force"],
        models_asked=bool(several.get("models")),
    )


@click.command(short_help="Start the stack and check it up to a chat.")
@plan_options(profile_default=None)
@image_option
@tls_option
@stack_dir_option()
@force_option
@timeout_option
@click.option(
    "--target",
    type=click.Choice(["compose", "swarm"]),
    help="Run with Docker Compose, or deploy to the engine's swarm with `docker stack deploy` "
    "[default: the stack's, else compose].",
)
@click.option("--json", "as_json", is_flag=True, help="Print the health report as JSON.")
@click.pass_context
def up(
    ctx: click.Context,
    profile: str | None,
    host_file: str | None,
    max_context: int | None,
    backend: str | None,
    model_id: tuple[str, ...],
    model_path: tuple[str, ...],
    images: tuple[str, ...],
    stack_dir: str,
    force: bool,
    timeout: float | None,
    target: str | None,
    as_json: bool,
    tls: str | None,
) -> None:
    """Render (or reuse) the stack, start it, and check it stage by stage up to a chat through Open WebUI."""
    from dataclasses import asdict

    from deploykit.app import stack as api
    from deploykit.cli import output

    settings, request = _stack_request(ctx)
    report = api.up_stack(settings, request, timeout, output.ConsoleReporter())
    show(as_json, asdict(report), output.show_up, report)
