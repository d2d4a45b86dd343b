"""`deploykit fleet`: many workstations from one inventory file."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

from deploykit.cli.common import (
    DeployKitGroup,
    F,
    context_option,
    image_option,
    model_flags,
    model_options,
    not_nan,
    path_or_none,
    print_json,
    settings_from,
    tls_option,
)

if TYPE_CHECKING:
    from deploykit.app.fleet import FleetRequest, HostResult
    from deploykit.config.settings import Settings


@click.group(cls=DeployKitGroup, short_help="Many workstations from one inventory file.")
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
    fn = tls_option(fn)
    fn = image_option(fn)
    fn = model_options(fn)
    fn = context_option(fn)
    fn = click.option(
        "--profile", "-p", default="auto", show_default=True, help="Profile for hosts whose entry names none."
    )(fn)
    return fn


def _fleet_request(ctx: click.Context, params: dict[str, Any]) -> tuple[Settings, FleetRequest]:
    from pathlib import Path

    from deploykit.app.fleet import FleetRequest
    from deploykit.config.settings import parse_image_overrides

    overrides = parse_image_overrides(params.get("images", ()))
    model_id, model_path, several = model_flags(params.get("model_id", ()), params.get("model_path", ()))
    settings = settings_from(ctx, max_context=params.get("max_context"), tls=params.get("tls"), **several)
    return settings, FleetRequest(
        inventory=Path(params["inventory"]),
        hosts=params.get("hosts"),
        parallel=params["parallel"],
        fleet_dir=Path(params["fleet_dir"]),
        profile=params.get("profile") or "auto",
        model_id=model_id,
        model_path=path_or_none(model_path),
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
    from deploykit.app.fleet import summary
    from deploykit.cli import output

    settings, req = _fleet_request(ctx, params)
    results = action(settings, req)
    if params["as_json"]:
        print_json(summary(results))
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
    from deploykit.app import fleet as api

    _fleet_run(ctx, params, "Fleet: detect", api.fleet_detect)


@fleet_command("plan", "The plan for each host.", fleet_plan_options)
def fleet_plan(ctx: click.Context, /, **params: Any) -> None:
    """Detect and plan each host: backend, device and the URL its Open WebUI will have."""
    from deploykit.app import fleet as api

    _fleet_run(ctx, params, "Fleet: plan", api.fleet_plan)


@fleet_command("render", "Write a stack folder per host.", fleet_plan_options)
def fleet_render(ctx: click.Context, /, **params: Any) -> None:
    """Write DIR/HOST/{compose.yaml,.env,plan.json} for each host; a remote host's stack mounts the model
    from a named volume on that host instead of a path on this controller's disk."""
    from deploykit.app import fleet as api

    _fleet_run(ctx, params, "Fleet: render", lambda s, r: api.fleet_plan(s, r, write=True))


@fleet_command(
    "up",
    "Deliver, start and check every host, in parallel.",
    fleet_plan_options,
    click.option(
        "--timeout",
        type=click.FloatRange(min=1, max=7 * 86400),
        callback=lambda ctx, param, value: not_nan(param, value),
        metavar="SECONDS",
        help="Per host: give up waiting after this long.",
    ),
)
def fleet_up(ctx: click.Context, /, **params: Any) -> None:
    """Per host: load the images it lacks from this controller's engine, send the model into a volume
    (SHA-256 checked there), render, start and check up to a chat through Open WebUI."""
    from deploykit.app import fleet as api
    from deploykit.cli.output import HostReporter

    _fleet_run(ctx, params, "Fleet: up", lambda s, r: api.fleet_up(s, r, HostReporter))


@fleet_command("status", "State, URL and error of every host.")
def fleet_status(ctx: click.Context, /, **params: Any) -> None:
    """Each host's stack: healthy or not, its URL, and what is wrong; exit 1 when any host is not healthy."""
    from deploykit.app import fleet as api

    _fleet_run(ctx, params, "Fleet: status", api.fleet_status)


@fleet_command("down", "Stop every host's stack (data and model volumes kept).")
def fleet_down(ctx: click.Context, /, **params: Any) -> None:
    """Stop and remove each host's containers; chats, accounts and the delivered model are kept."""
    from deploykit.app import fleet as api

    _fleet_run(ctx, params, "Fleet: down", api.fleet_down)
