"""The library API the CLI calls: each function chains the stages detect → plan → render → run → health.

Functions here take settings and paths, call the pure stages, and do the I/O between them. They
return plain data for the CLI to print; they never print.
"""

from __future__ import annotations

import contextlib
import json
import secrets as secrets_mod
from dataclasses import dataclass, field
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
from deploykit.errors import ConfigError, DeployKitError, NotFoundError, PlanError, UsageError
from deploykit.host import HostProfile
from deploykit.modelfile import LocalWeights, read_model_path
from deploykit.plan import DeploymentPlan, NoFit, PlanSettings, gib, plan_deployment, suggest_alternative
from deploykit.render import (
    StackSpec,
    check_stack_dir,
    project_name,
    read_secrets,
    render_files,
    write_stack,
)
from deploykit.settings import Settings, config_dir

if TYPE_CHECKING:
    # Running stacks needs httpx and the docker SDK: plan and render should not pay for them.
    from collections.abc import Callable

    from deploykit.bench import RequestResult, Target
    from deploykit.lifecycle import LoadedStack, Reporter, UpReport


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
    return plan_with(host, model, settings.plan_settings())


def plan_with(host: HostProfile, model: ResolvedModel, plan_settings: PlanSettings) -> DeploymentPlan:
    """The plan, or a PlanError that says what is needed and the nearest thing that would fit."""
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


@dataclass(frozen=True)
class PreparedStack:
    """A rendered stack held in memory: checked before anything is written."""

    stack_dir: Path
    spec: StackSpec
    files: dict[str, str]
    secrets: dict[str, str]
    model: dict[str, Any]


def prepare_stack(
    settings: Settings,
    *,
    profile: str,
    host_file: Path | None,
    model_id: str | None,
    model_path: Path | None,
    image_overrides: dict[str, str],
    stack_dir: Path,
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
    )
    kept = read_secrets(stack_dir)
    fresh = new_secrets(settings.admin_email)
    stack_secrets = {key: kept.get(key) or fresh[key] for key in fresh}
    model_data = model.spec.model_dump(mode="json")
    inputs: dict[str, Any] = {
        "host": host.model_dump(mode="json"),
        "model": model_data,
        "settings": settings.plan_settings().model_dump(mode="json"),
        # The file's own numbers, when the user gave one: `tune` re-plans from these inputs alone.
        "weights": model.weights.model_dump(mode="json") if model.weights is not None else None,
    }
    return PreparedStack(stack_dir, spec, render_files(spec, stack_secrets, inputs), stack_secrets, model_data)


def render_stack(settings: Settings, **kwargs: Any) -> RenderResult:
    prepared = prepare_stack(settings, **kwargs)
    changed = write_stack(prepared.stack_dir, prepared.files)
    return RenderResult(prepared.stack_dir, prepared.spec, changed)


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
) -> UpReport:
    """Render (or reuse) the stack, preflight, fetch the model, start it and check it stage by stage."""
    from deploykit import lifecycle
    from deploykit.lifecycle import LoadedStack, load_stack

    stack_dir = stack_dir.expanduser().absolute()
    asked = any(x is not None for x in (profile, host_file, model_id, model_path)) or bool(image_overrides)
    if asked or not (stack_dir / "plan.json").is_file():
        prepared = prepare_stack(
            settings,
            profile=profile or "auto",
            host_file=host_file,
            model_id=model_id,
            model_path=model_path,
            image_overrides=image_overrides,
            stack_dir=stack_dir,
        )
        stack = LoadedStack(prepared.stack_dir, prepared.spec, prepared.secrets)
        return lifecycle.up(
            stack,
            settings.docker_host,
            timeout,
            reporter,
            prepared.model,
            write_files=lambda: write_stack(stack_dir, prepared.files),
        )
    stack = load_stack(stack_dir)
    model = json.loads((stack_dir / "plan.json").read_text(encoding="utf-8"))["inputs"]["model"]
    return lifecycle.up(stack, settings.docker_host, timeout, reporter, model)


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
    """The files of compose/<profile>/: compose.yaml, .env.example and plan.json, for the default model."""
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
    }


# ---------------------------------------------------------------- bench and tune


def replan_files(stack: LoadedStack, **knobs: Any) -> tuple[DeploymentPlan, dict[str, str]]:
    """The stack's files re-planned from the inputs plan.json recorded, with some planner knobs changed.

    Same host, model, images, ports and secrets; only what the knobs change (flags, KV cache, context split).
    """
    from deploykit.catalog import ModelSpec
    from deploykit.modelfile import LocalWeights

    data = json.loads((stack.dir / "plan.json").read_text(encoding="utf-8"))
    inputs = data["inputs"]
    host = HostProfile.model_validate(inputs["host"])
    weights = LocalWeights.model_validate(inputs["weights"]) if inputs.get("weights") else None
    model = ResolvedModel(ModelSpec.model_validate(inputs["model"]), weights)
    plan_settings = PlanSettings.model_validate(inputs["settings"]).model_copy(update=knobs)
    plan = plan_with(host, model, plan_settings)
    spec = stack.spec.model_copy(update={"plan": plan})
    new_inputs = inputs | {"settings": plan_settings.model_dump(mode="json")}
    return plan, render_files(spec, stack.secrets, new_inputs)


def bench_target(stack: LoadedStack, via: str) -> Target:
    """Where `bench` sends its load: the inference server's API, or Open WebUI's as the stack's admin."""
    from deploykit import health, webui
    from deploykit.bench import Target

    plan = stack.spec.plan
    key = stack.secrets.get("INFERENCE_API_KEY", "")
    if via == "inference":
        base, path, token = stack.inference_url, "/v1/chat/completions", key
    else:
        with health.http_client(stack.webui_url) as anon:
            try:
                token, _ = webui.admin_token(
                    anon,
                    stack.secrets.get("DEPLOYKIT_ADMIN_EMAIL", ""),
                    stack.secrets.get("DEPLOYKIT_ADMIN_PASSWORD", ""),
                )
            except (health.NotReady, health.StageFailed) as exc:
                from deploykit.errors import HealthError

                raise HealthError(
                    f"cannot sign in to Open WebUI as the admin: {exc}.", "Check `deploykit status`."
                ) from None
        base, path = stack.webui_url, "/api/chat/completions"
    return Target(base, path, token, plan.model_id, via, plan.backend, stack.inference_url, key)


def bench_stack(
    stack_dir: Path,
    *,
    via: str,
    levels: list[int],
    requests: int | None,
    prompt_tokens: int,
    max_tokens: int,
    on_result: Callable[[RequestResult], None],
) -> dict[str, Any]:
    """Streaming load at each concurrency level against a running stack; figures per level as plain data."""
    from dataclasses import asdict

    from deploykit.bench import Workload, calibrate_words, run_level
    from deploykit.errors import HealthError
    from deploykit.lifecycle import identity, load_stack

    stack = load_stack(stack_dir.expanduser().absolute())
    target = bench_target(stack, via)
    try:
        words = calibrate_words(target, prompt_tokens)
    except ConnectionError as exc:
        raise HealthError(
            f"{stack.spec.project} did not answer a test request through {via}: {exc}.",
            f"Check `deploykit status --dir {stack.dir}`.",
        ) from None
    results = []
    for concurrency in levels:
        workload = Workload(concurrency, requests or default_requests(concurrency), prompt_tokens, max_tokens)
        results.append(asdict(run_level(target, workload, words, on_result)))
    plan = stack.spec.plan
    return {
        **identity(stack),
        "flags": {"threads": plan.threads, "parallel": plan.parallel},
        "via": via,
        "url": target.base_url + target.path,
        "levels": results,
    }


def default_requests(concurrency: int) -> int:
    """Enough requests that every worker sends at least two (the first wave starts all at once)."""
    return max(8, 2 * concurrency)


@dataclass
class TuneReport:
    stack_dir: str
    workload: dict[str, Any]
    cpus: int
    before: dict[str, int]
    winner: dict[str, int]
    rows: list[dict[str, Any]]
    settings_file: str = ""
    confirmed: dict[str, float] | None = None
    healthy: bool = False
    notes: list[str] = field(default_factory=list)


def tune_stack(
    stack_dir: Path,
    docker_host: str | None,
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
    from deploykit.bench import Workload, calibrate_words, run_level
    from deploykit.errors import HealthError
    from deploykit.settings import write_stack_settings

    stack = lifecycle.load_stack(stack_dir.expanduser().absolute())
    plan = stack.spec.plan
    original = {name: (stack.dir / name).read_text(encoding="utf-8") for name in ("compose.yaml", "plan.json")}
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
    target = bench_target(stack, "inference")
    words: int | None = None

    def apply(candidate: tune.Candidate) -> float:
        _, files = replan_files(stack, **candidate.knobs())
        write_stack(stack.dir, {k: files[k] for k in ("compose.yaml", "plan.json")})
        compose.up("inference")
        return lifecycle.wait_inference_ready(lifecycle.load_stack(stack.dir), docker_host)

    def measure(candidate: tune.Candidate) -> dict[str, Any]:
        nonlocal words
        row: dict[str, Any] = {**candidate.knobs(), "current": candidate == current}
        try:
            row["ready_s"] = round(apply(candidate), 1)
            if words is None:
                words = calibrate_words(target, prompt_tokens)
            else:
                calibrate_words(target, 2)  # a warm-up request, not measured
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
    except BaseException:
        # Interrupted or broken: the stack goes back to what it ran before, nothing is written; the
        # error the user sees is the one that stopped the sweep, not one from putting things back.
        write_stack(stack.dir, original)
        with contextlib.suppress(DeployKitError):
            compose.up("inference")
        raise
    best = tune.pick([(tune.Candidate(r["threads"], r["parallel"]), r["metrics"]) for r in report.rows])
    winner = best[0] if best else current
    top = best[1] if best else 0.0
    for row in report.rows:
        value = tune.score(row["metrics"]) if row["metrics"] else 0.0
        row["score"] = value
        row["of_best"] = value / top if top else 0.0
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


def bench_report(stacks: list[dict[str, Any]], prompt_tokens: int, max_tokens: int, command: str) -> dict[str, Any]:
    """The whole `bench` result: when, where, how, and each stack's levels."""
    import os
    import platform
    from datetime import UTC, datetime

    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.node()}: {os.cpu_count()} CPUs, {platform.machine()}, {platform.system()}",
        "command": command,
        "workload": {"prompt_tokens": prompt_tokens, "max_tokens": max_tokens, "stream": True, "ignore_eos": True},
        "stacks": stacks,
    }
