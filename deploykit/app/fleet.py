"""A fleet of workstations: every `deploykit fleet` command, host by host in parallel, one result per host."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deploykit import stackdir
from deploykit.settings import Settings
from deploykit.values.errors import DeployKitError, NotFoundError, StackDirError
from deploykit.values.host import HostProfile
from deploykit.values.services import INFERENCE, WEBUI

if TYPE_CHECKING:
    # Running stacks needs httpx and the docker SDK: plan and render should not pay for them.
    from deploykit.engine import EngineAddress
    from deploykit.fleet import FleetHost, HostResult, ModelPayload, PayloadCache
    from deploykit.lifecycle import LoadedStack, Reporter
    from deploykit.values.host import DockerEngine, Gpu
from deploykit.app.resolve import ResolvedModel, apply_profile, engine_for, make_plan, resolve_model
from deploykit.app.stack import PreparedStack, model_host_path, prepare_for_host


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


def _fleet_hosts(req: FleetRequest) -> tuple[FleetHost, ...]:
    from deploykit.fleet import check_tls, load_inventory, select_hosts

    hosts = select_hosts(load_inventory(req.inventory), req.hosts)
    for host in hosts:  # a tcp:// host without TLS material stops the run before anything is written
        check_tls(host)
    return hosts


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
    return settings.model_copy(update=update)


def place_override(host: FleetHost, stack_dir: Path, write: bool) -> dict[str, str] | None:
    """The inventory's override for the host, copied byte for byte into its stack folder (``write``) as
    compose.override.yaml, so every compose command there merges it; what the folder then has in effect.

    A folder's own override stays when the inventory names none (deploykit never deletes a site's file)."""
    import hashlib

    from deploykit.override import OVERRIDE_FILE, describe

    source = host.site_override()
    if source is None:
        return describe(stack_dir)
    data = source.read_bytes()
    target = stack_dir / OVERRIDE_FILE
    if write and (not target.is_file() or target.read_bytes() != data):
        try:
            stack_dir.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        except OSError as exc:
            raise StackDirError(f"cannot write {target}: {exc.strerror}.", "Check the --dir folder.") from None
    return {"file": OVERRIDE_FILE, "sha256": hashlib.sha256(data).hexdigest(), "from": str(source)}


def _reach(host: FleetHost) -> tuple[EngineAddress, DockerEngine]:
    """The host's engine and what it says; an unreachable engine is an EngineError (unreachable)."""
    from deploykit import engine
    from deploykit.fleet import engine_address
    from deploykit.values.errors import EngineError

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
    from deploykit import engine
    from deploykit.detect import describe_failure, normalise_arch, parse_nvidia_smi_xml
    from deploykit.proc import Completed
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
    from deploykit.fleet import address_of

    docker_host, probe = reached
    hs = _host_settings(settings, host)
    stack_dir = (req.fleet_dir / host.name).expanduser().absolute()
    existing = stackdir.open_for_render(stack_dir)  # before detection: a folder that is not ours stops here
    override = place_override(host, stack_dir, write)
    overrides = req.image_overrides or {}
    gpu_image = overrides.get(WEBUI, settings.images.open_webui)
    profile = detect_fleet_host(settings, host, docker_host, probe, gpu_image, req.profile)
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
    prepared = prepare_for_host(hs, profile, model, overrides, stack_dir, volume, existing=existing)
    return FleetStack(docker_host, address_of(host, docker_host), prepared, payload, override)


def _fleet_model(settings: Settings, req: FleetRequest) -> ResolvedModel:
    return resolve_model(settings, req.model_id, req.model_path)


def fleet_detect(settings: Settings, req: FleetRequest) -> list[HostResult]:
    from deploykit.fleet import HostResult, run_parallel

    overrides = req.image_overrides or {}

    def one(host: FleetHost) -> HostResult:
        docker_host, probe = _reach(host)
        profile = detect_fleet_host(
            settings, host, docker_host, probe, overrides.get(WEBUI, settings.images.open_webui), req.profile
        )
        return HostResult(
            host.name,
            "detected",
            profile=host.profile or req.profile,
            details={"host": profile.model_dump(mode="json")},
        )

    return run_parallel(_fleet_hosts(req), one, req.parallel)


def fleet_plan(settings: Settings, req: FleetRequest, write: bool = False) -> list[HostResult]:
    """Plan every host (``write``: and render its stack folder)."""
    from deploykit.fleet import HostResult, PayloadCache, run_parallel

    model, payloads = _fleet_model(settings, req), PayloadCache()

    def one(host: FleetHost) -> HostResult:
        fs = _fleet_stack(settings, req, host, model, payloads, _reach(host), write)
        spec = fs.prepared.spec
        details: dict[str, Any] = {
            "plan": spec.plan.model_dump(mode="json"),
            "model_volume": spec.model_volume,
            "override": fs.override,
            "notes": fs.prepared.notes,
        }
        if write:
            details["dir"] = str(fs.prepared.stack_dir)
            details["changed"] = fs.prepared.write()
        return HostResult(
            host.name,
            "rendered" if write else "planned",
            profile=spec.plan.profile,
            backend=f"{spec.plan.backend} on {spec.plan.device}",
            url=f"http://{fs.address}:{spec.webui_port}",
            details=details,
        )

    return run_parallel(_fleet_hosts(req), one, req.parallel)


def deliver_model(docker_host: EngineAddress, payload: ModelPayload, image: str) -> str:
    """The weights into the host's named volume through its engine, checked by SHA-256 on the host's disk;
    nothing sent when the volume already holds that digest."""
    from deploykit import engine
    from deploykit.fleet import archive_stream
    from deploykit.values.errors import DownloadError

    volume = payload.volume
    label = "deploykit-model-delivery"
    if engine.volume_exists(docker_host, volume):
        _, marker = engine.run_probe(docker_host, image, payload.marker_command(), label=label, volume=volume)
        if marker.strip() == payload.digest:
            return f"already in volume {volume}"
    labels = {
        "org.deploykit.managed": "true",
        "org.deploykit.model-sha256": payload.digest,
        "org.deploykit.stack": label,
    }
    started = time.monotonic()
    code, out = engine.fill_volume(docker_host, volume, image, archive_stream(payload), payload.check_command(), labels)
    if code != 0:
        raise DownloadError(
            f"the model sent into volume {volume} failed its SHA-256 check on the host: {out.strip()[:200]}.",
            "Run `deploykit fleet up` again to resend it; check the host's disk if it fails again.",
        )
    return f"sent into volume {volume} and SHA-256 checked there ({time.monotonic() - started:.1f} s)"


def fleet_up(settings: Settings, req: FleetRequest, reporter_for: Callable[[str], Reporter]) -> list[HostResult]:
    """Per host, at most ``parallel`` at once: images and model through its engine, render, start, check."""
    from deploykit import engine, lifecycle
    from deploykit.fleet import HostResult, PayloadCache, run_parallel

    model, payloads = _fleet_model(settings, req), PayloadCache()
    controller = engine_for(settings)

    def one(host: FleetHost) -> HostResult:
        reporter = reporter_for(host.name)
        docker_host, probe = _reach(host)
        overrides = req.image_overrides or {}
        delivery = {}
        # Open WebUI's image first: the GPU probe runs in it.
        webui_image = overrides.get(WEBUI, settings.images.open_webui)
        reporter.note(f"images: {webui_image} …")
        delivery["open-webui image"] = engine.copy_image(controller, docker_host, webui_image)
        fs = _fleet_stack(settings, req, host, model, payloads, (docker_host, probe), write=True)
        spec = fs.prepared.spec
        row = HostResult(
            host.name,
            "failed",
            profile=spec.plan.profile,
            backend=f"{spec.plan.backend} on {spec.plan.device}",
            url=f"http://{fs.address}:{spec.webui_port}",
            details={
                "delivery": delivery,
                "dir": str(fs.prepared.stack_dir),
                "override": fs.override,
                "notes": fs.prepared.notes,
            },
        )
        try:
            reporter.note(f"images: open-webui {delivery['open-webui image']}; {spec.images['inference']} …")
            delivery["inference image"] = engine.copy_image(controller, docker_host, spec.images[INFERENCE])
            reporter.note(f"images: inference {delivery['inference image']}")
            if fs.payload is not None:
                reporter.note(f"model: {fs.payload.path.name} into volume {fs.payload.volume} …")
                delivery["model"] = deliver_model(docker_host, fs.payload, spec.images[INFERENCE])
                reporter.note(f"model: {delivery['model']}")
            prepared = fs.prepared
            with inference_route(prepared.loaded(fs.address), docker_host) as stack:
                report = lifecycle.up(
                    stack, docker_host, req.timeout, reporter, prepared.files, write_files=prepared.write
                )
        except DeployKitError as exc:
            row.error, row.hint, row.exit_code = exc.message, exc.hint, exc.exit_code
            return row
        row.state = "healthy" if report.healthy else "unhealthy"
        row.details["stages"] = report.stages
        row.details["drift"] = report.drift
        return row

    return run_parallel(_fleet_hosts(req), one, req.parallel)


@contextmanager
def inference_route(stack: LoadedStack, docker_host: EngineAddress) -> Iterator[LoadedStack]:
    """The stack with an inference URL this controller can reach: the stack publishes that port on its engine
    host's loopback only, so an ssh:// host is reached through an ``ssh -L`` forward while the block runs."""
    from dataclasses import replace
    from urllib.parse import urlparse

    from deploykit.proc import ssh_forward
    from deploykit.values.errors import EngineError

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
    from dataclasses import replace

    from deploykit.fleet import HostResult, address_of
    from deploykit.lifecycle import load_stack

    docker_host, _ = _reach(host)  # an unreachable host is that first, deployed or not
    stack_dir = (req.fleet_dir / host.name).expanduser().absolute()
    if not (stack_dir / "plan.json").is_file():
        return HostResult(
            host.name,
            "not deployed",
            error=f"no stack in {stack_dir}",
            hint=f"Run `deploykit fleet up --inventory {req.inventory} --hosts {host.name}`.",
        )
    return docker_host, replace(load_stack(stack_dir), address=address_of(host, docker_host))


def fleet_status(settings: Settings, req: FleetRequest) -> list[HostResult]:
    from deploykit import lifecycle
    from deploykit.fleet import HostResult, run_parallel

    def one(host: FleetHost) -> HostResult:
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
        plan = stack.spec.plan
        return HostResult(
            host.name,
            "healthy" if state["healthy"] else "unhealthy",
            profile=plan.profile,
            backend=f"{plan.backend} on {plan.device}",
            url=stack.webui_url,
            error=None if state["healthy"] else "; ".join(broken),
            details={"services": state["services"], "override": state["override"]},
        )

    return run_parallel(_fleet_hosts(req), one, req.parallel)


def fleet_down(settings: Settings, req: FleetRequest) -> list[HostResult]:
    from deploykit import lifecycle
    from deploykit.fleet import HostResult, run_parallel

    def one(host: FleetHost) -> HostResult:
        found = _fleet_loaded(req, host)
        if isinstance(found, HostResult):
            found.state = "down"  # nothing to stop is what down wants
            return found
        docker_host, stack = found
        lifecycle.down(stack, docker_host, volumes=False)
        plan = stack.spec.plan
        return HostResult(host.name, "down", profile=plan.profile, backend=f"{plan.backend} on {plan.device}")

    return run_parallel(_fleet_hosts(req), one, req.parallel)
