"""Day two of a running stack: status, logs, restart, down, chat, smoke, doctor; a site's templates."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import click

from deploykit.cli.common import loaded_stack, path_or_none, settings_from, show, stack_dir_option, text_argument

if TYPE_CHECKING:
    pass


@click.command(short_help="Show each service's state, health and model.")
@stack_dir_option()
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.pass_context
def status(ctx: click.Context, stack_dir: str, as_json: bool) -> None:
    """Per service: container state, health, URL, model served, uptime; and whether the stack is healthy."""
    from deploykit.app import day2 as api
    from deploykit.cli import output

    state = api.stack_status(settings_from(ctx), loaded_stack(stack_dir))
    show(as_json, state, output.show_status, state)
    if not state["healthy"]:
        sys.exit(1)


@click.command(short_help="Show the stack's logs.")
@click.argument("service", required=False, metavar="[SERVICE]")
@stack_dir_option()
@click.option("--follow", "-f", is_flag=True, help="Keep streaming new lines.")
@click.option("--tail", default=100, type=click.IntRange(min=0), show_default=True, help="Lines of history to show.")
@click.pass_context
def logs(ctx: click.Context, service: str | None, stack_dir: str, follow: bool, tail: int) -> None:
    """Show the stack's logs (one service, or all of them).

    SERVICE: inference, open-webui or tls-proxy; a stack of several models names its servers router and
    inference-MODEL (`deploykit status` lists them)."""
    from deploykit.app import day2 as api

    sys.exit(api.stack_logs(settings_from(ctx), loaded_stack(stack_dir), service, tail, follow))


@click.command(short_help="Restart one service or both.")
@click.argument("service", required=False, metavar="[SERVICE]")
@stack_dir_option()
@click.pass_context
def restart(ctx: click.Context, service: str | None, stack_dir: str) -> None:
    """Restart one service (as `logs` names them), or the whole stack."""
    from deploykit.app import day2 as api
    from deploykit.cli import output

    api.restart_stack(settings_from(ctx), loaded_stack(stack_dir), service)
    output.show_restarted(service)


@click.command(short_help="Stop the stack (keeps chats unless --volumes).")
@stack_dir_option()
@click.option("--volumes", is_flag=True, help="Also delete Open WebUI's data: accounts and chats (asks first).")
@click.option("--yes", "-y", is_flag=True, help="Do not ask before deleting data.")
@click.pass_context
def down(ctx: click.Context, stack_dir: str, volumes: bool, yes: bool) -> None:
    """Stop and remove the stack's containers. Chats, accounts and the model cache are kept."""
    from deploykit.app import day2 as api
    from deploykit.cli import output
    from deploykit.values.errors import UsageError

    stack = loaded_stack(stack_dir)
    if volumes and not yes:
        if not sys.stdin.isatty():
            raise UsageError(
                "--volumes deletes every account and chat, and no terminal is here to confirm.",
                "Add --yes if that is what you want.",
            )
        click.confirm(f"Delete all Open WebUI accounts and chats of {stack.spec.project}?", abort=True)
    api.stop_stack(settings_from(ctx), stack, volumes)
    output.show_stopped(stack.spec.project, volumes)


@click.command(short_help="Send one message and print the answer.")
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
    from deploykit.app import day2 as api
    from deploykit.cli import output

    text_argument(message, "MESSAGE")
    answer = api.chat(loaded_stack(stack_dir), message, direct, max_tokens)
    show(as_json, answer.response, output.show_answer, answer)


@click.command(short_help="Check JSON output, reasoning and tool wiring.")
@stack_dir_option()
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.pass_context
def smoke(ctx: click.Context, stack_dir: str, as_json: bool) -> None:
    """Check what matters for the served model: JSON-schema output, reasoning wiring, tool calling."""
    from deploykit.app import day2 as api
    from deploykit.cli import output

    report = api.smoke(loaded_stack(stack_dir))
    show(as_json, {"ok": report.ok, "checks": report.checks}, output.show_smoke, report)
    if not report.ok:
        sys.exit(1)


@click.command(short_help="Check the host: engine, GPU toolkit, ports, disk.")
@click.option("--dir", "stack_dir", type=click.Path(file_okay=False), help="Also check this stack.")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.pass_context
def doctor(ctx: click.Context, stack_dir: str | None, as_json: bool) -> None:
    """Check the host for running stacks: engine, compose v2, NVIDIA toolkit, driver, ports, disk, memory."""
    from deploykit.app import day2 as api
    from deploykit.cli import output
    from deploykit.running.doctor import as_json as checks_json

    checks = api.doctor(settings_from(ctx), path_or_none(stack_dir))
    show(as_json, checks_json(checks), output.show_checks, checks)
    if any(c.status == "fail" for c in checks):
        sys.exit(1)


@click.group(short_help="Start or maintain a site's own templates.")
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

    from deploykit.app import day2 as api
    from deploykit.cli import output

    output.show_exported(api.export_templates(Path(directory), force), directory)


@templates.command("rebase", short_help="Record that DIR's copies match this deploykit's built-ins.")
@click.argument("directory", type=click.Path(file_okay=False))
def templates_rebase(directory: str) -> None:
    """Record that the copies in DIRECTORY are current with this deploykit's built-in templates.

    Run it after bringing a copy up to date with a changed built-in; `render` stops saying it changed.
    """
    from pathlib import Path

    from deploykit.app import day2 as api
    from deploykit.cli import output

    output.show_rebased(api.rebase_templates(Path(directory)), directory)
