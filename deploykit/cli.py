"""The command line: parse, call ``deploykit.app``, print. No decisions live here.

Only click is imported at module level, so ``deploykit --help`` stays fast; each command imports
what it needs when it runs.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click

from deploykit import __version__

if TYPE_CHECKING:
    from pathlib import Path

    from deploykit.settings import Settings

F = TypeVar("F", bound=Callable[..., Any])


class DeployKitGroup(click.Group):
    """Runs every command inside the one error handler: message, hint, exit code; traceback only with --debug."""

    def invoke(self, ctx: click.Context) -> Any:
        from deploykit.errors import DeployKitError

        try:
            return super().invoke(ctx)
        except DeployKitError as exc:
            if ctx.params.get("debug"):
                raise
            _fail(exc.message, exc.hint, exc.exit_code, getattr(exc, "log_tail", ""))
        except KeyboardInterrupt:
            _fail("interrupted.", None, 130)


def _fail(message: str, hint: str | None, code: int, log_tail: str = "") -> None:
    if log_tail:
        click.echo(log_tail.rstrip(), err=True)
    click.echo(click.style("Error: ", fg="red", bold=True) + message, err=True)
    if hint:
        click.echo(click.style("Hint: ", fg="yellow") + hint, err=True)
    sys.exit(code)


def _print_json(data: Any) -> None:
    import json

    click.echo(json.dumps(data, indent=2, ensure_ascii=False))


def _path(value: str | None) -> Path | None:
    # Options arrive as str: pathlib is imported only by commands that run, keeping --help fast.
    from pathlib import Path

    return None if value is None else Path(value)


def _settings(ctx: click.Context, **flags: Any) -> Settings:
    from deploykit.settings import load_settings

    root = ctx.find_root().params
    return load_settings(
        profiles_file=_path(root.get("profiles_file")), docker_host=root.get("docker_host"), **flags
    )


def model_options(fn: F) -> F:
    fn = click.option(
        "--model-file",
        "--model-path",
        "model_path",
        type=click.Path(),
        help="Local weights: a .gguf file (llama.cpp) or a Hugging Face model directory (vLLM).",
    )(fn)
    fn = click.option(
        "--model",
        "model_id",
        metavar="ID",
        help="Catalog id (see `deploykit models`) or a Hugging Face repo id. "
        "With --model-file, names the file's model.",
    )(fn)
    return fn


def plan_options(fn: F) -> F:
    fn = model_options(fn)
    fn = click.option(
        "--backend",
        type=click.Choice(["vllm", "llamacpp"]),
        help="Force a backend instead of letting the planner choose.",
    )(fn)
    fn = click.option(
        "--context", "max_context", type=int, metavar="TOKENS", help="Context length cap [default: 4096]."
    )(fn)
    fn = click.option(
        "--host",
        "host_file",
        type=click.Path(),
        help="A host profile saved with `deploykit detect --json`, to plan a machine from elsewhere.",
    )(fn)
    fn = click.option(
        "--profile",
        "-p",
        default="auto",
        show_default=True,
        help="Hardware profile: a built-in (see `deploykit profiles`), a user profile, or auto (this host).",
    )(fn)
    return fn


@click.group(cls=DeployKitGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="deploykit")
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
@click.option(
    "--profiles-file", type=click.Path(), help="Extra hardware profiles (TOML) [default: config dir]."
)
@click.option(
    "--docker-host",
    metavar="URL",
    help="Docker Engine to use (unix://, tcp://, ssh://) [default: DOCKER_HOST].",
)
def cli(debug: bool, profiles_file: str | None, docker_host: str | None) -> None:
    """Plan, render and run a private ChatGPT-style assistant on your own hardware.

    \b
    detect → plan → render → up:
      deploykit detect                     what this machine has
      deploykit plan --profile rtx3060     which backend, context and memory, and why
      deploykit render --profile cpu       write compose.yaml, .env and plan.json
      deploykit up --profile auto          run it and check it answers

    Settings come from flags, DEPLOYKIT_* variables and ~/.config/deploykit/config.toml.
    """


@cli.command()
@click.option(
    "--json", "as_json", is_flag=True, help="Print the host profile as JSON (reusable with --host)."
)
@click.pass_context
def detect(ctx: click.Context, as_json: bool) -> None:
    """Detect this host: NVIDIA GPUs, CPU, RAM, disk and the Docker Engine."""
    from deploykit import app, output

    host = app.detect(_settings(ctx))
    if as_json:
        _print_json(host.model_dump(mode="json"))
    else:
        output.show_host(host)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.pass_context
def profiles(ctx: click.Context, as_json: bool) -> None:
    """List hardware profiles with their memory and the backend the default model would get."""
    from deploykit import app, output

    rows = app.profile_rows(_settings(ctx))
    if as_json:
        _print_json(rows)
    else:
        output.show_profiles(rows)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def models(as_json: bool) -> None:
    """List the model catalog."""
    from deploykit import output
    from deploykit.catalog import builtin_models

    catalog = builtin_models()
    if as_json:
        _print_json([m.model_dump(mode="json") for m in catalog])
    else:
        output.show_models(catalog)


@cli.command()
@plan_options
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
@click.pass_context
def plan(
    ctx: click.Context,
    profile: str,
    host_file: str | None,
    max_context: int | None,
    backend: str | None,
    model_id: str | None,
    model_path: str | None,
    as_json: bool,
) -> None:
    """Decide backend, quantisation, context and offload for a model on a profile, with reasons."""
    from deploykit import app, output

    settings = _settings(ctx, max_context=max_context, backend=backend)
    _, _, deployment = app.plan_only(
        settings, profile=profile, host_file=_path(host_file), model_id=model_id, model_path=_path(model_path)
    )
    if as_json:
        _print_json(deployment.model_dump(mode="json"))
    else:
        output.show_plan(deployment)


@cli.command()
@plan_options
@click.option(
    "--dir",
    "stack_dir",
    type=click.Path(file_okay=False),
    default="deploykit-stack",
    show_default=True,
    help="Stack directory to write.",
)
@click.option(
    "--image",
    "images",
    multiple=True,
    metavar="SERVICE=REF",
    help="Use another image for a service (inference, open-webui); repeatable.",
)
@click.option("--json", "as_json", is_flag=True, help="Print what was written as JSON.")
@click.pass_context
def render(
    ctx: click.Context,
    profile: str,
    host_file: str | None,
    max_context: int | None,
    backend: str | None,
    model_id: str | None,
    model_path: str | None,
    stack_dir: str,
    images: tuple[str, ...],
    as_json: bool,
) -> None:
    """Write the Docker Compose stack: compose.yaml, .env (secrets, 0600) and plan.json."""
    from pathlib import Path

    from deploykit import app, output
    from deploykit.settings import parse_image_overrides

    overrides = parse_image_overrides(images)
    settings = _settings(ctx, max_context=max_context, backend=backend)
    result = app.render_stack(
        settings,
        profile=profile,
        host_file=_path(host_file),
        model_id=model_id,
        model_path=_path(model_path),
        image_overrides=overrides,
        stack_dir=Path(stack_dir),
    )
    if as_json:
        _print_json(
            {
                "dir": str(result.stack_dir),
                "changed": result.changed,
                "project": result.spec.project,
                "plan": result.spec.plan.model_dump(mode="json"),
            }
        )
    else:
        output.show_rendered(result)


def main() -> None:
    cli(prog_name="deploykit")
