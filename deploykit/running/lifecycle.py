"""Running a rendered stack: preflight, model, compose up, staged health, and the day-2 commands.

Functions take a loaded stack and its engine, talk to Docker through ``engine`` and to the servers through
``health``/``webui``, and return plain data; progress goes to a ``Reporter``."""

from __future__ import annotations

import errno
import shutil
import socket
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Literal, NotRequired, Protocol, Required, TypedDict

from deploykit import backends
from deploykit.planning.render import StackIdentity
from deploykit.running import tls_proxy
from deploykit.running.served import Served, served_by
from deploykit.running.stack import LoadedStack, identity
from deploykit.running.stages import (
    WEBUI_START_SECONDS,
    Reporter,
    UpReport,
    _container_watch,
    check_stack,
    local_webui_url,
)
from deploykit.seams import compose, engine, health, webui
from deploykit.seams.override import OVERRIDE_FILE, describe, override_path
from deploykit.values.errors import EngineError, HealthError, PreflightError, UsageError
from deploykit.values.services import SERVICES, TLS_PROXY, WEBUI, webui_url
from deploykit.values.stackfiles import STACK_ID
from deploykit.values.units import GiB, gib

if TYPE_CHECKING:
    from deploykit.backends.base import Backend
    from deploykit.seams.detect import Address
    from deploykit.values.model import ModelSpec


class ServiceStatus(TypedDict, total=False):
    """One service in `deploykit status`; the container's fields only when it exists."""

    service: Required[str]
    state: Required[str]
    health: Required[str | None]
    uptime_s: Required[int | None]
    image: str
    ports: list[str]
    restarts: int
    url: str
    model: str | None
    detail: str


class ModelStatus(TypedDict):
    """One model of a several-model stack in `deploykit status`."""

    model: str
    service: str  # the server that serves it (a router serves several)
    backend: str
    default: bool
    on_demand: bool
    state: str  # loaded | loading | unloaded | sleeping | failed (a router's word), or "missing" with no server
    planned_bytes: int  # the plan's total for this model
    # What the engine counts for the model's container: a router's models share one, so the same figure stands
    # beside each of them, with the plan's own per-model figure next to it.
    container_bytes: int | None


class StackStatus(StackIdentity):
    healthy: bool
    override: dict[str, str] | None  # the site's compose.override.yaml in effect, if any
    services: list[ServiceStatus]
    models: NotRequired[list[ModelStatus]]  # stacks of several models: each one's state and memory
    tls: NotRequired[dict[str, object]]  # stacks with HTTPS: address, certificate, expiry, the CA to trust


class SmokeCheck(TypedDict):
    name: str
    status: Literal["pass", "fail", "skip"]
    detail: str


def port_problem(bind: str, port: int) -> str | None:
    """None when ``bind:port`` could be published here, else why not, in words."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((bind, port))
        except (socket.gaierror, UnicodeError, ValueError):
            return f"{bind!r} is not an IPv4 address"
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return "in use by another program"
            if exc.errno == errno.EADDRNOTAVAIL:
                return f"{bind} is not an address of this host"
            return f"cannot be bound ({exc.strerror})"
    return None


def ports_held_by(stack: LoadedStack, docker_host: engine.EngineAddress) -> set[int]:
    held = set()
    for ctr in stack.engine_stack(docker_host).containers():
        for mapping in ctr.ports:
            held.add(int(mapping.split("->")[0].rsplit(":", 1)[1]))
    return held


class PublishedPorts(Protocol):
    """What says a stack's ports: a rendered stack's spec, or the settings a new one would get."""

    @property
    def webui_bind(self) -> str: ...
    @property
    def webui_port(self) -> int: ...
    @property
    def inference_port(self) -> int: ...


def published_ports(ports: PublishedPorts) -> list[tuple[str, int]]:
    """(bind address, port) of each port a stack publishes on its host: Open WebUI's, and the server's on
    loopback only. Preflight asks it of the stack's spec, doctor of the settings when no stack is given."""
    return [(ports.webui_bind, ports.webui_port), ("127.0.0.1", ports.inference_port)]


def stack_ports(stack: LoadedStack) -> list[tuple[str, int]]:
    """The ports a rendered stack publishes: Open WebUI's, and each server's on loopback (a stack of several
    models has one per server, from inference_port on)."""
    planned = stack.spec.stack_plan
    if planned is None:
        return published_ports(stack.spec)
    servers = sorted({m.published_port for m in planned.models})
    return [(stack.spec.webui_bind, stack.spec.webui_port), *(("127.0.0.1", port) for port in servers)]


def disk_free(folder: Path) -> tuple[Path, int]:
    """(the folder or its nearest existing parent, its free bytes): a model cache need not exist yet."""
    from deploykit.seams.detect import nearest_existing

    probe_dir = nearest_existing(folder)
    return probe_dir, shutil.disk_usage(probe_dir).free


def preflight(stack: LoadedStack, docker_host: engine.EngineAddress, model_missing_bytes: int) -> list[str]:
    """Everything that would make `compose up` fail, checked first. Raises on the first failure."""
    notes = []
    probe = engine.probe_engine(docker_host)
    if not probe.reachable:
        raise engine.engine_error(docker_host, Exception(probe.error or "unreachable"))
    if stack.spec.target == "swarm":
        return preflight_swarm(stack, docker_host)
    engine.require_compose_v2(probe.compose_version)  # the probe asked compose already
    stack_id = stack.secrets.get(STACK_ID)
    others = {k: v for k, v in engine.project_owners(docker_host, stack.spec.project).items() if k != stack_id}
    if others:
        owner = next(iter(others.values()))
        if owner.working_dir:
            where, removal = owner.working_dir, f"`deploykit down --volumes` in {owner.working_dir}"
        else:
            # Only its volume is left (the stack was taken down): its directory is not recorded anywhere.
            names = " ".join(owner.volumes)
            where = f"volume {names}"
            removal = f"`deploykit down --volumes` in its directory, or `docker volume rm {names}` if that is gone"
        raise PreflightError(
            f"the compose project '{stack.spec.project}' already belongs to another stack ({where}); its volume "
            "holds that stack's accounts and chats.",
            "Give this stack a directory with another name (the project is named after it), or, if the other "
            f"stack is expendable, remove it with {removal}.",
        )
    plan = stack.spec.plan
    planned = stack.spec.stack_plan
    devices = {m.plan.device for m in planned.models} if planned is not None else {plan.device}
    if "cuda" in devices and not probe.nvidia_runtime:
        raise PreflightError(
            f"the plan runs {plan.backend} on an NVIDIA GPU but the Docker "
            f"Engine has no NVIDIA runtime or CDI devices.",
            "Install the NVIDIA Container Toolkit and run `nvidia-ctk runtime configure --runtime=docker`, "
            "or plan for the CPU with --profile cpu.",
        )
    if docker_host.local:
        ours = ports_held_by(stack, docker_host)
        for bind, port in stack_ports(stack):
            problem = None if port in ours else port_problem(bind, port)
            if problem:
                setting = "webui_port" if port == stack.spec.webui_port else "inference_port"
                raise PreflightError(
                    f"port {port} on {bind}: {problem}, so the stack cannot publish it.",
                    f"Stop what listens there (`ss -ltnp 'sport = :{port}'`) or set DEPLOYKIT_{setting.upper()} "
                    "and render again.",
                )
        if model_missing_bytes:
            probe_dir, free = disk_free(Path(stack.spec.model_host_path).parent)  # the model cache of them all
            if free < model_missing_bytes + GiB:
                raise PreflightError(
                    f"the model needs {gib(model_missing_bytes)} and {probe_dir} has {gib(free)} free.",
                    "Free some space or point DEPLOYKIT_MODEL_CACHE at a bigger disk.",
                )
    for service, ref in stack.spec.images.items():
        if not engine.image_present(docker_host, ref):
            notes.append(f"image {ref} ({service}) is not on this engine yet; compose will pull it.")
    return notes


def preflight_swarm(stack: LoadedStack, docker_host: engine.EngineAddress) -> list[str]:
    """A swarm manager to deploy to, and the ports free unless this stack already holds them."""
    state, manager = compose.swarm_state(docker_host)
    if state != "active" or not manager:
        raise PreflightError(
            f"the Docker Engine is not a swarm manager (swarm state: {state}).",
            "Run `docker swarm init` here (or point --docker-host at a manager), or use --target compose.",
        )
    es = stack.engine_stack(docker_host)
    assert isinstance(es, compose.SwarmStack)
    notes = []
    if docker_host.local and not es.deployed():
        for port in (stack.spec.webui_port, stack.spec.inference_port):
            if (problem := port_problem("0.0.0.0", port)) is not None:
                raise PreflightError(
                    f"port {port} cannot be published by the swarm on this host: {problem}.",
                    f"Stop what listens there (`ss -ltnp 'sport = :{port}'`) or set another port and render again.",
                )
    if stack.spec.plan.device == "cuda":
        notes.append(
            "the inference service runs on a node labelled org.deploykit.gpu=nvidia that advertises an "
            "NVIDIA-GPU generic resource (see swarm.yaml)."
        )
    return notes


def model_weights(stack: LoadedStack) -> list[tuple[Backend, ModelSpec, Path, int]]:
    """Each model's (backend, numbers, weights on the Docker host, their size as planned): one for a stack of one
    model, every model's for a stack of several (plan.json's inputs list them in the stack's order)."""
    planned = stack.spec.stack_plan
    if planned is None:
        plan = stack.spec.plan
        return [(stack.spec.backend, stack.model, Path(stack.spec.model_host_path), plan.memory.weights_bytes)]
    rows = []
    for entry, served in zip(stack.inputs.models, planned.models, strict=True):
        backend = backends.named(served.plan.backend)
        path = Path(stack.spec.model_paths[served.model_id])
        rows.append((backend, entry.model, path, served.plan.memory.weights_bytes))
    return rows


def ensure_model(stack: LoadedStack, reporter: Reporter) -> None:
    """Put the weights where the stack mounts them: download from the hub when they are missing."""
    from deploykit.seams import hub

    for backend, model, path, _ in model_weights(stack):
        if path.exists():
            continue
        source = backend.model_download(model, path)
        reporter.note(source.note)
        if source.file is not None:
            hub.ensure_gguf(source.repo, source.file, path)
        else:
            hub.ensure_snapshot(source.repo, path)


def model_missing_bytes(stack: LoadedStack) -> int:
    return sum(size for _, _, path, size in model_weights(stack) if not path.exists())


def up(
    stack: LoadedStack,
    docker_host: engine.EngineAddress,
    timeout: float | None,
    reporter: Reporter,
    files: Mapping[str, str],
    write_files: Callable[[], object],
) -> UpReport:
    """Preflight, check the site's override merges, write the stack files (if changed), fetch the model, start."""
    started = time.monotonic()
    notes = [*stack.spec.plan.notes, *preflight(stack, docker_host, model_missing_bytes(stack))]
    for note in notes:
        reporter.note(note)
    engine_stack = stack.engine_stack(docker_host)
    engine_stack.check_override(dict(files))
    if override_path(stack.dir) is not None:
        reporter.note(f"Using {OVERRIDE_FILE} on top of compose.yaml.")
    if stack.spec.tls is not None:
        tls_proxy.validate(stack, docker_host, files)  # Caddy reads the files before they replace any
    write_files()
    ensure_model(stack, reporter)
    if stack.spec.tls is not None:
        tls_proxy.deliver(stack, docker_host, engine_stack, files)
    reporter.note(f"Starting project {stack.spec.project} …")
    # Both services at once: Open WebUI's own start (migrations, imports) overlaps the model load instead of
    # waiting for it; it asks the server for models only when asked, so it needs no ready server to start.
    start_servers(stack, engine_stack, docker_host, reporter)
    # A stack of several models starts its servers one after another: their start times add up.
    startup = sum(server.startup_seconds for server in served_by(stack).servers)
    budget = timeout if timeout is not None else startup + WEBUI_START_SECONDS + 240
    report = check_stack(stack, docker_host, budget, reporter, started)
    report.notes = [*notes, *report.notes]
    https = stack.spec.tls is not None
    report.reachable = reachable_urls(stack.spec.webui_bind, stack.spec.webui_port, docker_host, https=https)
    if stack.spec.tls is not None:
        report.tls = tls_proxy.describe(stack)
    return report


def start_servers(
    stack: LoadedStack, engine_stack: compose.Stack, docker_host: engine.EngineAddress, reporter: Reporter
) -> None:
    """`compose up` of the whole stack. A stack of several models starts its servers one after another
    (depends_on: service_healthy), and compose gives up on a server whose Docker healthcheck ran out while it
    still loads (a slow or busy host: vLLM's CPU start beyond its start_period). Then the server's own
    readiness is waited for, with its stage's time, and compose is asked again for the rest."""
    served = served_by(stack)
    for _ in served.servers:
        try:
            engine_stack.up()
            return
        except EngineError as exc:
            slow = next((s for s in served.servers if s.service in exc.message), None)
            if not served.several or "dependency failed to start" not in exc.message or slow is None:
                raise
            reporter.note(f"{slow.service} is still starting (compose stopped waiting for it); waiting on it …")
            with health.http_client(slow.url, stack.api_key) as client:
                ok, _, detail = health.wait_until(
                    lambda: health.probe_inference_health(client),
                    slow.startup_seconds + 60,
                    on_tick=_container_watch(stack, docker_host, slow.service),
                )
            if not ok:
                raise HealthError(
                    f"{slow.service} did not become ready: {detail}.",
                    f"`deploykit logs {slow.service} --dir {stack.dir}` shows why.",
                    log_tail=engine_stack.log_tail(slow.service, 25),
                ) from None

            # Compose reads Docker's verdict, which turns healthy at the healthcheck's next pass (5 s apart).
            def docker_healthy(service: str = slow.service) -> str:
                if any(c.service == service and c.health == "healthy" for c in engine_stack.containers()):
                    return "healthy"
                raise health.NotReady(f"{service} not healthy in Docker yet")

            health.wait_until(docker_healthy, 60)
    engine_stack.up()


def reachable_urls(
    bind: str,
    port: int,
    docker_host: engine.EngineAddress,
    addresses: tuple[Address, ...] | None = None,
    https: bool = False,
) -> list[dict[str, str]]:
    """The URLs a port published on ``bind`` answers on, each with who can reach it (``https``: behind the
    stack's HTTPS proxy)."""
    if not docker_host.local:
        where = docker_host.hostname or docker_host.display
        who = "whoever can reach the engine's host" if bind in ("0.0.0.0", "::", "") else f"{bind} on the engine's host"
        return [{"url": webui_url(where, port, https), "who": who}]
    if bind.startswith("127.") or bind in ("::1", "localhost"):
        return [{"url": webui_url("localhost", port, https), "who": "this machine only"}]
    if bind not in ("0.0.0.0", "::", ""):
        return [{"url": webui_url(bind, port, https), "who": f"anyone who can reach {bind}"}]
    if addresses is None:
        from deploykit.seams.detect import host_addresses

        addresses = host_addresses()
    rows = [{"url": webui_url("localhost", port, https), "who": "this machine"}]
    for address in addresses:
        # Docker's own bridges (one per compose network) only lead to containers on this host.
        bridge = address.interface == "docker0" or address.interface.startswith(("br-", "veth"))
        if not address.ip.startswith("127.") and not bridge:
            url = webui_url(address.ip, port, https)
            rows.append({"url": url, "who": f"anyone who can reach {address.interface}"})
    return rows


def status(stack: LoadedStack, docker_host: engine.EngineAddress) -> StackStatus:
    if (several := served_by(stack)).several:
        return several_status(stack, several, docker_host)
    containers = stack.engine_stack(docker_host).containers()
    plan = stack.spec.plan
    key = stack.api_key
    now = datetime.now(UTC)
    by_service = {c.service: c for c in containers}
    services = [_service_entry(by_service.get(name), name, now) for name in _services(stack)]
    with health.http_client(stack.inference_url, key, timeout=5) as client:
        try:
            served = health.probe_served_model(client, plan.model_id)
            model_ok = True
        except (health.NotReady, health.StageFailed) as exc:
            served, model_ok = str(exc), False
    services[0]["url"] = stack.inference_url + "/v1"
    services[0]["model"] = plan.model_id if model_ok else None
    services[0]["detail"] = served
    services[1]["url"] = local_webui_url(stack)
    if stack.spec.tls is not None:
        services[2]["url"] = local_webui_url(stack)  # the proxy answers there, for Open WebUI
    with stack.webui_client(timeout=5) as client:
        try:
            health.probe_webui_health(client)
            webui_ok = True
        except health.NotReady:
            webui_ok = False
    services[1]["detail"] = "answers /health" if webui_ok else "does not answer /health"
    # Docker's own healthcheck lags by up to an interval: "starting" with a live HTTP answer is fine.
    healthy = (
        model_ok
        and webui_ok
        and all(s["state"] == "running" and s["health"] in ("healthy", "starting", None) for s in services)
    )
    # The site's compose.override.yaml, when one is in effect. mypy asks for every NotRequired key in a **
    # construction; "tls" is set just below, when there is one.
    state = StackStatus(**identity(stack), healthy=healthy, override=describe(stack.dir), services=services)  # type: ignore[typeddict-item]
    if stack.spec.tls is not None:
        state["tls"] = tls_proxy.describe(stack)
    return state


def _services(stack: LoadedStack) -> tuple[str, ...]:
    """The stack's services: its servers and Open WebUI, and the HTTPS proxy in stacks that have one."""
    served = served_by(stack)
    ours = (*(s.service for s in served.servers), WEBUI) if served.several else SERVICES
    return (*ours, *([TLS_PROXY] if stack.spec.tls is not None else []))


def _service_entry(ctr: compose.ContainerState | None, name: str, now: datetime) -> ServiceStatus:
    entry: ServiceStatus = {"service": name, "state": "missing", "health": None, "uptime_s": None}
    if ctr is None:
        return entry
    uptime = None
    if ctr.state == "running" and ctr.started_at:
        try:
            uptime = int((now - datetime.fromisoformat(ctr.started_at.replace("Z", "+00:00"))).total_seconds())
        except ValueError:
            uptime = None
    entry.update(
        {
            "state": ctr.state,
            "health": ctr.health,
            "uptime_s": uptime,
            "image": ctr.image,
            "ports": list(ctr.ports),
            # A crash the engine recovered from shows here (the engine resets the exit code on restart).
            "restarts": ctr.restart_count,
        }
    )
    return entry


def model_states(served: Served, key: str) -> dict[str, str]:
    """Each model's state as its server says it: a router's GET /models; a single server: loaded while it
    serves the model. A server that does not answer leaves its models "unreachable"."""
    states: dict[str, str] = {}
    for server in served.servers:
        try:
            if server.router:
                with health.router_client(server.url, key, timeout=5) as client:
                    known = health.router_states(client)
                states.update({m: known.get(m, "missing") for m in server.models})
            else:
                with health.http_client(server.url, key, timeout=5) as client:
                    for model_id in server.models:
                        try:
                            health.probe_served_model(client, model_id)
                            states[model_id] = "loaded"
                        except health.NotReady:
                            states[model_id] = "unloaded"
        except (health.NotReady, health.StageFailed):
            states.update({m: "unreachable" for m in server.models})
    return states


def model_list(stack: LoadedStack, docker_host: engine.EngineAddress) -> list[ModelStatus]:
    """Each model the stack serves (one for a single-model stack), its state and memory."""
    served = served_by(stack)
    engine_stack = stack.engine_stack(docker_host)
    running = {c.service for c in engine_stack.containers() if c.state == "running"}
    memory = {s.service: engine_stack.memory_bytes(s.service) for s in served.servers if s.service in running}
    return _model_rows(served, model_states(served, stack.api_key), memory)


def _model_rows(served: Served, states: Mapping[str, str], memory: Mapping[str, int | None]) -> list[ModelStatus]:
    return [
        {
            "model": m.id,
            "service": m.service,
            "backend": m.backend,
            "default": m.id == served.default_model,
            "on_demand": m.on_demand,
            "state": states.get(m.id, "unknown"),
            "planned_bytes": m.planned_bytes,
            "container_bytes": memory.get(m.service),
        }
        for m in served.models
    ]


def several_status(stack: LoadedStack, served: Served, docker_host: engine.EngineAddress) -> StackStatus:
    """`status` of a stack of several models: each service, and each model's state and memory."""
    engine_stack = stack.engine_stack(docker_host)
    by_service = {c.service: c for c in engine_stack.containers()}
    now = datetime.now(UTC)
    services = [_service_entry(by_service.get(name), name, now) for name in _services(stack)]
    states = model_states(served, stack.api_key)
    memory = {s.service: engine_stack.memory_bytes(s.service) for s in served.servers if s.service in by_service}
    for entry in services:
        server = next((s for s in served.servers if s.service == entry["service"]), None)
        if server is not None:
            entry["url"] = server.url + "/v1"
            entry["detail"] = ", ".join(f"{m} {states.get(m, 'unknown')}" for m in server.models)
    models = _model_rows(served, states, memory)
    webui_entry = next(e for e in services if e["service"] == WEBUI)
    webui_entry["url"] = local_webui_url(stack)
    with stack.webui_client(timeout=5) as client:
        try:
            health.probe_webui_health(client)
            webui_ok = True
        except health.NotReady:
            webui_ok = False
    webui_entry["detail"] = "answers /health" if webui_ok else "does not answer /health"
    # A model loaded on demand may be unloaded or asleep and still fine; a failed load is not.
    models_ok = all(
        m["state"] in ("loaded", "sleeping") or (m["on_demand"] and m["state"] == "unloaded") for m in models
    )
    healthy = (
        models_ok
        and webui_ok
        and all(s["state"] == "running" and s["health"] in ("healthy", "starting", None) for s in services)
    )
    state = StackStatus(**identity(stack), healthy=healthy, override=describe(stack.dir), services=services)  # type: ignore[typeddict-item]
    state["models"] = models
    if stack.spec.tls is not None:
        state["tls"] = tls_proxy.describe(stack)
    return state


def chat(stack: LoadedStack, message: str, direct: bool, max_tokens: int) -> dict[str, object]:
    plan = stack.spec.plan
    try:
        if direct:
            with health.http_client(stack.inference_url, stack.api_key) as client:
                return health.chat_once(client, "/v1/chat/completions", plan.model_id, message, max_tokens)
        with stack.webui_client() as anon:
            token, _ = webui.admin_token(anon, *stack.admin)
        with stack.webui_client(token) as client:
            # A model Open WebUI cannot list gets a bare "400 Model not found"; say what is wrong instead.
            health.probe_webui_model(client, plan.model_id)
            return health.chat_once(client, "/api/chat/completions", plan.model_id, message, max_tokens)
    except (health.NotReady, health.StageFailed) as exc:
        raise HealthError(
            f"the chat did not go through: {exc}.", "Check `deploykit status` and `deploykit logs inference`."
        ) from None


def smoke(stack: LoadedStack, compose_text: str) -> list[SmokeCheck]:
    """Checks that matter for the served model: structured output, reasoning wiring, tool calling."""
    plan = stack.spec.plan
    checks: list[SmokeCheck] = []
    with health.http_client(stack.inference_url, stack.api_key) as client:
        try:
            detail = health.probe_structured_output(client, "/v1/chat/completions", plan.model_id)
            checks.append({"name": "structured output (json_schema)", "status": "pass", "detail": detail})
        except (health.StageFailed, health.NotReady) as exc:
            checks.append({"name": "structured output (json_schema)", "status": "fail", "detail": str(exc)})
    flag = stack.spec.backend.reasoning_flag
    wired = flag in compose_text
    if plan.reasoning_parser:
        checks.append(
            {
                "name": "reasoning separation",
                "status": "pass" if wired else "fail",
                "detail": f"{flag} is {'set' if wired else 'missing'} in the stack file; thinking arrives in "
                "reasoning_content (wiring checked; no R1 model runs in this check)",
            }
        )
    else:
        checks.append({"name": "reasoning separation", "status": "skip", "detail": "not a reasoning model"})
    tool_calling = stack.model.tool_calling
    checks.append(
        {
            "name": "tool calling",
            "status": "pass" if tool_calling else "skip",
            "detail": "unsupported for this model: its chat template has no tool format either server parses well"
            if not tool_calling
            else "the model's template supports tools (not exercised by this check)",
        }
    )
    return checks


def down(stack: LoadedStack, docker_host: engine.EngineAddress, volumes: bool) -> None:
    engine.client(docker_host)  # no engine: say so in its own words (exit 6), not compose's
    stack.engine_stack(docker_host).down(volumes=volumes)


def check_service(stack: LoadedStack, service: str | None) -> None:
    """Refuse a service name the stack does not have (a several-model stack names its servers its own way)."""
    known = _services(stack)
    if service not in (None, *known):
        raise UsageError(f"service '{service}' is not part of the stack.", f"Services are: {', '.join(known)}.")


def restart(stack: LoadedStack, docker_host: engine.EngineAddress, service: str | None) -> None:
    check_service(stack, service)
    engine.client(docker_host)
    stack.engine_stack(docker_host).restart(service)
