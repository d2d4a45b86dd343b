"""The memory arithmetic every backend shares, written once: the budget, KV cache per token, context.

Pure: bytes in, bytes out. A backend plans one model into a ``Budget`` (VRAM × utilisation on the GPU, or
the RAM left after Open WebUI and the OS); the KV cache is sized by ``kv_bytes`` for its cache type; the
context is the most that fits under the cap, rounded down to 256 tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from deploykit.values.host import Gpu, HostProfile
from deploykit.values.model import ModelSpec
from deploykit.values.plan import MemoryBreakdown, NoFit, PlanSettings
from deploykit.values.units import GiB, MiB, gib

Device = Literal["cuda", "cpu"]

# KV cache bytes per element against f16: q8_0 keeps 32 values in 34 bytes, q4_0 in 18.
KV_CACHE_SCALE = {"f16": 1.0, "bf16": 1.0, "q8_0": 34 / 64, "q4_0": 18 / 64}
# Shortest context worth serving on the CPU (both backends' CPU plans).
CPU_MIN_CONTEXT = 512
# Open WebUI's Python process beside the model, and the OS: not ours to spend on KV cache.
WEBUI_AND_OS_RESERVE_BYTES = 2 * GiB
# Default share of VRAM handed to the server; the rest covers fragmentation and the desktop.
DEFAULT_GPU_UTILIZATION = 0.90


@dataclass(frozen=True)
class Budget:
    """The memory one model is planned into: a share of one GPU, or RAM.

    ``ram_bytes`` is the RAM a GPU plan may put what does not fit there into (llama.cpp's layers left on the
    CPU); for a RAM budget it is ``bytes`` itself. A plan of several models gives each its own share.
    """

    device: Device
    bytes: int
    ram_bytes: int
    gpu: Gpu | None = None  # the GPU the share is of
    share: float | None = None  # of that GPU's memory: vLLM's --gpu-memory-utilization
    share_why: str = ""

    @property
    def kind(self) -> Literal["vram", "ram"]:
        return "vram" if self.device == "cuda" else "ram"

    @property
    def gpu_name(self) -> str:
        """The GPU the plan's reasons name ("the NVIDIA GeForce RTX 3060")."""
        return self.gpu.name if self.gpu is not None else "CPU"


def best_gpu(host: HostProfile) -> Gpu:
    return max(host.gpus, key=lambda g: g.memory_total_bytes)


def usable_ram(host: HostProfile) -> int:
    """RAM left for models: what the host has (or has free) less Open WebUI's and the OS's share."""
    mem = host.memory
    usable = mem.total_bytes if mem.available_bytes is None else min(mem.total_bytes, mem.available_bytes)
    return usable - WEBUI_AND_OS_RESERVE_BYTES


def ram_budget(host: HostProfile) -> Budget:
    ram = usable_ram(host)
    return Budget("cpu", ram, ram)


def gpu_budget(host: HostProfile, settings: PlanSettings) -> Budget:
    """The largest GPU's memory × the share handed to the server (settings, else the default, else what is free)."""
    gpu = best_gpu(host)
    share, why = _gpu_share(gpu, settings)
    return Budget("cuda", int(gpu.memory_total_bytes * share), usable_ram(host), gpu, share, why)


def _gpu_share(gpu: Gpu, settings: PlanSettings) -> tuple[float, str]:
    if settings.gpu_memory_utilization is not None:
        return settings.gpu_memory_utilization, "set in settings"
    share = DEFAULT_GPU_UTILIZATION
    if gpu.memory_free_bytes is not None:
        # Something else (a desktop, another server) holds VRAM: never ask for more than is free.
        free_share = (gpu.memory_free_bytes - 256 * MiB) / gpu.memory_total_bytes
        if free_share < share:
            return round(max(free_share, 0.0), 2), f"only {gib(gpu.memory_free_bytes)} of VRAM is free"
    return share, "the default, leaving 10% for fragmentation and the desktop"


def kv_per_token(model: ModelSpec, cache_type: str = "f16") -> int:
    """KV cache bytes one token holds, K and V over every layer, in the cache's element type."""
    return int(model.kv_bytes_per_token() * KV_CACHE_SCALE[cache_type])


def kv_bytes(model: ModelSpec, tokens: int, sequences: int = 1, cache_type: str = "f16") -> int:
    """The KV reservation for ``sequences`` of ``tokens`` each."""
    return kv_per_token(model, cache_type) * tokens * sequences


def fit_context(fixed: int, per_token: int, budget: int, cap: int) -> int:
    """Largest context ≤ cap (rounded down to 256 tokens) with fixed + per_token × ctx ≤ budget."""
    if per_token <= 0 or budget <= fixed:
        return 0
    ctx = min(cap, (budget - fixed) // per_token)
    return ctx if ctx == cap else ctx // 256 * 256


def context_cap(model: ModelSpec, settings: PlanSettings) -> int:
    return min(settings.max_context, model.max_context)


def context_why(ctx: int, cap: int, model: ModelSpec, settings: PlanSettings) -> str:
    if ctx < cap:
        return f"the most that fits (the cap is {cap})."
    if cap == model.max_context:
        return f"the model's maximum ({model.max_context})."
    return (
        f"the configured cap (max_context={settings.max_context}; the model allows {model.max_context}, "
        "raise it with --context)."
    )


def breakdown(
    weights: int, kv_cache: int, overhead: int, budget: Budget, ram_bytes: int | None = None
) -> MemoryBreakdown:
    """What the plan holds in its budget: weights + KV cache + overhead = total."""
    return MemoryBreakdown(
        weights_bytes=weights,
        kv_cache_bytes=kv_cache,
        overhead_bytes=overhead,
        total_bytes=weights + kv_cache + overhead,
        budget_bytes=budget.bytes,
        budget_kind=budget.kind,
        ram_bytes=ram_bytes,
    )


def startup_seconds(weights_bytes: int, base: int, per_gib: int) -> int:
    """How long loading may take: the server's own start, and reading the weights (per GiB)."""
    return int(base + per_gib * weights_bytes / GiB)


def skip(model: ModelSpec, budget: Budget, why: str) -> NoFit:
    """A backend that cannot serve the model on this budget; ``why`` is the sentence the planner passes on."""
    return NoFit(model.name, 0, 0, budget.kind, why)
