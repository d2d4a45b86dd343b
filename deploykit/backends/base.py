"""The interface every inference server implements, and the request it plans for.

A backend owns everything that makes it that server: how it plans ONE model on an explicit memory budget
(the planner hands it a share of a GPU, or RAM), its image keys and pinned defaults, the port it listens on
inside its container, how the weights are mounted and fetched, its /metrics counters, its reasoning flag and
the templates that write its service (``templates/services/<template>.yaml.j2`` for Compose and Swarm,
``templates/kubernetes/<template>.yaml.j2`` for Kubernetes). Nothing outside ``deploykit.backends`` asks a
backend's name; it asks the backend.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, ClassVar

from deploykit.backends.memory import Budget, Device
from deploykit.values.host import HostProfile
from deploykit.values.model import ModelSpec
from deploykit.values.plan import DeploymentPlan, LocalWeights, MemoryBreakdown, NoFit, PlanSettings
from deploykit.values.versions import GpuImage, Versions, pinned


@dataclass(frozen=True)
class ThreadChoice:
    """Threads for the server, and the sentence why (a note too when the profile and the machine disagree)."""

    count: int
    reason: str
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class ModelRequest:
    """One model to plan: the host it is planned for, the model, the user's weights, the knobs, the threads."""

    host: HostProfile
    model: ModelSpec
    weights: LocalWeights | None
    settings: PlanSettings
    threads: ThreadChoice


@dataclass(frozen=True)
class StackTraits:
    """What the packer of several models needs to know about serving one of them with this backend."""

    routable: bool  # one router process can serve several such models, loading and unloading them
    takes_share: bool  # sized by a fraction of the whole device (vLLM's --gpu-memory-utilization)
    min_context: int  # the shortest context still worth serving when the models must shrink to fit
    kv_bytes_per_token: int | None = None  # the raw figure when the plan's KV is reserved in steps
    kv_granularity_bytes: int = 1  # those steps (vLLM's CPU build: whole GiB)


@dataclass(frozen=True)
class ImageSetting:
    """One image of a backend: its key under the settings' [images], and the pinned default."""

    key: str
    default: str


@dataclass(frozen=True)
class ServerMetrics:
    """The Prometheus counters a server keeps of the tokens it processed (what `bench` checks itself against)."""

    prompt_tokens: str
    generated_tokens: str
    generated_seconds: str | None = None  # time spent generating, where the server counts it
    prompt_seconds: str | None = None  # time spent on prompts, likewise


@dataclass(frozen=True)
class ModelDownload:
    """Where missing weights come from: one file of a Hugging Face repository, or the whole snapshot."""

    repo: str
    file: str | None  # None: the repository's snapshot (a model directory)
    note: str  # what `up` says while it downloads


class Backend(ABC):
    """One inference server. The registry (``deploykit.backends``) holds one instance of each."""

    name: ClassVar[str]  # plan.json's "backend" and --backend's choice
    skipped_as: ClassVar[str]  # how a plan says it passed this backend over on the GPU ("Not vLLM: …")
    template: ClassVar[str]  # the templates that write its service, by file name
    container_port: ClassVar[int]  # its own default port inside the container
    metrics: ClassVar[ServerMetrics]
    reasoning_flag: ClassVar[str]  # the flag that separates a reasoning model's thinking (checked by `smoke`)
    # Kubernetes: the server reads its API key from the mounted Secret (else from an environment variable);
    # it needs a large /dev/shm (PyTorch workers exchange tensors there).
    key_from_file: ClassVar[bool] = False
    shared_memory: ClassVar[bool] = False

    @abstractmethod
    def plan(self, request: ModelRequest, budget: Budget) -> DeploymentPlan | NoFit:
        """A plan for the model inside ``budget``, or the NoFit that says why not (its sentence in ``detail``)."""

    @abstractmethod
    def images(self, versions: Versions) -> dict[Device, ImageSetting]:
        """Its image on each device it runs on: the settings key and the pinned default."""

    @abstractmethod
    def gpu_image(self, versions: Versions) -> GpuImage:
        """The CUDA image, with the driver it needs (`doctor` checks the host's)."""

    @abstractmethod
    def model_mount(self, host_path: PurePosixPath) -> tuple[str, str, str]:
        """(host dir, container dir, path the server loads) for the read-only model mount."""

    @abstractmethod
    def cache_path(self, model: ModelSpec, model_cache: Path) -> Path:
        """Where a catalog model's weights live in the model cache."""

    @abstractmethod
    def model_source(self, model: ModelSpec) -> dict[str, str] | None:
        """What a cluster downloads the weights from (Hugging Face), when the catalog names it."""

    @abstractmethod
    def model_download(self, model: ModelSpec, path: Path) -> ModelDownload:
        """What fetches weights missing at ``path``; raises a deploykit error when nothing can."""

    # The template of a router that serves several of its models in one service (None: none; one service each).
    router_template: ClassVar[str | None] = None
    # What Open WebUI calls its router in a connection's config ("provider"), when it knows it.
    webui_provider: ClassVar[str | None] = None

    def stack_traits(self, plan: DeploymentPlan, model: ModelSpec) -> StackTraits:
        """How a stack of several models may serve this plan's model: one service of its own by default."""
        return StackTraits(routable=False, takes_share=False, min_context=min(4096, plan.context_length))

    def router_overhead(self, device: Device) -> int:
        """What the router's own process holds on ``device``'s memory beside the models it serves."""
        return 0

    def template_vars(self, plan: DeploymentPlan) -> dict[str, object]:
        """Values its service templates need beyond the plan's own fields."""
        return {}

    def image_key(self, device: Device) -> str:
        """The settings key of its image on ``device``."""
        return self.images(pinned())[device].key

    def _plan(
        self,
        request: ModelRequest,
        budget: Budget,
        memory: MemoryBreakdown,
        startup_seconds: int,
        reasons: Sequence[str],
        **serving: Any,
    ) -> DeploymentPlan:
        """The plan: the fields every backend fills the same way, around ``serving``, the backend's own."""
        host, model, threads = request.host, request.model, request.threads
        return DeploymentPlan(
            profile=host.name,
            model_id=model.id,
            model_name=model.name,
            backend=self.name,
            device=budget.device,
            total_layers=model.layers,
            threads=threads.count,
            notes=threads.notes,
            reasoning_parser=model.reasoning,
            gpu_count=1 if budget.gpu is not None else 0,
            gpu_index=budget.gpu.index if budget.gpu is not None else None,
            memory=memory,
            startup_seconds=startup_seconds,
            reasons=tuple(reasons),
            **serving,
        )
