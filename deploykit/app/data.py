"""A stack's data: backups and restores of Open WebUI's volume, and upgrades to new pinned images."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from deploykit.app.resolve import engine_for
from deploykit.app.stack import choose_images, prepare_spec
from deploykit.config.settings import Settings
from deploykit.seams import stackdir
from deploykit.values.services import TLS_PROXY, WEBUI

if TYPE_CHECKING:
    # Running stacks needs httpx and the docker SDK: plan and render should not pay for them.
    from deploykit.running.backup import BackupReport, RestoreReport
    from deploykit.running.stack import LoadedStack
    from deploykit.running.stages import Reporter, UpReport


def _compose_stack(stack_dir: Path) -> LoadedStack:
    """The stack at ``stack_dir``; backups, restores and upgrades handle Compose stacks only."""
    from deploykit.running.stack import load_stack

    return load_stack(stack_dir.expanduser().absolute()).require_compose(
        "backup, restore and upgrade handle Compose stacks only",
        "Back up the Open WebUI volume with your orchestrator's tools.",
    )


def backup_stack(settings: Settings, stack_dir: Path, out_dir: Path | None) -> BackupReport:
    """Back up the stack's Open WebUI data into ``out_dir`` (default: the stack's backups/)."""
    from deploykit.running import backup

    return backup.backup(_compose_stack(stack_dir), engine_for(settings), out_dir)


def restore_stack(settings: Settings, stack_dir: Path, archive: Path, force: bool) -> RestoreReport:
    """Put a backup's Open WebUI data back; Open WebUI is stopped only for the swap and waited for after."""
    from deploykit.running import backup
    from deploykit.running.stages import wait_webui

    stack = _compose_stack(stack_dir)
    docker_host = engine_for(settings)

    def wait() -> float:
        return wait_webui(stack, docker_host)

    return backup.restore(stack, docker_host, archive, force, wait_healthy=wait)


@dataclass(frozen=True)
class UpgradeReport:
    images: dict[str, tuple[str, str]]  # service -> (old, new)
    backup: str | None  # the archive taken first (None: the stack had no data yet)
    up: UpReport  # the restart with the new images
    restored: str | None = None  # the backup whose data the new images start on (--restore)


def upgrade_images(settings: Settings, stack_dir: Path, overrides: dict[str, str]) -> dict[str, tuple[str, str]]:
    """Old and new image per service: today's pinned defaults for the stack's backend, then --image."""
    from deploykit.running.stack import load_stack

    stack = load_stack(stack_dir.expanduser().absolute())
    new = choose_images(settings, stack.spec.plan, overrides)
    if stack.spec.tls is not None:  # the HTTPS proxy moves to today's pinned image too
        new.setdefault(TLS_PROXY, settings.images.caddy)
    else:
        new.pop(TLS_PROXY, None)
    return {service: (stack.spec.images.get(service, ""), new[service]) for service in new}


def upgrade_stack(
    settings: Settings,
    stack_dir: Path,
    overrides: dict[str, str],
    timeout: float | None,
    reporter: Reporter,
    restore_from: Path | None = None,
) -> UpgradeReport:
    """Back up the data, re-render with the new pinned images (the plan is kept), and bring the stack up.

    Open WebUI's migrations only go forward: an image older than the data is refused, unless ``restore_from``
    gives data it can open (the backup taken before an upgrade), which is swapped in before it starts.
    """
    from deploykit.running import backup, lifecycle, webui_data
    from deploykit.seams import engine

    stack_dir = stack_dir.expanduser().absolute()
    stack = _compose_stack(stack_dir)
    docker_host = engine_for(settings)
    changes = upgrade_images(settings, stack_dir, overrides)
    for service, (_, new) in changes.items():
        if not engine.image_present(docker_host, new):
            reporter.note(f"Pulling {new} ({service}) …")
            engine.pull_image(docker_host, new)  # before anything changes: a failed pull leaves all as is
    new_webui = changes[WEBUI][1]
    volume = stack.engine_stack(docker_host).volume_name(backup.DATA_VOLUME)
    if restore_from is not None:
        restore_from = restore_from.expanduser().absolute()
        backup.check_restore(stack, docker_host, restore_from, False, opened_by=new_webui)
    elif volume is not None:
        backups = backup.default_dir(stack_dir)
        webui_data.check_upgrade(docker_host, stack_dir, stack.spec.project, new_webui, volume, backups)
    archive: str | None = None
    if volume is not None:
        archive = backup.backup(stack, docker_host).path
        reporter.note(f"Backed up Open WebUI's data to {archive} (kept).")
    else:
        reporter.note("No Open WebUI data yet: nothing to back up.")
    existing = stackdir.open_for_render(stack_dir)
    spec = stack.spec.model_copy(update={"images": {s: new for s, (_, new) in changes.items()}})
    prepared = prepare_spec(settings, existing, spec, stack.secrets, stack.inputs, False, [])
    for note in prepared.notes:
        reporter.note(note)
    if restore_from is not None:
        # Left stopped after the swap: the old image must not start on (and migrate) the restored data.
        backup.restore(stack, docker_host, restore_from, opened_by=new_webui, start_again=False)
        reporter.note(f"Restored {restore_from} for {new_webui}.")
    report = lifecycle.up(prepared.loaded(), docker_host, timeout, reporter, prepared.files, write_files=prepared.write)
    return UpgradeReport(changes, archive, report, str(restore_from) if restore_from else None)
