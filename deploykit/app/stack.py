"""One stack: plan it, render it (all or nothing), bring it up; the profiles table and the reference stacks.

Functions here take settings and paths, call the pure stages, and do the I/O between them. They return plain
data for the CLI to print; they never print."""

from __future__ import annotations

import secrets as secrets_mod
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Required, TypedDict, cast

from deploykit import backends
from deploykit.app.resolve import (
    ResolvedModel,
    all_profiles,
    engine_for,
    engine_host,
    make_plan,
    plan_several,
    resolve_host,
    resolve_model,
    resolve_models,
)
from deploykit.app.resolve import several_models as several_models  # the CLI asks before it plans
from deploykit.catalog import builtin_models, builtin_profiles, find_model, find_profile
from deploykit.config.settings import Settings
from deploykit.planning.render import StackSpec, Target, project_name, render_files
from deploykit.seams import stackdir
from deploykit.values.errors import PlanError, StackDirError, UsageError
from deploykit.values.host import HostProfile
from deploykit.values.plan import DeploymentPlan, PlanInputs, RunHost
from deploykit.values.services import INFERENCE, TLS_PROXY, WEBUI
from deploykit.values.stackfiles import (
    ADMIN_EMAIL,
    ADMIN_PASSWORD,
    ENV_FILE,
    INFERENCE_API_KEY,
    PLAN_FILE,
    STACK_ID,
    TARGET_FILES,
    WEBUI_SECRET_KEY,
)
from deploykit.values.stackplan import ModelChoice, StackPlan
from deploykit.values.tls import Material, TlsSpec, parse_choice, recorded

if TYPE_CHECKING:
    # Running stacks needs httpx and the docker SDK: plan and render should not pay for them.
    from deploykit.running.stack import LoadedStack
    from deploykit.running.stages import Reporter, UpReport


def model_host_path(settings: Settings, plan: DeploymentPlan, model: ResolvedModel) -> Path:
    """Where the weights live on the Docker host: the user's file, or their place in the model cache."""
    if model.weights is not None:
        return Path(model.weights.path)
    return backends.named(plan.backend).cache_path(model.spec, settings.model_cache)


def choose_images(settings: Settings, plan: DeploymentPlan, overrides: dict[str, str]) -> dict[str, str]:
    images = settings.images
    inference = images.ref(backends.named(plan.backend).image_key(plan.device))
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


def several_spec(
    settings: Settings,
    host: HostProfile,
    project: str,
    image_overrides: dict[str, str],
    target: Target,
    model_volume: str | None,
    runs_on: RunHost | None,
) -> tuple[StackSpec, PlanInputs]:
    """A stack of several models: planned together, each model's weights and its server's image."""
    if model_volume is not None:
        raise UsageError(
            "a fleet host cannot serve several models yet: its weights go into one volume.",
            "Give the fleet one --model (or one [[models]] entry per host's stack).",
        )
    if INFERENCE in image_overrides:
        raise UsageError(
            "--image inference names one server, and a stack of several models has one per backend.",
            "Set each backend's image in [images] (or DEPLOYKIT_IMAGES__<KEY>, e.g. DEPLOYKIT_IMAGES__VLLM_CPU).",
        )
    default, models = resolve_models(settings)
    stack = plan_several(host, models, settings, runs_on)
    clash = sorted({m.published_port for m in stack.models} & {settings.webui_port})
    if clash:
        raise UsageError(
            f"the stack's servers are published on ports {stack.models[0].published_port}-"
            f"{max(m.published_port for m in stack.models)}, which holds webui_port {clash[0]}.",
            "Choose an inference_port whose next ports are free: one port per server of the stack.",
        )
    paths: dict[str, str] = {}
    images = {WEBUI: settings.images.open_webui}
    for entry, served in zip(models, stack.models, strict=True):
        backend = backends.named(served.plan.backend)
        weights = Path(entry.weights.path) if entry.weights else backend.cache_path(entry.model, settings.model_cache)
        paths[served.model_id] = str(weights)
        images[served.service] = settings.images.ref(backend.image_key(served.plan.device))
    spec = StackSpec(
        project=project,
        plan=stack.plan,
        model_host_path=paths[stack.default_model],
        images=images | image_overrides,
        webui_port=settings.webui_port,
        webui_bind=settings.webui_bind,
        inference_port=settings.inference_port,
        target=target,
        models=stack.models,
        packing=stack.packing,
        model_paths=paths,
        model_cache=str(settings.model_cache),
    )
    inputs = PlanInputs(
        host=host, model=default.spec, settings=settings.plan_settings(), weights=default.weights, models=models
    )
    return spec, (inputs if runs_on is None else inputs.model_copy(update={"runs_on": runs_on}))


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
        from deploykit.running.stack import LoadedStack

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
    tls_names: tuple[str, ...] | None = None,
) -> PreparedStack:
    """Plan and render for a host already described; ``model_volume`` mounts the weights from that volume.

    ``runs_on`` (given by `up`) fits the serving flags to the machine that runs the stack; ``tls_names``: what
    its HTTPS certificate is for (None: this machine's names).
    """
    if existing is None:
        existing = stackdir.open_for_render(stack_dir)
    if several_models(settings):
        spec, inputs = several_spec(
            settings, host, project_name(stack_dir), image_overrides, target, model_volume, runs_on
        )
    else:
        plan = make_plan(host, model, settings, runs_on)
        spec = stack_spec(settings, project_name(stack_dir), plan, model, image_overrides, target, model_volume)
        inputs = plan_inputs(settings, host, model, runs_on)
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
    return prepare_spec(settings, existing, spec, stack_secrets, inputs, force, notes, tls_names)


def prepare_spec(
    settings: Settings,
    existing: stackdir.ExistingStack,
    spec: StackSpec,
    stack_secrets: dict[str, str],
    inputs: PlanInputs,
    force: bool,
    notes: list[str],
    tls_names: tuple[str, ...] | None = None,
) -> PreparedStack:
    """Render a stack with the site's customisation: [webui_env], its templates, and a note of its override;
    with HTTPS as the settings choose (``tls_names``: what the certificate is for; None: this machine)."""
    from deploykit.running.customise import customisation
    from deploykit.values import webui_env

    stack_dir = existing.dir
    env_notes = webui_env.check(settings.webui_env)
    # Settings whose names say they are secrets go into .env; compose.yaml and plan.json name them only.
    plain, hidden = webui_env.split_secrets(settings.webui_env)
    spec = spec.model_copy(update={"webui_env": dict(sorted(plain.items())), "webui_secrets": tuple(sorted(hidden))})
    spec, certificate = with_tls(
        spec, settings.tls, stack_dir, tls_names, settings.images.caddy, recorded(existing.plan)
    )
    stack_secrets = {**stack_secrets, **hidden}
    customised, template_notes = customisation(settings.templates_dir, stack_dir, existing.plan)
    files = render_files(spec, stack_secrets, inputs, settings.templates_dir, customised)
    if certificate is not None:
        files |= certificate.files
        notes = [*notes, *certificate.notes]
    files[ENV_FILE] = stackdir.env_with(stackdir.merged_env(existing.env, stack_secrets, files[ENV_FILE]), hidden)
    main = TARGET_FILES[spec.target]
    backup = main if stackdir.backup_needed(existing, main, files[main], force) else None
    all_notes = [*notes, *env_notes, *template_notes]
    return PreparedStack(stack_dir, spec, files, stack_secrets, inputs, backup, all_notes)


def with_tls(
    spec: StackSpec,
    setting: str | None,
    stack_dir: Path,
    names: Iterable[str] | None,
    image: str,
    before: TlsSpec | None = None,
) -> tuple[StackSpec, Material | None]:
    """``spec`` with HTTPS as ``setting`` chooses, and its certificate. ``setting`` None keeps what the stack had
    (``spec.tls``, else ``before``: what its plan.json records).

    ``names``: what the certificate is for (None: this machine's names for the stack's bind address);
    ``image``: the proxy's image unless ``spec.images`` names one (``--image tls-proxy=…``).
    """
    from deploykit.seams import certificates

    kept = spec.tls or before
    choice = parse_choice(setting) if setting is not None else (kept.choice() if kept else None)
    images = {k: v for k, v in spec.images.items() if k != TLS_PROXY}
    if choice is None:
        return spec.model_copy(update={"tls": None, "images": images}), None
    if spec.target != "compose":
        raise UsageError(
            f"HTTPS (--tls) is made for Compose stacks; this one is rendered for {spec.target}.",
            "Render it with --target compose, or with --tls off and the orchestrator's own ingress in front.",
        )
    wanted = names if names is not None else certificates.local_names(spec.webui_bind)
    found = certificates.material(choice, stack_dir, wanted)
    images[TLS_PROXY] = spec.images.get(TLS_PROXY, image)
    return spec.model_copy(update={"tls": found.spec, "images": images}), found


def reprepare_stack(settings: Settings, stack_dir: Path, force: bool = False) -> PreparedStack:
    """An existing stack rendered again from its plan.json, with today's [webui_env] and templates."""
    from deploykit.running.stack import load_stack

    stack = load_stack(stack_dir)
    existing = stackdir.open_for_render(stack_dir)
    return prepare_spec(settings, existing, stack.spec, stack.secrets, stack.inputs, force, [])


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
    models_asked: bool = False  # --model given more than once (the models themselves are in the settings)

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
    from deploykit.running import lifecycle

    if request.target == "kubernetes":
        raise UsageError(
            "deploykit does not run Kubernetes stacks itself.",
            "Render the manifests with `deploykit render --target kubernetes` and apply them with kubectl.",
        )
    r = request
    stack_dir = r.stack_dir.expanduser().absolute()
    asked = r.models_asked or any(x is not None for x in (r.profile, r.host_file, r.model_id, r.model_path, r.target))
    docker_host = engine_for(settings)
    runs_on = engine_host(docker_host)
    if asked or r.image_overrides or not (stack_dir / PLAN_FILE).is_file():
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


def plan_stack_only(settings: Settings, *, profile: str, host_file: Path | None) -> StackPlan:
    """A stack of several models planned for a profile (`deploykit plan --model A --model B`)."""
    host = resolve_host(settings, profile, host_file)
    _, models = resolve_models(settings)
    return plan_several(host, models, settings)


def stack_plan_record(stack: StackPlan) -> dict[str, object]:
    """What `plan --json` prints for several models, in plan.json's shape: "plan" (the default's), "models",
    "packing"."""
    return {
        "plan": stack.plan.model_dump(mode="json"),
        "models": [m.model_dump(mode="json") for m in stack.models],
        "packing": stack.packing_record(),
    }


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
        ".env.example": files[ENV_FILE],
        PLAN_FILE: files[PLAN_FILE],
        **{
            TARGET_FILES[target]: render_files(spec.model_copy(update={"target": target}), REFERENCE_SECRETS, inputs)[
                TARGET_FILES[target]
            ]
            for target in ("swarm", "kubernetes")
        },
    }


def stack_choices(stack: LoadedStack) -> list[ModelChoice]:
    """The models a rendered stack serves, as [[models]] entries (its default first): what `models add|remove`
    starts from. A stack of one model gives one entry."""
    inputs = stack.inputs
    if not inputs.models:
        weights = inputs.weights.path if inputs.weights else None
        return [ModelChoice(id=inputs.model.id, file=weights, backend=inputs.settings.backend)]
    return [
        ModelChoice(
            id=entry.model.id,
            file=entry.weights.path if entry.weights else None,
            backend=entry.backend,
            quantization=entry.quantization,
            context=entry.context,
            keep_loaded=entry.keep_loaded,
            threads=entry.threads,
            parallel=entry.parallel,
        )
        for entry in inputs.models
    ]


def changed_choices(stack: LoadedStack, add: Iterable[ModelChoice], remove: Iterable[str]) -> list[ModelChoice]:
    """The stack's models with ``remove`` (ids it serves) taken out and ``add`` put at the end; a UsageError for
    a model it does not serve, one it serves already, or no model left."""
    choices = stack_choices(stack)
    served = [m.model_id for m in stack.spec.stack_plan.models] if stack.spec.stack_plan else [stack.spec.plan.model_id]
    for model_id in remove:
        if model_id not in served:
            raise UsageError(
                f"the stack does not serve a model '{model_id}'.",
                f"It serves {', '.join(served)}; `deploykit models --dir {stack.dir}` lists them.",
            )
        index = served.index(model_id)
        del served[index], choices[index]
    for choice in add:
        if choice in choices or (choice.id is not None and choice.id in served):
            raise UsageError(
                f"the stack serves {choice.id or choice.file} already.", "`deploykit models --dir …` lists its models."
            )
        choices.append(choice)
    if not choices:
        raise UsageError(
            "a stack keeps at least one model.", "Add another first, or take the stack down (`deploykit down`)."
        )
    return choices


def reprepare_with_models(
    settings: Settings, stack: LoadedStack, *, add: Iterable[ModelChoice], remove: Iterable[str]
) -> tuple[PreparedStack, list[ModelChoice]]:
    """The stack planned and rendered again (in memory) for its models changed as asked, on the host it was
    planned for, with its secrets; and the new list, for its deploykit.toml (so a later `render` or `up` keeps
    it). Nothing is written here."""
    choices = changed_choices(stack, add, remove)
    kept_images = {k: v for k, v in stack.spec.images.items() if k in (WEBUI, TLS_PROXY)}
    if len(choices) == 1:
        only = choices[0]
        mine = settings.model_copy(update={"models": (), "backend": only.backend or settings.backend})
        model = resolve_model(mine, only.id, Path(only.file) if only.file else None)
    else:
        mine = settings.model_copy(update={"models": tuple(choices)})
        model = resolve_models(mine)[0]
    inputs = stack.inputs
    prepared = prepare_for_host(
        mine, inputs.host, model, kept_images, stack.dir, target=stack.spec.target, runs_on=inputs.runs_on
    )
    return prepared, choices
