"""The engine side of the code sandbox: one throw-away, locked-down container that runs a command of a local
image and returns its output. Only ``deploykit.running.sandbox`` calls it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from deploykit.seams.engine import EngineAddress


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
    output: str  # stdout only, as the command wrote it


def run_sandboxed(
    docker_host: EngineAddress, image: str, command: list[str], *, labels: dict[str, str], limits: SandboxLimits
) -> SandboxRun:
    """Run ``command`` in a new container of ``image`` (never pulled): no network, read-only root, a random
    non-root user, every capability dropped, no new privileges, ``limits`` applied. Always removed."""
    raise NotImplementedError
