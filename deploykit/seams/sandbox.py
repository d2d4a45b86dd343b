"""The engine side of the code sandbox: one throw-away, locked-down container that runs a command of a local
image and returns its output. Only ``deploykit.running.sandbox`` calls it."""

from __future__ import annotations

import secrets
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import TYPE_CHECKING

from deploykit.seams.engine import client
from deploykit.values.errors import EngineError
from deploykit.values.redact import redact

if TYPE_CHECKING:
    from deploykit.seams.engine import EngineAddress

# A user no account on the engine host has: RLIMIT_NPROC counts a user's processes host-wide, so a check's
# process limit is not spent by anything else, and nothing of the host belongs to it.
USER_IDS = range(200_000, 265_000)
MAX_OUTPUT = 8 << 20  # of the command's stdout kept (the runner writes a short line per check)


@dataclass(frozen=True)
class SandboxLimits:
    """What one sandbox container may use, whatever runs in it."""

    memory_mb: int = 1024  # memory and swap together
    pids: int = 128  # every process and thread in the container
    cpus: float = 1.0
    tmpfs_mb: int = 64  # /tmp: the only writable folder
    wall_s: float = 600  # the container is killed after this long


@dataclass(frozen=True)
class SandboxRun:
    exit_code: int | None  # None: killed at the wall-clock bound
    output: str  # stdout, as the command wrote it
    errors: str  # the end of its stderr (a runner that could not start says why there)


@contextmanager
def _refusals(docker_host: EngineAddress, image: str) -> Iterator[None]:
    """The engine refusing the container (a limit it cannot apply, no space …), in one sentence."""
    import docker.errors

    try:
        yield
    except docker.errors.DockerException as exc:
        detail = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
        raise EngineError(
            f"the engine at {docker_host.display} refused a sandbox container of {image}: {redact(detail)}."
        ) from None


def run_sandboxed(
    docker_host: EngineAddress,
    image: str,
    command: list[str],
    *,
    labels: dict[str, str],
    limits: SandboxLimits,
    on_line: Callable[[str], None] | None = None,
) -> SandboxRun:
    """Run ``command`` in a new container of ``image`` (never pulled): no network, read-only root, a random
    non-root user, every capability dropped, no new privileges, ``limits`` applied. ``on_line`` is given each
    line of its stdout as it is written. Killed at ``limits.wall_s``; always removed."""
    import docker.errors

    c = client(docker_host, timeout=int(limits.wall_s) + 60)
    try:
        c.images.get(image)
    except docker.errors.ImageNotFound:
        raise EngineError(
            f"image {image} is not on the engine at {docker_host.display}; code is checked in it and nothing is "
            "pulled.",
            "It is the stack's Open WebUI image: run `deploykit up` for this stack first.",
        ) from None
    user = 200_000 + secrets.randbelow(len(USER_IDS))
    with _refusals(docker_host, image):
        ctr = c.containers.create(
            image,
            entrypoint=command[:1],
            command=command[1:],
            name=f"{labels.get('org.deploykit.stack', 'deploykit')}-sandbox-{secrets.token_hex(3)}",
            labels=labels | {"org.deploykit.helper": "code-sandbox"},
            user=f"{user}:{user}",
            environment={"HOME": "/tmp", "PYTHONDONTWRITEBYTECODE": "1"},
            working_dir="/tmp",
            network_mode="none",
            ipc_mode="none",  # no /dev/shm
            read_only=True,
            tmpfs={"/tmp": f"rw,nosuid,nodev,noexec,size={limits.tmpfs_mb}m,mode=1777"},
            cap_drop=["ALL"],
            security_opt=["no-new-privileges:true"],
            mem_limit=f"{limits.memory_mb}m",
            memswap_limit=f"{limits.memory_mb}m",
            pids_limit=limits.pids,
            nano_cpus=int(limits.cpus * 1e9),
            init=False,  # the runner must be PID 1 (see running/sandbox_runner.py)
            stdin_open=False,
            tty=False,
        )
        bound = threading.Event()

        def kill_at_bound() -> None:
            bound.set()
            with suppress(Exception):  # it may have ended meanwhile; remove() below kills it anyway
                ctr.kill()

        timer = threading.Timer(limits.wall_s, kill_at_bound)
        try:
            ctr.start()
            timer.start()
            output = _follow(ctr.logs(stream=True, follow=True, stdout=True, stderr=False), on_line)
            code = int(ctr.wait(timeout=60).get("StatusCode", 1))
            errors = ctr.logs(stdout=False, stderr=True, tail=20).decode("utf-8", "replace")
            return SandboxRun(exit_code=None if bound.is_set() else code, output=output, errors=errors[-2000:])
        finally:
            timer.cancel()
            ctr.remove(force=True)


def _follow(chunks: Iterable[bytes], on_line: Callable[[str], None] | None) -> str:
    """The stream read whole (up to MAX_OUTPUT), each complete line handed on as it arrives."""
    seen = bytearray()
    handed = 0
    for chunk in chunks:
        if len(seen) < MAX_OUTPUT:
            seen += chunk[: MAX_OUTPUT - len(seen)]
        while on_line is not None and (end := seen.find(b"\n", handed)) >= 0:
            on_line(seen[handed:end].decode("utf-8", "replace"))
            handed = end + 1
    return seen.decode("utf-8", "replace")
