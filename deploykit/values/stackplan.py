"""A stack of one or more models: what each model asks for, how the packer placed them, how each is served.

Plain data shared by the planner (``deploykit.planning.stackplan.plan_stack`` fills it), the renderer (one
service per model, or the llama.cpp router for several), plan.json (``"models"`` and ``"packing"``) and the
running part (health stages, status and day 2 per model). The packer's result types live here too, so that a
``StackPlan`` can hold its ``Packing`` and every tier can read it; ``deploykit.planning.packing`` makes them.

Service names inside the stack: a stack of ONE model keeps today's ``inference`` service, byte for byte; a
stack of several gives each model served alone its own ``inference-<id>`` service, and the models that
llama.cpp's router serves share one ``router`` service.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from deploykit.values.model import MODEL_ID
from deploykit.values.plan import WHOLE, ContextTokens, DeploymentPlan, Slots, Threads

MemoryKind = Literal["vram", "ram"]
Mode = Literal["together", "on_demand"]
Loaded = Literal["always", "on_demand"]

ROUTER = "router"  # the llama.cpp router's service, serving every model behind it
INFERENCE_PREFIX = "inference-"  # a model served by a server of its own, in a stack of several
MODELS_PRESET = "models.ini"  # the router's presets
# Their own folder in the stack folder, mounted whole (a preset replaced by rename stays visible) -- not the
# stack folder itself, which holds .env and the TLS key the router has no business reading.
PRESETS_FOLDER = "presets"
PRESET_PATH = f"{PRESETS_FOLDER}/{MODELS_PRESET}"  # as the stack folder's files name it
PRESETS_DIR = "/presets"  # where the router sees that folder
MAX_MODELS = 8  # a stack's models; more is a fleet, not one stack


def inference_service(model_id: str) -> str:
    """The service of a model served alone in a stack of several: ``inference-`` and the id, lowercase, with
    every character a DNS label does not take (``.``, ``_``) as ``-``, so the name resolves inside the network."""
    return INFERENCE_PREFIX + re.sub(r"[^a-z0-9-]+", "-", model_id.lower()).strip("-")


def kubernetes_label(service: str) -> str:
    """A service's name as a Kubernetes label value (at most 63 characters): itself, or when longer its start
    and a digest of the whole, so that two long ids that differ only at the end stay two names."""
    if len(service) <= 63:
        return service
    return f"{service[:54].rstrip('-')}-{hashlib.sha256(service.encode()).hexdigest()[:8]}"


# ---------------------------------------------------------------- what the packer decides (planning/packing.py)


@dataclass(frozen=True)
class Placement:
    """One model's place: where, loaded always or on demand, at which context and slots, holding what."""

    model_id: str
    backend: str
    budget: str
    loaded: Loaded
    context: int
    slots: int
    weights_bytes: int
    kv_cache_bytes: int
    overhead_bytes: int
    total_bytes: int  # what it holds at this context and these slots
    share_bytes: int  # what it is given: its total, or with a device fraction its total and the spare
    device_fraction: float | None  # --gpu-memory-utilization for a ``takes_share`` model on a GPU


@dataclass(frozen=True)
class BudgetUse:
    name: str
    usable_bytes: int
    planned_bytes: int  # the most it holds: always-loaded models, the largest on-demand set, the router


@dataclass(frozen=True)
class Packing:
    mode: Mode
    placements: tuple[Placement, ...]  # in the order the demands were given
    models_max: int | None  # the router's --models-max, when a router serves any model
    load_on_start: tuple[str, ...]  # router models loaded at start (the rest on their first request)
    start_order: tuple[str, ...]  # every model; each starts once the one before is ready
    budgets: tuple[BudgetUse, ...]
    reasons: tuple[str, ...]

    def placement(self, model_id: str) -> Placement:
        return next(p for p in self.placements if p.model_id == model_id)


# ---------------------------------------------------------------- what the user asks for


class ModelChoice(BaseModel):
    """One entry of a stack's models, as ``--model``/``--model-file`` or a ``[[models]]`` table gives it.

    ``id`` names a catalog model (or, with ``file``, the file's model); ``file`` is a GGUF file or a Hugging
    Face model directory. ``backend``, ``quantization`` and ``context`` narrow what the planner may choose for
    this model alone; ``keep_loaded`` keeps it loaded when the others are served on demand; ``threads`` and
    ``parallel`` (slots) are this model's serving knobs over the stack's (`deploykit tune --model` writes them).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: Annotated[str, Field(pattern=MODEL_ID)] | None = None
    file: str | None = None
    backend: str | None = None  # a backend's name; the settings check it is one
    quantization: Annotated[str, Field(pattern=r"^[A-Za-z0-9_]+$")] | None = None  # "fp16", "bf16", "Q4_K_M"
    context: ContextTokens | None = None
    keep_loaded: bool = False
    threads: Annotated[Threads, WHOLE] | None = None
    parallel: Annotated[Slots, WHOLE] | None = None


# ---------------------------------------------------------------- the stack as planned


class StackModel(BaseModel):
    """One model of a stack and how the stack serves it."""

    model_config = ConfigDict(frozen=True)

    model_id: str  # as served: what clients send in "model" (the alias, served-model-name or preset section)
    plan: DeploymentPlan  # planned into its placement (its context, slots and --gpu-memory-utilization)
    service: str  # "inference" (one model), "inference-<id>" (served alone) or "router"
    container_port: int  # what its server listens on inside its container
    server_url: str  # inside the stack network, no trailing slash: "http://router:8080/v1"
    published_port: int  # on the loopback of the engine's host (a router's models share one)
    behind_router: bool
    loaded: Loaded  # "always": loaded at start and never unloaded; "on_demand": the router swaps it
    load_at_start: bool  # loaded when the stack starts (a router's load-on-startup)
    keep_loaded: bool  # asked to stay loaded


class StackPlan(BaseModel):
    """Every model of a stack planned together: the default first, then the others in the order given."""

    model_config = ConfigDict(frozen=True)

    models: tuple[StackModel, ...]
    packing: Packing
    default_model: str  # the model id every new chat opens with (Open WebUI's DEFAULT_MODELS)
    reasons: tuple[str, ...] = ()  # the stack's own sentences (the packer's are in packing.reasons)

    @property
    def several(self) -> bool:
        """Whether the stack serves more than one model (one keeps today's single ``inference`` service)."""
        return len(self.models) > 1

    @property
    def default(self) -> StackModel:
        return self.model(self.default_model)

    @property
    def plan(self) -> DeploymentPlan:
        """The default model's plan: plan.json's ``"plan"``, and what a single-model reader sees."""
        return self.default.plan

    def model(self, model_id: str) -> StackModel:
        for m in self.models:
            if m.model_id == model_id:
                return m
        raise KeyError(model_id)

    @property
    def routed(self) -> tuple[StackModel, ...]:
        """The models the llama.cpp router serves, in the stack's order."""
        return tuple(m for m in self.models if m.behind_router)

    @property
    def services(self) -> tuple[str, ...]:
        """Every inference service once, in start order (each starts when the one before is ready)."""
        out: list[str] = []
        for model_id in self.packing.start_order:
            service = self.model(model_id).service
            if service not in out:
                out.append(service)
        return tuple(out)

    def served_by(self, service: str) -> tuple[StackModel, ...]:
        return tuple(m for m in self.models if m.service == service)

    def packing_record(self) -> dict[str, object]:
        """plan.json's ``"packing"``: the packer's decision as plain JSON."""
        from dataclasses import asdict

        return asdict(self.packing)
