"""A fleet of workstations: every `deploykit fleet` command, host by host in parallel, one result per host.

Each workstation keeps its own Docker Engine; deploykit reaches it through that engine and never runs a
scheduler of its own. Every command is one function of a host run on each selected host at once
(``_on_each_host``); one host's failure never stops the others, and failed and unreachable hosts are kept apart
(as Ansible does: the fix differs). The inventory is ``deploykit.config.inventory``; the model's way to a
remote engine is ``deploykit.running.delivery``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from deploykit.app.resolve import ResolvedModel, apply_profile, engine_for, make_plan, resolve_model
from deploykit.app.stack import PreparedStack, model_host_path, prepare_for_host
from deploykit.config.settings import Settings
from deploykit.seams import stackdir
from deploykit.values.errors import ConfigError, DeployKitError, EngineError, NotFoundError, StackDirError
from deploykit.values.host import HostProfile
from deploykit.values.redact import redact
from deploykit.values.services import INFERENCE, TLS_PROXY, WEBUI
from deploykit.values.stackfiles import PLAN_FILE

if TYPE_CHECKING:
    # Running stacks needs httpx and the docker SDK: `fleet plan` should not pay for them.
    from deploykit.config.inventory import FleetHost
    from deploykit.running.delivery import ModelPayload, PayloadCache
    from deploykit.running.stack import LoadedStack
    from deploykit.running.stages import Reporter
    from deploykit.seams.engine import EngineAddress
    from deploykit.values.host import DockerEngine, Gpu
    from deploykit.values.plan import DeploymentPlan

State = Literal[
    "detected", "planned", "rendered", "healthy", "unhealthy", "down", "not deployed", "failed", "unreachable"
]
BAD_STATES = ("unhealthy", "not deployed", "failed", "unreachable")


@dataclass(frozen=True)
class FleetRequest:
    """What every `deploykit fleet` command is given."""

    inventory: Path
    hosts: str | None
    parallel: int
    fleet_dir: Path
    profile: str = "auto"
    model_id: str | None = None
    model_path: Path | None = None
    image_overrides: dict[str, str] | None = None
    timeout: float | None = None

    def stack_dir(self, host: FleetHost) -> Path:
        """The host's stack folder on this controller: one per host, named after it."""
        return (self.fleet_dir / host.name).expanduser().absolute()

    def webui_image(self, settings: Settings) -> str:
        """Open WebUI's image: the GPU probe runs in it, so it reaches a host first."""
        return (self.image_overrides or {}).get(WEBUI, settings.images.open_webui)


# ---------------------------------------------------------------- results and the parallel runner


@dataclass
class HostResult:
    """One host's outcome, as Compose Farm's CommandResult: the table row and the JSON entry."""

    host: str
    state: State
    profile: str | None = None
    backend: str | None = None
    url: str | None = None
    error: str | None = None
    hint: str | None = None
    exit_code: int = 0
    seconds: float = 0.0
    engine: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    details: dict[str, object] = field(default_factory=dict)  # what --json shows of the host, by command

    @property
    def ok(self) -> bool:
        return self.state not in BAD_STATES


def _row(host: FleetHost, state: State, plan: DeploymentPlan, url: str | None = None, **rest: Any) -> HostResult:
    """A host's row about a stack: its profile and backend beside the state."""
    backend = f"{plan.backend} on {plan.device}"
    return HostResult(host.name, state, profile=plan.profile, backend=backend, url=url, **rest)


def run_parallel(
    hosts: Sequence[FleetHost], work: Callable[[FleetHost], HostResult], parallel: int
) -> list[HostResult]:
    """``work`` on every host, at most ``parallel`` at a time; results in inventory order. A host that
    raises becomes a failed (or, for an engine error, unreachable) row; the others carry on."""

    def guarded(host: FleetHost) -> HostResult:
        started = time.monotonic()
        try:
            result = work(host)
        except EngineError as exc:
            result = HostResult(host.name, "unreachable", error=exc.message, hint=exc.hint, exit_code=exc.exit_code)
        except DeployKitError as exc:
            result = HostResult(host.name, "failed", error=exc.message, hint=exc.hint, exit_code=exc.exit_code)
        except Exception as exc:  # one host's surprise must not take the fleet down with it
            result = HostResult(host.name, "failed", error=f"{type(exc).__name__}: {exc}", exit_code=1)
        result.seconds = round(time.monotonic() - started, 1)
        # The row is printed (the table, --json): an engine URL's password never is.
        result.engine = redact(result.engine or host.engine or f"context {host.context}")
        result.error = redact(result.error) if result.error else result.error
        result.hint = redact(result.hint) if result.hint else result.hint
        result.labels = dict(host.labels)
        return result

    with ThreadPoolExecutor(max_workers=max(1, parallel), thread_name_prefix="fleet") as pool:
        return list(pool.map(guarded, hosts))


def _on_each_host(req: FleetRequest, work: Callable[[FleetHost], HostResult]) -> list[HostResult]:
    """``work`` on every host the request selects, ``req.parallel`` at a time: what every fleet command is."""
    from deploykit.config.inventory import check_tls, load_inventory, select_hosts

    hosts = select_hosts(load_inventory(req.inventory), req.hosts)
    for host in hosts:  # a tcp:// host without TLS material stops the run before anything is written
        check_tls(host)
    return run_parallel(hosts, work, req.parallel)


def summary(results: Sequence[HostResult]) -> dict[str, object]:
    failed = [r.host for r in results if not r.ok and r.state != "unreachable"]
    unreachable = [r.host for r in results if r.state == "unreachable"]
    return {
        "ok": all(r.ok for r in results),
        "failed": failed,
        "unreachable": unreachable,
        "hosts": [asdict(r) | {"ok": r.ok} for r in results],
    }


# ---------------------------------------------------------------- one host


def _host_settings(settings: Settings, host: FleetHost) -> Settings:
    """The controller's settings for one host: its ports, its [webui_env] over the controller's, its
    templates_dir instead of the controller's. Its engine travels beside them, as an EngineAddress."""
    update: dict[str, Any] = {
        "webui_port": host.ui_port,
        "inference_port": host.inference_port,
        "webui_env": settings.webui_env | host.webui_env,
    }
    if host.templates_dir is not None:
        update["templates_dir"] = Path(host.templates_dir)
    if host.models is not None:  # the inventory's [[models]] for this host (its own, its group's or the fleet's)
        update["models"] = tuple(host.models)
    return settings.model_copy(update=update)


def place_override(host: FleetHost, stack_dir: Path, write: bool) -> dict[str, str] | None:
    """The inventory's override for the host, copied byte for byte into its stack folder (``write``) as
    compose.override.yaml, so every compose command there merges it; what the folder then has in effect.

    A folder's own override stays when the inventory names none (deploykit never deletes a site's file)."""
    import hashlib

    from deploykit.seams.override import OVERRIDE_FILE, describe
    from deploykit.seams.textfile import check_writable, read_bytes

    source = host.site_override()
    if source is None:
        return describe(stack_dir)
    data = read_bytes(source, "override", "Fix the path the inventory gives.", ConfigError)
    target = stack_dir / OVERRIDE_FILE
    check_writable(target, "override", "Move it away; deploykit copies the inventory's override there.", StackDirError)
    if write and (not target.is_file() or target.read_bytes() != data):
        try:
            stack_dir.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        except OSError as exc:
            raise StackDirError(f"cannot write {target}: {exc.strerror}.", "Check the --dir folder.") from None
    return {"file": OVERRIDE_FILE, "sha256": hashlib.sha256(data).hexdigest(), "from": str(source)}


def _reach(host: FleetHost) -> tuple[EngineAddress, DockerEngine]:
    """The host's engine and what it says; an unreachable engine is an EngineError (unreachable)."""
    from deploykit.config.inventory import engine_address
    from deploykit.seams import engine

    docker_host = engine_address(host)
    probe = engine.probe_engine(docker_host)
    if not probe.reachable:
        raise EngineError(
            f"cannot reach the Docker Engine of {host.name} at {docker_host.display}: {probe.error}.",
            "Is the workstation on, its engine running and the ssh key or TLS client certificate accepted "
            "(`docker -H URL info`)?",
        )
    return docker_host, probe


def detect_fleet_host(
    settings: Settings,
    host: FleetHost,
    docker_host: EngineAddress,
    probe: DockerEngine,
    gpu_image: str,
    default_profile: str = "auto",
) -> HostProfile:
    """The host as its engine describes it: CPUs, RAM and architecture from /info; GPUs from nvidia-smi in a
    short-lived probe container with GPU access, where the engine has the NVIDIA runtime."""
    from deploykit.seams import engine
    from deploykit.seams.detect import describe_failure, normalise_arch, parse_nvidia_smi_xml
    from deploykit.seams.proc import Completed
    from deploykit.values.host import Cpu, Memory

    res = engine.engine_resources(docker_host)
    gpus: tuple[Gpu, ...] = ()
    source, error = "none", None
    if not probe.nvidia_runtime:
        error = "the engine has no NVIDIA runtime"
    elif not engine.image_present(docker_host, gpu_image):
        error = f"image {gpu_image} is not on the engine to run the GPU probe in"
    else:
        code, out = engine.run_probe(
            docker_host, gpu_image, ["nvidia-smi", "-q", "-x"], gpus=True, label="deploykit-probe"
        )
        try:
            if code != 0:
                raise ValueError(describe_failure(Completed(("nvidia-smi",), code, out, "")))
            gpus, source = parse_nvidia_smi_xml(out), "nvidia-smi (probe container)"
        except ValueError as exc:
            error = f"nvidia-smi in a probe container: {exc}"
    detected = HostProfile(
        name=host.name,
        source="detected",
        cpu=Cpu(arch=normalise_arch(res.arch), physical_cores=res.cpus, logical_cores=res.cpus),
        memory=Memory(total_bytes=res.memory_bytes),
        gpus=gpus,
        docker=probe,
        gpu_probe=source,
        gpu_probe_error=error,
    )
    profile = host.profile or default_profile
    return detected if profile == "auto" else apply_profile(settings, profile, lambda: detected)


@dataclass(frozen=True)
class FleetStack:
    docker_host: EngineAddress
    address: str
    prepared: PreparedStack
    payload: ModelPayload | None  # set when the weights travel as a volume
    override: dict[str, str] | None  # the compose.override.yaml in effect in the host's folder

    @property
    def webui_url(self) -> str:
        return self.prepared.loaded(self.address).webui_url


def _fleet_stack(
    settings: Settings,
    req: FleetRequest,
    host: FleetHost,
    model: ResolvedModel,
    payloads: PayloadCache,
    reached: tuple[EngineAddress, DockerEngine],
    write: bool,
) -> FleetStack:
    """Plan and render one host's stack in memory; ``write``: its inventory override goes into the folder first,
    so the render records it and `up` checks that it merges."""
    from deploykit.config.inventory import address_of

    docker_host, probe = reached
    hs = _host_settings(settings, host)
    stack_dir = req.stack_dir(host)
    existing = stackdir.open_for_render(stack_dir)  # before detection: a folder that is not ours stops here
    override = place_override(host, stack_dir, write)
    profile = detect_fleet_host(settings, host, docker_host, probe, req.webui_image(settings), req.profile)
    payload = None
    if not docker_host.local:  # a remote engine resolves bind mounts on its own disk: the model travels
        path = model_host_path(hs, make_plan(profile, model, hs), model)
        if not path.exists():
            raise NotFoundError(
                f"the model {path} is not on this controller, so it cannot be sent to {host.name}.",
                "Give it with --model-file, or fetch it first (`deploykit up` on this machine downloads it).",
            )
        payload = payloads.get(path)
    volume = payload.volume if payload else None
    overrides = req.image_overrides or {}
    address = address_of(host, docker_host)
    # HTTPS: the host's certificate (from the one site CA) is for the name this controller and the room use.
    names = None if docker_host.local and host.address is None else (address,)
    prepared = prepare_for_host(hs, profile, model, overrides, stack_dir, volume, existing=existing, tls_names=names)
    return FleetStack(docker_host, address, prepared, payload, override)


@contextmanager
def inference_route(stack: LoadedStack, docker_host: EngineAddress) -> Iterator[LoadedStack]:
    """The stack with an inference URL this controller can reach: the stack publishes that port on its engine
    host's loopback only, so an ssh:// host is reached through an ``ssh -L`` forward while the block runs."""
    from urllib.parse import urlparse

    from deploykit.seams.proc import ssh_forward

    if not docker_host.ssh:
        yield stack
        return
    parsed = urlparse(docker_host.url or "")
    target = f"{parsed.username}@{parsed.hostname}" if parsed.username else str(parsed.hostname)
    forward = ssh_forward(target, parsed.port, stack.spec.inference_port)
    try:
        local = forward.__enter__()
    except OSError as exc:
        raise EngineError(f"{exc}.", "Check that sshd there allows TCP forwarding (AllowTcpForwarding).") from None
    try:
        yield replace(stack, inference_base=f"http://127.0.0.1:{local}")
    finally:
        forward.__exit__(None, None, None)


def _fleet_loaded(req: FleetRequest, host: FleetHost) -> tuple[EngineAddress, LoadedStack] | HostResult:
    """The host's engine and its stack (addressed for this controller), or the row saying why not."""
    from deploykit.config.inventory import address_of
    from deploykit.running.stack import load_stack

    docker_host, _ = _reach(host)  # an unreachable host is that first, deployed or not
    stack_dir = req.stack_dir(host)
    if not (stack_dir / PLAN_FILE).is_file():
        return HostResult(
            host.name,
            "not deployed",
            error=f"no stack in {stack_dir}",
            hint=f"Run `deploykit fleet up --inventory {req.inventory} --hosts {host.name}`.",
        )
    return docker_host, replace(load_stack(stack_dir), address=address_of(host, docker_host))


# ---------------------------------------------------------------- the commands: one function of a host each


def _detect(settings: Settings, req: FleetRequest, host: FleetHost) -> HostResult:
    docker_host, probe = _reach(host)
    profile = detect_fleet_host(settings, host, docker_host, probe, req.webui_image(settings), req.profile)
    details: dict[str, object] = {"host": profile.model_dump(mode="json")}
    return HostResult(host.name, "detected", profile=host.profile or req.profile, details=details)


def _plan(
    settings: Settings, req: FleetRequest, model: ResolvedModel, payloads: PayloadCache, write: bool, host: FleetHost
) -> HostResult:
    fs = _fleet_stack(settings, req, host, model, payloads, _reach(host), write)
    spec = fs.prepared.spec
    details: dict[str, object] = {
        "plan": spec.plan.model_dump(mode="json"),
        "model_volume": spec.model_volume,
        "override": fs.override,
        "notes": fs.prepared.notes,
    }
    if write:
        details["dir"] = str(fs.prepared.stack_dir)
        details["changed"] = fs.prepared.write()
    return _row(host, "rendered" if write else "planned", spec.plan, fs.webui_url, details=details)


def _up(
    settings: Settings,
    req: FleetRequest,
    model: ResolvedModel,
    payloads: PayloadCache,
    reporter_for: Callable[[str], Reporter],
    host: FleetHost,
) -> HostResult:
    from deploykit.running import lifecycle
    from deploykit.running.delivery import deliver_model
    from deploykit.seams import engine

    reporter = reporter_for(host.name)
    controller = engine_for(settings)
    docker_host, probe = _reach(host)
    webui_image = req.webui_image(settings)
    reporter.note(f"images: {webui_image} …")
    delivery = {"open-webui image": engine.copy_image(controller, docker_host, webui_image)}
    fs = _fleet_stack(settings, req, host, model, payloads, (docker_host, probe), write=True)
    prepared, images = fs.prepared, fs.prepared.spec.images
    details = {"delivery": delivery, "dir": str(prepared.stack_dir), "override": fs.override, "notes": prepared.notes}
    row = _row(host, "failed", prepared.spec.plan, fs.webui_url, details=details)
    try:
        reporter.note(f"images: open-webui {delivery['open-webui image']}; {images['inference']} …")
        delivery["inference image"] = engine.copy_image(controller, docker_host, images[INFERENCE])
        reporter.note(f"images: inference {delivery['inference image']}")
        if TLS_PROXY in images:  # HTTPS: the proxy's image too (its files travel at `up`, by volume)
            delivery["tls-proxy image"] = engine.copy_image(controller, docker_host, images[TLS_PROXY])
        if fs.payload is not None:
            reporter.note(f"model: {fs.payload.path.name} into volume {fs.payload.volume} …")
            delivery["model"] = deliver_model(docker_host, fs.payload, images[INFERENCE])
            reporter.note(f"model: {delivery['model']}")
        with inference_route(prepared.loaded(fs.address), docker_host) as stack:
            report = lifecycle.up(stack, docker_host, req.timeout, reporter, prepared.files, write_files=prepared.write)
    except DeployKitError as exc:
        row.error, row.hint, row.exit_code = exc.message, exc.hint, exc.exit_code
        return row
    row.state = "healthy" if report.healthy else "unhealthy"
    row.details["stages"] = report.stages
    row.details["drift"] = report.drift
    return row


def _status(req: FleetRequest, host: FleetHost) -> HostResult:
    from deploykit.running import lifecycle

    found = _fleet_loaded(req, host)
    if isinstance(found, HostResult):
        return found
    docker_host, loaded = found
    with inference_route(loaded, docker_host) as stack:
        state = lifecycle.status(stack, docker_host)
    broken = [
        f"{s['service']}: {s['state']}, {s.get('detail') or s.get('health') or ''}".rstrip(", ")
        for s in state["services"]
        if s["state"] != "running" or s.get("health") == "unhealthy" or not state["healthy"]
    ]
    return _row(
        host,
        "healthy" if state["healthy"] else "unhealthy",
        stack.spec.plan,
        stack.webui_url,
        error=None if state["healthy"] else "; ".join(broken),
        details={"services": state["services"], "override": state["override"]},
    )


def _down(req: FleetRequest, host: FleetHost) -> HostResult:
    from deploykit.running import lifecycle

    found = _fleet_loaded(req, host)
    if isinstance(found, HostResult):
        found.state = "down"  # nothing to stop is what down wants
        return found
    docker_host, stack = found
    lifecycle.down(stack, docker_host, volumes=False)
    return _row(host, "down", stack.spec.plan)


def fleet_detect(settings: Settings, req: FleetRequest) -> list[HostResult]:
    """What each host's engine reports: CPUs, RAM, GPUs (and the profile it gets)."""
    return _on_each_host(req, partial(_detect, settings, req))


def fleet_plan(settings: Settings, req: FleetRequest, write: bool = False) -> list[HostResult]:
    """Plan every host (``write``: and render its stack folder)."""
    from deploykit.running.delivery import PayloadCache
    from deploykit.seams import certificates

    certificates.precheck(settings.tls)  # --tls once, before any host: one error, and one site CA
    model = resolve_model(settings, req.model_id, req.model_path)
    return _on_each_host(req, partial(_plan, settings, req, model, PayloadCache(), write))


def fleet_up(settings: Settings, req: FleetRequest, reporter_for: Callable[[str], Reporter]) -> list[HostResult]:
    """Per host, at most ``parallel`` at once: images and model through its engine, render, start, check."""
    from deploykit.running.delivery import PayloadCache
    from deploykit.seams import certificates

    certificates.precheck(settings.tls)  # --tls once, before any host: one error, and one site CA
    model = resolve_model(settings, req.model_id, req.model_path)
    return _on_each_host(req, partial(_up, settings, req, model, PayloadCache(), reporter_for))


def fleet_status(settings: Settings, req: FleetRequest) -> list[HostResult]:
    """Each host's stack: healthy or not, its URL and what is wrong."""
    return _on_each_host(req, partial(_status, req))


def fleet_down(settings: Settings, req: FleetRequest) -> list[HostResult]:
    """Stop each host's stack; chats, accounts and the delivered model stay."""
    return _on_each_host(req, partial(_down, req))
