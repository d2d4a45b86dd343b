"""What a plan is made from and what it says: the planner's knobs, its inputs, its result.

Plain data: the planner (deploykit.planning.planner) and the backends fill these; render writes them into
plan.json, `lifecycle.load_stack` reads them back, and the settings parse the knobs with the same bounds.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, SerializerFunctionWrapHandler, model_serializer

from deploykit.values.defaults import DEFAULT_MAX_CONTEXT
from deploykit.values.host import HostProfile
from deploykit.values.model import ModelSpec

FlashAttn = Literal["on", "off", "auto"]
KvCacheType = Literal["f16", "bf16", "q8_0", "q4_0"]


def _whole_number(value: object) -> object:
    # Strict numbers from every layer: `true` is no number, 4096.0 or "4k" no count; "4096" from the
    # environment is (variables are text).
    if isinstance(value, bool | float):
        raise ValueError("must be a whole number")
    if isinstance(value, str) and not re.fullmatch(r"\s*[0-9]+\s*", value):
        raise ValueError("must be a whole number")
    return value


def _finite(value: object) -> object:
    if isinstance(value, bool):
        raise ValueError("must be a number")
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return value  # pydantic says what is wrong
    if not math.isfinite(number):
        raise ValueError("must be a finite number")
    return value


WHOLE = BeforeValidator(_whole_number)
FINITE = BeforeValidator(_finite)

# The planner knobs' bounds, in one place: PlanKnobs declares each knob once, for PlanSettings and Settings.
ContextTokens = Annotated[int, Field(ge=256, le=1_048_576)]
GpuShare = Annotated[float, Field(gt=0.1, le=0.99)]
Slots = Annotated[int, Field(ge=1, le=64)]
Threads = Annotated[int, Field(ge=1, le=1024)]
BatchTokens = Annotated[int, Field(ge=32, le=65536)]
Sequences = Annotated[int, Field(ge=1, le=4096)]


class LocalWeights(BaseModel):
    """Weights already on disk: a GGUF file or a Hugging Face model directory."""

    model_config = ConfigDict(frozen=True)

    path: str
    format: Literal["gguf", "hf"]
    size_bytes: int
    quant: str | None = None  # GGUF type, e.g. "Q4_K_M"; None for an HF directory
    # GGUF only: bytes of tensors outside the repeating blocks (token embedding, output head).
    non_layer_bytes: int | None = None


class PlanKnobs(BaseModel):
    """The planner's knobs, each declared once: PlanSettings carries them into the planner and plan.json,
    Settings reads them (strictly) from flags, files and the environment. None lets the planner choose;
    an explicit value always wins, with its reason."""

    max_context: Annotated[ContextTokens, WHOLE] = DEFAULT_MAX_CONTEXT
    gpu_memory_utilization: Annotated[GpuShare, FINITE] | None = None
    backend: str | None = None  # a backend's name (deploykit.backends.names()); Settings checks it is one
    # Serving knobs (`deploykit tune` writes them into <stack>/deploykit.toml).
    parallel: Annotated[Slots, WHOLE] | None = None  # llama.cpp slots (-np); vLLM: full-length sequences
    threads: Annotated[Threads, WHOLE] | None = None  # llama.cpp -t; vLLM's OMP threads on the CPU
    batch_size: Annotated[BatchTokens, WHOLE] | None = None  # llama.cpp -b; vLLM max-num-batched-tokens
    ubatch_size: Annotated[BatchTokens, WHOLE] | None = None  # llama.cpp -ub
    flash_attn: FlashAttn | None = None  # llama.cpp --flash-attn
    kv_cache_type: KvCacheType | None = None  # llama.cpp -ctk/-ctv
    max_num_seqs: Annotated[Sequences, WHOLE] | None = None  # vLLM --max-num-seqs


class PlanSettings(PlanKnobs):
    """The planner's knobs, all with defaults; comes from settings and flags."""

    model_config = ConfigDict(frozen=True)


class RunHost(BaseModel):
    """The machine that will run the stack, as far as serving flags care; detected by the caller."""

    model_config = ConfigDict(frozen=True)

    cores: int = Field(gt=0)  # physical cores (logical CPUs when only the engine's count is known)
    where: str = "this host"


class ModelInput(BaseModel):
    """One model of a stack of several, resolved: its numbers, the user's weights, and what was asked of it
    alone (``deploykit.values.stackplan.ModelChoice`` once its id or file is looked up)."""

    model_config = ConfigDict(frozen=True)

    model: ModelSpec
    weights: LocalWeights | None = None
    backend: str | None = None
    quantization: str | None = None
    context: Annotated[ContextTokens, WHOLE] | None = None
    keep_loaded: bool = False
    # This model's serving knobs over the stack's (a [[models]] entry's, or `deploykit tune --model`'s winner).
    threads: Annotated[Threads, WHOLE] | None = None
    parallel: Annotated[Slots, WHOLE] | None = None

    @model_serializer(mode="wrap")
    def _without_unset_knobs(self, handler: SerializerFunctionWrapHandler) -> dict[str, object]:
        # plan.json keeps its bytes for a stack whose models ask for no knobs of their own.
        data: dict[str, object] = handler(self)
        return {k: v for k, v in data.items() if k not in _MODEL_KNOBS or v is not None}


_MODEL_KNOBS = ("threads", "parallel")  # a model's own serving knobs, recorded only when asked for


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
    # A stack of several models: every one, the default (``model``, ``weights``) first. Never set for one
    # model, so a single-model plan.json keeps its bytes.
    models: tuple[ModelInput, ...] = ()

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
    backend: str  # the backend's name (deploykit.backends.named() finds it)
    device: Literal["cuda", "cpu"]
    quantization: str  # "fp16" | "bf16" | the GGUF type, e.g. "Q4_K_M"
    # Each backend's own flags, None where another backend's: a plan fills those of the backend it names.
    dtype: str | None = None  # vLLM's --dtype ("bfloat16" | "float16")
    context_length: int
    parallel: int
    gpu_layers: int | None = None  # llama.cpp -ngl
    total_layers: int
    threads: int
    gpu_memory_utilization: float | None = None  # vLLM on CUDA
    cpu_kv_cache_bytes: int | None = None  # vLLM on CPU: VLLM_CPU_KVCACHE_SPACE
    flash_attention: bool | None = None  # llama.cpp: on / off; None leaves it to llama.cpp (auto)
    reasoning_parser: str | None
    # Serving flags; defaults also keep plan.json files from before these fields readable.
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
