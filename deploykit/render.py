"""Render a plan into a stack directory: compose.yaml, .env (secrets, 0600) and plan.json.

``render_files`` is pure: the same ``StackSpec`` and secrets give byte-identical files.
Writing them, all-or-nothing, is ``deploykit.stackdir``'s job.
Every value a user can influence reaches YAML through the ``q`` filter, which makes one
double-quoted scalar of it, with ``$`` doubled so compose does not interpolate it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from functools import cache
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import Any

import jinja2
from pydantic import BaseModel, ConfigDict

from deploykit import __version__
from deploykit.errors import UsageError
from deploykit.plan import DeploymentPlan
from deploykit.stackdir import SECRET_KEYS, sha256

GiB = 1024**3


class StackSpec(BaseModel):
    """Everything the templates need, as plain data. Stored in plan.json."""

    model_config = ConfigDict(frozen=True)

    project: str
    plan: DeploymentPlan
    model_host_path: str  # a GGUF file or a Hugging Face model directory on the Docker host
    images: dict[str, str]  # service name -> image reference
    webui_port: int
    webui_bind: str
    inference_port: int

    @property
    def inference_container_port(self) -> int:
        return 8000 if self.plan.backend == "vllm" else 8080

    @property
    def model_mount(self) -> tuple[str, str, str]:
        """(host dir, container dir, path the server loads) for the read-only model mount."""
        host = PurePosixPath(self.model_host_path)
        if self.plan.backend == "llamacpp":
            return str(host.parent), "/models", f"/models/{host.name}"
        return str(host), "/model", "/model"


def project_name(stack_dir: Path) -> str:
    """Compose project name from the stack directory's name: lowercase, digits, '-' and '_'."""
    base = re.sub(r"[^a-z0-9_-]+", "-", stack_dir.resolve().name.lower()).strip("-_")
    return f"deploykit-{base or 'stack'}"


_YAML_UNSAFE = {0x2028, 0x2029, 0xFEFF, 0xFFFE, 0xFFFF, 0x85}


def yaml_quote(value: object) -> str:
    """One YAML double-quoted scalar holding exactly ``value``, with ``$`` escaped for compose."""
    text = str(value).replace("$", "$$")
    out = ['"']
    for ch in text:
        code = ord(ch)
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif 0x20 <= code <= 0x7E:
            out.append(ch)
        elif code > 0xFFFF:
            out.append(f"\\U{code:08X}")
        elif code < 0x20 or 0x7F <= code <= 0x9F or 0xD800 <= code <= 0xDFFF or code in _YAML_UNSAFE:
            out.append(f"\\u{code:04X}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def env_quote(value: object) -> str:
    """A compose .env value: single-quoted, so compose takes it literally."""
    text = str(value)
    if "'" in text or "\n" in text or "\r" in text:
        # Never the value itself in the message: it is a secret.
        raise UsageError("a value for .env holds quotes or newlines, which .env cannot hold.")
    return f"'{text}'"


def _templates_root() -> Any:
    # In a wheel the templates ship as deploykit/templates; in a checkout they are top-level.
    packaged = resources.files("deploykit").joinpath("templates")
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parent.parent / "templates"


@cache
def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(_templates_root())),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["q"] = yaml_quote
    env.filters["env_q"] = env_quote
    return env


def _shm_size(spec: StackSpec) -> str:
    # vLLM's workers share tensors through /dev/shm; scale with the weights, at least 2 GiB.
    weights = spec.plan.memory.weights_bytes
    return f"{max(2, -(-weights // GiB))}gb"


def render_files(spec: StackSpec, secrets: Mapping[str, str], inputs: Mapping[str, Any]) -> dict[str, str]:
    """The stack's files as text, keyed by name. Pure and deterministic."""
    missing = [k for k in SECRET_KEYS if not secrets.get(k)]
    if missing:
        raise ValueError(f"secrets missing: {', '.join(missing)}")
    host_dir, container_dir, container_path = spec.model_mount
    plan = spec.plan
    ngl = None
    if plan.backend == "llamacpp":
        # llama.cpp counts the output head as one layer more: total + 1 puts everything on the GPU.
        ngl = plan.total_layers + 1 if plan.gpu_layers == plan.total_layers else plan.gpu_layers
    context = {
        "version": __version__,
        "project": spec.project,
        "plan": plan,
        "images": spec.images,
        "labels": {"org.deploykit.managed": "true", "org.deploykit.stack": spec.project},
        "webui_port": spec.webui_port,
        "webui_bind": spec.webui_bind,
        "inference_port": spec.inference_port,
        "inference_url": f"http://inference:{spec.inference_container_port}/v1",
        "model_host_dir": host_dir,
        "model_container_dir": container_dir,
        "model_container_path": container_path,
        "ngl": ngl,
        "shm_size": _shm_size(spec),
    }
    env = _environment()
    compose = env.get_template("compose.yaml.j2").render(context)
    dotenv = env.get_template("env.j2").render(secrets={k: secrets[k] for k in SECRET_KEYS})
    plan_json = json.dumps(
        {
            "deploykit_version": __version__,
            "stack": spec.model_dump(mode="json"),
            "inputs": dict(inputs),
            # What deploykit wrote, so a hand edit of compose.yaml is noticed before it is overwritten.
            "files": {"compose.yaml": sha256(compose.encode("utf-8", "surrogatepass"))},
        },
        indent=2,
        ensure_ascii=False,
    )
    return {"compose.yaml": compose, ".env": dotenv, "plan.json": plan_json + "\n"}
