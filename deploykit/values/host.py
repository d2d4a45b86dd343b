"""What a machine has: the value `detect` produces and built-in profiles describe.

A ``HostProfile`` is plain data. ``deploykit detect --json`` prints one; the same JSON given back
with ``--host FILE`` plans a workstation from elsewhere; built-in profiles are the same shape with
only the fields that matter for planning filled in.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Frozen(BaseModel):
    # Strict: `true` is not a number and "8" is not a count, in a profile file or a host file alike.
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


class Gpu(_Frozen):
    index: int = 0
    uuid: str | None = None
    name: str
    memory_total_bytes: int = Field(gt=0)
    # None when unknown (a built-in profile): the planner then assumes the card is idle.
    memory_free_bytes: int | None = None
    compute_capability: str | None = Field(default=None, pattern=r"^\d+\.\d+$")
    driver_version: str | None = None
    cuda_version: str | None = None

    @property
    def compute_capability_tuple(self) -> tuple[int, int] | None:
        if self.compute_capability is None:
            return None
        major, minor = self.compute_capability.split(".")
        return int(major), int(minor)


class Cpu(_Frozen):
    model: str | None = None
    arch: str = "x86_64"
    physical_cores: int = Field(gt=0)
    logical_cores: int = Field(gt=0)
    flags: tuple[str, ...] = Field((), strict=False)  # the SIMD flags that matter: avx2, avx512f, amx, neon…

    @model_validator(mode="after")
    def _threads_cover_cores(self) -> Cpu:
        if self.logical_cores < self.physical_cores:
            raise ValueError(
                f"logical_cores ({self.logical_cores}) is less than physical_cores ({self.physical_cores}); "
                "every core runs at least one thread"
            )
        return self


class Memory(_Frozen):
    total_bytes: int = Field(gt=0)
    available_bytes: int | None = None


class Disk(_Frozen):
    path: str
    free_bytes: int = Field(ge=0)


class DockerEngine(_Frozen):
    reachable: bool = False
    host: str | None = None
    server_version: str | None = None
    api_version: str | None = None
    compose_version: str | None = None
    runtimes: tuple[str, ...] = Field((), strict=False)
    nvidia_runtime: bool = False
    cdi_devices: tuple[str, ...] = Field((), strict=False)
    cpus: int | None = None  # CPUs of the machine the engine runs on (its NCPU)
    error: str | None = None


class HostProfile(_Frozen):
    name: str
    description: str = ""
    source: Literal["builtin", "user", "detected", "file"] = "builtin"
    cpu: Cpu
    memory: Memory
    gpus: tuple[Gpu, ...] = Field((), strict=False)
    disk: Disk | None = None
    docker: DockerEngine | None = None
    # Where detection of NVIDIA GPUs came from, and why it failed if it did ("nvml", "nvidia-smi", "none").
    gpu_probe: str | None = None
    gpu_probe_error: str | None = None
    # A profile may say which backend it is for (``cpu-vllm`` runs vLLM's CPU build): a backend's name, which
    # whoever loads a profile checks against deploykit.backends (this module sits below them).
    preferred_backend: str | None = None
    # A profile of "this machine, served this way": CPU, RAM and disk are detected when it is used;
    # its own figures are only what listings and reference stacks show.
    detect: bool = False

    @property
    def vram_total_bytes(self) -> int:
        return sum(g.memory_total_bytes for g in self.gpus)

    @property
    def has_gpu(self) -> bool:
        return bool(self.gpus)
