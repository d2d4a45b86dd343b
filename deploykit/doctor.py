"""`deploykit doctor`: each thing a stack needs from the host, with pass/warn/fail and the fix."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from deploykit.host import GiB, HostProfile
from deploykit.lifecycle import LoadedStack, disk_free, port_problem, ports_held_by, published_ports, status
from deploykit.plan import gib
from deploykit.versions import pinned

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


def run_checks(
    host: HostProfile,
    docker_host: str | None,
    model_cache: Path,
    stack: LoadedStack | None,
    ports: list[tuple[str, int]] | None = None,
) -> list[Check]:
    """``ports``: (bind address, port) to check when no stack is given — the settings' ports."""
    checks: list[Check] = []
    d = host.docker
    if d is None or not d.reachable:
        checks.append(
            Check(
                "engine",
                "fail",
                f"Docker Engine not reachable: {d.error if d else 'not probed'}",
                "Start dockerd (`systemctl start docker`; here `make provision`) or set --docker-host / DOCKER_HOST.",
            )
        )
    else:
        checks.append(Check("engine", "pass", f"Docker Engine {d.server_version} (API {d.api_version})"))
    if d is not None and d.compose_version:
        checks.append(Check("compose", "pass", f"compose v2 {d.compose_version}"))
    else:
        checks.append(
            Check(
                "compose",
                "fail",
                "docker compose v2 is not installed",
                "Install the compose v2 plugin (docker-compose-plugin); `make provision` does it on Debian.",
            )
        )
    if host.gpus:
        names = ", ".join(f"{g.name} ({gib(g.memory_total_bytes)})" for g in host.gpus)
        checks.append(Check("gpu", "pass", f"{len(host.gpus)} NVIDIA GPU(s): {names}"))
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
    else:
        why = f" ({host.gpu_probe_error})" if host.gpu_probe_error else ""
        checks.append(Check("gpu", "pass", f"no NVIDIA GPU: stacks plan for the CPU{why}"))
    if stack is not None and stack.spec.plan.device == "cuda" and host.gpus:
        # The CUDA runtime the pinned image is built against (versions.toml): the driver must support it.
        image = pinned().gpu_image(stack.spec.plan.backend)
        have = _version(host.gpus[0].cuda_version)
        if have and have < image.cuda:
            other = (
                f"use the same release built for an older CUDA: --image inference={image.fallback}"
                if image.fallback
                else "pin an image built for an older CUDA with --image"
            )
            checks.append(
                Check(
                    "driver",
                    "fail",
                    f"driver {host.gpus[0].driver_version or '?'} supports CUDA {host.gpus[0].cuda_version}; "
                    f"the {stack.spec.plan.backend} image needs CUDA {image.cuda_text} (driver ≥ {image.driver})",
                    f"Update the NVIDIA driver to {image.driver} or newer, or {other}.",
                )
            )
        else:
            checks.append(Check("driver", "pass", f"driver CUDA {host.gpus[0].cuda_version} ≥ {image.cuda_text}"))
    ports = ports or [("0.0.0.0", 7860), ("127.0.0.1", 7861)]
    ours: set[int] = set()
    if stack is not None:
        ports = published_ports(stack)
        if d is not None and d.reachable:
            ours = ports_held_by(stack, docker_host)
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
    probe_dir, free = disk_free(model_cache)
    level: Status = "pass" if free >= 10 * GiB else "warn" if free >= 2 * GiB else "fail"
    checks.append(
        Check(
            "disk",
            level,
            f"{gib(free)} free for models at {probe_dir}",
            "" if level == "pass" else "Free space or set DEPLOYKIT_MODEL_CACHE to a bigger disk.",
        )
    )
    avail = host.memory.available_bytes or host.memory.total_bytes
    level = "pass" if avail >= 4 * GiB else "warn"
    checks.append(
        Check(
            "memory",
            level,
            f"{gib(avail)} of {gib(host.memory.total_bytes)} RAM available",
            "" if level == "pass" else "Close programs or plan a smaller model / shorter context.",
        )
    )
    if stack is not None and d is not None and d.reachable:
        state = status(stack, docker_host)
        if state["healthy"]:
            checks.append(Check("stack", "pass", f"{state['project']} is healthy, serving {state['model']}"))
        else:
            bad = [f"{s['service']}: {s['state']}/{s['health']}" for s in state["services"]]
            checks.append(
                Check(
                    "stack",
                    "fail",
                    f"{state['project']} is not healthy ({', '.join(bad)})",
                    "`deploykit up --dir DIR` restarts it; `deploykit logs` shows why.",
                )
            )
    return checks


def as_json(checks: list[Check]) -> dict[str, Any]:
    return {"ok": all(c.status != "fail" for c in checks), "checks": [asdict(c) for c in checks]}
