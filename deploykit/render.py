"""Render a plan into a stack directory: compose.yaml, .env (secrets, 0600) and plan.json.

``render_files`` is pure: the same ``StackSpec`` and secrets give byte-identical files.
``write_stack`` is the only part that touches the disk, and it writes atomically.
Every value a user can influence reaches YAML through the ``q`` filter, which makes one
double-quoted scalar of it, with ``$`` doubled so compose does not interpolate it.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
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

STACK_FILES = ("compose.yaml", ".env", "plan.json")
# DEPLOYKIT_STACK_ID is no secret: it tells this stack's containers and volume from another stack's
# that happens to share the project name (a directory of the same name elsewhere).
SECRET_KEYS = (
    "INFERENCE_API_KEY",
    "WEBUI_SECRET_KEY",
    "DEPLOYKIT_ADMIN_EMAIL",
    "DEPLOYKIT_ADMIN_PASSWORD",
    "DEPLOYKIT_STACK_ID",
)
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
        raise UsageError(f"value {text!r} cannot be stored in .env (quotes or newlines).")
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
        {"deploykit_version": __version__, "stack": spec.model_dump(mode="json"), "inputs": dict(inputs)},
        indent=2,
        ensure_ascii=False,
    )
    return {"compose.yaml": compose, ".env": dotenv, "plan.json": plan_json + "\n"}


def read_secrets(stack_dir: Path) -> dict[str, str]:
    """The secrets an earlier render stored, so re-rendering never rotates them."""
    env_path = stack_dir / ".env"
    if not env_path.is_file():
        return {}
    out: dict[str, str] = {}
    for line in env_path.read_text(encoding="utf-8").splitlines():
        key, sep, value = line.partition("=")
        if not sep or key.startswith("#"):
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        out[key.strip()] = value
    return out


def check_stack_dir(stack_dir: Path) -> None:
    """Refuse to write into a directory that holds something other than a deploykit stack."""
    if stack_dir.exists() and not stack_dir.is_dir():
        raise UsageError(f"{stack_dir} exists and is not a directory.", "Choose another --dir.")
    if not stack_dir.is_dir():
        return
    # deploykit.toml alone is the stack's own settings, written before its first render.
    entries = {p.name for p in stack_dir.iterdir()} - {"deploykit.toml"}
    if entries and "plan.json" not in entries:
        raise UsageError(
            f"{stack_dir} is not empty and holds no deploykit stack (no plan.json).",
            "Choose an empty or new --dir; deploykit does not overwrite other files.",
        )


def write_stack(stack_dir: Path, files: Mapping[str, str]) -> list[str]:
    """Write files atomically (temp file + rename); .env is 0600 from the start. Returns changed names."""
    stack_dir.mkdir(parents=True, exist_ok=True)
    changed = []
    for name, text in files.items():
        target = stack_dir / name
        if target.is_file() and target.read_text(encoding="utf-8") == text:
            if name == ".env":
                target.chmod(0o600)
            continue
        fd, tmp = tempfile.mkstemp(dir=stack_dir, prefix=f".{name}.", suffix=".tmp")
        try:
            os.fchmod(fd, 0o600 if name == ".env" else 0o644)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
            Path(tmp).replace(target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        changed.append(name)
    return changed
