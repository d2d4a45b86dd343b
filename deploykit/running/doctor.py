"""`deploykit doctor`: each thing a stack needs from the host, with pass/warn/fail and the fix."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from deploykit.running.lifecycle import disk_free, port_problem, ports_held_by, published_ports, status
from deploykit.running.stack import LoadedStack
from deploykit.seams.engine import EngineAddress
from deploykit.values.host import HostProfile
from deploykit.values.units import GiB, gib
from deploykit.values.versions import pinned

Status = Literal["pass", "warn", "fail"]


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str
    fix: str = ""


def _version(text: str | None) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in (text or "").split(".")[:2])
    except ValueError:
        return ()


@dataclass(frozen=True)
class Inputs:
    """What the checks look at: the detected host, its engine, the model cache and the stack (if any)."""

    host: HostProfile
    docker_host: EngineAddress
    model_cache: Path
    stack: LoadedStack | None
    ports: list[tuple[str, int]]  # (bind address, port) to check when no stack is given

    @property
    def engine_up(self) -> bool:
        return self.host.docker is not None and self.host.docker.reachable


def check_engine(i: Inputs) -> list[Check]:
    d = i.host.docker
    if d is None or not d.reachable:
        return [
            Check(
                "engine",
                "fail",
                f"Docker Engine not reachable: {d.error if d else 'not probed'}",
                "Start dockerd (`systemctl start docker`; here `make provision`) or set --docker-host / DOCKER_HOST.",
            )
        ]
    return [Check("engine", "pass", f"Docker Engine {d.server_version} (API {d.api_version})")]


def check_compose(i: Inputs) -> list[Check]:
    d = i.host.docker
    if d is not None and d.compose_version:
        return [Check("compose", "pass", f"compose v2 {d.compose_version}")]
    return [
        Check(
            "compose",
            "fail",
            "docker compose v2 is not installed",
            "Install the compose v2 plugin (docker-compose-plugin); `make provision` does it on Debian.",
        )
    ]


def check_gpu(i: Inputs) -> list[Check]:
    host, d = i.host, i.host.docker
    if not host.gpus:
        why = f" ({host.gpu_probe_error})" if host.gpu_probe_error else ""
        return [Check("gpu", "pass", f"no NVIDIA GPU: stacks plan for the CPU{why}")]
    names = ", ".join(f"{g.name} ({gib(g.memory_total_bytes)})" for g in host.gpus)
    checks = [Check("gpu", "pass", f"{len(host.gpus)} NVIDIA GPU(s): {names}")]
    if d is not None and d.reachable and not d.nvidia_runtime:
        checks.append(
            Check(
                "nvidia-toolkit",
                "fail",
                "GPUs exist but the engine has no NVIDIA runtime or CDI devices",
                "Install nvidia-container-toolkit, then `nvidia-ctk runtime "
                "configure --runtime=docker` and restart dockerd.",
            )
        )
    elif d is not None and d.reachable:
        checks.append(Check("nvidia-toolkit", "pass", "NVIDIA runtime/CDI available to containers"))
    return checks


def check_driver(i: Inputs) -> list[Check]:
    """The CUDA runtime the pinned image is built against (versions.toml): the driver must support it."""
    host, stack = i.host, i.stack
    if stack is None or stack.spec.plan.device != "cuda" or not host.gpus:
        return []
    image = stack.spec.backend.gpu_image(pinned())
    have = _version(host.gpus[0].cuda_version)
    if have and have < image.cuda:
        other = (
            f"use the same release built for an older CUDA: --image inference={image.fallback}"
            if image.fallback
            else "pin an image built for an older CUDA with --image"
        )
        return [
            Check(
                "driver",
                "fail",
                f"driver {host.gpus[0].driver_version or '?'} supports CUDA {host.gpus[0].cuda_version}; "
                f"the {stack.spec.plan.backend} image needs CUDA {image.cuda_text} (driver ≥ {image.driver})",
                f"Update the NVIDIA driver to {image.driver} or newer, or {other}.",
            )
        ]
    return [Check("driver", "pass", f"driver CUDA {host.gpus[0].cuda_version} ≥ {image.cuda_text}")]


def check_ports(i: Inputs) -> list[Check]:
    """The ports the stack publishes (or the settings' ports): free, or already this stack's."""
    ports, ours = i.ports, set[int]()
    if i.stack is not None:
        ports = published_ports(i.stack.spec)
        if i.engine_up:
            ours = ports_held_by(i.stack, i.docker_host)
    checks = []
    for bind, port in ports:
        if port in ours:
            checks.append(Check(f"port {port}", "pass", "published by this stack"))
        elif (problem := port_problem(bind, port)) is None:
            checks.append(Check(f"port {port}", "pass", "free"))
        elif problem.startswith("in use"):
            checks.append(
                Check(
                    f"port {port}",
                    "fail",
                    problem,
                    f"Stop it (`ss -ltnp 'sport = :{port}'` shows who) or change the port in settings.",
                )
            )
        else:
            checks.append(Check(f"port {port}", "fail", problem, "Set webui_bind to an address of this host."))
    return checks


def check_disk(i: Inputs) -> list[Check]:
    probe_dir, free = disk_free(i.model_cache)
    level: Status = "pass" if free >= 10 * GiB else "warn" if free >= 2 * GiB else "fail"
    fix = "" if level == "pass" else "Free space or set DEPLOYKIT_MODEL_CACHE to a bigger disk."
    return [Check("disk", level, f"{gib(free)} free for models at {probe_dir}", fix)]


def check_memory(i: Inputs) -> list[Check]:
    mem = i.host.memory
    avail = mem.available_bytes or mem.total_bytes
    level: Status = "pass" if avail >= 4 * GiB else "warn"
    fix = "" if level == "pass" else "Close programs or plan a smaller model / shorter context."
    return [Check("memory", level, f"{gib(avail)} of {gib(mem.total_bytes)} RAM available", fix)]


def check_stack(i: Inputs) -> list[Check]:
    if i.stack is None or not i.engine_up:
        return []
    state = status(i.stack, i.docker_host)
    if state["healthy"]:
        return [Check("stack", "pass", f"{state['project']} is healthy, serving {state['model']}")]
    bad = [f"{s['service']}: {s['state']}/{s['health']}" for s in state["services"]]
    return [
        Check(
            "stack",
            "fail",
            f"{state['project']} is not healthy ({', '.join(bad)})",
            "`deploykit up --dir DIR` restarts it; `deploykit logs` shows why.",
        )
    ]


def check_tls(i: Inputs) -> list[Check]:
    """A stack's HTTPS certificate (and the site CA that issued it): warn under 30 days, fail when expired."""
    from datetime import UTC, datetime

    from deploykit.seams import certificates
    from deploykit.values.errors import UsageError
    from deploykit.values.stackfiles import TLS_CA_FILE, TLS_CERT_FILE

    spec = i.stack.spec.tls if i.stack is not None else None
    if i.stack is None or spec is None:
        return []
    internal = spec.mode == "internal"
    files = [("certificate", TLS_CERT_FILE), *([("site CA", TLS_CA_FILE)] if internal else [])]
    renew = (
        f"`deploykit up --dir {i.stack.dir}` issues a new certificate from the site CA."
        if internal
        else "Renew the site's certificate; `deploykit up` reads the files again."
    )
    checks = []
    now = datetime.now(UTC)
    for what, name in files:
        try:
            not_after = certificates.expiry(i.stack.dir / name)
        except UsageError as exc:
            checks.append(Check("tls", "fail", f"the stack's {what} cannot be read: {exc.message}", renew))
            continue
        days = (not_after - now).days
        if not_after <= now:
            checks.append(Check("tls", "fail", f"{what} {name} expired on {not_after:%Y-%m-%d}", renew))
        elif days < certificates.RENEW_DAYS:
            checks.append(Check("tls", "warn", f"{what} {name} expires {not_after:%Y-%m-%d}, in {days} days", renew))
        else:
            checks.append(Check("tls", "pass", f"{what} {name} expires {not_after:%Y-%m-%d} ({days} days left)"))
    return checks


# In the order they are printed.
CHECKS: tuple[Callable[[Inputs], list[Check]], ...] = (
    check_engine,
    check_compose,
    check_gpu,
    check_driver,
    check_ports,
    check_disk,
    check_memory,
    check_stack,
    check_tls,
)


def run_checks(
    host: HostProfile,
    docker_host: EngineAddress,
    model_cache: Path,
    stack: LoadedStack | None,
    ports: list[tuple[str, int]] | None = None,
) -> list[Check]:
    """``ports``: (bind address, port) to check when no stack is given — the settings' (``published_ports``)."""
    inputs = Inputs(host, docker_host, model_cache, stack, ports or [])
    return [c for check in CHECKS for c in check(inputs)]


def as_json(checks: list[Check]) -> dict[str, object]:
    return {"ok": all(c.status != "fail" for c in checks), "checks": [asdict(c) for c in checks]}
