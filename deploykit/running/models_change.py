"""`deploykit models add|remove` on a running stack: only what changed starts, Open WebUI's connections follow."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from typing import cast

from deploykit.running.served import served_by
from deploykit.running.stack import LoadedStack
from deploykit.running.stages import (
    Reporter,
    StageRow,
    _container_watch,
    model_stages,
    reread_router_preset,
    run_stages,
    server_stages,
)
from deploykit.seams import engine, webui
from deploykit.values.errors import PreflightError
from deploykit.values.services import WEBUI


@dataclass
class ModelsChange:
    """What `deploykit models add|remove` did to a running stack."""

    stack_dir: str
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    models: list[str] = field(default_factory=list)  # what the stack serves now, the default first
    started: list[str] = field(default_factory=list)  # services created or recreated
    reloaded: bool = False  # the router read its preset again (its other models kept running)
    stages: list[StageRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def change_models(
    before: LoadedStack,
    after: LoadedStack,
    docker_host: engine.EngineAddress,
    write_files: Callable[[], list[str]],
    reporter: Reporter,
    timeout: float = 600,
) -> ModelsChange:
    """Bring a running stack from ``before``'s models to ``after``'s, leaving the rest running.

    The files are written first (all or nothing); then compose is asked for the servers of ``after`` only:
    it creates a new vLLM service, removes a dropped one (an orphan now) and leaves an unchanged service running,
    so Open WebUI and its volume (accounts, chats) are not touched. A router whose own command did not change
    keeps running too and reads its preset again (``GET /models?reload=1``): its other models stay loaded (the
    rendered router mounts deploykit's model cache whole and, together, runs with --models-max at a stack's most,
    so a model of the cache added or removed changes its preset only).
    Open WebUI's stored connections are then written to the new list, and each added model must be listed and
    answer a chat through it."""
    old, new = served_by(before), served_by(after)
    report = ModelsChange(
        stack_dir=str(after.dir),
        added=[m.id for m in new.models if old.model(m.id) is None],
        removed=[m.id for m in old.models if new.model(m.id) is None],
        models=[m.id for m in new.models],
    )
    engine_stack = after.engine_stack(docker_host)
    running_before = {c.service: c.started_at for c in engine_stack.containers() if c.state == "running"}
    if WEBUI not in running_before:  # before anything is written: this changes a running stack only
        raise PreflightError(
            f"the stack in {after.dir} is not running (Open WebUI is not up), so its models were not changed.",
            f"Start it with `deploykit up --dir {after.dir}`, then add or remove the model.",
        )
    changed = write_files()
    reporter.note(f"Wrote {', '.join(changed) or 'nothing new'}.")
    engine_stack.up(*(s.service for s in new.servers))  # --remove-orphans: a dropped server goes
    running_after = {c.service: c.started_at for c in engine_stack.containers() if c.state == "running"}
    report.started = sorted(s for s, at in running_after.items() if running_before.get(s) != at)
    key = after.api_key
    for server in new.servers:
        if server.router and server.service not in report.started:
            reread_router_preset(after, docker_host, server.service)
            report.reloaded = True
    with ExitStack() as clients:
        ui = clients.enter_context(after.webui_client())
        stages = [s for server in new.servers for s in server_stages(server, key, clients)]
        token, _ = webui.admin_token(ui, *after.admin)
        ui.headers["Authorization"] = f"Bearer {token}"
        urls, keys, configs = new.webui_connections(key)
        report.notes += webui.sync_connections(ui, urls, keys, configs, new.default_model)
        for model_id in report.added:
            model = new.model(model_id)
            assert model is not None
            stages += model_stages(ui, model)
        results = run_stages(
            stages,
            timeout,
            reporter,
            watch=lambda service: _container_watch(after, docker_host, service),
            log_tail=lambda service: engine_stack.log_tail(service, 25),
        )
    report.stages = [cast(StageRow, asdict(r)) for r in results]
    return report
