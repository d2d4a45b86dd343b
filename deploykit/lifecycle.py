"""Running a rendered stack: preflight, model, compose up, staged health, and the day-2 commands.

Functions take a stack directory and settings, talk to Docker through ``engine`` and to the
servers through ``health``/``webui``, and return plain data; progress goes to a ``Reporter``.
"""

from __future__ import annotations

import errno
import shutil
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol, Required, TypedDict, TypeVar, cast

import httpx
from pydantic import BaseModel, ValidationError

from deploykit import engine, health, webui
from deploykit.catalog import ModelSpec
from deploykit.errors import HealthError, NotFoundError, PreflightError, StackDirError, UsageError
from deploykit.host import GiB
from deploykit.override import OVERRIDE_FILE, describe, override_path
from deploykit.plan import PlanInputs, gib
from deploykit.render import StackIdentity, StackSpec
from deploykit.services import INFERENCE, SERVICES, WEBUI
from deploykit.stackdir import (
    ADMIN_EMAIL,
    ADMIN_PASSWORD,
    INFERENCE_API_KEY,
    STACK_ID,
    TARGET_FILES,
    check_stack_file,
    read_plan,
    read_secrets,
    recover,
)
from deploykit.webui_env import stored_settings

if TYPE_CHECKING:
    from deploykit.detect import Address

# Open WebUI runs migrations on a fresh volume before /health answers; 15 s here, more on slow disks.
WEBUI_START_SECONDS = 180
WEBUI_START_HINT = "Open WebUI did not start; `deploykit logs open-webui` shows why."


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


class StageRow(TypedDict):
    """A ``health.StageResult`` as `up --json` prints it."""

    name: str
    ok: bool
    seconds: float
    detail: str
    at: float | None


class StackStatus(StackIdentity):
    healthy: bool
    override: dict[str, str] | None  # the site's compose.override.yaml in effect, if any
    services: list[ServiceStatus]


class SmokeCheck(TypedDict):
    name: str
    status: Literal["pass", "fail", "skip"]
    detail: str


class Reporter(Protocol):
    def stage(self, name: str) -> None: ...
    def tick(self, elapsed: float, detail: str) -> None: ...
    def done(self, result: health.StageResult) -> None: ...
    def note(self, text: str) -> None: ...


@dataclass(frozen=True)
class LoadedStack:
    dir: Path
    spec: StackSpec
    secrets: dict[str, str]
    inputs: PlanInputs  # what the plan was made from, as plan.json records it
    # Where this controller reaches the engine's published ports: its own loopback for a local engine,
    # the workstation's name for a fleet host.
    address: str = "127.0.0.1"
    # The inference port is published on the engine host's loopback only; for a remote host the fleet
    # reaches it through an ssh forward and sets this.
    inference_base: str | None = None

    @property
    def model(self) -> ModelSpec:
        """The model's numbers, as plan.json records them."""
        return self.inputs.model

    @property
    def api_key(self) -> str:
        """The inference server's API key."""
        return self.secrets.get(INFERENCE_API_KEY, "")

    @property
    def admin(self) -> tuple[str, str]:
        """(email, password) of the admin deploykit signs in as for its checks."""
        return self.secrets.get(ADMIN_EMAIL, ""), self.secrets.get(ADMIN_PASSWORD, "")

    @property
    def stack_file(self) -> Path:
        """compose.yaml, swarm.yaml or kubernetes.yaml: what the stack was rendered for."""
        return self.dir / TARGET_FILES[self.spec.target]

    @property
    def inference_url(self) -> str:
        return self.inference_base or f"http://{self.address}:{self.spec.inference_port}"

    @property
    def webui_url(self) -> str:
        return f"http://{self.address}:{self.spec.webui_port}"

    @property
    def webui_internal_api(self) -> str:
        return f"http://inference:{self.spec.inference_container_port}/v1"

    def engine_stack(self, docker_host: engine.EngineAddress) -> engine.Stack:
        if self.spec.target == "swarm":
            return engine.SwarmStack(self.dir, self.spec.project, docker_host, self.secrets)
        if self.spec.target == "kubernetes":
            raise UsageError(
                f"{self.dir} holds Kubernetes manifests; deploykit does not run them itself.",
                "Use kubectl, or render it again with --target compose or --target swarm.",
            )
        return engine.Stack(self.dir, self.spec.project, docker_host)


def load_stack(stack_dir: Path) -> LoadedStack:
    plan_path = stack_dir / "plan.json"
    recover(stack_dir)  # a write deploykit left interrupted is finished (or undone) first
    data = read_plan(stack_dir) if stack_dir.is_dir() else None
    if data is None:
        raise NotFoundError(
            f"no deploykit stack in {stack_dir} (no plan.json).",
            f"Create one with `deploykit up --profile auto --dir {stack_dir}` or `deploykit render`.",
        )
    spec = _plan_block(StackSpec, data, "stack", plan_path)
    inputs = _plan_block(PlanInputs, data, "inputs", plan_path)
    check_stack_file(stack_dir / TARGET_FILES[spec.target])  # every compose command reads it
    return LoadedStack(stack_dir, spec, read_secrets(stack_dir), inputs)


_Block = TypeVar("_Block", bound=BaseModel)


def _plan_block(kind: type[_Block], data: Mapping[str, object], key: str, plan_path: Path) -> _Block:
    """One block of plan.json ("stack", "inputs") as its type: validated here, once, for every command."""
    try:
        return kind.model_validate(data.get(key))
    except ValidationError as exc:
        fields = ", ".join(sorted({".".join(map(str, e["loc"][:2])) for e in exc.errors()})[:4]) or "missing"
        raise StackDirError(
            f"{plan_path} is not a stack plan this deploykit can read ({key}: {fields}).",
            "Render the stack again with `deploykit render` (secrets are kept).",
        ) from None


# ---------------------------------------------------------------- preflight


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


def published_ports(stack: LoadedStack) -> list[tuple[str, int]]:
    """(bind address, port) of each port the stack publishes on its host: Open WebUI's and the server's."""
    return [(stack.spec.webui_bind, stack.spec.webui_port), ("127.0.0.1", stack.spec.inference_port)]


def disk_free(folder: Path) -> tuple[Path, int]:
    """(the folder or its nearest existing parent, its free bytes): a model cache need not exist yet."""
    from deploykit.detect import nearest_existing

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
    if plan.device == "cuda" and not probe.nvidia_runtime:
        raise PreflightError(
            f"the plan runs {plan.backend} on an NVIDIA GPU but the Docker "
            f"Engine has no NVIDIA runtime or CDI devices.",
            "Install the NVIDIA Container Toolkit and run `nvidia-ctk runtime configure --runtime=docker`, "
            "or plan for the CPU with --profile cpu.",
        )
    if docker_host.local:
        ours = ports_held_by(stack, docker_host)
        for bind, port in published_ports(stack):
            problem = None if port in ours else port_problem(bind, port)
            if problem:
                setting = "webui_port" if port == stack.spec.webui_port else "inference_port"
                raise PreflightError(
                    f"port {port} on {bind}: {problem}, so the stack cannot publish it.",
                    f"Stop what listens there (`ss -ltnp 'sport = :{port}'`) or set DEPLOYKIT_{setting.upper()} "
                    "and render again.",
                )
        if model_missing_bytes:
            probe_dir, free = disk_free(Path(stack.spec.model_host_path).parent)
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
    state, manager = engine.swarm_state(docker_host)
    if state != "active" or not manager:
        raise PreflightError(
            f"the Docker Engine is not a swarm manager (swarm state: {state}).",
            "Run `docker swarm init` here (or point --docker-host at a manager), or use --target compose.",
        )
    es = stack.engine_stack(docker_host)
    assert isinstance(es, engine.SwarmStack)
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


# ---------------------------------------------------------------- model


def ensure_model(stack: LoadedStack, reporter: Reporter) -> None:
    """Put the weights where the stack mounts them: download from the hub when they are missing."""
    from deploykit import hub

    path = Path(stack.spec.model_host_path)
    if path.exists():
        return
    model = stack.model
    if stack.spec.plan.backend == "llamacpp":
        gguf = model.gguf
        if gguf is None or not gguf.repo:
            raise NotFoundError(
                f"model file {path} is missing (moved or deleted?); nothing was started.",
                "Put it back there, or render the stack again with --model-file NEW_PATH (secrets and chats are kept).",
            )
        reporter.note(f"Downloading {gguf.file} ({gib(gguf.size_bytes)}) from {gguf.repo} …")
        hub.ensure_gguf(gguf.repo, gguf.file, path)
    else:
        repo = model.hf_repo
        if not repo:
            raise UsageError(f"model directory {path} is missing.", "Give it with --model-file DIR.")
        reporter.note(f"Downloading {repo} into {path} …")
        hub.ensure_snapshot(repo, path)


def model_missing_bytes(stack: LoadedStack) -> int:
    if Path(stack.spec.model_host_path).exists():
        return 0
    return stack.spec.plan.memory.weights_bytes


# ---------------------------------------------------------------- health


@dataclass
class UpReport:
    stack_dir: str
    url: str
    healthy: bool
    stages: list[StageRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    drift: list[str] = field(default_factory=list)
    admin_created: bool = False
    credentials: str = ""
    # Every address Open WebUI answers on, and who can use it: {"url": …, "who": …}.
    reachable: list[dict[str, str]] = field(default_factory=list)


@dataclass(frozen=True)
class Stage:
    """One health stage as data: what it checks on which service, how long it may take, what to do if not."""

    name: str
    service: str  # whose container is watched while waiting, and whose log tail a failure shows
    probe: Callable[[], str]  # returns a detail when the stage passes, raises NotReady while it does not
    timeout: float
    hint: str


def health_stages(stack: LoadedStack, inference: httpx.Client, ui: httpx.Client, report: UpReport) -> list[Stage]:
    """The stages from a started stack to one chat answered through Open WebUI, in order."""
    plan = stack.spec.plan
    key = stack.api_key
    email, password = stack.admin

    def admin() -> str:
        token, created = webui.admin_token(ui, email, password)
        ui.headers["Authorization"] = f"Bearer {token}"  # later stages act as the admin
        report.admin_created = created
        report.drift = webui.connection_drift(ui, stack.webui_internal_api, key)
        # Settings Open WebUI keeps in its database: written on every up, or a changed value never lands.
        secret = {name: stack.secrets[name] for name in stack.spec.webui_secrets if name in stack.secrets}
        report.notes += webui.apply_stored(ui, stored_settings({**stack.spec.webui_env, **secret}))
        return "admin account created" if created else "signed in as admin"

    return [
        Stage(
            "inference /health",
            INFERENCE,
            lambda: health.probe_inference_health(inference),
            plan.startup_seconds + 60,
            "The server did not become ready. If the log shows it still loading, give it longer with --timeout; "
            "`deploykit logs inference` shows the rest.",
        ),
        Stage(
            "inference /v1/models",
            INFERENCE,
            lambda: health.probe_served_model(inference, plan.model_id),
            60,
            "The server runs but does not serve the expected model id: check --alias/--served-model-name.",
        ),
        Stage(
            "open-webui /health",
            WEBUI,
            lambda: health.probe_webui_health(ui),
            WEBUI_START_SECONDS,
            WEBUI_START_HINT,
        ),
        Stage(
            "open-webui admin",
            WEBUI,
            admin,
            60,
            "Remove the Open WebUI volume (`deploykit down --volumes`) only if its accounts are expendable.",
        ),
        Stage(
            "open-webui model",
            WEBUI,
            lambda: health.probe_webui_model(ui, plan.model_id),
            90,
            "Open WebUI cannot list the model: its connection to the inference server is wrong or unreachable "
            "(see the drift notes; a trailing slash in OPENAI_API_BASE_URL also breaks the list).",
        ),
        Stage(
            "chat via open-webui",
            INFERENCE,
            lambda: health.probe_chat(ui, "/api/chat/completions", plan.model_id),
            180,
            "The model did not answer through Open WebUI; `deploykit logs inference` shows the server side.",
        ),
    ]


def _container_watch(
    stack: LoadedStack, docker_host: engine.EngineAddress, service: str
) -> Callable[[float, str], None]:
    """An on_tick hook that stops waiting as soon as the service's container has died or restarts."""
    es = stack.engine_stack(docker_host)
    last_check = -10.0
    # Restarts before this wait (a crash the engine already recovered from) are history, not a failure.
    before = {c.name: c.restart_count for c in es.containers() if c.service == service}

    def check(elapsed: float, detail: str) -> None:
        nonlocal last_check
        if elapsed - last_check < 3:
            return
        last_check = elapsed
        for ctr in es.containers():
            restarted = ctr.restart_count > before.get(ctr.name, 0)
            if ctr.service == service and (ctr.state in ("exited", "dead") or restarted):
                raise health.StageFailed(
                    f"the {service} container {ctr.state} (exit code {ctr.exit_code}, restarted {ctr.restart_count}×)"
                )

    return check


def run_stages(
    stages: list[Stage],
    budget: float,
    reporter: Reporter,
    *,
    watch: Callable[[str], Callable[[float, str], None]] | None = None,
    log_tail: Callable[[str], str] | None = None,
    started: float | None = None,
) -> list[health.StageResult]:
    """Wait for each stage in turn within ``budget`` seconds. Raises HealthError on the first that fails.

    ``watch(service)`` gives an on_tick hook that may stop a wait early (a dead container);
    ``log_tail(service)`` the lines a failure shows; ``started`` (monotonic) is when `up` began, so each
    result also says when, from the start, its stage passed.
    """
    origin = time.monotonic() if started is None else started
    results = []
    for stage in stages:
        reporter.stage(stage.name)
        watcher = watch(stage.service) if watch is not None else None

        def tick(elapsed: float, detail: str, watcher: Callable[[float, str], None] | None = watcher) -> None:
            reporter.tick(elapsed, detail)
            if watcher is not None:
                watcher(elapsed, detail)

        begun = time.monotonic()
        try:
            ok, _, detail = health.wait_until(stage.probe, max(5.0, min(stage.timeout, budget)), on_tick=tick)
        except health.StageFailed as exc:
            ok, detail = False, str(exc)
        now = time.monotonic()
        seconds = now - begun
        budget -= seconds
        result = health.StageResult(stage.name, ok, round(seconds, 1), detail, at=round(now - origin, 1))
        results.append(result)
        reporter.done(result)
        if not ok:
            tail = log_tail(stage.service) if log_tail is not None else ""
            raise HealthError(
                f"stage '{stage.name}' failed after {seconds:.0f} s: {detail}. The stack is left running for "
                "inspection.",
                stage.hint,
                log_tail=f"--- last lines of {stage.service} ---\n{tail}" if tail else "",
            )
    return results


def check_stack(
    stack: LoadedStack,
    docker_host: engine.EngineAddress,
    timeout: float,
    reporter: Reporter,
    started: float | None = None,
) -> UpReport:
    """The staged health check of a started stack, up to one chat answered through Open WebUI."""
    report = UpReport(stack_dir=str(stack.dir), url=f"http://localhost:{stack.spec.webui_port}", healthy=False)
    key = stack.api_key
    with health.http_client(stack.inference_url, key) as inference, health.http_client(stack.webui_url) as ui:
        results = run_stages(
            health_stages(stack, inference, ui, report),
            timeout,
            reporter,
            watch=lambda service: _container_watch(stack, docker_host, service),
            log_tail=lambda service: stack.engine_stack(docker_host).log_tail(service, 25),
            started=started,
        )
    report.stages = [cast(StageRow, asdict(r)) for r in results]
    report.healthy = True
    report.credentials = f"{stack.dir / '.env'} (DEPLOYKIT_ADMIN_EMAIL, DEPLOYKIT_ADMIN_PASSWORD)"
    return report


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
    write_files()
    ensure_model(stack, reporter)
    reporter.note(f"Starting project {stack.spec.project} …")
    # Both services at once: Open WebUI's own start (migrations, imports) overlaps the model load instead of
    # waiting for it; it asks the server for models only when asked, so it needs no ready server to start.
    engine_stack.up()
    budget = timeout if timeout is not None else stack.spec.plan.startup_seconds + WEBUI_START_SECONDS + 240
    report = check_stack(stack, docker_host, budget, reporter, started)
    report.notes = [*notes, *report.notes]
    report.reachable = reachable_urls(stack.spec.webui_bind, stack.spec.webui_port, docker_host)
    return report


def reachable_urls(
    bind: str, port: int, docker_host: engine.EngineAddress, addresses: tuple[Address, ...] | None = None
) -> list[dict[str, str]]:
    """The URLs a port published on ``bind`` answers on, each with who can reach it."""
    if not docker_host.local:
        where = docker_host.hostname or docker_host.display
        who = "whoever can reach the engine's host" if bind in ("0.0.0.0", "::", "") else f"{bind} on the engine's host"
        return [{"url": f"http://{where}:{port}", "who": who}]
    if bind.startswith("127.") or bind in ("::1", "localhost"):
        return [{"url": f"http://localhost:{port}", "who": "this machine only"}]
    if bind not in ("0.0.0.0", "::", ""):
        return [{"url": f"http://{bind}:{port}", "who": f"anyone who can reach {bind}"}]
    if addresses is None:
        from deploykit.detect import host_addresses

        addresses = host_addresses()
    rows = [{"url": f"http://localhost:{port}", "who": "this machine"}]
    for address in addresses:
        # Docker's own bridges (one per compose network) only lead to containers on this host.
        bridge = address.interface == "docker0" or address.interface.startswith(("br-", "veth"))
        if not address.ip.startswith("127.") and not bridge:
            rows.append({"url": f"http://{address.ip}:{port}", "who": f"anyone who can reach {address.interface}"})
    return rows


def wait_webui(stack: LoadedStack, docker_host: engine.EngineAddress, timeout: float = WEBUI_START_SECONDS) -> float:
    """Wait for Open WebUI's /health; seconds waited, or HealthError with its log tail."""
    with health.http_client(stack.webui_url) as ui:
        ok, seconds, detail = health.wait_until(lambda: health.probe_webui_health(ui), timeout)
    if not ok:
        tail = stack.engine_stack(docker_host).log_tail(WEBUI, 25)
        raise HealthError(
            f"Open WebUI did not answer /health within {timeout:.0f} s: {detail}.",
            WEBUI_START_HINT,
            log_tail=f"--- last lines of open-webui ---\n{tail}" if tail else "",
        )
    return seconds


# ---------------------------------------------------------------- status, chat


def status(stack: LoadedStack, docker_host: engine.EngineAddress) -> StackStatus:
    containers = stack.engine_stack(docker_host).containers()
    plan = stack.spec.plan
    key = stack.api_key
    now = datetime.now(UTC)
    services: list[ServiceStatus] = []
    by_service = {c.service: c for c in containers}
    for name in SERVICES:
        ctr = by_service.get(name)
        entry: ServiceStatus = {"service": name, "state": "missing", "health": None, "uptime_s": None}
        if ctr is not None:
            started = ctr.started_at
            uptime = None
            if ctr.state == "running" and started:
                try:
                    uptime = int((now - datetime.fromisoformat(started.replace("Z", "+00:00"))).total_seconds())
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
        services.append(entry)
    with health.http_client(stack.inference_url, key, timeout=5) as client:
        try:
            served = health.probe_served_model(client, plan.model_id)
            model_ok = True
        except (health.NotReady, health.StageFailed) as exc:
            served, model_ok = str(exc), False
    services[0]["url"] = stack.inference_url + "/v1"
    services[0]["model"] = plan.model_id if model_ok else None
    services[0]["detail"] = served
    services[1]["url"] = f"http://localhost:{stack.spec.webui_port}"
    with health.http_client(stack.webui_url, timeout=5) as client:
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
    # The site's compose.override.yaml, when one is in effect.
    return {**identity(stack), "healthy": healthy, "override": describe(stack.dir), "services": services}


def identity(stack: LoadedStack) -> StackIdentity:
    """Which stack a report is about: its directory, project, backend, device and model."""
    plan = stack.spec.plan
    return {
        "stack_dir": str(stack.dir),
        "project": stack.spec.project,
        "backend": plan.backend,
        "device": plan.device,
        "model": plan.model_id,
    }


def chat(stack: LoadedStack, message: str, direct: bool, max_tokens: int) -> dict[str, object]:
    plan = stack.spec.plan
    try:
        if direct:
            with health.http_client(stack.inference_url, stack.api_key) as client:
                return health.chat_once(client, "/v1/chat/completions", plan.model_id, message, max_tokens)
        with health.http_client(stack.webui_url) as anon:
            token, _ = webui.admin_token(anon, *stack.admin)
        with health.http_client(stack.webui_url, token) as client:
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
    flag = {"vllm": "--reasoning-parser", "llamacpp": "--reasoning-format"}[plan.backend]
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


def restart(stack: LoadedStack, docker_host: engine.EngineAddress, service: str | None) -> None:
    if service not in (None, *SERVICES):
        raise UsageError(f"service '{service}' is not part of the stack.", "Services are: inference, open-webui.")
    engine.client(docker_host)
    stack.engine_stack(docker_host).restart(service)


def wait_inference_ready(stack: LoadedStack, docker_host: engine.EngineAddress, timeout: float | None = None) -> float:
    """After (re)starting the inference service: wait until it is healthy and serves the model.

    Returns the seconds it took; raises HealthError with the log tail when it died or timed out.
    """
    plan = stack.spec.plan
    limit = timeout if timeout is not None else plan.startup_seconds + 60
    key = stack.api_key
    watch = _container_watch(stack, docker_host, INFERENCE)
    started = time.monotonic()
    with health.http_client(stack.inference_url, key) as client:

        def ready() -> str:
            health.probe_inference_health(client)
            return health.probe_served_model(client, plan.model_id)

        try:
            ok, _, detail = health.wait_until(ready, limit, on_tick=watch)
        except health.StageFailed as exc:
            ok, detail = False, str(exc)
    if not ok:
        tail = stack.engine_stack(docker_host).log_tail(INFERENCE, 25)
        raise HealthError(
            f"the inference server did not become ready: {detail}.",
            "`deploykit logs inference` shows why.",
            log_tail=f"--- last lines of inference ---\n{tail}" if tail else "",
        )
    return time.monotonic() - started
