"""A rendered stack as the running tier sees it: its folder, spec, secrets and plan inputs, loaded once."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from pydantic import BaseModel, ValidationError

from deploykit import backends
from deploykit.planning.render import StackIdentity, StackSpec
from deploykit.seams import certificates, compose, engine
from deploykit.seams.stackdir import check_stack_file, read_plan, read_secrets, recover
from deploykit.values.errors import NotFoundError, StackDirError, UsageError
from deploykit.values.model import ModelSpec
from deploykit.values.plan import PlanInputs
from deploykit.values.services import webui_url
from deploykit.values.stackfiles import ADMIN_EMAIL, ADMIN_PASSWORD, INFERENCE_API_KEY, PLAN_FILE, TARGET_FILES

if TYPE_CHECKING:
    import httpx


@dataclass(frozen=True)
class LoadedStack:
    dir: Path
    spec: StackSpec
    secrets: dict[str, str]
    inputs: PlanInputs  # what the plan was made from, as plan.json records it
    # Where this controller reaches the engine's published ports: its own loopback for a local engine,
    # the workstation's name for a fleet host.
    address: str = "127.0.0.1"
    # The inference port is published on the engine host's loopback only; for a remote host the fleet
    # reaches it through an ssh forward and sets this.
    inference_base: str | None = None

    @property
    def model(self) -> ModelSpec:
        """The model's numbers, as plan.json records them."""
        return self.inputs.model

    @property
    def api_key(self) -> str:
        """The inference server's API key."""
        return self.secrets.get(INFERENCE_API_KEY, "")

    @property
    def admin(self) -> tuple[str, str]:
        """(email, password) of the admin deploykit signs in as for its checks."""
        return self.secrets.get(ADMIN_EMAIL, ""), self.secrets.get(ADMIN_PASSWORD, "")

    @property
    def stack_file(self) -> Path:
        """compose.yaml, swarm.yaml or kubernetes.yaml: what the stack was rendered for."""
        return self.dir / TARGET_FILES[self.spec.target]

    @property
    def inference_url(self) -> str:
        return self.inference_base or f"http://{self.address}:{self.spec.inference_port}"

    @property
    def webui_url(self) -> str:
        """Where Open WebUI answers: through the HTTPS proxy when the stack has one."""
        return webui_url(self.address, self.spec.webui_port, https=self.spec.tls is not None)

    def webui_client(self, token: str | None = None, timeout: float = 10.0) -> httpx.Client:
        """An HTTP client for Open WebUI that checks the HTTPS proxy's certificate when the stack has one."""
        from deploykit.seams import health  # httpx: only where a stack is talked to

        if self.spec.tls is None:
            return health.http_client(self.webui_url, token, timeout)
        verify = certificates.client_context(self.spec.tls, self.dir)
        return health.http_client(self.webui_url, token, timeout, verify=verify)

    @property
    def webui_internal_api(self) -> str:
        return self.spec.inference_api

    def require_compose(self, refusal: str, hint: str) -> LoadedStack:
        """This stack, when it runs on Docker Compose; else a UsageError: ``refusal`` says what handles only those."""
        if self.spec.target != "compose":
            raise UsageError(f"{self.dir} is a {self.spec.target} stack; {refusal}.", hint)
        return self

    def engine_stack(self, docker_host: engine.EngineAddress) -> compose.Stack:
        if self.spec.target == "swarm":
            return compose.SwarmStack(self.dir, self.spec.project, docker_host, self.secrets)
        if self.spec.target == "kubernetes":
            raise UsageError(
                f"{self.dir} holds Kubernetes manifests; deploykit does not run them itself.",
                "Use kubectl, or render it again with --target compose or --target swarm.",
            )
        return compose.Stack(self.dir, self.spec.project, docker_host)


def load_stack(stack_dir: Path) -> LoadedStack:
    plan_path = stack_dir / PLAN_FILE
    recover(stack_dir)  # a write deploykit left interrupted is finished (or undone) first
    data = read_plan(stack_dir) if stack_dir.is_dir() else None
    if data is None:
        raise NotFoundError(
            f"no deploykit stack in {stack_dir} (no plan.json).",
            f"Create one with `deploykit up --profile auto --dir {stack_dir}` or `deploykit render`.",
        )
    spec = _plan_block(StackSpec, data, "stack", plan_path)
    inputs = _plan_block(PlanInputs, data, "inputs", plan_path)
    named_backends = {
        ("stack", "plan.backend"): spec.plan.backend,
        ("inputs", "settings.backend"): inputs.settings.backend,
        ("inputs", "host.preferred_backend"): inputs.host.preferred_backend,
    }
    for (key, field_name), name in named_backends.items():
        if name is not None and name not in backends.names():
            raise _unreadable(plan_path, key, field_name)
    check_stack_file(stack_dir / TARGET_FILES[spec.target])  # every compose command reads it
    return LoadedStack(stack_dir, spec, read_secrets(stack_dir), inputs)


_Block = TypeVar("_Block", bound=BaseModel)


def _plan_block(kind: type[_Block], data: Mapping[str, object], key: str, plan_path: Path) -> _Block:
    """One block of plan.json ("stack", "inputs") as its type: validated here, once, for every command."""
    try:
        return kind.model_validate(data.get(key))
    except ValidationError as exc:
        fields = ", ".join(sorted({".".join(map(str, e["loc"][:2])) for e in exc.errors()})[:4]) or "missing"
        raise _unreadable(plan_path, key, fields) from None


def _unreadable(plan_path: Path, key: str, fields: str) -> StackDirError:
    return StackDirError(
        f"{plan_path} is not a stack plan this deploykit can read ({key}: {fields}).",
        "Render the stack again with `deploykit render` (secrets are kept).",
    )


def identity(stack: LoadedStack) -> StackIdentity:
    """Which stack a report is about: its directory, project, backend, device and model."""
    plan = stack.spec.plan
    return {
        "stack_dir": str(stack.dir),
        "project": stack.spec.project,
        "backend": plan.backend,
        "device": plan.device,
        "model": plan.model_id,
    }
