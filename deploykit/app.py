"""The library API the CLI calls: each function chains the stages detect → plan → render → run → health.

Functions here take settings and paths, call the pure stages, and do the I/O between them. They
return plain data for the CLI to print; they never print.
"""

from __future__ import annotations

import json
import secrets as secrets_mod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from deploykit.catalog import (
    ModelSpec,
    builtin_models,
    builtin_profiles,
    find_model,
    find_profile,
    load_profiles_file,
)
from deploykit.errors import ConfigError, NotFoundError, PlanError, UsageError
from deploykit.host import HostProfile
from deploykit.modelfile import LocalWeights, read_model_path
from deploykit.plan import DeploymentPlan, NoFit, gib, plan_deployment, suggest_alternative
from deploykit.render import (
    TARGET_FILES,
    StackSpec,
    Target,
    check_stack_dir,
    project_name,
    read_secrets,
    render_files,
    write_stack,
)
from deploykit.settings import Settings, config_dir

if TYPE_CHECKING:
    # Running stacks needs httpx and the docker SDK: plan and render should not pay for them.
    from deploykit.lifecycle import Reporter, UpReport


def all_profiles(settings: Settings) -> tuple[HostProfile, ...]:
    """Built-in profiles, then the user's (config dir, or --profiles-file); a user profile wins a name clash."""
    user: tuple[HostProfile, ...] = ()
    path = settings.profiles_file or config_dir() / "profiles.toml"
    if settings.profiles_file is not None and not path.is_file():
        raise NotFoundError(f"profiles file {path} does not exist.", "Check the --profiles-file path.")
    if path.is_file():
        user = load_profiles_file(path)
    names = {p.name for p in user}
    return (*user, *(p for p in builtin_profiles() if p.name not in names))


def detect(settings: Settings) -> HostProfile:
    from deploykit.detect import detect_host
    from deploykit.engine import probe_engine

    return detect_host(model_cache=settings.model_cache, docker=probe_engine(settings.docker_host))


def load_host_file(path: Path) -> HostProfile:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UsageError(f"cannot read host file {path}: {exc.strerror}.", "Check the --host path.") from None
    except json.JSONDecodeError as exc:
        raise UsageError(
            f"{path} is not JSON ({exc.msg} at line {exc.lineno}).",
            "Save one with `deploykit detect --json > host.json` on the target machine.",
        ) from None
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
    chosen = find_profile(profile, all_profiles(settings))
    if not chosen.detect:
        return chosen
    detected = detect(settings)
    return detected.model_copy(
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
    if model_path is not None:
        path = model_path.expanduser().resolve()
        if not path.exists():
            raise UsageError(
                f"model file {model_path} does not exist.",
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


def make_plan(host: HostProfile, model: ResolvedModel, settings: Settings) -> DeploymentPlan:
    plan_settings = settings.plan_settings()
    try:
        return plan_deployment(host, model.spec, plan_settings, model.weights)
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
            message, f"Try {alternative}" if alternative else "Use a smaller model or a bigger machine."
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
    return {"inference": inference, "open-webui": images.open_webui} | overrides


def new_secrets(admin_email: str) -> dict[str, str]:
    return {
        "INFERENCE_API_KEY": "sk-" + secrets_mod.token_urlsafe(32),
        "WEBUI_SECRET_KEY": secrets_mod.token_urlsafe(48),
        "DEPLOYKIT_ADMIN_EMAIL": admin_email,
        "DEPLOYKIT_ADMIN_PASSWORD": secrets_mod.token_urlsafe(18),
        "DEPLOYKIT_STACK_ID": secrets_mod.token_hex(8),
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
    model: dict[str, Any]
    notes: list[str]  # warnings about the site's customisation, for the user to read


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
) -> PreparedStack:
    stack_dir = stack_dir.expanduser().absolute()
    check_stack_dir(stack_dir)  # before anything slow, and before anything is written
    host = resolve_host(settings, profile, host_file)
    model = resolve_model(settings, model_id, model_path)
    plan = make_plan(host, model, settings)
    spec = StackSpec(
        project=project_name(stack_dir),
        plan=plan,
        model_host_path=str(model_host_path(settings, plan, model)),
        images=choose_images(settings, plan, image_overrides),
        webui_port=settings.webui_port,
        webui_bind=settings.webui_bind,
        inference_port=settings.inference_port,
        target=target,
    )
    kept = read_secrets(stack_dir)
    fresh = new_secrets(settings.admin_email)
    stack_secrets = {key: kept.get(key) or fresh[key] for key in fresh}
    model_data = model.spec.model_dump(mode="json")
    inputs: dict[str, Any] = {
        "host": host.model_dump(mode="json"),
        "model": model_data,
        "settings": settings.plan_settings().model_dump(mode="json"),
    }
    return _prepare(settings, stack_dir, spec, stack_secrets, inputs)


def _prepare(
    settings: Settings, stack_dir: Path, spec: StackSpec, stack_secrets: dict[str, str], inputs: dict[str, Any]
) -> PreparedStack:
    """Render a stack with the site's customisation: [webui_env], its templates, and a note of its override."""
    from deploykit import webui_env
    from deploykit.customise import customisation

    notes = webui_env.check(settings.webui_env)
    spec = spec.model_copy(update={"webui_env": dict(sorted(settings.webui_env.items()))})
    customised, template_notes = customisation(settings.templates_dir, stack_dir)
    files = render_files(spec, stack_secrets, inputs, settings.templates_dir, customised)
    return PreparedStack(stack_dir, spec, files, stack_secrets, inputs["model"], [*notes, *template_notes])


def reprepare_stack(settings: Settings, stack_dir: Path) -> PreparedStack:
    """An existing stack rendered again from its plan.json, with today's [webui_env] and templates."""
    from deploykit.lifecycle import load_stack

    stack = load_stack(stack_dir)
    data = json.loads((stack_dir / "plan.json").read_text(encoding="utf-8"))
    return _prepare(settings, stack_dir, stack.spec, stack.secrets, data["inputs"])


def render_stack(settings: Settings, **kwargs: Any) -> RenderResult:
    prepared = prepare_stack(settings, **kwargs)
    changed = write_stack(prepared.stack_dir, prepared.files)
    return RenderResult(prepared.stack_dir, prepared.spec, changed, prepared.notes)


def up_stack(
    settings: Settings,
    *,
    profile: str | None,
    host_file: Path | None,
    model_id: str | None,
    model_path: Path | None,
    image_overrides: dict[str, str],
    stack_dir: Path,
    timeout: float | None,
    reporter: Reporter,
    target: Target | None = None,
) -> UpReport:
    """Render (or reuse) the stack, preflight, fetch the model, start it and check it stage by stage."""
    from deploykit import lifecycle
    from deploykit.lifecycle import LoadedStack

    if target == "kubernetes":
        raise UsageError(
            "deploykit does not run Kubernetes stacks itself.",
            "Render the manifests with `deploykit render --target kubernetes` and apply them with kubectl.",
        )
    stack_dir = stack_dir.expanduser().absolute()
    asked = any(x is not None for x in (profile, host_file, model_id, model_path, target)) or bool(image_overrides)
    if asked or not (stack_dir / "plan.json").is_file():
        prepared = prepare_stack(
            settings,
            profile=profile or "auto",
            host_file=host_file,
            model_id=model_id,
            model_path=model_path,
            image_overrides=image_overrides,
            stack_dir=stack_dir,
            target=target or _rendered_target(stack_dir),
        )
    else:
        # Reuse the stack's plan, but with today's [webui_env] and templates: a changed setting takes effect.
        prepared = reprepare_stack(settings, stack_dir)
    for note in prepared.notes:
        reporter.note(note)
    stack = LoadedStack(prepared.stack_dir, prepared.spec, prepared.secrets)
    return lifecycle.up(stack, settings.docker_host, timeout, reporter, prepared.model, prepared.files)


def _rendered_target(stack_dir: Path) -> Target:
    """The target a stack directory was rendered for (compose when new or unreadable)."""
    try:
        data = json.loads((stack_dir / "plan.json").read_text(encoding="utf-8"))
        target = data["stack"].get("target", "compose")
    except (OSError, ValueError, KeyError, AttributeError):
        return "compose"
    return target if target in TARGET_FILES else "compose"


def plan_only(
    settings: Settings, *, profile: str, host_file: Path | None, model_id: str | None, model_path: Path | None
) -> tuple[HostProfile, ResolvedModel, DeploymentPlan]:
    host = resolve_host(settings, profile, host_file)
    model = resolve_model(settings, model_id, model_path)
    return host, model, make_plan(host, model, settings)


def profile_rows(settings: Settings) -> list[dict[str, Any]]:
    """Each profile with the backend it would get for the default model (``deploykit profiles``)."""
    model = ResolvedModel(find_model(settings.model, builtin_models()), None)
    rows = []
    for host in all_profiles(settings):
        try:
            plan = make_plan(host, model, settings)
            outcome: dict[str, Any] = {
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
    "INFERENCE_API_KEY": "change-me-inference-key",
    "WEBUI_SECRET_KEY": "change-me-webui-secret",
    "DEPLOYKIT_ADMIN_EMAIL": "admin@deploykit.local",
    "DEPLOYKIT_ADMIN_PASSWORD": "change-me-admin-password",
    "DEPLOYKIT_STACK_ID": "change-me-stack-id",
}


def reference_stack(profile: str) -> dict[str, str]:
    """The files of compose/<profile>/ for the default model: compose.yaml, .env.example and plan.json,
    and the same stack for the other targets: swarm.yaml and kubernetes.yaml."""
    # Defaults only: no config file or DEPLOYKIT_* variable of this machine leaks into the reference.
    settings = Settings.model_construct(model_cache=REFERENCE_MODEL_CACHE)
    host = find_profile(profile, builtin_profiles())
    model = ResolvedModel(find_model(settings.model, builtin_models()), None)
    plan = make_plan(host, model, settings)
    spec = StackSpec(
        project=f"deploykit-{profile}",
        plan=plan,
        model_host_path=str(model_host_path(settings, plan, model)),
        images=choose_images(settings, plan, {}),
        webui_port=settings.webui_port,
        webui_bind=settings.webui_bind,
        inference_port=settings.inference_port,
    )
    inputs = {
        "host": host.model_dump(mode="json"),
        "model": model.spec.model_dump(mode="json"),
        "settings": settings.plan_settings().model_dump(mode="json"),
    }
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


# ---------------------------------------------------------------- backups and upgrades


def _compose_stack(stack_dir: Path) -> Any:
    """The stack at ``stack_dir``; backups, restores and upgrades handle Compose stacks only."""
    from deploykit.lifecycle import load_stack

    stack = load_stack(stack_dir.expanduser().absolute())
    if stack.spec.target != "compose":
        raise UsageError(
            f"{stack.dir} is a {stack.spec.target} stack; backup, restore and upgrade handle Compose stacks only.",
            "Back up the Open WebUI volume with your orchestrator's tools.",
        )
    return stack


def backup_stack(settings: Settings, stack_dir: Path, out_dir: Path | None) -> Any:
    """Back up the stack's Open WebUI data into ``out_dir`` (default: the stack's backups/)."""
    from deploykit import backup

    return backup.backup(_compose_stack(stack_dir), settings.docker_host, out_dir)


def restore_stack(settings: Settings, stack_dir: Path, archive: Path, force: bool) -> Any:
    """Put a backup's Open WebUI data back; Open WebUI is stopped only for the swap and waited for after."""
    from deploykit import backup, lifecycle

    stack = _compose_stack(stack_dir)

    def wait() -> float:
        return lifecycle.wait_webui(stack, settings.docker_host)

    return backup.restore(stack, settings.docker_host, archive, force, wait_healthy=wait)


@dataclass(frozen=True)
class UpgradeReport:
    images: dict[str, tuple[str, str]]  # service -> (old, new)
    backup: str | None  # the archive taken first (None: the stack had no data yet)
    up: Any  # the UpReport of the restart with the new images


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
    changes = upgrade_images(settings, stack_dir, overrides)
    for service, (_, new) in changes.items():
        if not engine.image_present(settings.docker_host, new):
            reporter.note(f"Pulling {new} ({service}) …")
            engine.pull_image(settings.docker_host, new)  # before anything changes: a failed pull leaves all as is
    archive: str | None = None
    if stack.engine_stack(settings.docker_host).volume_name(backup.DATA_VOLUME) is not None:
        taken = backup.backup(stack, settings.docker_host)
        archive = taken.path
        reporter.note(f"Backed up Open WebUI's data to {archive} (kept).")
    else:
        reporter.note("No Open WebUI data yet: nothing to back up.")
    plan_data = json.loads((stack_dir / "plan.json").read_text(encoding="utf-8"))
    spec = stack.spec.model_copy(update={"images": {s: new for s, (_, new) in changes.items()}})
    prepared = _prepare(settings, stack_dir, spec, stack.secrets, plan_data["inputs"])
    for note in prepared.notes:
        reporter.note(note)
    upgraded = lifecycle.LoadedStack(stack_dir, prepared.spec, stack.secrets)
    report = lifecycle.up(upgraded, settings.docker_host, timeout, reporter, prepared.model, prepared.files)
    return UpgradeReport(changes, archive, report)
