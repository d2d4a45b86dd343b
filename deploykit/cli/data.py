"""A stack's data: backup, restore, upgrade."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from deploykit.cli.common import image_option, path_or_none, settings_from, show, stack_dir_option, timeout_option

if TYPE_CHECKING:
    pass


@click.command(short_help="Back up Open WebUI's accounts, chats and settings.")
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

    from deploykit.app import data as api
    from deploykit.cli import output

    report = api.backup_stack(settings_from(ctx), Path(stack_dir), path_or_none(out_dir))
    show(as_json, asdict(report), lambda r: output.show_backup(r, stack_dir), report)


@click.command(short_help="Restore Open WebUI's data from a backup.")
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

    from deploykit.app import data as api
    from deploykit.cli import output

    report = api.restore_stack(settings_from(ctx), Path(stack_dir), Path(archive), force)
    show(as_json, asdict(report), lambda r: output.show_restore(r, stack_dir), report)


@click.command(short_help="Move to new pinned images, backing up first.")
@image_option
@stack_dir_option()
@timeout_option
@click.option(
    "--restore",
    "restore_from",
    type=click.Path(dir_okay=False),
    help="Start the new images on this backup's data (to go back: the backup taken before an upgrade).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_context
def upgrade(
    ctx: click.Context,
    images: tuple[str, ...],
    stack_dir: str,
    timeout: float | None,
    restore_from: str | None,
    as_json: bool,
) -> None:
    """Re-render the stack with this deploykit's pinned images (or --image SERVICE=REF) and restart it.

    Open WebUI's data is backed up first and the backup is kept; the plan (model, context, memory) is
    not changed. The health check runs as for `up`. Open WebUI's database migrations only go forward, so
    an Open WebUI older than the data is refused; go back with the backup taken before the upgrade:

    \b
      deploykit upgrade --image open-webui=OLD --restore backups/NAME.tar.gz
    """
    from dataclasses import asdict
    from pathlib import Path

    from deploykit.app import data as api
    from deploykit.cli import output
    from deploykit.config.settings import parse_image_overrides

    overrides = parse_image_overrides(images)
    settings = settings_from(ctx)
    restore = Path(restore_from) if restore_from else None
    report = api.upgrade_stack(settings, Path(stack_dir), overrides, timeout, output.ConsoleReporter(), restore)
    show(as_json, asdict(report), output.show_upgrade, report)
