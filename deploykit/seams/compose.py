"""One stack on the engine: Docker Compose v2's CLI for a Compose stack, ``docker stack`` for a Swarm one;
its containers as the engine reports them."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deploykit.seams.engine import EngineAddress, client
from deploykit.seams.proc import Completed, Runner, run_cmd
from deploykit.values.errors import EngineError
from deploykit.values.redact import redact
from deploykit.values.services import SERVICES
from deploykit.values.stackfiles import RUNTIME_SECRETS, SECRET_KEYS, STACK_ID


def processes_rss_bytes(top: dict[str, Any]) -> int | None:
    """What a container's processes hold, from the engine's ``top`` with ``-o pid,rss`` (never their command
    lines: a server's holds its API key): their RSS summed, mapped weights included whichever cgroup first read
    them. A library two processes share counts twice (a few MiB for llama.cpp's router and its children; vLLM's
    CPU build measured 3666 MiB this way against 3286 by its cgroup and 3782 planned, docs/benchmarks.md).
    None when the listing has no RSS column."""
    titles = [str(t).upper() for t in top.get("Titles") or []]
    if "RSS" not in titles:
        return None
    column = titles.index("RSS")
    try:
        return sum(int(row[column]) for row in top.get("Processes") or []) * 1024  # ps gives KiB
    except (ValueError, IndexError, TypeError):
        return None


def resident_bytes(memory_stats: dict[str, Any]) -> int | None:
    """What a container's processes hold, from the engine's ``memory_stats``: their anonymous memory (KV cache,
    activations, a Python heap) and the file pages they map (llama.cpp's mmapped weights), not the page cache
    of files merely read. `docker stats` (usage minus inactive file pages) drops the weights whenever the kernel
    has put them on the inactive list, as it does after short prompts: a two-model router measured 869 MiB that
    way against 1001 MiB held (docs/benchmarks.md). cgroup v2 names the counters anon/file_mapped, v1 rss/
    mapped_file; without either, `docker stats`' figure. None when the engine reports no usage."""
    counters = memory_stats.get("stats") or {}
    for anon, mapped in (("anon", "file_mapped"), ("rss", "mapped_file")):
        if anon in counters and mapped in counters:
            return int(counters[anon]) + int(counters[mapped])
    if "usage" not in memory_stats:
        return None
    return int(memory_stats["usage"]) - int(counters.get("inactive_file", counters.get("cache", 0)))


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


def container_state(ctr: Any, service: str, restart_count: int) -> ContainerState:
    """What the health checks and `status` need of one SDK container."""
    state = ctr.attrs.get("State", {})
    ports = []
    for inner, binds in (ctr.attrs.get("NetworkSettings", {}).get("Ports") or {}).items():
        for b in binds or []:
            ports.append(f"{b.get('HostIp')}:{b.get('HostPort')}->{inner}")
    return ContainerState(
        service=service,
        name=ctr.name,
        state=state.get("Status", "unknown"),
        health=(state.get("Health") or {}).get("Status"),
        started_at=state.get("StartedAt"),
        restart_count=restart_count,
        exit_code=state.get("ExitCode"),
        image=ctr.attrs.get("Config", {}).get("Image", ""),
        ports=tuple(sorted(ports)),
    )


class Stack:
    """One compose project on one engine: compose v2 CLI for orchestration, the SDK for queries."""

    def __init__(
        self, stack_dir: Path, project: str, docker_host: EngineAddress = EngineAddress(), runner: Runner = run_cmd
    ):
        self.stack_dir = stack_dir
        self.project = project
        self.docker_host = docker_host
        self.runner = runner

    def _compose(self, *args: str, timeout: float | None = 900) -> Completed:
        return self.runner(self.compose_command(*args), timeout=timeout, env=self.env())

    def env(self) -> dict[str, str]:
        """The environment for compose: this stack's engine, whatever DOCKER_HOST the shell has."""
        return dict(os.environ) | self.docker_host.compose_env()

    def compose_files(self) -> list[Path]:
        """compose.yaml, then the site's compose.override.yaml when there is one (Compose's own convention)."""
        from deploykit.seams.override import override_path

        override = override_path(self.stack_dir)
        return [self.stack_dir / "compose.yaml", *([override] if override else [])]

    def compose_command(self, *args: str, files: list[Path] | None = None) -> list[str]:
        # The one place that builds the -f list: every compose command sees the override too.
        file_args = [arg for f in (files or self.compose_files()) for arg in ("-f", str(f))]
        return ["docker", "compose", "--project-directory", str(self.stack_dir), *file_args, "-p", self.project, *args]

    def check_override(self, rendered: dict[str, str]) -> None:
        """Refuse an override that does not merge with the stack about to run (nothing is started or written).

        The rendered compose.yaml and .env are checked from a scratch directory, so a stack not yet written is
        checked the same way; paths in the override still resolve against the stack directory.
        """
        import tempfile

        from deploykit.seams.override import check_syntax, merge_error, override_path

        override = override_path(self.stack_dir)
        if override is None:
            return
        check_syntax(override)
        with tempfile.TemporaryDirectory(prefix="deploykit-check-") as scratch:
            base = Path(scratch) / "compose.yaml"
            base.write_text(rendered["compose.yaml"], encoding="utf-8")
            env_file = Path(scratch) / ".env"
            env_file.write_text(rendered[".env"], encoding="utf-8")
            command = self.compose_command("config", "--quiet", files=[base, override])
            command[2:2] = ["--env-file", str(env_file)]
            result = self.runner(command, timeout=60, env=self.env())
        if not result.ok:
            raise merge_error(override, result.stderr or result.stdout, list(SERVICES))

    def _check(self, result: Completed, what: str) -> Completed:
        if not result.ok:
            detail = (result.stderr or result.stdout).strip().splitlines()
            last = detail[-1] if detail else f"exit code {result.returncode}"
            hint = "See `deploykit doctor`."
            if "pull access denied" in result.stderr or "no such host" in result.stderr or "manifest" in result.stderr:
                hint = "An image could not be pulled: check the network, or use --image SERVICE=REF with a local image."
            raise EngineError(f"docker compose {what} failed: {redact(last)}", hint)
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

    def memory_bytes(self, service: str) -> int | None:
        """The memory a running service's container holds (its processes' RSS, else its cgroup's figure);
        None when it does not run."""
        ctr = self._service_container(service)
        if ctr is None or ctr.status != "running":
            return None
        import docker.errors

        with contextlib.suppress(docker.errors.APIError):  # no ps on the engine's host: the cgroup's figure
            if (held := processes_rss_bytes(ctr.top(ps_args="-o pid,rss"))) is not None:
                return held
        return resident_bytes(ctr.stats(stream=False).get("memory_stats") or {})

    def volume_name(self, key: str) -> str | None:
        """The engine's name of the compose volume ``key`` of this project, or None when it does not exist."""
        found = client(self.docker_host).volumes.list(
            filters={"label": [f"com.docker.compose.project={self.project}", f"com.docker.compose.volume={key}"]}
        )
        return str(found[0].name) if found else None

    def logs_command(self, service: str | None, tail: int, follow: bool) -> list[str]:
        """The compose command that streams logs; the CLI runs it attached to the terminal."""
        args = self.compose_command("logs", "--tail", str(tail))
        if follow:
            args.append("--follow")
        if service:
            args.append(service)
        return args

    def containers(self) -> list[ContainerState]:
        c = client(self.docker_host)
        found = c.containers.list(all=True, filters={"label": f"com.docker.compose.project={self.project}"})
        out = [
            container_state(
                ctr, ctr.labels.get("com.docker.compose.service", ctr.name), int(ctr.attrs.get("RestartCount", 0))
            )
            for ctr in found
        ]
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


# The Swarm secrets swarm.yaml names, and the .env keys they are made from.
SWARM_SECRET_FILES = tuple((key.lower(), key) for key in RUNTIME_SECRETS)


def swarm_state(docker_host: EngineAddress) -> tuple[str, bool]:
    """The engine's swarm membership ("inactive", "active", …) and whether it is a manager."""
    info = client(docker_host).info().get("Swarm") or {}
    return str(info.get("LocalNodeState") or "inactive"), bool(info.get("ControlAvailable"))


class SwarmStack(Stack):
    """One stack on a Docker Swarm: `docker stack deploy/rm` for orchestration, the SDK for queries.

    Services are named ``<project>_<service>``; their containers carry
    ``com.docker.stack.namespace=<project>`` and ``com.docker.swarm.service.name``.
    """

    def __init__(
        self,
        stack_dir: Path,
        project: str,
        docker_host: EngineAddress,
        secrets: Mapping[str, str],
        runner: Runner = run_cmd,
    ):
        super().__init__(stack_dir, project, docker_host, runner)
        self.secrets = dict(secrets)

    def _docker(self, *args: str, env: Mapping[str, str] | None = None, timeout: float | None = 300) -> Completed:
        return self.runner(["docker", *args], timeout=timeout, env=env or self.env())

    def _fail(self, result: Completed, what: str, hint: str = "See `deploykit doctor`.") -> EngineError:
        detail = (result.stderr or result.stdout).strip().splitlines()
        return EngineError(f"docker {what} failed: {detail[-1] if detail else result.returncode}", hint)

    def up(self, *services: str) -> None:
        """Deploy (or update) the whole stack; Swarm has no per-service start, so ``services`` is ignored."""
        # The secret files exist only for the deploy: `docker stack deploy` copies them into the swarm.
        secrets_dir = Path(tempfile.mkdtemp(prefix="deploykit-secrets-"))
        try:
            for file_name, key in SWARM_SECRET_FILES:
                path = secrets_dir / file_name
                path.touch(mode=0o600)
                path.write_text(self.secrets.get(key, ""), encoding="utf-8")
            env = self.env() | {
                "DEPLOYKIT_SECRETS_DIR": str(secrets_dir),
                STACK_ID: self.secrets.get(STACK_ID, ""),
                # [webui_env] secrets the stack file refers to (`docker stack deploy` reads no .env).
                **{k: v for k, v in self.secrets.items() if k not in SECRET_KEYS},
            }
            stack_file = str(self.stack_dir / "swarm.yaml")
            result = self._docker("stack", "deploy", "--prune", "-c", stack_file, self.project, env=env)
        finally:
            shutil.rmtree(secrets_dir, ignore_errors=True)
        if not result.ok:
            hint = "See `deploykit doctor`."
            if "not a swarm manager" in result.stderr:
                hint = "Run it on a swarm manager (`docker swarm init` makes this engine one)."
            elif "only updates to Labels are allowed" in result.stderr:
                hint = "A secret in .env changed and Swarm secrets cannot: `deploykit down` first, then up again."
            raise self._fail(result, "stack deploy", hint)

    def deployed(self) -> bool:
        services = client(self.docker_host).services.list(filters={"label": self._namespace_label})
        return bool(services)

    @property
    def _namespace_label(self) -> str:
        return f"com.docker.stack.namespace={self.project}"

    def down(self, volumes: bool = False) -> None:
        """`docker stack rm`, then wait until its containers and network are gone (Swarm removes them later)."""
        result = self._docker("stack", "rm", self.project)
        if not result.ok:
            raise self._fail(result, "stack rm")
        import docker.errors

        c = client(self.docker_host)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            left = c.containers.list(all=True, filters={"label": self._namespace_label})
            left += c.networks.list(filters={"label": self._namespace_label})
            if volumes:
                # A volume stays "in use" for a moment after its container is gone: try again until then.
                for vol in c.volumes.list(filters={"label": self._namespace_label}):
                    try:
                        vol.remove()
                    except docker.errors.APIError:
                        left.append(vol)
            if not left:
                return
            time.sleep(1)
        raise EngineError(
            f"the swarm stack {self.project} was removed but some of its containers, networks or volumes are "
            "still there after 120 s.",
            f"List them with `docker ps -a --filter label={self._namespace_label}` (and `docker volume ls`).",
        )

    def restart(self, service: str | None) -> None:
        for name in [service] if service else list(SERVICES):
            result = self._docker("service", "update", "--force", "--detach", f"{self.project}_{name}")
            if not result.ok:
                raise self._fail(result, "service update")

    def logs_command(self, service: str | None, tail: int, follow: bool) -> list[str]:
        # `docker service logs` shows one service; without one, the inference server's.
        args = ["docker", "service", "logs", "--tail", str(tail)]
        if follow:
            args.append("--follow")
        return [*args, f"{self.project}_{service or 'inference'}"]

    def _service_of(self, labels: Mapping[str, str]) -> str:
        name = labels.get("com.docker.swarm.service.name", "")
        return name.removeprefix(f"{self.project}_")

    def containers(self) -> list[ContainerState]:
        c = client(self.docker_host)
        found = c.containers.list(all=True, filters={"label": self._namespace_label})
        # A task that failed is replaced by a new container: report each service's newest one.
        newest: dict[str, Any] = {}
        for ctr in found:
            service = self._service_of(ctr.labels)
            created = ctr.attrs.get("Created", "")
            if service not in newest or created > newest[service].attrs.get("Created", ""):
                newest[service] = ctr
        out = [
            container_state(ctr, service, sum(1 for o in found if self._service_of(o.labels) == service) - 1)
            for service, ctr in newest.items()
        ]
        return sorted(out, key=lambda s: s.service)

    def log_tail(self, service: str, lines: int = 30) -> str:
        result = self._docker("service", "logs", "--tail", str(lines), f"{self.project}_{service}", timeout=30)
        return (result.stdout + result.stderr) if result.ok else ""
