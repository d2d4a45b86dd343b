"""What a stack serves, as the running tier needs it: its servers (one per service) and its models.

A single-model stack has one server, ``inference``, with one model. A stack of several models has one
service per vLLM model and, for its llama.cpp models, one router (docs/several-models.md): a router's
``/health`` answers before any model is loaded, and its models load at start or on demand."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from deploykit.values.errors import UsageError
from deploykit.values.services import INFERENCE

if TYPE_CHECKING:
    from deploykit.running.stack import LoadedStack
    from deploykit.values.stackplan import StackPlan


@dataclass(frozen=True)
class Server:
    """One inference service of a stack."""

    service: str  # its compose service: whose container is watched and whose log a failure shows
    url: str  # where this controller reaches it (its loopback port on the engine's host)
    internal_api: str  # where Open WebUI reaches it inside the stack, without a trailing slash
    router: bool  # llama.cpp's router: models listed whatever their state, loaded at start or on demand
    models: tuple[str, ...]  # the model ids it serves, as clients send them in "model"
    load_on_start: tuple[str, ...]  # those loaded when it starts (a single-model server: its one model)
    startup_seconds: float  # how long its start may take, from the plan


@dataclass(frozen=True)
class ServedModel:
    """One model of a stack."""

    id: str
    service: str  # the server that serves it
    backend: str
    on_demand: bool  # loaded on its first request (a router at --models-max), not at start
    planned_bytes: int  # the plan's total for it: weights + KV + runtime
    context_length: int  # tokens one request may hold (prompt and answer)
    threads: int
    parallel: int  # its slots


@dataclass(frozen=True)
class Served:
    servers: tuple[Server, ...]
    models: tuple[ServedModel, ...]
    default_model: str

    @property
    def several(self) -> bool:
        return len(self.models) > 1

    def server(self, service: str) -> Server:
        return next(s for s in self.servers if s.service == service)

    def model(self, model_id: str) -> ServedModel | None:
        return next((m for m in self.models if m.id == model_id), None)

    def require(self, model_id: str | None) -> ServedModel:
        """The model named ``model_id`` (None: the default), or a UsageError naming those there are."""
        found = self.model(model_id or self.default_model)
        if found is None:
            raise UsageError(
                f"the stack does not serve a model '{model_id}'.",
                f"It serves {', '.join(m.id for m in self.models)} (`deploykit models --dir …` lists them).",
            )
        return found

    def webui_connections(self, key: str) -> tuple[list[str], list[str], dict[str, dict[str, str]]]:
        """Open WebUI's OpenAI connections for these servers, in their order: URLs, keys, per-index settings
        (a router's ``provider`` lets Open WebUI show each model's loaded state)."""
        urls = [s.internal_api for s in self.servers]
        configs = {str(i): {"provider": "llama.cpp"} for i, s in enumerate(self.servers) if s.router}
        return urls, [key] * len(urls), configs


def served_by(stack: LoadedStack) -> Served:
    """What ``stack`` serves, from its plan.json."""
    if (planned := stack.spec.stack_plan) is not None:
        return served_from(planned, stack.address, stack.inference_base)
    plan = stack.spec.plan
    server = Server(
        service=INFERENCE,
        url=stack.inference_url,
        internal_api=stack.spec.inference_api,
        router=False,
        models=(plan.model_id,),
        load_on_start=(plan.model_id,),
        startup_seconds=plan.startup_seconds,
    )
    model = ServedModel(
        plan.model_id,
        INFERENCE,
        plan.backend,
        False,
        plan.memory.total_bytes,
        plan.context_length,
        plan.threads,
        plan.parallel,
    )
    return Served((server,), (model,), plan.model_id)


def served_from(stack_plan: StackPlan, address: str, inference_base: str | None = None) -> Served:
    """What a planned stack of one or more models serves, its servers reached on ``address`` (the engine's host)
    at their published ports; ``inference_base`` (a fleet's ssh forward) stands for the first server's."""
    servers = []
    for index, service in enumerate(stack_plan.services):
        mine = stack_plan.served_by(service)
        first = mine[0]
        url = inference_base if index == 0 and inference_base else f"http://{address}:{first.published_port}"
        servers.append(
            Server(
                service=service,
                url=url,
                internal_api=first.server_url,
                router=any(m.behind_router for m in mine),
                models=tuple(m.model_id for m in mine),
                load_on_start=tuple(m.model_id for m in mine if m.load_at_start),
                startup_seconds=max(m.plan.startup_seconds for m in mine),
            )
        )
    models = tuple(
        ServedModel(
            id=m.model_id,
            service=m.service,
            backend=m.plan.backend,
            on_demand=not m.load_at_start,
            planned_bytes=stack_plan.packing.placement(m.model_id).total_bytes,
            context_length=m.plan.context_length,
            threads=m.plan.threads,
            parallel=m.plan.parallel,
        )
        for m in stack_plan.models
    )
    return Served(tuple(servers), models, stack_plan.default_model)
