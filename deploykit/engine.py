"""The only module that talks to Docker: the SDK for engine queries, the compose v2 CLI for stacks.

Every function takes the Docker host (``None`` = the environment's DOCKER_HOST or the local socket),
so the same code drives a workstation over ``ssh://`` or a context later.
"""

from __future__ import annotations

from typing import Any

from deploykit.host import DockerEngine
from deploykit.proc import Runner, run_cmd


def _client(docker_host: str | None, timeout: int = 10) -> Any:
    import docker

    if docker_host:
        return docker.DockerClient(base_url=docker_host, timeout=timeout)
    return docker.from_env(timeout=timeout)


def compose_version(runner: Runner = run_cmd) -> str | None:
    """compose v2's version ("2.26.1"), or None when only v1 or nothing is installed."""
    result = runner(["docker", "compose", "version", "--short"])
    if not result.ok:
        return None
    return result.stdout.strip().lstrip("v") or None


def probe_engine(docker_host: str | None, runner: Runner = run_cmd) -> DockerEngine:
    """Reachability, versions and GPU support of the engine; never raises."""
    compose = compose_version(runner)
    try:
        client = _client(docker_host, timeout=5)
        info = client.info()
        version = client.version()
    except Exception as exc:  # the SDK raises many types for "not there"; all mean unreachable
        return DockerEngine(
            reachable=False, host=docker_host, compose_version=compose, error=str(exc).splitlines()[0][:300]
        )
    runtimes = tuple(sorted((info.get("Runtimes") or {}).keys()))
    cdi = tuple((info.get("DiscoveredDevices") and [d.get("ID", "") for d in info["DiscoveredDevices"]]) or ())
    return DockerEngine(
        reachable=True,
        host=docker_host,
        server_version=version.get("Version"),
        api_version=version.get("ApiVersion"),
        compose_version=compose,
        runtimes=runtimes,
        nvidia_runtime="nvidia" in runtimes or any(d.startswith("nvidia.com/gpu") for d in cdi),
        cdi_devices=cdi,
    )
