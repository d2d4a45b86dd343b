"""The command line: parse, call ``deploykit.app``, print. No decisions live here.

Only click is imported at module level, so ``deploykit --help`` stays fast; each command imports
what it needs when it runs.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar, cast

import click

from deploykit import __version__

if TYPE_CHECKING:
    from pathlib import Path

    from deploykit.render import Target
    from deploykit.settings import Settings

F = TypeVar("F", bound=Callable[..., Any])


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


timeout_option = click.option(
    "--timeout", type=float, metavar="SECONDS", help="Give up waiting after this long [default: from the plan]."
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
    if as_json:
        _print_json(host.model_dump(mode="json"))
    else:
        output.show_host(host)


@cli.command(short_help="List hardware profiles and their backends.")
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


@cli.command(short_help="List the model catalog.")
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
    if as_json:
        _print_json(deployment.model_dump(mode="json"))
    else:
        output.show_plan(deployment)


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
    as_json: bool,
) -> None:
    """Write the stack: compose.yaml (or swarm.yaml, or kubernetes.yaml), .env (secrets, 0600) and plan.json."""
    from deploykit import app, output

    settings, inputs = _stack_inputs(
        ctx, profile, host_file, max_context, backend, model_id, model_path, images, stack_dir
    )
    result = app.render_stack(settings, profile=profile, target=target, **inputs)
    if as_json:
        _print_json(
            {
                "dir": str(result.stack_dir),
                "changed": result.changed,
                "project": result.spec.project,
                "plan": result.spec.plan.model_dump(mode="json"),
                "notes": result.notes,
            }
        )
    else:
        output.show_rendered(result)


def _stack_inputs(
    ctx: click.Context,
    profile: str | None,
    host_file: str | None,
    max_context: int | None,
    backend: str | None,
    model_id: str | None,
    model_path: str | None,
    images: tuple[str, ...],
    stack_dir: str,
) -> tuple[Settings, dict[str, Any]]:
    """Settings and the stack arguments render and up share, from their common options."""
    from pathlib import Path

    from deploykit.settings import parse_image_overrides

    overrides = parse_image_overrides(images)  # before settings: a bad --image is the first thing said
    settings = _settings(ctx, max_context=max_context, backend=backend)
    return settings, {
        "host_file": _path(host_file),
        "model_id": model_id,
        "model_path": _path(model_path),
        "image_overrides": overrides,
        "stack_dir": Path(stack_dir),
    }


def _stack(ctx: click.Context, stack_dir: str) -> Any:
    from pathlib import Path

    from deploykit.lifecycle import load_stack

    return load_stack(Path(stack_dir).absolute())


@cli.command(short_help="Start the stack and check it up to a chat.")
@plan_options(profile_default=None)
@image_option
@stack_dir_option()
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
    timeout: float | None,
    target: str | None,
    as_json: bool,
) -> None:
    """Render (or reuse) the stack, start it, and check it stage by stage up to a chat through Open WebUI."""
    from dataclasses import asdict

    from deploykit import app, output

    settings, inputs = _stack_inputs(
        ctx, profile, host_file, max_context, backend, model_id, model_path, images, stack_dir
    )
    report = app.up_stack(
        settings,
        profile=profile,
        timeout=timeout,
        target=cast("Target | None", target),
        reporter=output.ConsoleReporter(),
        **inputs,
    )
    if as_json:
        _print_json(asdict(report))
    else:
        output.show_up(report)


@cli.command(short_help="Show each service's state, health and model.")
@stack_dir_option()
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.pass_context
def status(ctx: click.Context, stack_dir: str, as_json: bool) -> None:
    """Per service: container state, health, URL, model served, uptime; and whether the stack is healthy."""
    from deploykit import lifecycle, output

    state = lifecycle.status(_stack(ctx, stack_dir), _settings(ctx).docker_host)
    if as_json:
        _print_json(state)
    else:
        output.show_status(state)
    if not state["healthy"]:
        sys.exit(1)


@cli.command(short_help="Show the stack's logs.")
@click.argument("service", required=False, type=click.Choice(["inference", "open-webui"]))
@stack_dir_option()
@click.option("--follow", "-f", is_flag=True, help="Keep streaming new lines.")
@click.option("--tail", default=100, show_default=True, help="Lines of history to show.")
@click.pass_context
def logs(ctx: click.Context, service: str | None, stack_dir: str, follow: bool, tail: int) -> None:
    """Show the stack's logs (one service, or both)."""
    from deploykit.proc import run_attached

    engine_stack = _stack(ctx, stack_dir).engine_stack(_settings(ctx).docker_host)
    sys.exit(run_attached(engine_stack.logs_command(service, tail, follow), env=engine_stack.env()))


@cli.command(short_help="Restart one service or both.")
@click.argument("service", required=False, type=click.Choice(["inference", "open-webui"]))
@stack_dir_option()
@click.pass_context
def restart(ctx: click.Context, service: str | None, stack_dir: str) -> None:
    """Restart one service, or the whole stack."""
    from deploykit import lifecycle

    lifecycle.restart(_stack(ctx, stack_dir), _settings(ctx).docker_host, service)
    click.echo(f"Restarted {service or 'inference and open-webui'}.")


@cli.command(short_help="Stop the stack (keeps chats unless --volumes).")
@stack_dir_option()
@click.option("--volumes", is_flag=True, help="Also delete Open WebUI's data: accounts and chats (asks first).")
@click.option("--yes", "-y", is_flag=True, help="Do not ask before deleting data.")
@click.pass_context
def down(ctx: click.Context, stack_dir: str, volumes: bool, yes: bool) -> None:
    """Stop and remove the stack's containers. Chats, accounts and the model cache are kept."""
    from deploykit import lifecycle
    from deploykit.errors import UsageError

    stack = _stack(ctx, stack_dir)
    if volumes and not yes:
        if not sys.stdin.isatty():
            raise UsageError(
                "--volumes deletes every account and chat, and no terminal is here to confirm.",
                "Add --yes if that is what you want.",
            )
        click.confirm(f"Delete all Open WebUI accounts and chats of {stack.spec.project}?", abort=True)
    lifecycle.down(stack, _settings(ctx).docker_host, volumes)
    kept = "data deleted" if volumes else "chats, accounts and the model cache kept"
    click.echo(f"Stopped {stack.spec.project} ({kept}).")


@cli.command(short_help="Send one message and print the answer.")
@click.argument("message")
@stack_dir_option()
@click.option("--direct", is_flag=True, help="Ask the inference server directly instead of going through Open WebUI.")
@click.option("--max-tokens", default=256, show_default=True, help="Longest answer.")
@click.option("--json", "as_json", is_flag=True, help="Print the whole JSON answer.")
@click.pass_context
def chat(ctx: click.Context, message: str, stack_dir: str, direct: bool, max_tokens: int, as_json: bool) -> None:
    """Send one message through Open WebUI (as the stack's admin) and print the answer."""
    from deploykit import lifecycle
    from deploykit.health import split_answer

    data = lifecycle.chat(_stack(ctx, stack_dir), message, direct, max_tokens)
    if as_json:
        _print_json(data)
        return
    _, text = split_answer(data)
    if not text:
        from deploykit.errors import HealthError

        raise HealthError(
            "the model answered with no text.", "Try a larger --max-tokens; reasoning models think first."
        )
    click.echo(text)


@cli.command(short_help="Check JSON output, reasoning and tool wiring.")
@stack_dir_option()
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.pass_context
def smoke(ctx: click.Context, stack_dir: str, as_json: bool) -> None:
    """Check what matters for the served model: JSON-schema output, reasoning wiring, tool calling."""
    from deploykit import lifecycle

    stack = _stack(ctx, stack_dir)
    checks = lifecycle.smoke(stack, stack.stack_file.read_text(encoding="utf-8"))
    if as_json:
        _print_json({"ok": all(c["status"] != "fail" for c in checks), "checks": checks})
    else:
        for c in checks:
            click.echo(f"{c['status'].upper():5} {c['name']:32} {c['detail']}")
    if any(c["status"] == "fail" for c in checks):
        sys.exit(1)


@cli.command(short_help="Check the host: engine, GPU toolkit, ports, disk.")
@click.option("--dir", "stack_dir", type=click.Path(file_okay=False), help="Also check this stack.")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.pass_context
def doctor(ctx: click.Context, stack_dir: str | None, as_json: bool) -> None:
    """Check the host for running stacks: engine, compose v2, NVIDIA toolkit, driver, ports, disk, memory."""
    from pathlib import Path

    from deploykit import app, output
    from deploykit.doctor import as_json as checks_json
    from deploykit.doctor import run_checks
    from deploykit.lifecycle import load_stack

    settings = _settings(ctx)
    stack = load_stack(Path(stack_dir).absolute()) if stack_dir else None
    checks = run_checks(app.detect(settings), settings.docker_host, settings.model_cache, stack)
    if as_json:
        _print_json(checks_json(checks))
    else:
        output.show_checks(checks)
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

    from deploykit.customise import export_templates

    names = export_templates(Path(directory), force)
    click.echo(f"Wrote {len(names)} templates to {directory}: {', '.join(names)}.")
    click.echo("Keep only the ones you change, and point templates_dir at the directory.")


@templates.command("rebase", short_help="Record that DIR's copies match this deploykit's built-ins.")
@click.argument("directory", type=click.Path(file_okay=False))
def templates_rebase(directory: str) -> None:
    """Record that the copies in DIRECTORY are current with this deploykit's built-in templates.

    Run it after bringing a copy up to date with a changed built-in; `render` stops saying it changed.
    """
    from pathlib import Path

    from deploykit.customise import rebase_templates

    names = rebase_templates(Path(directory))
    click.echo(f"Recorded {', '.join(names) or 'no shadowed templates'} as current in {directory}.")


def main() -> None:
    cli(prog_name="deploykit")
