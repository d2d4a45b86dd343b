"""llama.cpp's llama-server with a GGUF file: fully on the GPU, split between GPU and CPU, or on the CPU.

On a GPU it puts every layer there when the shortest useful context fits, else as many repeating layers
as fit (``-ngl`` computed layer by layer) and the rest in RAM; on the CPU it is the backend that serves
whatever nothing else can (``deploykit.backends.CPU_FALLBACK``). Its slots share ``-c`` between them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from deploykit.backends.base import Backend, ImageSetting, ModelDownload, ModelRequest, ServerMetrics, StackTraits
from deploykit.backends.memory import (
    CPU_MIN_CONTEXT,
    KV_CACHE_SCALE,
    Budget,
    Device,
    breakdown,
    context_cap,
    context_why,
    fit_context,
    kv_bytes,
    kv_per_token,
    skip,
    startup_seconds,
)
from deploykit.values.errors import NotFoundError
from deploykit.values.model import ModelSpec
from deploykit.values.plan import DeploymentPlan, LocalWeights, MemoryBreakdown, NoFit, PlanSettings
from deploykit.values.units import MiB, gib
from deploykit.values.versions import GpuImage, Versions

# Shortest context worth serving on the GPU before falling back to a smaller split.
LLAMACPP_MIN_CONTEXT = 2048
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
# llama-server's own process (binary, threads, HTTP server) besides its buffers, on the CPU side.
CPU_RUNTIME_BYTES = 64 * MiB
# The llama.cpp router's own process beside its children (VmRSS 18.9 MiB, b11669, docs/several-models.md).
ROUTER_RAM_BYTES = 19 * MiB
# Loading: the server's own start, and reading the file from a cold disk at ~100 MB/s (seconds per GiB).
STARTUP_BASE_SECONDS = 60
STARTUP_SECONDS_PER_GIB = 12


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


def llamacpp_overhead(
    model: ModelSpec, ctx: int, flash_attention: bool | None, device: Device, ubatch: int = LLAMACPP_UBATCH
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


def _fit_slots(
    fixed: Callable[[int], int], per_token: int, budget: int, cap: int, settings: PlanSettings, min_ctx: int
) -> tuple[int, int]:
    """(slots, per-slot context): the most slots whose full context fits, else one slot with what fits."""
    choices = _slot_choices(settings)
    for slots in choices:
        ctx = fit_context(fixed(slots * cap), per_token * slots, budget, cap)
        if ctx == cap:
            return slots, ctx
    slots = choices[-1]
    return slots, fit_context(fixed(slots * min_ctx), per_token * slots, budget, cap)


@dataclass(frozen=True)
class _GgufOnGpu:
    """What both GPU plans (full and partial offload) start from."""

    size: int  # the GGUF file
    layer_bytes: float  # one repeating layer's share of it
    quant: str
    cap: int  # the context asked for
    knobs: _LlamaKnobs
    per_token: int  # KV cache bytes per token, in the cache's type

    def overhead(self, model: ModelSpec, tokens: int) -> int:
        """CUDA runtime and compute buffers for ``tokens`` of context in all."""
        return LLAMACPP_CUDA_RUNTIME_BYTES + llamacpp_overhead(
            model, tokens, self.knobs.flash, "cuda", self.knobs.ubatch
        )


class LlamaCpp(Backend):
    name = "llamacpp"
    skipped_as = "Not the GPU"
    template = "llamacpp"
    container_port = 8080
    metrics = ServerMetrics(
        prompt_tokens="llamacpp:prompt_tokens_total",
        generated_tokens="llamacpp:tokens_predicted_total",
        generated_seconds="llamacpp:tokens_predicted_seconds_total",
        prompt_seconds="llamacpp:prompt_seconds_total",
    )
    reasoning_flag = "--reasoning-format"
    key_from_file = True
    router_template = "llamacpp-router"
    webui_provider = "llama.cpp"  # Open WebUI then shows each routed model's loaded state (OPENAI_API_CONFIGS)

    def stack_traits(self, plan: DeploymentPlan, model: ModelSpec) -> StackTraits:
        # The router (llama-server without -m, build 11669) loads a model on its first request and unloads the
        # least recently used one at --models-max (docs/several-models.md).
        floor = LLAMACPP_MIN_CONTEXT if plan.device == "cuda" else CPU_MIN_CONTEXT
        return StackTraits(routable=True, takes_share=False, min_context=min(floor, plan.context_length))

    def router_overhead(self, device: Device) -> int:
        # The router's own process: VmRSS 18.9 MiB on the CPU (measured, docs/several-models.md). On a GPU it is
        # unmeasured, and its RAM is not the models' VRAM: nothing is counted there.
        return ROUTER_RAM_BYTES if device == "cpu" else 0

    def plan(self, request: ModelRequest, budget: Budget) -> DeploymentPlan | NoFit:
        if budget.device == "cpu":
            return self._plan_cpu(request, budget)
        gguf = _gguf_size(request.model, request.weights)
        if gguf is None:
            return skip(request.model, budget, "no GGUF file is known for this model")
        size, non_layer, quant = gguf
        model, gpu = request.model, budget.gpu
        cc = gpu.compute_capability_tuple if gpu is not None else None
        modern = cc is None or cc >= (7, 0)
        knobs = _llama_knobs(
            request.settings,
            True if modern else None,
            "Flash attention on: it cuts the attention buffers on this GPU."
            if modern
            else "Flash attention left to llama.cpp's judgement on this older GPU.",
        )
        g = _GgufOnGpu(
            size,
            (size - non_layer) / model.layers,
            quant,
            context_cap(model, request.settings),
            knobs,
            kv_per_token(model, knobs.kv_type),
        )
        full = self._plan_full_offload(request, budget, g)
        return full if full is not None else self._plan_partial_offload(request, budget, g)

    def _plan_full_offload(self, request: ModelRequest, budget: Budget, g: _GgufOnGpu) -> DeploymentPlan | None:
        """Every layer and the output head on the GPU, or None when the shortest useful context does not fit."""
        model, settings, size, cap = request.model, request.settings, g.size, g.cap

        def fixed(tokens: int) -> int:
            return size + g.overhead(model, tokens)

        slots, ctx = _fit_slots(fixed, g.per_token, budget.bytes, cap, settings, LLAMACPP_MIN_CONTEXT)
        if ctx < min(LLAMACPP_MIN_CONTEXT, cap):
            return None
        kv = kv_bytes(model, ctx, slots, g.knobs.kv_type)
        overhead = g.overhead(model, ctx * slots)
        total = size + kv + overhead
        reasons = [
            f"GGUF {g.quant} ({gib(size)}) with all {model.layers} layers on the {budget.gpu_name}: {gib(size)} "
            f"weights + {gib(kv)} KV cache for {ctx} tokens × {slots} slot(s) + {gib(overhead)} CUDA runtime and "
            f"compute buffers = {gib(total)} of {gib(budget.bytes)}.",
            f"Context {ctx} tokens: " + context_why(ctx, cap, model, settings),
            _slots_why(slots, ctx, settings),
            *g.knobs.reasons,
            request.threads.reason,
        ]
        memory = breakdown(size, kv, overhead, budget)
        return self._serving(request, budget, g.knobs, memory, size, reasons, g.quant, ctx, slots, model.layers)

    def _plan_partial_offload(self, request: ModelRequest, budget: Budget, g: _GgufOnGpu) -> DeploymentPlan | NoFit:
        """The context the user asked for, one slot unless told otherwise (memory is short), as many repeating
        layers on the GPU as fit and the rest on the CPU."""
        model, settings, size = request.model, request.settings, g.size
        ctx = g.cap
        slots = settings.parallel or 1
        overhead = g.overhead(model, ctx * slots)
        kv = kv_bytes(model, ctx, slots, g.knobs.kv_type)
        per_layer = g.layer_bytes + kv / model.layers
        room = budget.bytes - overhead
        layers_on_gpu = max(0, min(model.layers - 1, int(room // per_layer))) if room > 0 else 0
        if layers_on_gpu < 1:
            return skip(
                model,
                budget,
                f"not even one layer of {model.name} ({gib(per_layer)}) fits beside the "
                f"{gib(overhead)} of CUDA buffers in {gib(budget.bytes)}",
            )
        gpu_weights = int(g.layer_bytes * layers_on_gpu)
        gpu_kv = kv * layers_on_gpu // model.layers
        cpu_side = size - gpu_weights + kv - gpu_kv + CPU_RUNTIME_BYTES
        if cpu_side > budget.ram_bytes:
            return skip(
                model, budget, f"the {model.layers - layers_on_gpu} layers left on the CPU need {gib(cpu_side)} of RAM"
            )
        total = gpu_weights + gpu_kv + overhead
        reasons = [
            f"Not all {model.layers} layers fit in {gib(budget.bytes)} of VRAM ({budget.share_why}): "
            f"{layers_on_gpu} of {model.layers} layers go to the {budget.gpu_name} "
            f"({gib(g.layer_bytes)} each + their KV cache), the rest run on the CPU.",
            f"GPU side: {gib(gpu_weights)} weights + {gib(gpu_kv)} KV cache + {gib(overhead)} CUDA buffers "
            f"= {gib(total)}; CPU side: {gib(cpu_side)} of RAM.",
            f"Context {ctx} tokens: " + context_why(ctx, g.cap, model, settings),
            f"{slots} slot(s): set in settings."
            if settings.parallel
            else "1 slot: VRAM is short, so every byte goes to layers on the GPU.",
            *g.knobs.reasons,
            request.threads.reason,
            "Expect roughly CPU speed: each token still passes through the layers in RAM.",
        ]
        memory = breakdown(gpu_weights, gpu_kv, overhead, budget, ram_bytes=cpu_side)
        return self._serving(request, budget, g.knobs, memory, size, reasons, g.quant, ctx, slots, layers_on_gpu)

    def _plan_cpu(self, request: ModelRequest, budget: Budget) -> DeploymentPlan | NoFit:
        host, model, settings = request.host, request.model, request.settings
        gguf = _gguf_size(model, request.weights)
        if gguf is None:
            return NoFit(model.name, 0, 0, "ram", "no GGUF file is known for this model, so llama.cpp cannot run it")
        size, _, quant = gguf
        cap = context_cap(model, settings)
        knobs = _llama_knobs(
            settings,
            True,
            "Flash attention on: llama.cpp's CPU kernels have it, and the attention buffer stays small at any context.",
        )
        per_token = kv_per_token(model, knobs.kv_type)

        def fixed(tokens: int) -> int:
            return size + CPU_RUNTIME_BYTES + llamacpp_overhead(model, tokens, knobs.flash, "cpu", knobs.ubatch)

        slots, ctx = _fit_slots(fixed, per_token, budget.bytes, cap, settings, CPU_MIN_CONTEXT)
        if ctx < min(CPU_MIN_CONTEXT, cap):
            shortest = min(CPU_MIN_CONTEXT, cap)
            need = fixed(slots * shortest) + kv_bytes(model, shortest, slots, knobs.kv_type)
            return NoFit(model.name, need, max(budget.bytes, 0), "ram", f"GGUF {quant} on the CPU")
        kv = kv_bytes(model, ctx, slots, knobs.kv_type)
        overhead = fixed(ctx * slots) - size
        total = size + kv + overhead
        simd = " (AVX-512 kernels)" if "avx512f" in host.cpu.flags else ""
        reasons = [
            f"GGUF {quant} on the CPU: {gib(size)} weights + {gib(kv)} KV cache for {ctx} tokens × {slots} slot(s) "
            f"+ {gib(overhead)} buffers = {gib(total)} of {gib(budget.bytes)} RAM left after Open WebUI and the OS.",
            f"Context {ctx} tokens: " + context_why(ctx, cap, model, settings),
            _slots_why(slots, ctx, settings),
            *knobs.reasons,
            request.threads.reason.rstrip(".") + simd + ".",
        ]
        memory = breakdown(size, kv, overhead, budget)
        return self._serving(request, budget, knobs, memory, size, reasons, quant, ctx, slots, 0)

    def _serving(
        self,
        request: ModelRequest,
        budget: Budget,
        knobs: _LlamaKnobs,
        memory: MemoryBreakdown,
        size: int,
        reasons: list[str],
        quant: str,
        ctx: int,
        slots: int,
        gpu_layers: int,
    ) -> DeploymentPlan:
        """The plan with llama-server's own fields: its slots, layers on the GPU and flags."""
        return self._plan(
            request,
            budget,
            memory,
            startup_seconds(size, STARTUP_BASE_SECONDS, STARTUP_SECONDS_PER_GIB),
            reasons,
            quantization=quant,
            context_length=ctx,
            parallel=slots,
            gpu_layers=gpu_layers,
            flash_attention=knobs.flash,
            batch_size=knobs.batch,
            ubatch_size=knobs.ubatch,
            kv_cache_type=knobs.kv_type,
        )

    def images(self, versions: Versions) -> dict[Device, ImageSetting]:
        return {
            "cpu": ImageSetting("llama_server", versions.get("llamacpp", "image")),
            "cuda": ImageSetting("llama_server_cuda", versions.get("llamacpp", "image_cuda")),
        }

    def gpu_image(self, versions: Versions) -> GpuImage:
        return versions.gpu_image("llamacpp", "image_cuda")

    def model_mount(self, host_path: PurePosixPath) -> tuple[str, str, str]:
        return str(host_path.parent), "/models", f"/models/{host_path.name}"

    def cache_path(self, model: ModelSpec, model_cache: Path) -> Path:
        assert model.gguf is not None  # the planner only picks llama.cpp with a GGUF source
        return model_cache / (model.gguf.repo or model.id) / model.gguf.file

    def model_source(self, model: ModelSpec) -> dict[str, str] | None:
        gguf = model.gguf
        if gguf is not None and gguf.repo and gguf.file:
            return {"repo": gguf.repo, "file": gguf.file}
        return None

    def model_download(self, model: ModelSpec, path: Path) -> ModelDownload:
        gguf = model.gguf
        if gguf is None or not gguf.repo:
            raise NotFoundError(
                f"model file {path} is missing (moved or deleted?); nothing was started.",
                "Put it back there, or render the stack again with --model-file NEW_PATH (secrets and chats are kept).",
            )
        note = f"Downloading {gguf.file} ({gib(gguf.size_bytes)}) from {gguf.repo} …"
        return ModelDownload(gguf.repo, gguf.file, note)

    def template_vars(self, plan: DeploymentPlan) -> dict[str, object]:
        # llama.cpp counts the output head as one layer more: total + 1 puts everything on the GPU.
        ngl = plan.total_layers + 1 if plan.gpu_layers == plan.total_layers else plan.gpu_layers
        return {"ngl": ngl}


LLAMACPP = LlamaCpp()
