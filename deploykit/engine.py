"""The only module that talks to Docker: the SDK for engine queries, the compose v2 CLI for stacks.

Every function takes the Docker host (``None`` = the environment's DOCKER_HOST or the local socket),
so the same code drives a workstation over ``ssh://`` or a context later.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from deploykit.errors import EngineError
from deploykit.host import DockerEngine
from deploykit.proc import Completed, Runner, run_cmd


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


def engine_error(docker_host: str | None, exc: Exception) -> EngineError:
    where = docker_host or os.environ.get("DOCKER_HOST") or "the local socket (/var/run/docker.sock)"
    return EngineError(
        f"cannot connect to the Docker Engine at {where}: {str(exc).splitlines()[0][:200]}.",
        "Is dockerd running? Start it (`systemctl start docker`, or `make provision` here) "
        "or point --docker-host / DOCKER_HOST at a running engine.",
    )


def client(docker_host: str | None) -> Any:
    """A connected SDK client, or an EngineError a person can act on."""
    try:
        c = _client(docker_host)
        c.ping()
    except Exception as exc:
        raise engine_error(docker_host, exc) from None
    return c


def require_compose_v2(runner: Runner = run_cmd) -> str:
    version = compose_version(runner)
    if version is not None:
        return version
    v1 = runner(["docker-compose", "version", "--short"])
    hint = (
        "Install the compose v2 plugin (package docker-compose-plugin, or docker-compose 2.x in /usr/libexec/docker/"
        "cli-plugins/); `make provision` does it on Debian."
    )
    if v1.ok:
        raise EngineError(
            f"only docker-compose v1 ({v1.stdout.strip()}) is installed; deploykit needs compose v2.", hint
        )
    raise EngineError("docker compose v2 is not installed.", hint)


@dataclass(frozen=True)
class ContainerState:
    service: str
    name: str
    state: str  # running | exited | restarting | created …
    health: str | None  # healthy | unhealthy | starting | None (no healthcheck)
    started_at: str | None
    restart_count: int
    exit_code: int | None
    image: str
    ports: tuple[str, ...]


class Stack:
    """One compose project on one engine: compose v2 CLI for orchestration, the SDK for queries."""

    def __init__(self, stack_dir: Path, project: str, docker_host: str | None = None, runner: Runner = run_cmd):
        self.stack_dir = stack_dir
        self.project = project
        self.docker_host = docker_host
        self.runner = runner

    def _compose(self, *args: str, timeout: float | None = 900) -> Completed:
        return self.runner(self.compose_command(*args), timeout=timeout, env=self.env())

    def env(self) -> dict[str, str]:
        """The environment for compose: this stack's engine, whatever DOCKER_HOST the shell has."""
        return dict(os.environ) | ({"DOCKER_HOST": self.docker_host} if self.docker_host else {})

    def compose_command(self, *args: str) -> list[str]:
        stack_file = str(self.stack_dir / "compose.yaml")
        return [
            "docker",
            "compose",
            "--project-directory",
            str(self.stack_dir),
            "-f",
            stack_file,
            "-p",
            self.project,
            *args,
        ]

    def _check(self, result: Completed, what: str) -> Completed:
        if not result.ok:
            detail = (result.stderr or result.stdout).strip().splitlines()
            last = detail[-1] if detail else f"exit code {result.returncode}"
            hint = "See `deploykit doctor`."
            if "pull access denied" in result.stderr or "no such host" in result.stderr or "manifest" in result.stderr:
                hint = "An image could not be pulled: check the network, or use --image SERVICE=REF with a local image."
            raise EngineError(f"docker compose {what} failed: {last}", hint)
        return result

    def up(self, *services: str) -> None:
        self._check(self._compose("up", "--detach", "--remove-orphans", *services), "up")

    def down(self, volumes: bool = False) -> None:
        args = ["down", "--remove-orphans"] + (["--volumes"] if volumes else [])
        self._check(self._compose(*args), "down")

    def restart(self, service: str | None) -> None:
        self._check(self._compose("restart", *([service] if service else [])), "restart")

    def stop(self, service: str) -> None:
        self._check(self._compose("stop", service), "stop")

    def start(self, service: str) -> None:
        """Start one service as rendered (created if missing), without touching the others."""
        self._check(self._compose("up", "--detach", "--no-deps", service), "up")

    def create(self, service: str) -> None:
        """Create one service's container, network and volumes without starting anything."""
        self._check(self._compose("up", "--no-start", "--no-deps", service), "up --no-start")

    def _service_container(self, service: str) -> Any:
        found = client(self.docker_host).containers.list(
            all=True,
            filters={"label": [f"com.docker.compose.project={self.project}", f"com.docker.compose.service={service}"]},
        )
        return found[0] if found else None

    def pause(self, service: str) -> bool:
        """Freeze a running service's processes (cgroup freezer); False when it was not running."""
        ctr = self._service_container(service)
        if ctr is None or ctr.status != "running":
            return False
        ctr.pause()
        return True

    def unpause(self, service: str) -> None:
        ctr = self._service_container(service)
        if ctr is not None:
            ctr.reload()
            if ctr.status == "paused":
                ctr.unpause()

    def volume_name(self, key: str) -> str | None:
        """The engine's name of the compose volume ``key`` of this project, or None when it does not exist."""
        found = client(self.docker_host).volumes.list(
            filters={"label": [f"com.docker.compose.project={self.project}", f"com.docker.compose.volume={key}"]}
        )
        return str(found[0].name) if found else None

    def logs_command(self, service: str | None, tail: int, follow: bool) -> list[str]:
        """The compose command that streams logs; the CLI runs it attached to the terminal."""
        args = [
            "docker",
            "compose",
            "--project-directory",
            str(self.stack_dir),
            "-f",
            str(self.stack_dir / "compose.yaml"),
            "-p",
            self.project,
            "logs",
            "--tail",
            str(tail),
        ]
        if follow:
            args.append("--follow")
        if service:
            args.append(service)
        return args

    def containers(self) -> list[ContainerState]:
        c = client(self.docker_host)
        found = c.containers.list(all=True, filters={"label": f"com.docker.compose.project={self.project}"})
        out = []
        for ctr in found:
            state = ctr.attrs.get("State", {})
            ports = []
            for inner, binds in (ctr.attrs.get("NetworkSettings", {}).get("Ports") or {}).items():
                for b in binds or []:
                    ports.append(f"{b.get('HostIp')}:{b.get('HostPort')}->{inner}")
            out.append(
                ContainerState(
                    service=ctr.labels.get("com.docker.compose.service", ctr.name),
                    name=ctr.name,
                    state=state.get("Status", "unknown"),
                    health=(state.get("Health") or {}).get("Status"),
                    started_at=state.get("StartedAt"),
                    restart_count=int(ctr.attrs.get("RestartCount", 0)),
                    exit_code=state.get("ExitCode"),
                    image=ctr.attrs.get("Config", {}).get("Image", ""),
                    ports=tuple(sorted(ports)),
                )
            )
        return sorted(out, key=lambda s: s.service)

    def log_tail(self, service: str, lines: int = 30) -> str:
        try:
            c = client(self.docker_host)
            found = c.containers.list(
                all=True,
                filters={
                    "label": [f"com.docker.compose.project={self.project}", f"com.docker.compose.service={service}"]
                },
            )
            if not found:
                return ""
            raw: bytes = found[0].logs(tail=lines)
            return raw.decode("utf-8", "replace")
        except EngineError:
            return ""


@dataclass(frozen=True)
class ProjectOwner:
    """A deploykit stack found in a compose project: where its containers were started, and its volumes."""

    working_dir: str | None
    volumes: tuple[str, ...]


def project_owners(docker_host: str | None, project: str) -> dict[str, ProjectOwner]:
    """The stacks (by stack id) whose containers or volumes are in ``project``."""
    c = client(docker_host)
    label = f"com.docker.compose.project={project}"
    dirs: dict[str, str] = {}
    volumes: dict[str, list[str]] = {}
    for ctr in c.containers.list(all=True, filters={"label": label}):
        stack_id = ctr.labels.get("org.deploykit.stack-id")
        if stack_id:
            dirs[stack_id] = ctr.labels.get("com.docker.compose.project.working_dir", "an unknown directory")
    for vol in c.volumes.list(filters={"label": label}):
        stack_id = (vol.attrs.get("Labels") or {}).get("org.deploykit.stack-id")
        if stack_id:
            volumes.setdefault(stack_id, []).append(vol.name)
    return {sid: ProjectOwner(dirs.get(sid), tuple(volumes.get(sid, ()))) for sid in dirs.keys() | volumes.keys()}


def image_present(docker_host: str | None, ref: str) -> bool:
    import docker.errors

    try:
        client(docker_host).images.get(ref)
    except docker.errors.ImageNotFound:
        return False
    return True


# ---------------------------------------------------------------- volume data (backup and restore)

VOLUME_MOUNT = "/data"


def _helper(
    docker_host: str | None,
    image: str,
    volume: str,
    labels: dict[str, str],
    read_only: bool,
    command: list[str] | None = None,
) -> Any:
    """A short-lived container of a local image with ``volume`` at /data; never pulls, has no network."""
    import docker.errors

    c = client(docker_host)
    try:
        c.images.get(image)
    except docker.errors.ImageNotFound:
        raise EngineError(
            f"image {image} is not on this engine, and a backup helper needs it.",
            "It is the stack's Open WebUI image: run `deploykit up` once, or pull it.",
        ) from None
    return c.containers.create(
        image,
        entrypoint=["sh", "-c"] if command else ["true"],
        command=command,
        name=f"{labels.get('org.deploykit.stack', 'deploykit')}-data-helper-{secrets.token_hex(3)}",
        labels=labels | {"org.deploykit.helper": "volume-data"},
        volumes={volume: {"bind": VOLUME_MOUNT, "mode": "ro" if read_only else "rw"}},
        network_mode="none",
        user="0",
    )


def export_volume(docker_host: str | None, volume: str, image: str, labels: dict[str, str], sink: Any) -> None:
    """Stream the volume's files as an uncompressed tar (members under ``data/``) into ``sink(chunk)``.

    The helper container is created, never started: the engine reads the mounted volume for the copy.
    """
    helper = _helper(docker_host, image, volume, labels, read_only=True)
    try:
        chunks, _ = helper.get_archive(VOLUME_MOUNT)
        for chunk in chunks:
            sink(chunk)
    finally:
        helper.remove(force=True)


def run_on_volume(
    docker_host: str | None,
    volume: str,
    image: str,
    labels: dict[str, str],
    script: str,
    upload: tuple[str, Iterable[bytes]] | None = None,
    timeout: float = 900,
) -> tuple[int, str]:
    """Run ``sh -c script`` in a helper with ``volume`` at /data (read-write); returns (exit code, output).

    ``upload`` is (directory in the helper, an uncompressed tar stream) copied in before it starts.
    """
    helper = _helper(docker_host, image, volume, labels, read_only=False, command=[script])
    try:
        if upload is not None:
            directory, stream = upload
            helper.put_archive(directory, stream)
        helper.start()
        result = helper.wait(timeout=timeout)
        output = helper.logs().decode("utf-8", "replace")
        return int(result.get("StatusCode", 1)), output
    finally:
        helper.remove(force=True)


def tar_of_file(name: str, source: IO[bytes], size: int, chunk: int = 1 << 20) -> Iterator[bytes]:
    """An uncompressed tar stream holding one regular file, read from ``source`` as it is sent."""
    import tarfile

    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o600
    yield info.tobuf(format=tarfile.PAX_FORMAT)
    sent = 0
    while sent < size:
        block = source.read(min(chunk, size - sent))
        if not block:
            raise OSError(f"{name} ended after {sent} of {size} bytes")
        sent += len(block)
        yield block
    yield b"\0" * ((512 - size % 512) % 512) + b"\0" * 1024


def pull_image(docker_host: str | None, ref: str) -> None:
    repository, _, tag = ref.rpartition(":") if "@" not in ref else (ref, "", "")
    try:
        client(docker_host).images.pull(repository or ref, tag=tag or None)
    except Exception as exc:
        raise EngineError(
            f"image {ref} is not on this engine and could not be pulled: {str(exc).splitlines()[0][:200]}.",
            "Nothing was changed. Load the image (`docker load`) or use --image SERVICE=REF with a local one.",
        ) from None
