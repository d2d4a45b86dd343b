"""What a command is about, resolved from the settings: the host (a profile, a host file or detection), the model,
the engine, and the plan for them."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import ValidationError

from deploykit import backends
from deploykit.catalog import builtin_models, builtin_profiles, find_model, find_profile, load_profiles_file
from deploykit.config.settings import Settings
from deploykit.planning.planner import plan_deployment, suggest_alternative
from deploykit.seams.modelfile import read_model_path
from deploykit.values.errors import ConfigError, NotFoundError, PlanError, UsageError
from deploykit.values.host import HostProfile
from deploykit.values.model import MODEL_ID, ModelSpec
from deploykit.values.paths import config_dir
from deploykit.values.plan import DeploymentPlan, LocalWeights, ModelInput, NoFit, PlanSettings, RunHost
from deploykit.values.stackplan import ModelChoice, StackPlan
from deploykit.values.units import gib

if TYPE_CHECKING:
    # Running stacks needs httpx and the docker SDK: plan and render should not pay for them.
    from deploykit.seams.engine import EngineAddress


def all_profiles(settings: Settings) -> tuple[HostProfile, ...]:
    """Built-in profiles, then the user's (config dir, or --profiles-file); a user profile wins a name clash."""
    user: tuple[HostProfile, ...] = ()
    path = settings.profiles_file or config_dir() / "profiles.toml"
    if settings.profiles_file is not None and not path.exists():
        raise NotFoundError(f"profiles file {path} does not exist.", "Check the --profiles-file path.")
    if settings.profiles_file is not None and not path.is_file():
        raise ConfigError(f"profiles file {path} is not a regular file.", "Give the path of a TOML file.")
    if path.exists():  # a pipe or device there is named by the reader, never read
        from deploykit.seams.textfile import read_text

        text = read_text(path, "profiles file", "Check the --profiles-file path; it is TOML in UTF-8.", ConfigError)
        user = load_profiles_file(path, text, backends.named)
    names = {p.name for p in user}
    return (*user, *(p for p in builtin_profiles() if p.name not in names))


def engine_for(settings: Settings) -> EngineAddress:
    """The engine the settings name (--docker-host, the config file); none named: the environment's
    DOCKER_HOST, else the local socket. The one place a settings string becomes an engine address."""
    from deploykit.seams.engine import EngineAddress

    return EngineAddress(settings.docker_host)


def detect(settings: Settings) -> HostProfile:
    from deploykit.seams.detect import detect_host
    from deploykit.seams.engine import probe_engine

    return detect_host(model_cache=settings.model_cache, docker=probe_engine(engine_for(settings)))


def load_host_file(path: Path) -> HostProfile:
    from deploykit.seams.textfile import read_text
    from deploykit.values.documents import load_json

    text = read_text(path, "host file", "Check the --host path; save one with `deploykit detect --json`.")
    hint = "Save one with `deploykit detect --json > host.json` on the target machine."
    data = load_json(text, path, "host file", hint)
    try:
        host = HostProfile.model_validate(data)
        if host.preferred_backend is not None:
            backends.named(host.preferred_backend)
    except ValidationError as exc:
        fields = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"{path} is not a host profile: {fields}.", hint) from None
    except ValueError as exc:  # a backend no module of deploykit.backends is
        raise ConfigError(f"{path} is not a host profile: preferred_backend: {exc}.", hint) from None
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
    if model_id is None and model_path is None and len(settings.models) == 1:
        choice = settings.models[0]  # one [[models]] entry is the stack's one model
        model_id, model_path = choice.id, Path(choice.file) if choice.file else None
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
    from deploykit.seams.hub import fetch_config
    from deploykit.seams.modelfile import slug, spec_from_hf_config

    config, params = fetch_config(repo)
    spec = spec_from_hf_config(config, slug(repo.split("/")[-1]), repo.split("/")[-1], params)
    return spec.model_copy(update={"hf_repo": repo})


def make_plan(
    host: HostProfile, model: ResolvedModel, settings: Settings, runs_on: RunHost | None = None
) -> DeploymentPlan:
    if len(settings.models) == 1 and _narrowed(settings.models[0]):
        # One [[models]] entry that asks for a backend, quantisation or context: planned as a stack of one.
        choice = settings.models[0]
        entry = ModelInput(
            model=model.spec,
            weights=model.weights,
            backend=choice.backend,
            quantization=choice.quantization,
            context=choice.context,
            threads=choice.threads,
            parallel=choice.parallel,
        )
        return plan_several(host, (entry,), settings, runs_on).plan
    return plan_with(host, model, settings.plan_settings(), runs_on)


def _narrowed(choice: ModelChoice) -> bool:
    return bool(choice.backend or choice.quantization or choice.context or choice.threads or choice.parallel)


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
        hint = alternative[0].upper() + alternative[1:] if alternative else "Use a smaller model or a bigger machine."
        if plan_settings.backend and not nofit.need_bytes:
            hint = "Leave --backend (backend = …) out to let the planner choose a backend that serves it."
        raise PlanError(message, hint) from None


def engine_host(docker_host: EngineAddress) -> RunHost | None:
    """The machine a stack started through this engine runs on: this one (its physical cores) for a
    local engine, else the engine's own CPU count, or None when the engine does not say."""
    if docker_host.local:
        from deploykit.seams.detect import detect_cpu

        return RunHost(cores=detect_cpu().physical_cores, where="this host")
    from deploykit.seams.engine import probe_engine

    cpus = probe_engine(docker_host).cpus
    return RunHost(cores=cpus, where=f"the engine at {docker_host.display}") if cpus else None


def several_models(settings: Settings) -> bool:
    """Whether the settings ask for a stack of several models (one keeps today's single-model path)."""
    return len(settings.models) > 1


def resolve_models(settings: Settings) -> tuple[ResolvedModel, tuple[ModelInput, ...]]:
    """Every model of a stack of several, looked up (catalog id, file, or Hugging Face repo): the default's
    ``ResolvedModel`` (what plan.json's ``inputs`` name first) and every one as the planner takes it."""
    inputs = []
    for choice in settings.models:
        model = resolve_model(settings, choice.id, Path(choice.file) if choice.file else None)
        inputs.append(
            ModelInput(
                model=model.spec,
                weights=model.weights,
                backend=choice.backend,
                quantization=choice.quantization,
                context=choice.context,
                keep_loaded=choice.keep_loaded,
                threads=choice.threads,
                parallel=choice.parallel,
            )
        )
    first = inputs[0]
    return ResolvedModel(first.model, first.weights), tuple(inputs)


def plan_several(
    host: HostProfile, models: tuple[ModelInput, ...], settings: Settings, runs_on: RunHost | None = None
) -> StackPlan:
    """The stack's models planned together, or a PlanError naming the model and the nearest alternative."""
    return plan_models(host, models, settings.plan_settings(), settings.inference_port, runs_on)


def plan_models(
    host: HostProfile,
    models: tuple[ModelInput, ...],
    plan_settings: PlanSettings,
    inference_port: int,
    runs_on: RunHost | None = None,
) -> StackPlan:
    """``plan_several`` from the planner's own settings (what plan.json records: `tune --model` re-plans so)."""
    from deploykit.planning.stackplan import StackRefused, plan_stack

    try:
        return plan_stack(host, models, plan_settings, inference_port=inference_port, runs_on=runs_on)
    except StackRefused as refused:
        hint = refused.alternative or 'Serve fewer models, or a smaller quantisation (quantization = "Q4_K_M").'
        raise PlanError(
            f"model {refused.model_id} cannot be served in this stack on profile {host.name}: {refused.detail}",
            hint[0].upper() + hint[1:],
        ) from None
    except NoFit as nofit:
        raise PlanError(
            f"{nofit.model_name} cannot run on profile {host.name}: {nofit.detail}",
            "Give it another backend or quantisation in its [[models]] entry, or leave it out of the stack.",
        ) from None
