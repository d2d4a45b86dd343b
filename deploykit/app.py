"""The library API the CLI calls: each function chains the stages detect → plan → render → run → health.

Functions here take settings and paths, call the pure stages, and do the I/O between them. They
return plain data for the CLI to print; they never print.
"""

from __future__ import annotations

import contextlib
import re
import secrets as secrets_mod
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Required, TypedDict, cast

from pydantic import ValidationError

from deploykit import stackdir
from deploykit.catalog import (
    MODEL_ID,
    ModelSpec,
    builtin_models,
    builtin_profiles,
    find_model,
    find_profile,
    load_profiles_file,
)
from deploykit.errors import ConfigError, DeployKitError, NotFoundError, PlanError, StackDirError, UsageError
from deploykit.host import HostProfile
from deploykit.modelfile import LocalWeights, read_model_path
from deploykit.plan import (
    DeploymentPlan,
    NoFit,
    PlanInputs,
    PlanSettings,
    RunHost,
    gib,
    plan_deployment,
    suggest_alternative,
)
from deploykit.render import StackIdentity, StackSpec, Target, project_name, render_files
from deploykit.services import INFERENCE, WEBUI
from deploykit.settings import Settings, config_dir
from deploykit.stackdir import ADMIN_EMAIL, ADMIN_PASSWORD, INFERENCE_API_KEY, STACK_ID, TARGET_FILES, WEBUI_SECRET_KEY

if TYPE_CHECKING:
    # Running stacks needs httpx and the docker SDK: plan and render should not pay for them.
    from deploykit.backup import BackupReport, RestoreReport
    from deploykit.bench import BenchLevel, RequestResult
    from deploykit.bench import Target as BenchTarget
    from deploykit.doctor import Check
    from deploykit.engine import EngineAddress
    from deploykit.fleet import FleetHost, HostResult, ModelPayload, PayloadCache
    from deploykit.host import DockerEngine, Gpu
    from deploykit.lifecycle import LoadedStack, Reporter, SmokeCheck, StackStatus, UpReport
    from deploykit.tune import TuneRow, TuneWorkload


def all_profiles(settings: Settings) -> tuple[HostProfile, ...]:
    """Built-in profiles, then the user's (config dir, or --profiles-file); a user profile wins a name clash."""
    user: tuple[HostProfile, ...] = ()
    path = settings.profiles_file or config_dir() / "profiles.toml"
    if settings.profiles_file is not None and not path.exists():
        raise NotFoundError(f"profiles file {path} does not exist.", "Check the --profiles-file path.")
    if settings.profiles_file is not None and not path.is_file():
        raise ConfigError(f"profiles file {path} is not a regular file.", "Give the path of a TOML file.")
    if path.exists():  # a pipe or device there is named by the reader, never read
        user = load_profiles_file(path)
    names = {p.name for p in user}
    return (*user, *(p for p in builtin_profiles() if p.name not in names))


def _docker_host(settings: Settings) -> EngineAddress:
    """The engine the settings name (--docker-host, the config file); none named: the environment's
    DOCKER_HOST, else the local socket. The one place a settings string becomes an engine address."""
    from deploykit.engine import EngineAddress

    return EngineAddress(settings.docker_host)


def detect(settings: Settings) -> HostProfile:
    from deploykit.detect import detect_host
    from deploykit.engine import probe_engine

    return detect_host(model_cache=settings.model_cache, docker=probe_engine(_docker_host(settings)))


def load_host_file(path: Path) -> HostProfile:
    from deploykit.textfile import load_json, read_text

    text = read_text(path, "host file", "Check the --host path; save one with `deploykit detect --json`.")
    data = load_json(
        text, path, "host file", "Save one with `deploykit detect --json > host.json` on the target machine."
    )
    try:
        host = HostProfile.model_validate(data)
    except ValidationError as exc:
        fields = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ConfigError(
            f"{path} is not a host profile: {fields}.",
            "Save one with `deploykit detect --json > host.json` on the target machine.",
        ) from None
    return host.model_copy(update={"source": "file"})


def resolve_host(settings: Settings, profile: str, host_file: Path | None) -> HostProfile:
    if host_file is not None:
        if profile not in ("auto", ""):
            raise UsageError(
                f"--host and --profile {profile} both describe the hardware.",
                "Use --host FILE alone (it stands for the detected host) or --profile alone.",
            )
        return load_host_file(host_file)
    if profile == "auto":
        return detect(settings)
    return apply_profile(settings, profile, lambda: detect(settings))


def apply_profile(settings: Settings, profile: str, detected: Callable[[], HostProfile]) -> HostProfile:
    """A named profile; one that stands for "this machine, served this way" keeps the detected CPU and RAM."""
    chosen = find_profile(profile, all_profiles(settings))
    if not chosen.detect:
        return chosen
    return detected().model_copy(
        update={
            "name": chosen.name,
            "description": chosen.description,
            "preferred_backend": chosen.preferred_backend,
            "gpus": chosen.gpus,
        }
    )


@dataclass(frozen=True)
class ResolvedModel:
    spec: ModelSpec
    weights: LocalWeights | None  # set when the user gave a local file or directory


def resolve_model(settings: Settings, model_id: str | None, model_path: Path | None) -> ResolvedModel:
    catalog = builtin_models()
    if model_path is not None and model_id is not None and not re.fullmatch(MODEL_ID, model_id):
        raise UsageError(
            f"--model {model_id!r} is not a model id: use letters, digits, '.', '_' and '-'.",
            "`deploykit models` lists the catalog; with --model-file, --model names the file's model.",
        )
    if model_path is not None:
        path = model_path.expanduser().resolve()
        if not path.exists():
            raise UsageError(
                f"model file {model_path} does not exist.",
                "Give the path of a .gguf file or a Hugging Face model directory.",
            )
        if not (path.is_file() or path.is_dir()):
            raise UsageError(
                f"model file {model_path} is not a regular file or directory.",
                "Give the path of a .gguf file or a Hugging Face model directory.",
            )
        known = next((m for m in catalog if m.id == model_id), None) if model_id else None
        spec, weights = read_model_path(path, model_id)
        if known is not None:
            # The file's header gives the true shapes; the catalog gives the id, name and capabilities.
            spec = spec.model_copy(
                update={
                    "name": known.name,
                    "hf_repo": known.hf_repo,
                    "reasoning": known.reasoning,
                    "tool_calling": known.tool_calling,
                }
            )
        return ResolvedModel(spec, weights)
    wanted = model_id or settings.model
    if "/" in wanted and not any(m.hf_repo == wanted for m in catalog):
        return ResolvedModel(_spec_from_hub(wanted), None)
    return ResolvedModel(find_model(wanted, catalog), None)


def _spec_from_hub(repo: str) -> ModelSpec:
    """A Hugging Face model outside the catalog: its config.json gives the numbers."""
    from deploykit.hub import fetch_config
    from deploykit.modelfile import slug, spec_from_hf_config

    config, params = fetch_config(repo)
    spec = spec_from_hf_config(config, slug(repo.split("/")[-1]), repo.split("/")[-1], params)
    return spec.model_copy(update={"hf_repo": repo})


def make_plan(
    host: HostProfile, model: ResolvedModel, settings: Settings, runs_on: RunHost | None = None
) -> DeploymentPlan:
    return plan_with(host, model, settings.plan_settings(), runs_on)


def plan_with(
    host: HostProfile, model: ResolvedModel, plan_settings: PlanSettings, runs_on: RunHost | None = None
) -> DeploymentPlan:
    """The plan, or a PlanError that says what is needed and the nearest thing that would fit."""
    try:
        return plan_deployment(host, model.spec, plan_settings, model.weights, runs_on)
    except NoFit as nofit:
        alternative = (
            suggest_alternative(host, model.spec, plan_settings, builtin_models()) if model.weights is None else None
        )
        if nofit.need_bytes:
            message = (
                f"{nofit.model_name} ({nofit.detail}) needs {gib(nofit.need_bytes)}; profile {host.name} "
                f"has {gib(nofit.budget_bytes)} of {nofit.budget_kind.upper()} for it."
            )
        else:
            message = f"{nofit.model_name} cannot run on profile {host.name}: {nofit.detail}"
        raise PlanError(
            message,
            alternative[0].upper() + alternative[1:] if alternative else "Use a smaller model or a bigger machine.",
        ) from None


def model_host_path(settings: Settings, plan: DeploymentPlan, model: ResolvedModel) -> Path:
    """Where the weights live on the Docker host: the user's file, or their place in the model cache."""
    if model.weights is not None:
        return Path(model.weights.path)
    spec = model.spec
    if plan.backend == "llamacpp":
        assert spec.gguf is not None  # the planner only picks llama.cpp with a GGUF source
        repo = spec.gguf.repo or spec.id
        return settings.model_cache / repo / spec.gguf.file
    return settings.model_cache / (spec.hf_repo or spec.id)


def choose_images(settings: Settings, plan: DeploymentPlan, overrides: dict[str, str]) -> dict[str, str]:
    images = settings.images
    inference = {
        ("llamacpp", "cpu"): images.llama_server,
        ("llamacpp", "cuda"): images.llama_server_cuda,
        ("vllm", "cuda"): images.vllm,
        ("vllm", "cpu"): images.vllm_cpu,
    }[(plan.backend, plan.device)]
    return {INFERENCE: inference, WEBUI: images.open_webui} | overrides


def stack_spec(
    settings: Settings,
    project: str,
    plan: DeploymentPlan,
    model: ResolvedModel,
    image_overrides: dict[str, str],
    target: Target = "compose",
    model_volume: str | None = None,
) -> StackSpec:
    """What the templates get: the plan, where the weights are, the images and the settings' ports."""
    return StackSpec(
        project=project,
        plan=plan,
        model_host_path=str(model_host_path(settings, plan, model)),
        images=choose_images(settings, plan, image_overrides),
        webui_port=settings.webui_port,
        webui_bind=settings.webui_bind,
        inference_port=settings.inference_port,
        target=target,
        model_volume=model_volume,
    )


def plan_inputs(
    settings: Settings, host: HostProfile, model: ResolvedModel, runs_on: RunHost | None = None
) -> PlanInputs:
    """What a rendered stack's plan was made from: the weights always (null for a catalog model), the
    machine that runs it only when `up` measured one."""
    inputs = PlanInputs(host=host, model=model.spec, settings=settings.plan_settings(), weights=model.weights)
    return inputs if runs_on is None else inputs.model_copy(update={"runs_on": runs_on})


def new_secrets(admin_email: str) -> dict[str, str]:
    return {
        INFERENCE_API_KEY: "sk-" + secrets_mod.token_urlsafe(32),
        WEBUI_SECRET_KEY: secrets_mod.token_urlsafe(48),
        ADMIN_EMAIL: admin_email,
        ADMIN_PASSWORD: secrets_mod.token_urlsafe(18),
        STACK_ID: secrets_mod.token_hex(8),
    }


@dataclass(frozen=True)
class RenderResult:
    stack_dir: Path
    spec: StackSpec
    changed: list[str]
    notes: list[str]


@dataclass(frozen=True)
class PreparedStack:
    """A rendered stack held in memory: checked before anything is written."""

    stack_dir: Path
    spec: StackSpec
    files: dict[str, str]
    secrets: dict[str, str]
    inputs: PlanInputs
    backup: str | None  # the stack file being replaced was edited by hand (--force): keep a copy of it
    notes: list[str]  # what a person must know: secrets generated, the site's customisation

    def write(self) -> list[str]:
        return stackdir.write_stack(self.stack_dir, self.files, self.backup)

    def loaded(self, address: str = "127.0.0.1") -> LoadedStack:
        """The stack as `up` runs it, before its files are written."""
        from deploykit.lifecycle import LoadedStack

        return LoadedStack(self.stack_dir, self.spec, self.secrets, self.inputs, address=address)


def prepare_stack(
    settings: Settings,
    *,
    profile: str,
    host_file: Path | None,
    model_id: str | None,
    model_path: Path | None,
    image_overrides: dict[str, str],
    stack_dir: Path,
    target: Target = "compose",
    force: bool = False,
    runs_on: RunHost | None = None,
) -> PreparedStack:
    """The stack in memory. ``runs_on`` (given by `up`) fits the serving flags to the machine that runs it."""
    stack_dir = stack_dir.expanduser().absolute()
    existing = stackdir.open_for_render(stack_dir)  # before anything slow, and before anything is written
    host = resolve_host(settings, profile, host_file)
    model = resolve_model(settings, model_id, model_path)
    return prepare_for_host(
        settings,
        host,
        model,
        image_overrides,
        stack_dir,
        target=target,
        force=force,
        existing=existing,
        runs_on=runs_on,
    )


def prepare_for_host(
    settings: Settings,
    host: HostProfile,
    model: ResolvedModel,
    image_overrides: dict[str, str],
    stack_dir: Path,
    model_volume: str | None = None,
    target: Target = "compose",
    force: bool = False,
    existing: stackdir.ExistingStack | None = None,
    runs_on: RunHost | None = None,
) -> PreparedStack:
    """Plan and render for a host already described; ``model_volume`` mounts the weights from that volume.

    ``runs_on`` (given by `up`) fits the serving flags to the machine that runs the stack.
    """
    if existing is None:
        existing = stackdir.open_for_render(stack_dir)
    plan = make_plan(host, model, settings, runs_on)
    spec = stack_spec(settings, project_name(stack_dir), plan, model, image_overrides, target, model_volume)
    kept = existing.env.values
    if existing.plan is not None and existing.env.text is None and not force:
        raise StackDirError(
            f"{existing.env.path} is missing, so this stack's secrets are gone; new ones would lock you out "
            "of the accounts Open WebUI already has.",
            "Restore .env from a backup, or render with --force to generate new secrets.",
        )
    fresh = new_secrets(settings.admin_email)
    stack_secrets = {key: kept.get(key) or fresh[key] for key in fresh}
    notes = [
        f"{key} was not in .env: a new one was generated"
        + (
            " (Open WebUI keeps the admin password it was first given)."
            if key in (ADMIN_EMAIL, ADMIN_PASSWORD)
            else "."
        )
        for key in fresh
        if existing.env.text is not None and key not in kept
    ]
    inputs = plan_inputs(settings, host, model, runs_on)
    return _prepare(settings, existing, spec, stack_secrets, inputs, force, notes)


def _prepare(
    settings: Settings,
    existing: stackdir.ExistingStack,
    spec: StackSpec,
    stack_secrets: dict[str, str],
    inputs: PlanInputs,
    force: bool,
    notes: list[str],
) -> PreparedStack:
    """Render a stack with the site's customisation: [webui_env], its templates, and a note of its override."""
    from deploykit import webui_env
    from deploykit.customise import customisation

    stack_dir = existing.dir
    env_notes = webui_env.check(settings.webui_env)
    # Settings whose names say they are secrets go into .env; compose.yaml and plan.json name them only.
    plain, hidden = webui_env.split_secrets(settings.webui_env)
    spec = spec.model_copy(update={"webui_env": dict(sorted(plain.items())), "webui_secrets": tuple(sorted(hidden))})
    stack_secrets = {**stack_secrets, **hidden}
    customised, template_notes = customisation(settings.templates_dir, stack_dir)
    files = render_files(spec, stack_secrets, inputs, settings.templates_dir, customised)
    files[".env"] = stackdir.env_with(stackdir.merged_env(existing.env, stack_secrets, files[".env"]), hidden)
    main = TARGET_FILES[spec.target]
    backup = main if stackdir.backup_needed(existing, main, files[main], force) else None
    all_notes = [*notes, *env_notes, *template_notes]
    return PreparedStack(stack_dir, spec, files, stack_secrets, inputs, backup, all_notes)


def reprepare_stack(settings: Settings, stack_dir: Path, force: bool = False) -> PreparedStack:
    """An existing stack rendered again from its plan.json, with today's [webui_env] and templates."""
    from deploykit.lifecycle import load_stack

    stack = load_stack(stack_dir)
    existing = stackdir.open_for_render(stack_dir)
    return _prepare(settings, existing, stack.spec, stack.secrets, stack.inputs, force, [])


@dataclass(frozen=True)
class StackRequest:
    """What `render` and `up` are asked for: the stack folder, the host, the model, images and target.

    None leaves a choice to the command: `render` plans for ``auto`` and the compose target; `up` reuses
    the stack's plan when nothing is asked.
    """

    stack_dir: Path
    profile: str | None = None
    host_file: Path | None = None
    model_id: str | None = None
    model_path: Path | None = None
    image_overrides: dict[str, str] = field(default_factory=dict)
    target: Target | None = None
    force: bool = False

    def prepare(self, settings: Settings, target: Target, runs_on: RunHost | None = None) -> PreparedStack:
        return prepare_stack(
            settings,
            profile=self.profile or "auto",
            host_file=self.host_file,
            model_id=self.model_id,
            model_path=self.model_path,
            image_overrides=self.image_overrides,
            stack_dir=self.stack_dir,
            target=target,
            force=self.force,
            runs_on=runs_on,
        )


def render_stack(settings: Settings, request: StackRequest) -> RenderResult:
    """Plan and write the stack folder (all or nothing)."""
    prepared = request.prepare(settings, request.target or "compose")
    changed = prepared.write()
    return RenderResult(prepared.stack_dir, prepared.spec, changed, prepared.notes)


def up_stack(settings: Settings, request: StackRequest, timeout: float | None, reporter: Reporter) -> UpReport:
    """Render (or reuse) the stack, preflight, fetch the model, start it and check it stage by stage."""
    from deploykit import lifecycle

    if request.target == "kubernetes":
        raise UsageError(
            "deploykit does not run Kubernetes stacks itself.",
            "Render the manifests with `deploykit render --target kubernetes` and apply them with kubectl.",
        )
    r = request
    stack_dir = r.stack_dir.expanduser().absolute()
    asked = any(x is not None for x in (r.profile, r.host_file, r.model_id, r.model_path, r.target))
    docker_host = _docker_host(settings)
    runs_on = engine_host(docker_host)
    if asked or r.image_overrides or not (stack_dir / "plan.json").is_file():
        prepared = r.prepare(settings, r.target or _rendered_target(stack_dir), runs_on)
    else:
        # Reuse the stack's plan, but with today's [webui_env] and templates: a changed setting takes effect.
        prepared = reprepare_stack(settings, stack_dir, r.force)
        plan = prepared.spec.plan
        if runs_on is not None and plan.threads > runs_on.cores:
            reporter.note(
                f"This stack was rendered for {plan.threads} threads and {runs_on.where} has {runs_on.cores} "
                f"cores; `deploykit up --profile {plan.profile} --dir {stack_dir}` renders it again to fit."
            )
    for note in prepared.notes:
        reporter.note(note)
    return lifecycle.up(prepared.loaded(), docker_host, timeout, reporter, prepared.files, write_files=prepared.write)


def _rendered_target(stack_dir: Path) -> Target:
    """The target a stack directory was rendered for (compose when new or unreadable)."""
    data = stackdir.read_plan(stack_dir) if stack_dir.is_dir() else None
    stack = data.get("stack") if data else None
    target = stack.get("target") if isinstance(stack, dict) else None
    return cast("Target", target) if target in TARGET_FILES else "compose"


def engine_host(docker_host: EngineAddress) -> RunHost | None:
    """The machine a stack started through this engine runs on: this one (its physical cores) for a
    local engine, else the engine's own CPU count, or None when the engine does not say."""
    if docker_host.local:
        from deploykit.detect import detect_cpu

        return RunHost(cores=detect_cpu().physical_cores, where="this host")
    from deploykit.engine import probe_engine

    cpus = probe_engine(docker_host).cpus
    return RunHost(cores=cpus, where=f"the engine at {docker_host.display}") if cpus else None


def plan_only(
    settings: Settings, *, profile: str, host_file: Path | None, model_id: str | None, model_path: Path | None
) -> tuple[HostProfile, ResolvedModel, DeploymentPlan]:
    host = resolve_host(settings, profile, host_file)
    model = resolve_model(settings, model_id, model_path)
    return host, model, make_plan(host, model, settings)


class PlanOutcome(TypedDict, total=False):
    """The plan the default model gets on a profile, or why there is none."""

    backend: Required[str | None]
    device: str
    quantization: str
    context_length: int
    gpu_layers: int | None
    error: str


class ProfileRow(PlanOutcome):
    """One row of `deploykit profiles`."""

    name: str
    description: str
    source: str
    arch: str
    gpus: list[str]
    vram_bytes: int
    ram_bytes: int
    default_model: str


def profile_rows(settings: Settings) -> list[ProfileRow]:
    """Each profile with the backend it would get for the default model (``deploykit profiles``)."""
    model = ResolvedModel(find_model(settings.model, builtin_models()), None)
    rows: list[ProfileRow] = []
    for host in all_profiles(settings):
        try:
            plan = make_plan(host, model, settings)
            outcome: PlanOutcome = {
                "backend": plan.backend,
                "device": plan.device,
                "quantization": plan.quantization,
                "context_length": plan.context_length,
                "gpu_layers": plan.gpu_layers,
            }
        except PlanError as exc:
            outcome = {"backend": None, "error": exc.message}
        rows.append(
            {
                "name": host.name,
                "description": host.description,
                "source": host.source,
                "arch": host.cpu.arch,
                "gpus": [g.name for g in host.gpus],
                "vram_bytes": host.vram_total_bytes,
                "ram_bytes": host.memory.total_bytes,
                "default_model": model.spec.id,
                **outcome,
            }
        )
    return rows


# The reference stacks in compose/ are rendered with fixed, obviously fake values so they are
# reproducible anywhere and hold no real secret.
REFERENCE_MODEL_CACHE = Path("/srv/deploykit/models")
REFERENCE_SECRETS = {
    INFERENCE_API_KEY: "change-me-inference-key",
    WEBUI_SECRET_KEY: "change-me-webui-secret",
    ADMIN_EMAIL: "admin@deploykit.local",
    ADMIN_PASSWORD: "change-me-admin-password",
    STACK_ID: "change-me-stack-id",
}


def reference_stack(profile: str) -> dict[str, str]:
    """The files of compose/<profile>/ for the default model: compose.yaml, .env.example and plan.json,
    and the same stack for the other targets: swarm.yaml and kubernetes.yaml."""
    # Defaults only: no config file or DEPLOYKIT_* variable of this machine leaks into the reference.
    settings = Settings.model_construct(model_cache=REFERENCE_MODEL_CACHE)
    host = find_profile(profile, builtin_profiles())
    model = ResolvedModel(find_model(settings.model, builtin_models()), None)
    spec = stack_spec(settings, f"deploykit-{profile}", make_plan(host, model, settings), model, {})
    # A catalog model and no measured machine: the reference records neither weights nor runs_on.
    inputs = PlanInputs(host=host, model=model.spec, settings=settings.plan_settings())
    files = render_files(spec, REFERENCE_SECRETS, inputs)
    return {
        "compose.yaml": files["compose.yaml"],
        ".env.example": files[".env"],
        "plan.json": files["plan.json"],
        **{
            TARGET_FILES[target]: render_files(spec.model_copy(update={"target": target}), REFERENCE_SECRETS, inputs)[
                TARGET_FILES[target]
            ]
            for target in ("swarm", "kubernetes")
        },
    }


# ---------------------------------------------------------------- fleet of workstations


@dataclass(frozen=True)
class FleetRequest:
    """What every `deploykit fleet` command is given."""

    inventory: Path
    hosts: str | None
    parallel: int
    fleet_dir: Path
    profile: str = "auto"
    model_id: str | None = None
    model_path: Path | None = None
    image_overrides: dict[str, str] | None = None
    timeout: float | None = None


def _fleet_hosts(req: FleetRequest) -> tuple[FleetHost, ...]:
    from deploykit.fleet import check_tls, load_inventory, select_hosts

    hosts = select_hosts(load_inventory(req.inventory), req.hosts)
    for host in hosts:  # a tcp:// host without TLS material stops the run before anything is written
        check_tls(host)
    return hosts


def _host_settings(settings: Settings, host: FleetHost) -> Settings:
    """The controller's settings for one host: its ports, its [webui_env] over the controller's, its
    templates_dir instead of the controller's. Its engine travels beside them, as an EngineAddress."""
    update: dict[str, Any] = {
        "webui_port": host.ui_port,
        "inference_port": host.inference_port,
        "webui_env": settings.webui_env | host.webui_env,
    }
    if host.templates_dir is not None:
        update["templates_dir"] = Path(host.templates_dir)
    return settings.model_copy(update=update)


def place_override(host: FleetHost, stack_dir: Path, write: bool) -> dict[str, str] | None:
    """The inventory's override for the host, copied byte for byte into its stack folder (``write``) as
    compose.override.yaml, so every compose command there merges it; what the folder then has in effect.

    A folder's own override stays when the inventory names none (deploykit never deletes a site's file)."""
    import hashlib

    from deploykit.override import OVERRIDE_FILE, describe
    from deploykit.textfile import check_writable, read_bytes

    source = host.site_override()
    if source is None:
        return describe(stack_dir)
    data = read_bytes(source, "override", "Fix the path the inventory gives.", ConfigError)
    target = stack_dir / OVERRIDE_FILE
    check_writable(target, "override", "Move it away; deploykit copies the inventory's override there.", StackDirError)
    if write and (not target.is_file() or target.read_bytes() != data):
        try:
            stack_dir.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        except OSError as exc:
            raise StackDirError(f"cannot write {target}: {exc.strerror}.", "Check the --dir folder.") from None
    return {"file": OVERRIDE_FILE, "sha256": hashlib.sha256(data).hexdigest(), "from": str(source)}


def _reach(host: FleetHost) -> tuple[EngineAddress, DockerEngine]:
    """The host's engine and what it says; an unreachable engine is an EngineError (unreachable)."""
    from deploykit import engine
    from deploykit.errors import EngineError
    from deploykit.fleet import engine_address

    docker_host = engine_address(host)
    probe = engine.probe_engine(docker_host)
    if not probe.reachable:
        raise EngineError(
            f"cannot reach the Docker Engine of {host.name} at {docker_host.display}: {probe.error}.",
            "Is the workstation on, its engine running and the ssh key or TLS client certificate accepted "
            "(`docker -H URL info`)?",
        )
    return docker_host, probe


def detect_fleet_host(
    settings: Settings,
    host: FleetHost,
    docker_host: EngineAddress,
    probe: DockerEngine,
    gpu_image: str,
    default_profile: str = "auto",
) -> HostProfile:
    """The host as its engine describes it: CPUs, RAM and architecture from /info; GPUs from nvidia-smi in a
    short-lived probe container with GPU access, where the engine has the NVIDIA runtime."""
    from deploykit import engine
    from deploykit.detect import describe_failure, normalise_arch, parse_nvidia_smi_xml
    from deploykit.host import Cpu, Memory
    from deploykit.proc import Completed

    res = engine.engine_resources(docker_host)
    gpus: tuple[Gpu, ...] = ()
    source, error = "none", None
    if not probe.nvidia_runtime:
        error = "the engine has no NVIDIA runtime"
    elif not engine.image_present(docker_host, gpu_image):
        error = f"image {gpu_image} is not on the engine to run the GPU probe in"
    else:
        code, out = engine.run_probe(
            docker_host, gpu_image, ["nvidia-smi", "-q", "-x"], gpus=True, label="deploykit-probe"
        )
        try:
            if code != 0:
                raise ValueError(describe_failure(Completed(("nvidia-smi",), code, out, "")))
            gpus, source = parse_nvidia_smi_xml(out), "nvidia-smi (probe container)"
        except ValueError as exc:
            error = f"nvidia-smi in a probe container: {exc}"
    detected = HostProfile(
        name=host.name,
        source="detected",
        cpu=Cpu(arch=normalise_arch(res.arch), physical_cores=res.cpus, logical_cores=res.cpus),
        memory=Memory(total_bytes=res.memory_bytes),
        gpus=gpus,
        docker=probe,
        gpu_probe=source,
        gpu_probe_error=error,
    )
    profile = host.profile or default_profile
    return detected if profile == "auto" else apply_profile(settings, profile, lambda: detected)


@dataclass(frozen=True)
class FleetStack:
    docker_host: EngineAddress
    address: str
    prepared: PreparedStack
    payload: ModelPayload | None  # set when the weights travel as a volume
    override: dict[str, str] | None  # the compose.override.yaml in effect in the host's folder


def _fleet_stack(
    settings: Settings,
    req: FleetRequest,
    host: FleetHost,
    model: ResolvedModel,
    payloads: PayloadCache,
    reached: tuple[EngineAddress, DockerEngine],
    write: bool,
) -> FleetStack:
    """Plan and render one host's stack in memory; ``write``: its inventory override goes into the folder first,
    so the render records it and `up` checks that it merges."""
    from deploykit.fleet import address_of

    docker_host, probe = reached
    hs = _host_settings(settings, host)
    stack_dir = (req.fleet_dir / host.name).expanduser().absolute()
    existing = stackdir.open_for_render(stack_dir)  # before detection: a folder that is not ours stops here
    override = place_override(host, stack_dir, write)
    overrides = req.image_overrides or {}
    gpu_image = overrides.get(WEBUI, settings.images.open_webui)
    profile = detect_fleet_host(settings, host, docker_host, probe, gpu_image, req.profile)
    payload = None
    if not docker_host.local:  # a remote engine resolves bind mounts on its own disk: the model travels
        path = model_host_path(hs, make_plan(profile, model, hs), model)
        if not path.exists():
            raise NotFoundError(
                f"the model {path} is not on this controller, so it cannot be sent to {host.name}.",
                "Give it with --model-file, or fetch it first (`deploykit up` on this machine downloads it).",
            )
        payload = payloads.get(path)
    volume = payload.volume if payload else None
    prepared = prepare_for_host(hs, profile, model, overrides, stack_dir, volume, existing=existing)
    return FleetStack(docker_host, address_of(host, docker_host), prepared, payload, override)


def _fleet_model(settings: Settings, req: FleetRequest) -> ResolvedModel:
    return resolve_model(settings, req.model_id, req.model_path)


def fleet_detect(settings: Settings, req: FleetRequest) -> list[HostResult]:
    from deploykit.fleet import HostResult, run_parallel

    overrides = req.image_overrides or {}

    def one(host: FleetHost) -> HostResult:
        docker_host, probe = _reach(host)
        profile = detect_fleet_host(
            settings, host, docker_host, probe, overrides.get(WEBUI, settings.images.open_webui), req.profile
        )
        return HostResult(
            host.name,
            "detected",
            profile=host.profile or req.profile,
            details={"host": profile.model_dump(mode="json")},
        )

    return run_parallel(_fleet_hosts(req), one, req.parallel)


def fleet_plan(settings: Settings, req: FleetRequest, write: bool = False) -> list[HostResult]:
    """Plan every host (``write``: and render its stack folder)."""
    from deploykit.fleet import HostResult, PayloadCache, run_parallel

    model, payloads = _fleet_model(settings, req), PayloadCache()

    def one(host: FleetHost) -> HostResult:
        fs = _fleet_stack(settings, req, host, model, payloads, _reach(host), write)
        spec = fs.prepared.spec
        details: dict[str, Any] = {
            "plan": spec.plan.model_dump(mode="json"),
            "model_volume": spec.model_volume,
            "override": fs.override,
            "notes": fs.prepared.notes,
        }
        if write:
            details["dir"] = str(fs.prepared.stack_dir)
            details["changed"] = fs.prepared.write()
        return HostResult(
            host.name,
            "rendered" if write else "planned",
            profile=spec.plan.profile,
            backend=f"{spec.plan.backend} on {spec.plan.device}",
            url=f"http://{fs.address}:{spec.webui_port}",
            details=details,
        )

    return run_parallel(_fleet_hosts(req), one, req.parallel)


def deliver_model(docker_host: EngineAddress, payload: ModelPayload, image: str) -> str:
    """The weights into the host's named volume through its engine, checked by SHA-256 on the host's disk;
    nothing sent when the volume already holds that digest."""
    from deploykit import engine
    from deploykit.errors import DownloadError
    from deploykit.fleet import archive_stream

    volume = payload.volume
    label = "deploykit-model-delivery"
    if engine.volume_exists(docker_host, volume):
        _, marker = engine.run_probe(docker_host, image, payload.marker_command(), label=label, volume=volume)
        if marker.strip() == payload.digest:
            return f"already in volume {volume}"
    labels = {
        "org.deploykit.managed": "true",
        "org.deploykit.model-sha256": payload.digest,
        "org.deploykit.stack": label,
    }
    started = time.monotonic()
    code, out = engine.fill_volume(docker_host, volume, image, archive_stream(payload), payload.check_command(), labels)
    if code != 0:
        raise DownloadError(
            f"the model sent into volume {volume} failed its SHA-256 check on the host: {out.strip()[:200]}.",
            "Run `deploykit fleet up` again to resend it; check the host's disk if it fails again.",
        )
    return f"sent into volume {volume} and SHA-256 checked there ({time.monotonic() - started:.1f} s)"


def fleet_up(settings: Settings, req: FleetRequest, reporter_for: Callable[[str], Reporter]) -> list[HostResult]:
    """Per host, at most ``parallel`` at once: images and model through its engine, render, start, check."""
    from deploykit import engine, lifecycle
    from deploykit.errors import DeployKitError
    from deploykit.fleet import HostResult, PayloadCache, run_parallel

    model, payloads = _fleet_model(settings, req), PayloadCache()
    controller = _docker_host(settings)

    def one(host: FleetHost) -> HostResult:
        reporter = reporter_for(host.name)
        docker_host, probe = _reach(host)
        overrides = req.image_overrides or {}
        delivery = {}
        # Open WebUI's image first: the GPU probe runs in it.
        webui_image = overrides.get(WEBUI, settings.images.open_webui)
        reporter.note(f"images: {webui_image} …")
        delivery["open-webui image"] = engine.copy_image(controller, docker_host, webui_image)
        fs = _fleet_stack(settings, req, host, model, payloads, (docker_host, probe), write=True)
        spec = fs.prepared.spec
        row = HostResult(
            host.name,
            "failed",
            profile=spec.plan.profile,
            backend=f"{spec.plan.backend} on {spec.plan.device}",
            url=f"http://{fs.address}:{spec.webui_port}",
            details={
                "delivery": delivery,
                "dir": str(fs.prepared.stack_dir),
                "override": fs.override,
                "notes": fs.prepared.notes,
            },
        )
        try:
            reporter.note(f"images: open-webui {delivery['open-webui image']}; {spec.images['inference']} …")
            delivery["inference image"] = engine.copy_image(controller, docker_host, spec.images[INFERENCE])
            reporter.note(f"images: inference {delivery['inference image']}")
            if fs.payload is not None:
                reporter.note(f"model: {fs.payload.path.name} into volume {fs.payload.volume} …")
                delivery["model"] = deliver_model(docker_host, fs.payload, spec.images[INFERENCE])
                reporter.note(f"model: {delivery['model']}")
            prepared = fs.prepared
            with inference_route(prepared.loaded(fs.address), docker_host) as stack:
                report = lifecycle.up(
                    stack, docker_host, req.timeout, reporter, prepared.files, write_files=prepared.write
                )
        except DeployKitError as exc:
            row.error, row.hint, row.exit_code = exc.message, exc.hint, exc.exit_code
            return row
        row.state = "healthy" if report.healthy else "unhealthy"
        row.details["stages"] = report.stages
        row.details["drift"] = report.drift
        return row

    return run_parallel(_fleet_hosts(req), one, req.parallel)


@contextmanager
def inference_route(stack: LoadedStack, docker_host: EngineAddress) -> Iterator[LoadedStack]:
    """The stack with an inference URL this controller can reach: the stack publishes that port on its engine
    host's loopback only, so an ssh:// host is reached through an ``ssh -L`` forward while the block runs."""
    from dataclasses import replace
    from urllib.parse import urlparse

    from deploykit.errors import EngineError
    from deploykit.proc import ssh_forward

    if not docker_host.ssh:
        yield stack
        return
    parsed = urlparse(docker_host.url or "")
    target = f"{parsed.username}@{parsed.hostname}" if parsed.username else str(parsed.hostname)
    forward = ssh_forward(target, parsed.port, stack.spec.inference_port)
    try:
        local = forward.__enter__()
    except OSError as exc:
        raise EngineError(f"{exc}.", "Check that sshd there allows TCP forwarding (AllowTcpForwarding).") from None
    try:
        yield replace(stack, inference_base=f"http://127.0.0.1:{local}")
    finally:
        forward.__exit__(None, None, None)


def _fleet_loaded(req: FleetRequest, host: FleetHost) -> tuple[EngineAddress, LoadedStack] | HostResult:
    """The host's engine and its stack (addressed for this controller), or the row saying why not."""
    from dataclasses import replace

    from deploykit.fleet import HostResult, address_of
    from deploykit.lifecycle import load_stack

    docker_host, _ = _reach(host)  # an unreachable host is that first, deployed or not
    stack_dir = (req.fleet_dir / host.name).expanduser().absolute()
    if not (stack_dir / "plan.json").is_file():
        return HostResult(
            host.name,
            "not deployed",
            error=f"no stack in {stack_dir}",
            hint=f"Run `deploykit fleet up --inventory {req.inventory} --hosts {host.name}`.",
        )
    return docker_host, replace(load_stack(stack_dir), address=address_of(host, docker_host))


def fleet_status(settings: Settings, req: FleetRequest) -> list[HostResult]:
    from deploykit import lifecycle
    from deploykit.fleet import HostResult, run_parallel

    def one(host: FleetHost) -> HostResult:
        found = _fleet_loaded(req, host)
        if isinstance(found, HostResult):
            return found
        docker_host, loaded = found
        with inference_route(loaded, docker_host) as stack:
            state = lifecycle.status(stack, docker_host)
        broken = [
            f"{s['service']}: {s['state']}, {s.get('detail') or s.get('health') or ''}".rstrip(", ")
            for s in state["services"]
            if s["state"] != "running" or s.get("health") == "unhealthy" or not state["healthy"]
        ]
        plan = stack.spec.plan
        return HostResult(
            host.name,
            "healthy" if state["healthy"] else "unhealthy",
            profile=plan.profile,
            backend=f"{plan.backend} on {plan.device}",
            url=stack.webui_url,
            error=None if state["healthy"] else "; ".join(broken),
            details={"services": state["services"], "override": state["override"]},
        )

    return run_parallel(_fleet_hosts(req), one, req.parallel)


def fleet_down(settings: Settings, req: FleetRequest) -> list[HostResult]:
    from deploykit import lifecycle
    from deploykit.fleet import HostResult, run_parallel

    def one(host: FleetHost) -> HostResult:
        found = _fleet_loaded(req, host)
        if isinstance(found, HostResult):
            found.state = "down"  # nothing to stop is what down wants
            return found
        docker_host, stack = found
        lifecycle.down(stack, docker_host, volumes=False)
        plan = stack.spec.plan
        return HostResult(host.name, "down", profile=plan.profile, backend=f"{plan.backend} on {plan.device}")

    return run_parallel(_fleet_hosts(req), one, req.parallel)


# ---------------------------------------------------------------- bench and tune


def replan_files(stack: LoadedStack, **knobs: int | None) -> tuple[DeploymentPlan, dict[str, str]]:
    """The stack's files re-planned from the inputs plan.json recorded, with some planner knobs changed.

    Same host, model, images, ports and secrets; only what the knobs change (flags, KV cache, context split).
    """
    recorded = stack.inputs
    plan_settings = recorded.settings.model_copy(update=knobs)
    inputs = recorded.model_copy(update={"settings": plan_settings})
    plan = plan_with(inputs.host, ResolvedModel(inputs.model, inputs.weights), plan_settings, inputs.runs_on)
    spec = stack.spec.model_copy(update={"plan": plan})
    return plan, render_files(spec, stack.secrets, inputs)


def bench_target(stack: LoadedStack, via: str) -> BenchTarget:
    """Where `bench` sends its load: the inference server's API, or Open WebUI's as the stack's admin."""
    from deploykit import health, webui
    from deploykit.bench import Target

    plan = stack.spec.plan
    key = stack.api_key
    if via == INFERENCE:
        base, path, token = stack.inference_url, "/v1/chat/completions", key
    else:
        with health.http_client(stack.webui_url) as anon:
            try:
                token, _ = webui.admin_token(anon, *stack.admin)
            except (health.NotReady, health.StageFailed) as exc:
                from deploykit.errors import HealthError

                raise HealthError(
                    f"cannot sign in to Open WebUI as the admin: {exc}.", "Check `deploykit status`."
                ) from None
        base, path = stack.webui_url, "/api/chat/completions"
    return Target(base, path, token, plan.model_id, via, plan.backend, stack.inference_url, key)


class BenchStack(StackIdentity):
    """One stack measured by `bench`."""

    flags: dict[str, int]  # threads and parallel slots it runs with
    via: str
    url: str
    levels: list[BenchLevel]


class BenchWorkload(TypedDict):
    prompt_tokens: int
    max_tokens: int
    stream: bool
    ignore_eos: bool


class BenchReport(TypedDict, total=False):
    """The whole `bench` result (`bench --json`)."""

    date: Required[str]
    machine: Required[str]
    command: Required[str]
    workload: Required[BenchWorkload]
    stacks: Required[list[BenchStack]]
    chart: str  # the HTML chart written, when asked for


def bench_stack(
    stack_dir: Path,
    *,
    via: str,
    levels: list[int],
    requests: int | None,
    prompt_tokens: int,
    max_tokens: int,
    on_result: Callable[[RequestResult], None],
) -> BenchStack:
    """Streaming load at each concurrency level against a running stack; figures per level as plain data."""
    from dataclasses import asdict

    from deploykit.bench import Workload, calibrate_words, run_level
    from deploykit.errors import HealthError
    from deploykit.lifecycle import identity, load_stack

    stack = load_stack(stack_dir.expanduser().absolute())
    check_request_fits(stack, prompt_tokens, max_tokens)
    target = bench_target(stack, via)
    try:
        words = calibrate_words(target, prompt_tokens)
    except ConnectionError as exc:
        raise HealthError(
            f"{stack.spec.project} did not answer a test request through {via}: {exc}.",
            f"Check `deploykit status --dir {stack.dir}`.",
        ) from None
    results: list[BenchLevel] = []
    for concurrency in levels:
        workload = Workload(concurrency, requests or default_requests(concurrency), prompt_tokens, max_tokens)
        results.append(cast("BenchLevel", asdict(run_level(target, workload, words, on_result))))
    plan = stack.spec.plan
    return {
        **identity(stack),
        "flags": {"threads": plan.threads, "parallel": plan.parallel},
        "via": via,
        "url": target.base_url + target.path,
        "levels": results,
    }


def check_request_fits(stack: LoadedStack, prompt_tokens: int, max_tokens: int) -> None:
    """Refuse a load whose every request the server would refuse: prompt and answer beyond the context."""
    context = stack.spec.plan.context_length
    if prompt_tokens + max_tokens > context:
        raise UsageError(
            f"--prompt-tokens {prompt_tokens} + --max-tokens {max_tokens} is more than the {context} tokens of "
            f"context {stack.spec.project} serves per request.",
            f"Keep their sum within {context}, or render the stack with a longer --context.",
        )


def default_requests(concurrency: int) -> int:
    """Enough requests that every worker sends at least two (the first wave starts all at once)."""
    return max(8, 2 * concurrency)


@dataclass
class TuneReport:
    stack_dir: str
    workload: TuneWorkload
    cpus: int
    before: dict[str, int]
    winner: dict[str, int]
    rows: list[TuneRow]
    settings_file: str = ""
    confirmed: dict[str, float] | None = None
    healthy: bool = False
    notes: list[str] = field(default_factory=list)


def tune_stack(
    settings: Settings,
    stack_dir: Path,
    *,
    concurrency: int,
    workload_name: str | None,
    prompt_tokens: int,
    max_tokens: int,
    requests: int | None,
    threads: list[int] | None,
    parallel: list[int] | None,
    time_limit: float,
    on_candidate: Callable[[str], None],
    on_result: Callable[[RequestResult], None],
) -> TuneReport:
    """Restart the inference service with each candidate setting, measure it, keep the best.

    The winner goes into the stack's deploykit.toml and the stack is re-rendered and restarted with it; an
    interrupted sweep puts the stack back as it was. Only the inference service restarts; secrets stay.
    """
    from deploykit import engine, lifecycle, tune
    from deploykit.bench import Workload, calibrate_words, run_level, warm_up
    from deploykit.errors import HealthError
    from deploykit.settings import write_stack_settings

    docker_host = _docker_host(settings)
    stack = lifecycle.load_stack(stack_dir.expanduser().absolute())
    check_request_fits(stack, prompt_tokens, max_tokens)
    plan = stack.spec.plan
    original = {name: stackdir.read_stack_file(stack.dir, name) for name in ("compose.yaml", "plan.json")}
    current = tune.Candidate(plan.threads, plan.parallel)
    cpus = engine.engine_cpus(docker_host)
    grid = tune.candidates(current, cpus, concurrency, threads, parallel)
    load = Workload(concurrency, requests or tune.default_requests(concurrency), prompt_tokens, max_tokens)
    report = TuneReport(
        str(stack.dir),
        tune.describe_workload(concurrency, prompt_tokens, max_tokens, workload_name),
        cpus,
        current.knobs(),
        current.knobs(),
        [],
    )
    compose = stack.engine_stack(docker_host)
    target = bench_target(stack, INFERENCE)
    words: int | None = None

    def apply(candidate: tune.Candidate) -> float:
        _, files = replan_files(stack, **candidate.knobs())
        stackdir.write_stack(stack.dir, {k: files[k] for k in ("compose.yaml", "plan.json")})
        compose.up(INFERENCE)
        return lifecycle.wait_inference_ready(lifecycle.load_stack(stack.dir), docker_host)

    def measure(candidate: tune.Candidate) -> TuneRow:
        nonlocal words
        row: TuneRow = {"threads": candidate.threads, "parallel": candidate.parallel, "current": candidate == current}
        try:
            row["ready_s"] = round(apply(candidate), 1)
            if words is None:
                words = calibrate_words(target, prompt_tokens)
            warm_up(target, load, words, time_limit)
            level = run_level(target, load, words, on_result, time_limit)
            row["metrics"] = level.metrics
            row["errors"] = level.errors
        except (PlanError, HealthError, ConnectionError) as exc:
            row["metrics"] = None
            row["errors"] = [getattr(exc, "message", str(exc))]
        return row

    try:
        for candidate in grid:
            on_candidate(candidate.label())
            report.rows.append(measure(candidate))
        first = [tune.mean_score([r.get("metrics")]) for r in report.rows]
        for i in tune.leaders(first):
            row = report.rows[i]
            again = tune.Candidate(row["threads"], row["parallel"])
            on_candidate(f"{again.label()} (close to the best: measured again)")
            row["repeat"] = measure(again).get("metrics")
    except BaseException:
        # Interrupted or broken: the stack goes back to what it ran before, nothing is written; the
        # error the user sees is the one that stopped the sweep, not one from putting things back.
        stackdir.write_stack(stack.dir, original)
        with contextlib.suppress(DeployKitError):
            compose.up(INFERENCE)
        raise
    for row in report.rows:
        row["score"] = tune.mean_score([row.get("metrics"), *([row.get("repeat")] if "repeat" in row else [])])
    best = tune.pick([(tune.Candidate(r["threads"], r["parallel"]), r["score"]) for r in report.rows])
    winner = best[0] if best else current
    top = best[1] if best else 0.0
    for row in report.rows:
        row["of_best"] = row["score"] / top if top else 0.0
    report.winner = winner.knobs()
    if best is None:
        report.notes.append("no candidate completed its requests; the stack keeps its settings.")
    else:
        report.settings_file = str(write_stack_settings(stack.dir, winner.knobs()))
    on_candidate(f"{winner.label()} (winner, confirming)")
    confirm = measure(winner)
    report.confirmed = confirm["metrics"]
    report.healthy = lifecycle.status(lifecycle.load_stack(stack.dir), docker_host)["healthy"]
    return report


def bench_report(
    stacks: list[BenchStack], prompt_tokens: int, max_tokens: int, command: str, chart: Path | None = None
) -> BenchReport:
    """The whole `bench` result: when, where, how, and each stack's levels; ``chart`` also writes an HTML chart."""
    import os
    import platform
    from datetime import UTC, datetime

    report: BenchReport = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.node()}: {os.cpu_count()} CPUs, {platform.machine()}, {platform.system()}",
        "command": command,
        "workload": {"prompt_tokens": prompt_tokens, "max_tokens": max_tokens, "stream": True, "ignore_eos": True},
        "stacks": stacks,
    }
    if chart:
        from deploykit.bench import chart_html

        series = {f"{s['project']} ({s['flags']['threads']}t/{s['flags']['parallel']}np)": s["levels"] for s in stacks}
        chart.write_text(chart_html(series, "deploykit bench"), encoding="utf-8")
        report["chart"] = str(chart.absolute())
    return report


# ---------------------------------------------------------------- day 2: one running stack


def load_stack(stack_dir: Path) -> LoadedStack:
    """The stack rendered into ``stack_dir`` (relative to the working directory)."""
    from deploykit import lifecycle

    return lifecycle.load_stack(stack_dir.absolute())


def stack_status(settings: Settings, stack: LoadedStack) -> StackStatus:
    """Each service's state, health and model, and whether the whole stack is healthy."""
    from deploykit import lifecycle

    return lifecycle.status(stack, _docker_host(settings))


def stack_logs(settings: Settings, stack: LoadedStack, service: str | None, tail: int, follow: bool) -> int:
    """Show the logs on this terminal (compose's own output); the exit code of `docker compose logs`."""
    from deploykit.engine import client, compose_version, require_compose_v2
    from deploykit.proc import run_attached

    docker_host = _docker_host(settings)
    engine_stack = stack.engine_stack(docker_host)
    client(docker_host)  # an unreachable engine is said as such (exit 6), not as compose's raw text
    require_compose_v2(compose_version())
    return run_attached(engine_stack.logs_command(service, tail, follow), env=engine_stack.env())


def restart_stack(settings: Settings, stack: LoadedStack, service: str | None) -> None:
    from deploykit import lifecycle

    lifecycle.restart(stack, _docker_host(settings), service)


def stop_stack(settings: Settings, stack: LoadedStack, volumes: bool) -> None:
    from deploykit import lifecycle

    lifecycle.down(stack, _docker_host(settings), volumes)


@dataclass(frozen=True)
class ChatAnswer:
    response: dict[str, object]  # the server's JSON answer as it came (printed by `chat --json`)

    def text(self) -> str:
        """The answer without its reasoning; an answer with no text is a failed chat."""
        from deploykit.errors import HealthError
        from deploykit.health import split_answer

        _, text = split_answer(self.response)
        if not text:
            raise HealthError(
                "the model answered with no text.", "Try a larger --max-tokens; reasoning models think first."
            )
        return text


def chat(stack: LoadedStack, message: str, direct: bool, max_tokens: int) -> ChatAnswer:
    """One message through Open WebUI as the stack's admin, or straight to the inference server."""
    from deploykit import lifecycle

    return ChatAnswer(lifecycle.chat(stack, message, direct, max_tokens))


@dataclass(frozen=True)
class SmokeReport:
    checks: list[SmokeCheck]

    @property
    def ok(self) -> bool:
        return all(c["status"] != "fail" for c in self.checks)


def smoke(stack: LoadedStack) -> SmokeReport:
    """Structured output, reasoning wiring and tool calling, for the served model."""
    from deploykit import lifecycle

    return SmokeReport(lifecycle.smoke(stack, stackdir.read_stack_file(stack.dir, stack.stack_file.name)))


def doctor(settings: Settings, stack_dir: Path | None) -> list[Check]:
    """What the host offers stacks (and the stack in ``stack_dir``, if given), each with its fix."""
    from deploykit.doctor import run_checks

    stack = load_stack(stack_dir) if stack_dir else None
    ports = [(settings.webui_bind, settings.webui_port), ("127.0.0.1", settings.inference_port)]
    return run_checks(detect(settings), _docker_host(settings), settings.model_cache, stack, ports)


def models() -> tuple[ModelSpec, ...]:
    """The model catalog."""
    return builtin_models()


def export_templates(directory: Path, force: bool) -> list[str]:
    """Write the built-in templates into ``directory`` for a site to change; the names written."""
    from deploykit.customise import export_templates as export

    return export(directory, force)


def rebase_templates(directory: Path) -> list[str]:
    """Record the site's copies in ``directory`` as current with this deploykit's built-ins."""
    from deploykit.customise import rebase_templates as rebase

    return rebase(directory)


# ---------------------------------------------------------------- backups and upgrades


def _compose_stack(stack_dir: Path) -> LoadedStack:
    """The stack at ``stack_dir``; backups, restores and upgrades handle Compose stacks only."""
    from deploykit.lifecycle import load_stack

    stack = load_stack(stack_dir.expanduser().absolute())
    if stack.spec.target != "compose":
        raise UsageError(
            f"{stack.dir} is a {stack.spec.target} stack; backup, restore and upgrade handle Compose stacks only.",
            "Back up the Open WebUI volume with your orchestrator's tools.",
        )
    return stack


def backup_stack(settings: Settings, stack_dir: Path, out_dir: Path | None) -> BackupReport:
    """Back up the stack's Open WebUI data into ``out_dir`` (default: the stack's backups/)."""
    from deploykit import backup

    return backup.backup(_compose_stack(stack_dir), _docker_host(settings), out_dir)


def restore_stack(settings: Settings, stack_dir: Path, archive: Path, force: bool) -> RestoreReport:
    """Put a backup's Open WebUI data back; Open WebUI is stopped only for the swap and waited for after."""
    from deploykit import backup, lifecycle

    stack = _compose_stack(stack_dir)
    docker_host = _docker_host(settings)

    def wait() -> float:
        return lifecycle.wait_webui(stack, docker_host)

    return backup.restore(stack, docker_host, archive, force, wait_healthy=wait)


@dataclass(frozen=True)
class UpgradeReport:
    images: dict[str, tuple[str, str]]  # service -> (old, new)
    backup: str | None  # the archive taken first (None: the stack had no data yet)
    up: UpReport  # the restart with the new images


def upgrade_images(settings: Settings, stack_dir: Path, overrides: dict[str, str]) -> dict[str, tuple[str, str]]:
    """Old and new image per service: today's pinned defaults for the stack's backend, then --image."""
    from deploykit.lifecycle import load_stack

    stack = load_stack(stack_dir.expanduser().absolute())
    new = choose_images(settings, stack.spec.plan, overrides)
    return {service: (stack.spec.images.get(service, ""), new[service]) for service in new}


def upgrade_stack(
    settings: Settings, stack_dir: Path, overrides: dict[str, str], timeout: float | None, reporter: Reporter
) -> UpgradeReport:
    """Back up the data, re-render with the new pinned images (the plan is kept), and bring the stack up."""
    from deploykit import backup, engine, lifecycle

    stack_dir = stack_dir.expanduser().absolute()
    stack = _compose_stack(stack_dir)
    docker_host = _docker_host(settings)
    changes = upgrade_images(settings, stack_dir, overrides)
    for service, (_, new) in changes.items():
        if not engine.image_present(docker_host, new):
            reporter.note(f"Pulling {new} ({service}) …")
            engine.pull_image(docker_host, new)  # before anything changes: a failed pull leaves all as is
    archive: str | None = None
    if stack.engine_stack(docker_host).volume_name(backup.DATA_VOLUME) is not None:
        taken = backup.backup(stack, docker_host)
        archive = taken.path
        reporter.note(f"Backed up Open WebUI's data to {archive} (kept).")
    else:
        reporter.note("No Open WebUI data yet: nothing to back up.")
    existing = stackdir.open_for_render(stack_dir)
    spec = stack.spec.model_copy(update={"images": {s: new for s, (_, new) in changes.items()}})
    prepared = _prepare(settings, existing, spec, stack.secrets, stack.inputs, False, [])
    for note in prepared.notes:
        reporter.note(note)
    report = lifecycle.up(prepared.loaded(), docker_host, timeout, reporter, prepared.files, write_files=prepared.write)
    return UpgradeReport(changes, archive, report)
