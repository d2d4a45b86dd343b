"""What every command shares: the one error handler, the common options, settings from flags, JSON printing."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click

from deploykit import __version__
from deploykit.values.defaults import DEFAULT_MAX_CONTEXT
from deploykit.values.redact import for_terminal

if TYPE_CHECKING:
    from pathlib import Path

    from deploykit.config.settings import Settings
    from deploykit.running.stack import LoadedStack


F = TypeVar("F", bound=Callable[..., Any])


class DeployKitGroup(click.Group):
    """Runs every command inside the one error handler: message, hint, exit code; traceback only with --debug."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        # In the order of the workflow (detect → plan → render → up → day 2), not alphabetically.
        return list(self.commands)

    def invoke(self, ctx: click.Context) -> Any:
        from deploykit.values.errors import DeployKitError

        try:
            return super().invoke(ctx)
        except DeployKitError as exc:
            if ctx.params.get("debug"):
                raise
            _fail(exc.message, exc.hint, exc.exit_code, getattr(exc, "log_tail", ""))
        except KeyboardInterrupt:
            _fail("interrupted.", None, 130)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except Exception as exc:
            if ctx.params.get("debug"):
                raise
            if isinstance(exc, OSError) and exc.filename and exc.strerror:
                # A file the user pointed at (or its folder) that the system refused: their input, not a bug.
                _fail(f"cannot use {exc.filename}: {exc.strerror}.", "Check the path and its permissions.", 2)
            _internal_error(exc)


def _internal_error(exc: Exception) -> None:
    """An exception nobody planned for: never a traceback on the terminal, never its text (it may hold
    a secret), but the type and where the whole traceback was kept."""
    import traceback

    from deploykit.values.errors import InternalError, write_crash_report

    where = write_crash_report("".join(traceback.format_exception(exc)))
    _fail(
        f"internal error ({type(exc).__name__}): this is a bug in deploykit {__version__}; "
        f"the traceback is in {where}.",
        "Run the command again with --debug to see it, and report it with that file.",
        InternalError.exit_code,
    )


def _fail(message: str, hint: str | None, code: int, log_tail: str = "") -> None:
    if log_tail:
        click.echo(log_tail.rstrip(), err=True)
    click.echo(click.style("Error: ", fg="red", bold=True) + for_terminal(message), err=True)
    if hint:
        click.echo(click.style("Hint: ", fg="yellow") + for_terminal(hint), err=True)
    sys.exit(code)


T = TypeVar("T")


def not_nan(param: click.Parameter, value: float | None) -> float | None:
    # FloatRange lets nan through: every comparison with nan is false.
    if value is not None and value != value:
        raise click.BadParameter("nan is not a number of seconds.", param=param)
    return value


def print_json(data: Any) -> None:
    import json

    click.echo(json.dumps(data, indent=2, ensure_ascii=False))


def show(as_json: bool, data: object, show: Callable[[T], None], value: T) -> None:
    """``data`` as JSON with --json, else ``show(value)``: the human form."""
    if as_json:
        print_json(data)
    else:
        show(value)


def path_or_none(value: str | None) -> Path | None:
    # Options arrive as str: pathlib is imported only by commands that run, keeping --help fast.
    from pathlib import Path

    return None if value is None else Path(value)


def settings_from(ctx: click.Context, **flags: Any) -> Settings:
    from deploykit.config.settings import load_settings

    root = ctx.find_root().params
    profiles_file = path_or_none(root.get("profiles_file"))
    return load_settings(profiles_file=profiles_file, docker_host=root.get("docker_host"), **flags)


class BackendChoice(click.Choice[str]):
    """--backend's choices: the registry's names, looked up when a command parses or shows its help, so
    `deploykit --help` does not import the backends (and pydantic with them)."""

    def __init__(self) -> None:
        super().__init__(())

    @property
    def choices(self) -> tuple[str, ...]:
        from deploykit.backends import names

        return names()

    @choices.setter
    def choices(self, _given: tuple[str, ...]) -> None:
        pass  # click.Choice's __init__ sets the empty tuple


def model_options(fn: F) -> F:
    fn = click.option(
        "--model-file",
        "--model-path",
        "model_path",
        type=click.Path(),
        multiple=True,
        help="Local weights: a .gguf file (llama.cpp) or a Hugging Face model directory (vLLM). "
        "Several: one per --model, paired in order.",
    )(fn)
    fn = click.option(
        "--model",
        "model_id",
        metavar="ID",
        multiple=True,
        help="Catalog id (see `deploykit models`) or a Hugging Face repo id. "
        "With --model-file, names the file's model. Give it again for a stack of several models (the first "
        "is the default).",
    )(fn)
    return fn


def model_flags(ids: tuple[str, ...], paths: tuple[str, ...]) -> tuple[str | None, str | None, dict[str, Any]]:
    """(--model, --model-file, the settings' ``models``) from the repeated flags.

    One of each (or none) is today's single model. Several pair by position: the Nth --model-file is the
    Nth --model's weights; files without any --model name their own models. Anything else is ambiguous.
    """
    if len(ids) <= 1 and len(paths) <= 1:
        # One model on the command line wins over a stack's [[models]] too (flags win over files).
        return (ids[0] if ids else None), (paths[0] if paths else None), ({"models": ()} if ids or paths else {})
    if paths and ids and len(ids) != len(paths):
        raise click.UsageError(
            f"{len(ids)} --model and {len(paths)} --model-file flags cannot be paired: give one --model per "
            "--model-file (the Nth names the Nth file), or --model-file alone."
        )
    if paths:
        entries = [{"file": path, **({"id": ids[i]} if ids else {})} for i, path in enumerate(paths)]
    else:
        entries = [{"id": model_id} for model_id in ids]
    return None, None, {"models": tuple(entries)}


context_option = click.option(
    "--context",
    "max_context",
    type=int,
    metavar="TOKENS",
    help=f"Context length cap [default: {DEFAULT_MAX_CONTEXT}].",
)


def plan_options(profile_default: str | None = "auto") -> Callable[[F], F]:
    """--profile, --host, --context, --backend and the model options, shared by plan, render and up."""

    def decorate(fn: F) -> F:
        fn = model_options(fn)
        fn = click.option(
            "--backend",
            type=BackendChoice(),
            help="Force a backend instead of letting the planner choose.",
        )(fn)
        fn = context_option(fn)
        fn = click.option(
            "--host",
            "host_file",
            type=click.Path(),
            help="A host profile saved with `deploykit detect --json`, to plan a machine from elsewhere.",
        )(fn)
        fn = click.option(
            "--profile",
            "-p",
            default=profile_default,
            show_default=profile_default is not None,
            help="Hardware profile: a built-in (see `deploykit profiles`), a user profile, or auto (this host)."
            + ("" if profile_default else " [default: the stack's, else auto]"),
        )(fn)
        return fn

    return decorate


def stack_dir_option(default: str = "deploykit-stack") -> Callable[[F], F]:
    return click.option(
        "--dir",
        "stack_dir",
        type=click.Path(file_okay=False),
        default=default,
        show_default=True,
        help="Stack directory.",
    )


force_option = click.option(
    "--force",
    is_flag=True,
    help="Overwrite a compose.yaml edited by hand (a backup is kept), or make new secrets for a lost .env.",
)


timeout_option = click.option(
    "--timeout",
    type=click.FloatRange(min=1, max=7 * 86400),
    callback=lambda ctx, param, value: not_nan(param, value),
    metavar="SECONDS",
    help="Give up waiting after this long [default: from the plan].",
)


image_option = click.option(
    "--image",
    "images",
    multiple=True,
    metavar="SERVICE=REF",
    help="Use another image for a service (inference, open-webui, tls-proxy); repeatable.",
)

tls_option = click.option(
    "--tls",
    metavar="internal|CERT,KEY|off",
    help="HTTPS in front of Open WebUI: 'internal' (a certificate from the site CA deploykit keeps), "
    "'CERT,KEY' (your PEM chain and key) or 'off' [default: as the stack was rendered; new stacks: off].",
)


# Bounds on what bench and tune send, so a typo cannot open a million connections or build a prompt of a
# billion words: far beyond any context or machine deploykit plans for.
MAX_TOKENS = 1_048_576
MAX_CONCURRENCY = 1024
MAX_THREADS = 4096
MAX_PROMPT_WORDS = 50_000_000  # the prompts of one level are built before it starts: about 300 MiB of text
TOKENS = click.IntRange(1, MAX_TOKENS)
REQUESTS = click.IntRange(1, 100_000)


def check_load(levels: list[int], requests: int | None, prompt_tokens: int, default: Callable[[int], int]) -> None:
    from deploykit.values.errors import UsageError

    most = max((requests or default(c)) * prompt_tokens for c in levels)
    if most > MAX_PROMPT_WORDS:
        raise UsageError(
            f"{most:,} prompt tokens in one level (--requests × --prompt-tokens) is more than the "
            f"{MAX_PROMPT_WORDS:,} deploykit builds at once.",
            "Use fewer --requests or shorter --prompt-tokens.",
        )


def int_list(value: str, option: str, most: int) -> list[int]:
    from deploykit.values.errors import UsageError

    parts = [v.strip() for v in value.split(",") if v.strip()]
    numbers = [int(v) for v in parts if v.isascii() and v.isdigit() and len(v) <= 9]
    if not numbers or len(numbers) != len(parts) or any(not 1 <= n <= most for n in numbers):
        raise UsageError(
            f"{option} {value[:80]!r} is not a list of whole numbers from 1 to {most}.", f"e.g. {option} 1,4,8"
        )
    return numbers


def text_argument(value: str, name: str) -> None:
    """An argument that is sent on as text: not empty, and UTF-8 (a raw byte arrives as a lone surrogate)."""
    from deploykit.values.errors import UsageError

    if not value.strip():
        raise UsageError(f"{name} is empty.", f"Give the {name.lower()} to send, in quotes.")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise UsageError(
            f"{name} holds bytes that are not UTF-8 text (at character {exc.start + 1}).",
            "Check the terminal's or script's encoding (UTF-8).",
        ) from None


def progress_bar(total: int, description: str) -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from deploykit.cli.output import err_console

    progress = Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=err_console
    )
    progress.add_task(description, total=total)
    return progress


def loaded_stack(stack_dir: str) -> LoadedStack:
    from pathlib import Path

    from deploykit.app import day2 as api

    return api.load_stack(Path(stack_dir))
