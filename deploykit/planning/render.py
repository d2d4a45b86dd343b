"""Render a plan into a stack directory: the target's file, .env (secrets, 0600) and plan.json.

Three targets share one ``StackSpec``: Docker Compose (compose.yaml), Docker Swarm (swarm.yaml, a
variant of the same templates for ``docker stack deploy``) and Kubernetes (kubernetes.yaml).

``render_files`` is pure: the same ``StackSpec`` and secrets give byte-identical files.
Writing them, all-or-nothing, is ``deploykit.seams.stackdir``'s job.
Every value a user can influence reaches YAML through the ``q`` filter, which makes one
double-quoted scalar of it, with ``$`` doubled so compose does not interpolate it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping, Sequence
from functools import cache
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal, TypedDict

import jinja2
from pydantic import BaseModel, ConfigDict, Field

from deploykit import __version__
from deploykit.backends import Backend, named
from deploykit.planning import templating
from deploykit.values.errors import UsageError
from deploykit.values.model import ModelSpec
from deploykit.values.plan import DeploymentPlan, PlanInputs
from deploykit.values.services import INFERENCE, SERVICES, TLS_PROXY, WEBUI
from deploykit.values.stackfiles import (
    CADDYFILE,
    ENV_FILE,
    PLAN_FILE,
    RUNTIME_SECRETS,
    SECRET_KEYS,
    TARGET_FILES,
    encode_files,
    env_quote,
    sha256,
)
from deploykit.values.stackplan import (
    MAX_MODELS,
    MODELS_PRESET,
    PRESET_PATH,
    PRESETS_DIR,
    PRESETS_FOLDER,
    ROUTER,
    Packing,
    StackModel,
    StackPlan,
    kubernetes_label,
)
from deploykit.values.tls import TlsSpec
from deploykit.values.units import GiB

Target = Literal["compose", "swarm", "kubernetes"]
WEBUI_CONTAINER_PORT = 8080  # Open WebUI's own port inside its container
TLS_CONTAINER_PORT = 8443  # Caddy's HTTPS port inside the tls-proxy container (not root: no port below 1024)
TLS_DIR = "/etc/deploykit-tls"  # where the tls-proxy volume (Caddyfile, cert.pem, key.pem) is mounted


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
    target: Target = "compose"
    webui_env: dict[str, str] = {}  # the [webui_env] table: extra Open WebUI environment settings
    # [webui_env] names that say they are secrets: their values live in .env, compose.yaml refers to them.
    webui_secrets: tuple[Annotated[str, Field(pattern=r"^[A-Z_][A-Z0-9_]*$")], ...] = ()
    # A named volume holding the weights (fleet hosts: a remote engine cannot see the controller's disk);
    # None mounts model_host_path from the engine's own disk.
    model_volume: str | None = None
    # HTTPS in front of Open WebUI (--tls; deploykit.values.tls); None: Open WebUI is published itself, over plain HTTP.
    tls: TlsSpec | None = None
    # A stack of several models (deploykit.values.stackplan; empty for one model, so its plan.json keeps its
    # bytes): every model as served, the default first, the packer's decision, and each model's weights on
    # the Docker host (a GGUF file or a Hugging Face model directory) by model id.
    models: tuple[StackModel, ...] = ()
    packing: Packing | None = None
    model_paths: dict[str, str] = {}
    # deploykit's model cache on the Docker host: a Compose router mounts it whole (read-only), so that a model
    # of it added or removed later changes the router's preset only, not its mounts (""; each file on its own).
    model_cache: str = ""

    @property
    def stack_plan(self) -> StackPlan | None:
        """The stack's models planned together; None for a stack of one model."""
        if not self.models or self.packing is None:
            return None
        return StackPlan(models=self.models, packing=self.packing, default_model=self.plan.model_id)

    @property
    def webui_environment(self) -> dict[str, str]:
        """Open WebUI's extra environment: HTTPS's (secure cookies), then [webui_env], which wins."""
        return {**(self.tls.webui_env() if self.tls else {}), **self.webui_env}

    @property
    def webui_settings(self) -> dict[str, str]:
        """What `up` writes through Open WebUI's admin API (its stored settings among these): HTTPS's URL too."""
        return {**(self.tls.webui_stored(self.webui_port) if self.tls else {}), **self.webui_environment}

    @property
    def backend(self) -> Backend:
        return named(self.plan.backend)

    @property
    def inference_container_port(self) -> int:
        """The port the server listens on inside its container: each server's own default."""
        return self.backend.container_port

    @property
    def inference_api(self) -> str:
        """Where Open WebUI reaches the (default model's) server inside the stack (no trailing slash: it appends
        paths)."""
        if self.models:
            return self.models[0].server_url
        return f"http://{INFERENCE}:{self.inference_container_port}/v1"

    @property
    def model_mount(self) -> tuple[str, str, str]:
        """(host dir, container dir, path the server loads) for the read-only model mount."""
        return self.backend.model_mount(PurePosixPath(self.model_host_path))


class StackIdentity(TypedDict):
    """Which stack a report is about (the first keys of `status --json` and of bench's rows)."""

    stack_dir: str
    project: str
    backend: str
    device: str
    model: str


def project_name(stack_dir: Path) -> str:
    """Compose project name from the stack directory's name: lowercase, digits, '-' and '_'."""
    base = re.sub(r"[^a-z0-9_-]+", "-", stack_dir.resolve().name.lower()).strip("-_")
    return f"deploykit-{base or 'stack'}"


_YAML_UNSAFE = {0x2028, 0x2029, 0xFEFF, 0xFFFE, 0xFFFF, 0x85}


def yaml_quote(value: object, escape_dollar: bool = True) -> str:
    """One YAML double-quoted scalar holding exactly ``value``, with ``$`` escaped for compose.

    Kubernetes expands ``$(VAR)`` in command, args and env values (``$$`` is its escape too), but
    nowhere else: its other fields take ``escape_dollar=False``.
    """
    text = str(value).replace("$", "$$") if escape_dollar else str(value)
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


def env_reference(name: str) -> str:
    """A compose value taken from .env: ``"${NAME:?…}"`` (compose refuses to start without it)."""
    if not re.fullmatch(r"[A-Z_][A-Z0-9_]*", name):
        raise ValueError(f"{name!r} is not an environment variable name")
    return f'"${{{name}:?{name} is kept in .env; run deploykit render}}"'


def _templates_root() -> Any:
    # In a wheel the templates ship as deploykit/templates; in a checkout they are top-level.
    packaged = resources.files("deploykit").joinpath("templates")
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[2] / "templates"


TEMPLATES_MANIFEST = "deploykit-templates.json"


def builtin_templates() -> dict[str, str]:
    """Every built-in template by relative name ("services/vllm.yaml.j2") and its text."""
    out: dict[str, str] = {}

    def walk(node: Any, prefix: str) -> None:
        for child in node.iterdir():
            if child.is_dir():
                walk(child, f"{prefix}{child.name}/")
            elif child.name.endswith(".j2"):
                out[prefix + child.name] = child.read_text(encoding="utf-8")

    walk(_templates_root(), "")
    return dict(sorted(out.items()))


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def shadowed_templates(templates_dir: Path | None) -> dict[str, dict[str, str]]:
    """The built-in templates a site's folder shadows, each with the hash of the built-in and of the site's file.

    Recorded in plan.json, so a later deploykit can tell the site that a built-in it copied has changed.
    """
    if templates_dir is None:
        return {}
    from deploykit.planning.templating import SiteLoader

    loader = SiteLoader(str(templates_dir))  # the same checks as rendering: inside the folder, regular, UTF-8
    return {
        name: {"builtin_sha256": sha256_text(text), "site_sha256": sha256_text(loader.get_source(_PLAIN, name)[0])}
        for name, text in builtin_templates().items()
        if os.path.lexists(templates_dir / name)
    }


_PLAIN = jinja2.Environment()  # only passed to get_source, which does not use it


@cache
def _environment(templates_dir: str | None = None) -> jinja2.Environment:
    from deploykit.planning.templating import Sandbox, SiteLoader

    builtin = jinja2.FileSystemLoader(str(_templates_root()))
    # A site's folder first: its files shadow the built-ins one by one; the rest still come from deploykit.
    loader: jinja2.BaseLoader = jinja2.ChoiceLoader([SiteLoader(templates_dir), builtin]) if templates_dir else builtin
    # Sandboxed for the built-ins too: one environment, so what renders here renders the same for a site.
    env = Sandbox(
        loader=loader,
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["q"] = yaml_quote
    env.filters["kq"] = lambda value: yaml_quote(value, escape_dollar=False)
    env.filters["env_q"] = env_quote
    env.filters["cq"] = caddy_quote
    env.filters["env_ref"] = env_reference
    env.filters["ini"] = ini_value
    return env


def caddy_quote(value: object) -> str:
    """One double-quoted Caddyfile token holding exactly ``value``.

    Caddy's lexer escapes only quotes inside quotes, and replaces ``{$VAR}`` before it lexes: so a backslash,
    a brace or a control character is refused rather than escaped.
    """
    text = str(value)
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F or ch in "\\{}" for ch in text):
        raise UsageError(f"{text[:60]!r} cannot be written into the Caddyfile (a brace, backslash or line break).")
    return '"' + text.replace('"', '\\"') + '"'


def _tls_values(spec: StackSpec) -> dict[str, Any]:
    return {
        "tls_dir": TLS_DIR,
        "tls_container_port": TLS_CONTAINER_PORT,
        "webui_upstream": f"{WEBUI}:{WEBUI_CONTAINER_PORT}",
    }


def render_caddyfile(spec: StackSpec, env: jinja2.Environment) -> str:
    """The tls-proxy's Caddyfile (stacks with HTTPS only). Pure."""
    context = {"version": __version__, "tls": spec.tls, **_tls_values(spec)}
    return templating.render(env, "caddy/Caddyfile.j2", context)


def _tls_context(spec: StackSpec, env: jinja2.Environment) -> dict[str, Any]:
    assert spec.tls is not None
    served = sha256_text(render_caddyfile(spec, env) + spec.tls.cert_sha256)
    return {**_tls_values(spec), "tls_config_sha256": f"sha256:{served}"}


def _shm_bytes(spec: StackSpec) -> int:
    # vLLM's workers share tensors through /dev/shm; scale with the weights, at least 2 GiB.
    return max(2, -(-spec.plan.memory.weights_bytes // GiB)) * GiB


def _k8s_name(text: str) -> str:
    """An RFC 1123 label: lowercase alphanumerics and '-', at most 63 characters."""
    name = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")[:63].rstrip("-")
    return name or "deploykit"


def _kubernetes_server(
    plan: DeploymentPlan, backend: Backend, model: ModelSpec | None, host_path: str
) -> dict[str, Any]:
    """What one server's Deployment asks for: where its weights come from, its requests, its startup probe."""
    # Loading may first download the weights: give the startup probe the plan's load time plus 30 minutes.
    startup_seconds = plan.startup_seconds + 1800
    return {
        "model_source": backend.model_source(model) if model is not None else None,
        "model_file_name": PurePosixPath(host_path).name,
        "memory_request": f"{-(-plan.memory.total_bytes // (1024 * 1024))}Mi",
        "cpu_request": str(plan.threads),
        "startup_failures": -(-startup_seconds // 10),
    }


def _kubernetes_context(spec: StackSpec, model: ModelSpec) -> dict[str, Any]:
    plan = spec.plan
    weights = sum(m.plan.memory.weights_bytes for m in spec.models) or plan.memory.weights_bytes
    base = _k8s_name(spec.project)[:40].rstrip("-")
    # The volume holds the weights (and, for vLLM, the Hugging Face cache around them): room for them + 25 %.
    model_gib = max(1, -(-weights * 5 // 4 // GiB) + 1)
    return {
        "names": {
            "base": base,
            INFERENCE: f"{base}-inference",
            "webui": f"{base}-open-webui",
            "secret": f"{base}-secrets",
            "models": f"{base}-models",
            "webui_data": f"{base}-open-webui-data",
        },
        "models_storage": f"{model_gib}Gi",
        **_kubernetes_server(plan, spec.backend, model, spec.model_host_path),
        "server_component": INFERENCE,
        "server_template": spec.backend.template,
        "wait_for": None,
        "gpu_shared": False,
        "presets_dir": PRESETS_DIR,
        "presets_configmap": None,
        "preset_manifest": None,
        "inference_manifests": None,
        "model_copies": (),
    }


def render_target(spec: StackSpec, inputs: PlanInputs, secrets: Mapping[str, str], env: jinja2.Environment) -> str:
    """The target's own file (compose.yaml, swarm.yaml or kubernetes.yaml) as text. Pure."""
    host_dir, container_dir, container_path = spec.model_mount
    plan = spec.plan
    context: dict[str, Any] = {
        "version": __version__,
        "target": spec.target,
        "project": spec.project,
        "plan": plan,
        "backend": spec.backend,
        "images": spec.images,
        "labels": {"org.deploykit.managed": "true", "org.deploykit.stack": spec.project},
        "webui_port": spec.webui_port,
        "webui_bind": spec.webui_bind,
        "inference_port": spec.inference_port,
        "inference_container_port": spec.inference_container_port,
        "webui_container_port": WEBUI_CONTAINER_PORT,
        "inference_url": spec.inference_api,
        "model_host_dir": host_dir,
        "model_volume": spec.model_volume,
        "model_container_dir": container_dir,
        "model_container_path": container_path,
        "shm_size": f"{_shm_bytes(spec) // GiB}gb",
        "shm_bytes": _shm_bytes(spec),
        "webui_env": spec.webui_environment,
        "tls": spec.tls,
        **spec.backend.template_vars(plan),
        "webui_secrets": spec.webui_secrets,
        "service_name": INFERENCE,
        "depends_on": None,
        "inference_services": (),
        "connections": (),
        "preset_config": None,
    }
    if spec.tls is not None:
        context |= _tls_context(spec, env)
    if spec.target == "kubernetes":
        context |= _kubernetes_context(spec, inputs.model)
    if spec.models:
        context |= _several_context(spec, context, env, inputs)
    if spec.target == "kubernetes":
        context["secrets"] = {k: secrets[k] for k in RUNTIME_SECRETS}
        context["inference_url"] = f"http://{context['names']['inference']}:{spec.inference_container_port}/v1"
        return templating.render(env, "kubernetes/stack.yaml.j2", context)
    return templating.render(env, "compose.yaml.j2", context)


def ini_value(value: object) -> str:
    """One value of llama.cpp's preset INI, refused rather than escaped: its parser ends a value at ``#`` or ``;``
    anywhere, takes quotes literally and knows no escapes (docs/several-models.md)."""
    text = str(value)
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F or ch in "[]#;" for ch in text) or text != text.strip():
        raise UsageError(
            f"{text[:60]!r} cannot be written into the router's {MODELS_PRESET} (a line break, bracket, '#' or ';').",
            "Model ids are letters, digits, '.', '_' and '-'; the paths in the preset are deploykit's own.",
        )
    return text


def render_preset(spec: StackSpec, env: jinja2.Environment) -> str:
    """The router's models.ini: a section per model it serves, each with its own flags. Pure."""
    stack = spec.stack_plan
    assert stack is not None
    models = []
    for m in stack.routed:
        backend = named(m.plan.backend)
        extra = backend.template_vars(m.plan)
        models.append({"id": m.model_id, "plan": m.plan, "model_path": _routed_path(spec, m), **extra})
    context = {"version": __version__, "models": models, "load_on_start": stack.packing.load_on_start}
    # The preset's template sits beside the router's service template: services/<router_template>.ini.j2.
    return templating.render(env, f"services/{backend.router_template}.ini.j2", context)


ROUTER_CACHE_DIR = "/model-cache"  # where a Compose router sees deploykit's model cache


def _routed_path(spec: StackSpec, model: StackModel) -> str:
    """Where the router loads ``model`` from: inside the model cache's mount when the file lies in the cache
    under a name the preset can carry, else its own bind at a path deploykit chooses (the preset's parser
    cannot carry every name a user gives a file)."""
    cached = _in_cache(spec, spec.model_paths[model.model_id])
    return f"{ROUTER_CACHE_DIR}/{cached}" if cached is not None else f"/models/{model.model_id}.gguf"


def _in_cache(spec: StackSpec, host_path: str) -> str | None:
    """``host_path`` relative to the model cache, when a Compose stack mounts the cache and the name is one the
    preset carries (letters, digits, '.', '_', '-', '/'); else None."""
    if spec.target != "compose" or not spec.model_cache:
        return None
    try:
        relative = PurePosixPath(host_path).relative_to(PurePosixPath(spec.model_cache)).as_posix()
    except ValueError:
        return None
    if relative == "." or ".." in relative.split("/") or not re.fullmatch(r"[A-Za-z0-9._/-]+", relative):
        return None
    return relative


def _several_context(
    spec: StackSpec, base: Mapping[str, Any], env: jinja2.Environment, inputs: PlanInputs
) -> dict[str, Any]:
    """Each inference service of a stack of several models rendered in start order (the router last, each
    after the one before is ready), and Open WebUI's connections to them."""
    stack = spec.stack_plan
    assert stack is not None
    order = [s for s in stack.services if s != ROUTER] + [s for s in stack.services if s == ROUTER]
    if spec.target == "swarm":
        _check_swarm(stack, order)
    blocks, urls, configs = [], [], {}
    servers: list[tuple[str, dict[str, Any]]] = []
    for index, service in enumerate(order):
        served = stack.served_by(service)
        first = served[0]
        backend = named(first.plan.backend)
        if service == ROUTER and backend.webui_provider:
            configs[str(index)] = {"provider": backend.webui_provider}
        if spec.target == "kubernetes":
            servers.append((service, {**base, **_service_context(spec, first, service)}))
            continue
        context = {
            **base,
            **_service_context(spec, first, service),
            # Swarm has no start order (and _check_swarm allows no two servers on one GPU there).
            "depends_on": order[index - 1] if index and spec.target == "compose" else None,
        }
        if service == ROUTER:
            context |= _router_context(spec, stack, served)
            template = f"services/{backend.router_template}.yaml.j2"
        else:
            template = f"services/{backend.template}.yaml.j2"
        blocks.append(templating.render(env, template, context))
        urls.append(first.server_url)
    webui_env = dict(base["webui_env"])
    task = _task_model(stack)
    if task is not None:
        webui_env = {"TASK_MODEL_EXTERNAL": task, **webui_env}
    preset = None
    if spec.target == "swarm" and stack.routed:
        preset = f"{spec.project}-models-{sha256_text(render_preset(spec, env))[:12]}"
    kubernetes: dict[str, Any] = {}
    if spec.target == "kubernetes":
        kubernetes, urls = _kubernetes_servers(spec, stack, servers, inputs, env)
        blocks = []
    return {
        **kubernetes,
        "preset_config": preset,
        "inference_services": blocks,
        "connections": urls,
        "connection_configs": json.dumps(configs, sort_keys=True),
        "webui_env": webui_env,
    }


def _router_context(spec: StackSpec, stack: StackPlan, served: Sequence[StackModel]) -> dict[str, Any]:
    """What the router's service template adds: its mounts (the model cache whole, other files one by one), its
    --models-max, where its preset is, and the longest start of its models."""
    paths = {m.model_id: _routed_path(spec, m) for m in served}
    alone = [m.model_id for m in served if not paths[m.model_id].startswith(f"{ROUTER_CACHE_DIR}/")]
    return {
        "routed": [{"host_path": spec.model_paths[m], "container_path": paths[m]} for m in alone],
        "model_cache": (
            {"host_path": spec.model_cache, "container_path": ROUTER_CACHE_DIR} if len(alone) < len(served) else None
        ),
        # Together, every model of the preset is loaded and none evicted: the most a stack holds, so that a model
        # added or removed later does not change the router's command (b11669 refuses 0, "no limit", when it
        # counts the models it loads at start: "exceeds models_max (0)").
        "models_max": stack.packing.models_max if stack.packing.mode == "on_demand" else MAX_MODELS,
        "presets_dir": PRESETS_DIR,
        "presets_folder": PRESETS_FOLDER,
        "preset_file": MODELS_PRESET,
        "plan": served[0].plan.model_copy(update={"startup_seconds": max(m.plan.startup_seconds for m in served)}),
    }


def _kubernetes_servers(
    spec: StackSpec,
    stack: StackPlan,
    servers: list[tuple[str, dict[str, Any]]],
    inputs: PlanInputs,
    env: jinja2.Environment,
) -> tuple[dict[str, Any], list[str]]:
    """A Deployment and a Service per server, in start order: each later one waits (an initContainer) for the
    one before to answer /health, as Compose's depends_on does. Returns the manifests and Open WebUI's URLs."""
    # inputs.models is in the stack's order (the default first), as stack.models is.
    sources = {m.model_id: given.model for m, given in zip(stack.models, inputs.models, strict=False)}
    on_gpu = sum(stack.served_by(s)[0].plan.device == "cuda" for s, _ in servers)
    manifests, urls, copies = [], [], []
    previous: dict[str, str] | None = None
    for service, context in servers:
        served = stack.served_by(service)
        first = served[0]
        backend = named(first.plan.backend)
        label = kubernetes_label(service)
        name = kubernetes_label(f"{context['names']['base']}-{service}")
        server = {
            **_kubernetes_server(first.plan, backend, sources.get(first.model_id), spec.model_paths[first.model_id]),
            "names": {**context["names"], INFERENCE: name},
            "server_component": label,
            "server_template": backend.template,
            "wait_for": previous,
            "gpu_shared": on_gpu > 1,
        }
        if service == ROUTER:
            plan = first.plan.model_copy(update={"startup_seconds": max(m.plan.startup_seconds for m in served)})
            server |= {
                **_kubernetes_server(plan, backend, None, spec.model_paths[first.model_id]),
                "plan": plan,
                "server_template": backend.router_template,
                "models_max": stack.packing.models_max or len(served),
                "preset_file": MODELS_PRESET,
                "presets_configmap": f"{context['names']['base']}-presets",
                # The router's processes together: every model it may hold at once.
                "memory_request": f"{-(-sum(m.plan.memory.total_bytes for m in served) // (1024 * 1024))}Mi",
            }
            copies += [
                f"{spec.model_paths[m.model_id]} as {_routed_path(spec, m).removeprefix('/models/')}" for m in served
            ]
        elif server["model_source"] is None:
            copies.append(f"{spec.model_paths[first.model_id]} as {server['model_file_name']}")
        manifests.append(templating.render(env, "kubernetes/server.yaml.j2", context | server))
        urls.append(f"http://{name}:{first.container_port}/v1")
        previous = {"name": name, "url": f"http://{name}:{first.container_port}/health"}
    preset = None
    if stack.routed:
        preset = {
            "name": f"{servers[0][1]['names']['base']}-presets",
            "file": MODELS_PRESET,
            "text": render_preset(spec, env),
        }
    values = {
        "inference_manifests": "---\n".join(m if m.endswith("\n") else m + "\n" for m in manifests).rstrip("\n"),
        "preset_manifest": preset,
        "model_copies": tuple(copies),
    }
    return values, urls


def _check_swarm(stack: StackPlan, order: list[str]) -> None:
    """Swarm starts every service at once and reserves a whole GPU (a generic resource) per service."""
    on_gpu = [s for s in order if stack.served_by(s)[0].plan.device == "cuda"]
    if len(on_gpu) > 1:
        raise UsageError(
            f"Swarm cannot run {len(on_gpu)} servers of this stack on one GPU ({', '.join(on_gpu)}): it starts "
            "them at once, while a server sized by a fraction of the GPU must start alone, and it reserves a "
            "whole GPU per service.",
            "Render for Docker Compose (it starts them one after another), or serve only llama.cpp models (one "
            "router) on the GPU.",
        )


def _service_context(spec: StackSpec, model: StackModel, service: str) -> dict[str, Any]:
    backend = named(model.plan.backend)
    host_dir, container_dir, container_path = backend.model_mount(PurePosixPath(spec.model_paths[model.model_id]))
    shm = max(2, -(-model.plan.memory.weights_bytes // GiB)) * GiB
    return {
        "service_name": service,
        "plan": model.plan,
        "backend": backend,
        "inference_port": model.published_port,
        "inference_container_port": model.container_port,
        "model_host_dir": host_dir,
        "model_container_dir": container_dir,
        "model_container_path": container_path,
        "shm_size": f"{shm // GiB}gb",
        "shm_bytes": shm,
        **backend.template_vars(model.plan),
    }


def _task_model(stack: StackPlan) -> str | None:
    """On demand, Open WebUI's background tasks (titles, tags) would swap models at every chat: point them at a
    model that stays loaded (the default when none does)."""
    if stack.packing.mode != "on_demand":
        return None
    kept = [m.model_id for m in stack.models if m.loaded == "always"]
    return kept[0] if kept else stack.default_model


_TOO_LARGE = "Check the [webui_env] values and paths given: one of them is megabytes long."


def render_files(
    spec: StackSpec,
    secrets: Mapping[str, str],
    inputs: PlanInputs,
    templates_dir: Path | None = None,
    customised: Mapping[str, Any] | None = None,
) -> dict[str, str]:
    """The stack's files as text, keyed by name. Deterministic: reads only the templates.

    ``customised`` (what plan.json says about the override file and shadowed templates) is recorded as given.
    """
    missing = [k for k in SECRET_KEYS if not secrets.get(k)]
    if missing:
        raise ValueError(f"secrets missing: {', '.join(missing)}")
    env = _environment(str(templates_dir) if templates_dir else None)
    try:
        main = render_target(spec, inputs, secrets, env)
        dotenv = templating.render(env, "env.j2", {"secrets": {k: secrets[k] for k in SECRET_KEYS}})
        extra = {CADDYFILE: render_caddyfile(spec, env)} if spec.tls is not None else {}
        if spec.stack_plan is not None and spec.stack_plan.routed:
            extra[PRESET_PATH] = render_preset(spec, env)
    except (jinja2.TemplateError, RecursionError) as exc:
        if templates_dir is None:
            if isinstance(exc, jinja2.exceptions.SecurityError):  # a value given so long the file outgrew the bound
                raise UsageError(f"the stack file would be too large to write: {exc}.", _TOO_LARGE) from None
            raise
        where = str(templates_dir)
        if isinstance(exc, jinja2.TemplateSyntaxError):
            where = f"{exc.filename or templates_dir} line {exc.lineno}"
        detail = "nested too deeply" if isinstance(exc, RecursionError) else exc.message or exc
        raise UsageError(
            f"the site templates in {where} do not render: {detail}.",
            "Fix the template (`deploykit templates export DIR` writes the built-ins to compare with).",
        ) from None
    stack = spec.model_dump(mode="json")
    if not stack["webui_secrets"]:
        del stack["webui_secrets"]  # plan.json as before for stacks without secret settings
    if stack["tls"] is None:
        del stack["tls"]  # and for stacks without HTTPS
    if not spec.models:
        for key in ("models", "packing", "model_paths", "model_cache"):
            del stack[key]  # and for stacks of one model
    plan_json = json.dumps(
        {
            "deploykit_version": __version__,
            "stack": stack,
            "inputs": inputs.recorded(),
            **({"customised": dict(customised)} if customised else {}),
            # What deploykit wrote, so a hand edit of the stack file is noticed before it is overwritten.
            "files": {TARGET_FILES[spec.target]: sha256(main.encode("utf-8", "surrogatepass"))},
        },
        indent=2,
        ensure_ascii=False,
    )
    files = {TARGET_FILES[spec.target]: main, ENV_FILE: dotenv, **extra, PLAN_FILE: plan_json + "\n"}
    encode_files(files)  # a name with raw bytes (a surrogate) says so before the YAML check trips on it
    services = (*SERVICES, TLS_PROXY) if spec.tls is not None else SERVICES
    if spec.stack_plan is not None:
        services = (*spec.stack_plan.services, *services[1:])
    try:  # parsed before anything may be written: a broken file never replaces a working one
        templating.check_files(files, TARGET_FILES[spec.target], services)
    except templating.RenderedFileError as exc:
        refused = templating.as_user_error(exc, templates_dir, {*spec.webui_env, *spec.webui_secrets})
        if refused is None:
            raise
        raise refused from None
    return files
