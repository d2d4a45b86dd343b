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
from deploykit.services import INFERENCE, SERVICES

if TYPE_CHECKING:
    from pathlib import Path

    from deploykit.app import FleetRequest, StackRequest
    from deploykit.fleet import HostResult
    from deploykit.lifecycle import LoadedStack
    from deploykit.settings import Settings

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")


class DeployKitGroup(click.Group):
    """Runs every command inside the one error handler: message, hint, exit code; traceback only with --debug."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        # In the order of the workflow (detect → plan → render → up → day 2), not alphabetically.
        return list(self.commands)

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

    from deploykit.errors import InternalError, write_crash_report

    where = write_crash_report("".join(traceback.format_exception(exc)))
    _fail(
        f"internal error ({type(exc).__name__}): this is a bug in deploykit {__version__}; "
        f"the traceback is in {where}.",
        "Run the command again with --debug to see it, and report it with that file.",
        InternalError.exit_code,
    )


def _shown(text: str) -> str:
    """A message as the terminal gets it: no URL password, no control character (an escape sequence in a
    name from a file could rewrite the screen), no raw byte (a non-UTF-8 name arrives as a surrogate)."""
    from deploykit.engine import redact

    text = redact(text).encode("utf-8", "backslashreplace").decode("utf-8")
    return "".join(c if c in "\n\t" or not (ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F) else ascii(c)[1:-1] for c in text)


def _fail(message: str, hint: str | None, code: int, log_tail: str = "") -> None:
    if log_tail:
        click.echo(log_tail.rstrip(), err=True)
    click.echo(click.style("Error: ", fg="red", bold=True) + _shown(message), err=True)
    if hint:
        click.echo(click.style("Hint: ", fg="yellow") + _shown(hint), err=True)
    sys.exit(code)


def _not_nan(param: click.Parameter, value: float | None) -> float | None:
    # FloatRange lets nan through: every comparison with nan is false.
    if value is not None and value != value:
        raise click.BadParameter("nan is not a number of seconds.", param=param)
    return value


def _text_argument(value: str, name: str) -> None:
    """An argument that is sent on as text: not empty, and UTF-8 (a raw byte arrives as a lone surrogate)."""
    from deploykit.errors import UsageError

    if not value.strip():
        raise UsageError(f"{name} is empty.", f"Give the {name.lower()} to send, in quotes.")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise UsageError(
            f"{name} holds bytes that are not UTF-8 text (at character {exc.start + 1}).",
            "Check the terminal's or script's encoding (UTF-8).",
        ) from None


def _print_json(data: Any) -> None:
    import json

    click.echo(json.dumps(data, indent=2, ensure_ascii=False))


def _print(as_json: bool, data: object, show: Callable[[T], None], value: T) -> None:
    """``data`` as JSON with --json, else ``show(value)``: the human form."""
    if as_json:
        _print_json(data)
    else:
        show(value)


def _path(value: str | None) -> Path | None:
    # Options arrive as str: pathlib is imported only by commands that run, keeping --help fast.
    from pathlib import Path

    return None if value is None else Path(value)


def _settings(ctx: click.Context, **flags: Any) -> Settings:
    from deploykit.settings import load_settings

    root = ctx.find_root().params
    return load_settings(profiles_file=_path(root.get("profiles_file")), docker_host=root.get("docker_host"), **flags)


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


def plan_options(profile_default: str | None = "auto") -> Callable[[F], F]:
    """--profile, --host, --context, --backend and the model options, shared by plan, render and up."""

    def decorate(fn: F) -> F:
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
    callback=lambda ctx, param, value: _not_nan(param, value),
    metavar="SECONDS",
    help="Give up waiting after this long [default: from the plan].",
)

image_option = click.option(
    "--image",
    "images",
    multiple=True,
    metavar="SERVICE=REF",
    help="Use another image for a service (inference, open-webui); repeatable.",
)


@click.group(cls=DeployKitGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="deploykit")
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
@click.option("--profiles-file", type=click.Path(), help="Extra hardware profiles (TOML) [default: config dir].")
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


@cli.command(short_help="Detect GPUs, CPU, RAM, disk and Docker.")
@click.option("--json", "as_json", is_flag=True, help="Print the host profile as JSON (reusable with --host).")
@click.pass_context
def detect(ctx: click.Context, as_json: bool) -> None:
    """Detect this host: NVIDIA GPUs, CPU, RAM, disk and the Docker Engine."""
    from deploykit import app, output

    host = app.detect(_settings(ctx))
    _print(as_json, host.model_dump(mode="json"), output.show_host, host)


@cli.command(short_help="List hardware profiles and their backends.")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.pass_context
def profiles(ctx: click.Context, as_json: bool) -> None:
    """List hardware profiles with their memory and the backend the default model would get."""
    from deploykit import app, output

    rows = app.profile_rows(_settings(ctx))
    _print(as_json, rows, output.show_profiles, rows)


@cli.command(short_help="List the model catalog.")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def models(as_json: bool) -> None:
    """List the model catalog."""
    from deploykit import app, output

    catalog = app.models()
    _print(as_json, [m.model_dump(mode="json") for m in catalog], output.show_models, catalog)


@cli.command(short_help="Choose backend, context and offload, with reasons.")
@plan_options()
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
    _print(as_json, deployment.model_dump(mode="json"), output.show_plan, deployment)


@cli.command(short_help="Write the stack: compose.yaml (or swarm/kubernetes), .env, plan.json.")
@plan_options()
@stack_dir_option()
@image_option
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
    model_id: str | None,
    model_path: str | None,
    stack_dir: str,
    images: tuple[str, ...],
    target: str,
    force: bool,
    as_json: bool,
) -> None:
    """Write the stack: compose.yaml (or swarm.yaml, or kubernetes.yaml), .env (secrets, 0600) and plan.json."""
    from deploykit import app, output

    settings, request = _stack_request(ctx)
    result = app.render_stack(settings, request)
    if as_json:
        _print_json(
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

    from deploykit.app import StackRequest
    from deploykit.settings import parse_image_overrides

    p = ctx.params
    overrides = parse_image_overrides(p["images"])  # before settings: a bad --image is the first thing said
    # The stack's own deploykit.toml (written by `deploykit tune`) is one of the layers.
    stack_dir = Path(p["stack_dir"])
    settings = _settings(
        ctx, stack_dir=stack_dir.expanduser().absolute(), max_context=p["max_context"], backend=p["backend"]
    )
    return settings, StackRequest(
        stack_dir=stack_dir,
        profile=p["profile"],
        host_file=_path(p["host_file"]),
        model_id=p["model_id"],
        model_path=_path(p["model_path"]),
        image_overrides=overrides,
        target=p["target"],
        force=p["force"],
    )


def _stack(stack_dir: str) -> LoadedStack:
    from pathlib import Path

    from deploykit import app

    return app.load_stack(Path(stack_dir))


@cli.command(short_help="Start the stack and check it up to a chat.")
@plan_options(profile_default=None)
@image_option
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
    model_id: str | None,
    model_path: str | None,
    images: tuple[str, ...],
    stack_dir: str,
    force: bool,
    timeout: float | None,
    target: str | None,
    as_json: bool,
) -> None:
    """Render (or reuse) the stack, start it, and check it stage by stage up to a chat through Open WebUI."""
    from dataclasses import asdict

    from deploykit import app, output

    settings, request = _stack_request(ctx)
    report = app.up_stack(settings, request, timeout, output.ConsoleReporter())
    _print(as_json, asdict(report), output.show_up, report)


@cli.command(short_help="Show each service's state, health and model.")
@stack_dir_option()
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.pass_context
def status(ctx: click.Context, stack_dir: str, as_json: bool) -> None:
    """Per service: container state, health, URL, model served, uptime; and whether the stack is healthy."""
    from deploykit import app, output

    state = app.stack_status(_settings(ctx), _stack(stack_dir))
    _print(as_json, state, output.show_status, state)
    if not state["healthy"]:
        sys.exit(1)


@cli.command(short_help="Show the stack's logs.")
@click.argument("service", required=False, type=click.Choice(list(SERVICES)))
@stack_dir_option()
@click.option("--follow", "-f", is_flag=True, help="Keep streaming new lines.")
@click.option("--tail", default=100, type=click.IntRange(min=0), show_default=True, help="Lines of history to show.")
@click.pass_context
def logs(ctx: click.Context, service: str | None, stack_dir: str, follow: bool, tail: int) -> None:
    """Show the stack's logs (one service, or both)."""
    from deploykit import app

    sys.exit(app.stack_logs(_settings(ctx), _stack(stack_dir), service, tail, follow))


@cli.command(short_help="Restart one service or both.")
@click.argument("service", required=False, type=click.Choice(list(SERVICES)))
@stack_dir_option()
@click.pass_context
def restart(ctx: click.Context, service: str | None, stack_dir: str) -> None:
    """Restart one service, or the whole stack."""
    from deploykit import app

    app.restart_stack(_settings(ctx), _stack(stack_dir), service)
    click.echo(f"Restarted {service or 'inference and open-webui'}.")


@cli.command(short_help="Stop the stack (keeps chats unless --volumes).")
@stack_dir_option()
@click.option("--volumes", is_flag=True, help="Also delete Open WebUI's data: accounts and chats (asks first).")
@click.option("--yes", "-y", is_flag=True, help="Do not ask before deleting data.")
@click.pass_context
def down(ctx: click.Context, stack_dir: str, volumes: bool, yes: bool) -> None:
    """Stop and remove the stack's containers. Chats, accounts and the model cache are kept."""
    from deploykit import app
    from deploykit.errors import UsageError

    stack = _stack(stack_dir)
    if volumes and not yes:
        if not sys.stdin.isatty():
            raise UsageError(
                "--volumes deletes every account and chat, and no terminal is here to confirm.",
                "Add --yes if that is what you want.",
            )
        click.confirm(f"Delete all Open WebUI accounts and chats of {stack.spec.project}?", abort=True)
    app.stop_stack(_settings(ctx), stack, volumes)
    kept = "data deleted" if volumes else "chats, accounts and the model cache kept"
    click.echo(f"Stopped {stack.spec.project} ({kept}).")


@cli.command(short_help="Send one message and print the answer.")
@click.argument("message")
@stack_dir_option()
@click.option("--direct", is_flag=True, help="Ask the inference server directly instead of going through Open WebUI.")
@click.option(
    "--max-tokens", default=256, type=click.IntRange(min=1, max=1_000_000), show_default=True, help="Longest answer."
)
@click.option("--json", "as_json", is_flag=True, help="Print the whole JSON answer.")
@click.pass_context
def chat(ctx: click.Context, message: str, stack_dir: str, direct: bool, max_tokens: int, as_json: bool) -> None:
    """Send one message through Open WebUI (as the stack's admin) and print the answer."""
    from deploykit import app

    _text_argument(message, "MESSAGE")
    answer = app.chat(_stack(stack_dir), message, direct, max_tokens)
    if as_json:
        _print_json(answer.response)
        return
    click.echo(answer.text())


@cli.command(short_help="Check JSON output, reasoning and tool wiring.")
@stack_dir_option()
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.pass_context
def smoke(ctx: click.Context, stack_dir: str, as_json: bool) -> None:
    """Check what matters for the served model: JSON-schema output, reasoning wiring, tool calling."""
    from deploykit import app

    report = app.smoke(_stack(stack_dir))
    if as_json:
        _print_json({"ok": report.ok, "checks": report.checks})
    else:
        for c in report.checks:
            click.echo(f"{c['status'].upper():5} {c['name']:32} {c['detail']}")
    if not report.ok:
        sys.exit(1)


@cli.command(short_help="Check the host: engine, GPU toolkit, ports, disk.")
@click.option("--dir", "stack_dir", type=click.Path(file_okay=False), help="Also check this stack.")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.pass_context
def doctor(ctx: click.Context, stack_dir: str | None, as_json: bool) -> None:
    """Check the host for running stacks: engine, compose v2, NVIDIA toolkit, driver, ports, disk, memory."""
    from deploykit import app, output
    from deploykit.doctor import as_json as checks_json

    checks = app.doctor(_settings(ctx), _path(stack_dir))
    _print(as_json, checks_json(checks), output.show_checks, checks)
    if any(c.status == "fail" for c in checks):
        sys.exit(1)


@cli.command(short_help="Back up Open WebUI's accounts, chats and settings.")
@stack_dir_option()
@click.option(
    "--output",
    "out_dir",
    type=click.Path(file_okay=False),
    help="Folder for the archive [default: backups/ in the stack directory].",
)
@click.option("--json", "as_json", is_flag=True, help="Print the backup's manifest as JSON.")
@click.pass_context
def backup(ctx: click.Context, stack_dir: str, out_dir: str | None, as_json: bool) -> None:
    """Copy the Open WebUI volume (accounts, chats, settings) into backups/<stack>-<UTC time>.tar.gz.

    Open WebUI is paused, not stopped, while its files are copied (usually well under a second);
    the archive is mode 0600 and a .json manifest beside it records the stack id, image, time and sha256.
    """
    from dataclasses import asdict
    from pathlib import Path

    from deploykit import app

    report = app.backup_stack(_settings(ctx), Path(stack_dir), _path(out_dir))
    if as_json:
        _print_json(asdict(report))
        return
    size = report.manifest.size_bytes / 1024**2
    click.echo(f"Backed up {report.files} files of {report.manifest.volume} to {report.path} ({size:.1f} MiB).")
    click.echo(f"  sha256 {report.manifest.sha256}; Open WebUI paused {report.paused_seconds:.1f} s.")
    click.echo(f"  Restore with: deploykit restore --dir {stack_dir} {report.path}")


@cli.command(short_help="Restore Open WebUI's data from a backup.")
@click.argument("archive", type=click.Path(dir_okay=False))
@stack_dir_option()
@click.option("--force", is_flag=True, help="Restore a backup of another stack (its accounts come with it).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_context
def restore(ctx: click.Context, archive: str, stack_dir: str, force: bool, as_json: bool) -> None:
    """Replace the stack's Open WebUI data with ARCHIVE (made by `deploykit backup`).

    The archive is checked against its manifest and unpacked beside the live data first; Open WebUI is
    stopped only for the swap. A restore that fails leaves the old data. A backup of another stack is
    refused unless --force.
    """
    from dataclasses import asdict
    from pathlib import Path

    from deploykit import app

    report = app.restore_stack(_settings(ctx), Path(stack_dir), Path(archive), force)
    if as_json:
        _print_json(asdict(report))
        return
    click.echo(f"Restored {report.path} (taken {report.manifest.created} from {report.manifest.project}).")
    if report.webui_restarted:
        click.echo(f"  Open WebUI was down {report.downtime_seconds:.0f} s and answers again.")
    else:
        click.echo(f"  Open WebUI was not running; start the stack with: deploykit up --dir {stack_dir}")


@cli.command(short_help="Move to new pinned images, backing up first.")
@image_option
@stack_dir_option()
@timeout_option
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_context
def upgrade(ctx: click.Context, images: tuple[str, ...], stack_dir: str, timeout: float | None, as_json: bool) -> None:
    """Re-render the stack with this deploykit's pinned images (or --image SERVICE=REF) and restart it.

    Open WebUI's data is backed up first and the backup is kept; the plan (model, context, memory) is
    not changed. The health check runs as for `up`.
    """
    from dataclasses import asdict
    from pathlib import Path

    from deploykit import app, output
    from deploykit.settings import parse_image_overrides

    overrides = parse_image_overrides(images)
    settings = _settings(ctx)
    report = app.upgrade_stack(settings, Path(stack_dir), overrides, timeout, output.ConsoleReporter())
    if as_json:
        _print_json(asdict(report))
        return
    for service, (old, new) in report.images.items():
        click.echo(f"{service}: {old} → {new}" if old != new else f"{service}: {new} (unchanged)")
    if report.backup:
        click.echo(f"Backup kept: {report.backup}")
    output.show_up(report.up)


@cli.group(short_help="Start or maintain a site's own templates.")
def templates() -> None:
    """A site's own templates: files in the `templates_dir` setting shadow the built-in ones one by one.

    \b
      deploykit templates export /srv/lab/templates   copy the built-ins to start from
      (keep only the files you change; set templates_dir = "/srv/lab/templates" in config.toml)
      deploykit templates rebase /srv/lab/templates   after a deploykit upgrade, once your copies are current
    """


@templates.command("export", short_help="Write the built-in templates into DIR.")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--force", is_flag=True, help="Overwrite templates already in DIR.")
def templates_export(directory: str, force: bool) -> None:
    """Write the built-in templates into DIRECTORY, with a record of which built-ins they are."""
    from pathlib import Path

    from deploykit import app

    names = app.export_templates(Path(directory), force)
    click.echo(f"Wrote {len(names)} templates to {directory}: {', '.join(names)}.")
    click.echo("Keep only the ones you change, and point templates_dir at the directory.")


@templates.command("rebase", short_help="Record that DIR's copies match this deploykit's built-ins.")
@click.argument("directory", type=click.Path(file_okay=False))
def templates_rebase(directory: str) -> None:
    """Record that the copies in DIRECTORY are current with this deploykit's built-in templates.

    Run it after bringing a copy up to date with a changed built-in; `render` stops saying it changed.
    """
    from pathlib import Path

    from deploykit import app

    names = app.rebase_templates(Path(directory))
    click.echo(f"Recorded {', '.join(names) or 'no shadowed templates'} as current in {directory}.")


# ---------------------------------------------------------------- fleet of workstations


@cli.group(cls=DeployKitGroup, short_help="Many workstations from one inventory file.")
def fleet() -> None:
    """Template the stack onto a room of workstations, each reached through its own Docker Engine.

    \b
    The inventory is TOML, one [[hosts]] table per workstation:
      [[hosts]]
      name = "lab-01"
      engine = "ssh://root@lab-01"     # or context = "lab-01" (a docker context)
      profile = "cpu"                  # optional: overrides --profile / detection
      labels = { room = "b12" }
      ui_port = 7860                   # Open WebUI on that host
      inference_port = 7861            # loopback of that host only

    \b
    Images and the model reach each host through its engine (no registry, no shared disk);
    hosts run side by side (--parallel); one host failing never stops the others; the exit code
    is 1 when any host failed or could not be reached. Re-running converges.
    """


def fleet_options(fn: F) -> F:
    fn = click.option("--json", "as_json", is_flag=True, help="Print every host's result as JSON.")(fn)
    fn = click.option(
        "--dir",
        "fleet_dir",
        type=click.Path(file_okay=False),
        default="deploykit-fleet",
        show_default=True,
        help="Where the stack folders go: one per host, named after it.",
    )(fn)
    fn = click.option("--parallel", default=4, show_default=True, type=click.IntRange(1, 64), help="Hosts at once.")(fn)
    fn = click.option("--hosts", metavar="PATTERN", help="Only hosts whose name matches (globs, comma-separated).")(fn)
    fn = click.option("--inventory", required=True, type=click.Path(dir_okay=False), help="The inventory file (TOML).")(
        fn
    )
    return fn


def fleet_plan_options(fn: F) -> F:
    fn = image_option(fn)
    fn = model_options(fn)
    fn = click.option("--context", "max_context", type=int, metavar="TOKENS", help="Context length cap.")(fn)
    fn = click.option(
        "--profile", "-p", default="auto", show_default=True, help="Profile for hosts whose entry names none."
    )(fn)
    return fn


def _fleet_request(ctx: click.Context, params: dict[str, Any]) -> tuple[Settings, FleetRequest]:
    from pathlib import Path

    from deploykit.app import FleetRequest
    from deploykit.settings import parse_image_overrides

    overrides = parse_image_overrides(params.get("images", ()))
    settings = _settings(ctx, max_context=params.get("max_context"))
    return settings, FleetRequest(
        inventory=Path(params["inventory"]),
        hosts=params.get("hosts"),
        parallel=params["parallel"],
        fleet_dir=Path(params["fleet_dir"]),
        profile=params.get("profile") or "auto",
        model_id=params.get("model_id"),
        model_path=_path(params.get("model_path")),
        image_overrides=overrides,
        timeout=params.get("timeout"),
    )


def _fleet_run(
    ctx: click.Context,
    params: dict[str, Any],
    title: str,
    action: Callable[[Settings, FleetRequest], list[HostResult]],
) -> None:
    """Run ``action(settings, request)`` and print its per-host results; exit 1 when any host failed."""
    from deploykit import output
    from deploykit.fleet import summary

    settings, req = _fleet_request(ctx, params)
    results = action(settings, req)
    if params["as_json"]:
        _print_json(summary(results))
    else:
        output.show_fleet(title, results)
    if not all(r.ok for r in results):
        sys.exit(1)


def fleet_command(
    name: str, short_help: str, *options: Callable[[Any], Any]
) -> Callable[[Callable[..., None]], click.Command]:
    """A fleet subcommand: the fleet options, then ``options``; it gets the context and the parameters."""

    def make(fn: Callable[..., None]) -> click.Command:
        command: Any = click.pass_context(fn)
        for option in reversed(options):
            command = option(command)
        return fleet.command(name, short_help=short_help)(fleet_options(command))

    return make


@fleet_command("detect", "What each host's engine reports: CPU, RAM, GPUs.")
def fleet_detect(ctx: click.Context, /, **params: Any) -> None:
    """Each host through its engine: CPUs, RAM and architecture from engine info; GPUs from nvidia-smi in a
    short-lived probe container where the engine has the NVIDIA runtime."""
    from deploykit import app

    _fleet_run(ctx, params, "Fleet: detect", app.fleet_detect)


@fleet_command("plan", "The plan for each host.", fleet_plan_options)
def fleet_plan(ctx: click.Context, /, **params: Any) -> None:
    """Detect and plan each host: backend, device and the URL its Open WebUI will have."""
    from deploykit import app

    _fleet_run(ctx, params, "Fleet: plan", app.fleet_plan)


@fleet_command("render", "Write a stack folder per host.", fleet_plan_options)
def fleet_render(ctx: click.Context, /, **params: Any) -> None:
    """Write DIR/HOST/{compose.yaml,.env,plan.json} for each host; a remote host's stack mounts the model
    from a named volume on that host instead of a path on this controller's disk."""
    from deploykit import app

    _fleet_run(ctx, params, "Fleet: render", lambda s, r: app.fleet_plan(s, r, write=True))


@fleet_command(
    "up",
    "Deliver, start and check every host, in parallel.",
    fleet_plan_options,
    click.option(
        "--timeout",
        type=click.FloatRange(min=1, max=7 * 86400),
        callback=lambda ctx, param, value: _not_nan(param, value),
        metavar="SECONDS",
        help="Per host: give up waiting after this long.",
    ),
)
def fleet_up(ctx: click.Context, /, **params: Any) -> None:
    """Per host: load the images it lacks from this controller's engine, send the model into a volume
    (SHA-256 checked there), render, start and check up to a chat through Open WebUI."""
    from deploykit import app
    from deploykit.output import HostReporter

    _fleet_run(ctx, params, "Fleet: up", lambda s, r: app.fleet_up(s, r, HostReporter))


@fleet_command("status", "State, URL and error of every host.")
def fleet_status(ctx: click.Context, /, **params: Any) -> None:
    """Each host's stack: healthy or not, its URL, and what is wrong; exit 1 when any host is not healthy."""
    from deploykit import app

    _fleet_run(ctx, params, "Fleet: status", app.fleet_status)


@fleet_command("down", "Stop every host's stack (data and model volumes kept).")
def fleet_down(ctx: click.Context, /, **params: Any) -> None:
    """Stop and remove each host's containers; chats, accounts and the delivered model are kept."""
    from deploykit import app

    _fleet_run(ctx, params, "Fleet: down", app.fleet_down)


# Bounds on what bench and tune send, so a typo cannot open a million connections or build a prompt of a
# billion words: far beyond any context or machine deploykit plans for.
MAX_TOKENS = 1_048_576
MAX_CONCURRENCY = 1024
MAX_THREADS = 4096
MAX_PROMPT_WORDS = 50_000_000  # the prompts of one level are built before it starts: about 300 MiB of text
TOKENS = click.IntRange(1, MAX_TOKENS)
REQUESTS = click.IntRange(1, 100_000)


def _check_load(levels: list[int], requests: int | None, prompt_tokens: int, default: Callable[[int], int]) -> None:
    from deploykit.errors import UsageError

    most = max((requests or default(c)) * prompt_tokens for c in levels)
    if most > MAX_PROMPT_WORDS:
        raise UsageError(
            f"{most:,} prompt tokens in one level (--requests × --prompt-tokens) is more than the "
            f"{MAX_PROMPT_WORDS:,} deploykit builds at once.",
            "Use fewer --requests or shorter --prompt-tokens.",
        )


def _int_list(value: str, option: str, most: int) -> list[int]:
    from deploykit.errors import UsageError

    parts = [v.strip() for v in value.split(",") if v.strip()]
    numbers = [int(v) for v in parts if v.isascii() and v.isdigit() and len(v) <= 9]
    if not numbers or len(numbers) != len(parts) or any(not 1 <= n <= most for n in numbers):
        raise UsageError(
            f"{option} {value[:80]!r} is not a list of whole numbers from 1 to {most}.", f"e.g. {option} 1,4,8"
        )
    return numbers


def _progress(total: int, description: str) -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from deploykit.output import err_console

    progress = Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=err_console
    )
    progress.add_task(description, total=total)
    return progress


@cli.command(short_help="Measure a running stack: TTFT, ITL, tokens/s.")
@stack_dir_option()
@click.option("--concurrency", default="1,4", show_default=True, metavar="N[,N…]", help="Concurrency levels.")
@click.option("--requests", type=REQUESTS, metavar="N", help="Requests per level [default: max(8, 2 × concurrency)].")
@click.option(
    "--prompt-tokens", default=128, type=TOKENS, show_default=True, help="Prompt length of each request, in tokens."
)
@click.option(
    "--max-tokens", default=128, type=TOKENS, show_default=True, help="Tokens each request generates (EOS ignored)."
)
@click.option(
    "--via",
    type=click.Choice(list(SERVICES)),
    default=INFERENCE,
    show_default=True,
    help="Send the load to the inference server's API, or through Open WebUI as the admin.",
)
@click.option("--compare", "compare_dir", type=click.Path(file_okay=False), help="Run the same load on a second stack.")
@click.option("--chart", type=click.Path(dir_okay=False), help="Also write an HTML chart of tok/s and TTFT to FILE.")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
@click.pass_context
def bench(
    ctx: click.Context,
    stack_dir: str,
    concurrency: str,
    requests: int | None,
    prompt_tokens: int,
    max_tokens: int,
    via: str,
    compare_dir: str | None,
    chart: str | None,
    as_json: bool,
) -> None:
    """Streaming chat requests against a running stack at each concurrency level.

    Reports what `vllm bench serve` and GuideLLM report, under the same names: successful requests,
    request and output-token throughput, TTFT, TPOT and ITL (mean, median, P95, P99), and checks its
    token counts against the server's own /metrics counters.
    """
    from pathlib import Path

    from deploykit import app, output
    from deploykit.errors import UsageError
    from deploykit.textfile import check_writable

    levels = _int_list(concurrency, "--concurrency", MAX_CONCURRENCY)
    _check_load(levels, requests, prompt_tokens, app.default_requests)
    if chart:  # before the load runs: a named pipe there would block the write at the end
        check_writable(Path(chart), "--chart file", "Give the path of a new or regular .html file.", UsageError)
    dirs = [Path(stack_dir)] + ([Path(compare_dir)] if compare_dir else [])
    total = sum(requests or app.default_requests(c) for c in levels) * len(dirs)
    stacks = []
    with _progress(total, "bench") as progress:
        task = progress.task_ids[0]
        for d in dirs:
            progress.update(task, description=f"bench {d.name}")
            stacks.append(
                app.bench_stack(
                    d,
                    via=via,
                    levels=levels,
                    requests=requests,
                    prompt_tokens=prompt_tokens,
                    max_tokens=max_tokens,
                    on_result=lambda _r: progress.advance(task),
                )
            )
    report = app.bench_report(stacks, prompt_tokens, max_tokens, " ".join(sys.argv), _path(chart))
    if as_json:
        _print_json(report)
    else:
        output.show_bench(report)


@cli.command(short_help="Sweep threads × slots on the running stack; keep the best.")
@stack_dir_option()
@click.option(
    "--workload",
    type=click.Choice(["chat", "throughput"]),
    help="What to optimise: one chat at a time (chat), or 4 at once (throughput) [default: chat].",
)
@click.option(
    "--concurrency",
    type=click.IntRange(1, MAX_CONCURRENCY),
    metavar="N",
    help="Optimise for N chats at once instead of a named workload.",
)
@click.option("--threads", "threads_list", metavar="N[,N…]", help="Thread counts to try [default: from the CPUs].")
@click.option("--parallel", "parallel_list", metavar="N[,N…]", help="Slot counts to try [default: from the workload].")
@click.option(
    "--requests", type=REQUESTS, metavar="N", help="Requests per candidate [default: max(4, 2 × concurrency)]."
)
@click.option(
    "--prompt-tokens", default=128, type=TOKENS, show_default=True, help="Prompt length of each request, in tokens."
)
@click.option("--max-tokens", default=128, type=TOKENS, show_default=True, help="Tokens each request generates.")
@click.option(
    "--time-limit",
    default=90.0,
    type=click.FloatRange(min=1, max=86400),
    callback=lambda ctx, param, value: _not_nan(param, value),
    show_default=True,
    metavar="SECONDS",
    help="Cut a candidate's measurement after this long (it scores 0: too slow).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the sweep as JSON.")
@click.pass_context
def tune(
    ctx: click.Context,
    stack_dir: str,
    workload: str | None,
    concurrency: int | None,
    threads_list: str | None,
    parallel_list: str | None,
    requests: int | None,
    prompt_tokens: int,
    max_tokens: int,
    time_limit: float,
    as_json: bool,
) -> None:
    """Measure the running stack with each candidate setting and keep the fastest for your workload.

    Restarts only the inference service, once per candidate (threads × parallel slots). The winner is
    written to the stack's deploykit.toml, so later `render` and `up` keep it, and the stack is left
    running it. Secrets, accounts and chats are untouched. A few minutes on a small model.
    """
    from dataclasses import asdict
    from pathlib import Path

    from deploykit import app, output
    from deploykit.errors import UsageError
    from deploykit.tune import WORKLOAD_CONCURRENCY, default_requests

    if workload and concurrency:
        raise UsageError("--workload and --concurrency both say what to optimise.", "Give one of them.")
    name = workload or (None if concurrency else "chat")
    level = concurrency or WORKLOAD_CONCURRENCY[name or "chat"]
    _check_load([level], requests, prompt_tokens, default_requests)
    err = output.err_console
    err.print(f"Optimising for {name or f'concurrency {level}'}: {level} chat(s) at once.")
    progress = _progress(1, "tune")
    with progress:
        task = progress.task_ids[0]

        def on_candidate(label: str) -> None:
            progress.update(task, description=label, completed=0, total=requests or default_requests(level))

        report = app.tune_stack(
            _settings(ctx),
            Path(stack_dir),
            concurrency=level,
            workload_name=name,
            prompt_tokens=prompt_tokens,
            max_tokens=max_tokens,
            requests=requests,
            threads=_int_list(threads_list, "--threads", MAX_THREADS) if threads_list else None,
            parallel=_int_list(parallel_list, "--parallel", MAX_CONCURRENCY) if parallel_list else None,
            time_limit=time_limit,
            on_candidate=on_candidate,
            on_result=lambda _r: progress.advance(task),
        )
    if as_json:
        _print_json(asdict(report))
    else:
        output.show_tune(report)
    if not report.healthy:
        sys.exit(1)


def main() -> None:
    cli(prog_name="deploykit")
