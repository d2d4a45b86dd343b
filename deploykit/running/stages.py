"""The health stages from a started stack to one chat answered through Open WebUI, and the waits on them.

Each stage is data (``Stage``): what it probes on which service, how long it may take, what to do if it does not
pass. Every wait ends the same way when it fails: a ``HealthError`` with the hint and the service's log tail."""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Protocol, TypedDict, cast

import httpx

from deploykit.running.served import Served, ServedModel, Server, served_by
from deploykit.running.stack import LoadedStack
from deploykit.seams import engine, health, webui
from deploykit.values.errors import HealthError
from deploykit.values.services import INFERENCE, TLS_PROXY, WEBUI, webui_url
from deploykit.values.stackfiles import ADMIN_EMAIL, ADMIN_PASSWORD, ENV_FILE
from deploykit.values.webui_env import stored_settings

if TYPE_CHECKING:
    pass

# Open WebUI runs migrations on a fresh volume before /health answers; 15 s here, more on slow disks.
WEBUI_START_SECONDS = 180


WEBUI_START_HINT = "Open WebUI did not start; `deploykit logs open-webui` shows why."


@dataclass
class StageResult:
    name: str
    ok: bool
    seconds: float  # waited in this stage
    detail: str
    at: float | None = None  # when it ended, in seconds from the start of `up`


class StageRow(TypedDict):
    """A ``StageResult`` as `up --json` prints it."""

    name: str
    ok: bool
    seconds: float
    detail: str
    at: float | None


class Reporter(Protocol):
    def stage(self, name: str) -> None: ...
    def tick(self, elapsed: float, detail: str) -> None: ...
    def done(self, result: StageResult) -> None: ...
    def note(self, text: str) -> None: ...


@dataclass
class UpReport:
    stack_dir: str
    url: str
    healthy: bool
    stages: list[StageRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    drift: list[str] = field(default_factory=list)
    admin_created: bool = False
    credentials: str = ""
    # Every address Open WebUI answers on, and who can use it: {"url": …, "who": …}.
    reachable: list[dict[str, str]] = field(default_factory=list)
    tls: dict[str, object] | None = None  # stacks with HTTPS: the certificate, and how to trust the site CA
    # Stacks of several models: each one's server, how it is served and its first answer through Open WebUI.
    models: list[ModelRow] = field(default_factory=list)


class ModelRow(TypedDict):
    """One model of a several-model stack as `up` reports it."""

    model: str
    service: str
    default: bool
    served: str  # "loaded at start" or "on demand"
    first_answer_s: float  # its first chat through Open WebUI; an on-demand model's includes its load
    detail: str


@dataclass(frozen=True)
class Stage:
    """One health stage as data: what it checks on which service, how long it may take, what to do if not."""

    name: str
    service: str  # whose container is watched while waiting, and whose log tail a failure shows
    probe: Callable[[], str]  # returns a detail when the stage passes, raises NotReady while it does not
    timeout: float
    hint: str


def health_stages(stack: LoadedStack, inference: httpx.Client, ui: httpx.Client, report: UpReport) -> list[Stage]:
    """The stages from a started stack to one chat answered through Open WebUI, in order."""
    plan = stack.spec.plan
    key = stack.api_key
    email, password = stack.admin

    def admin() -> str:
        token, created = webui.admin_token(ui, email, password)
        ui.headers["Authorization"] = f"Bearer {token}"  # later stages act as the admin
        report.admin_created = created
        report.drift = webui.connection_drift(ui, stack.webui_internal_api, key)
        # Settings Open WebUI keeps in its database: written on every up, or a changed value never lands.
        secret = {name: stack.secrets[name] for name in stack.spec.webui_secrets if name in stack.secrets}
        report.notes += webui.apply_stored(ui, stored_settings({**stack.spec.webui_settings, **secret}))
        return "admin account created" if created else "signed in as admin"

    return [
        Stage(
            "inference /health",
            INFERENCE,
            lambda: health.probe_inference_health(inference),
            plan.startup_seconds + 60,
            "The server did not become ready. If the log shows it still loading, give it longer with --timeout; "
            "`deploykit logs inference` shows the rest.",
        ),
        Stage(
            "inference /v1/models",
            INFERENCE,
            lambda: health.probe_served_model(inference, plan.model_id),
            60,
            "The server runs but does not serve the expected model id: check --alias/--served-model-name.",
        ),
        *_webui_stages(stack, ui, admin),
        Stage(
            "open-webui model",
            WEBUI,
            lambda: health.probe_webui_model(ui, plan.model_id),
            90,
            "Open WebUI cannot list the model: its connection to the inference server is wrong or unreachable "
            "(see the drift notes; a trailing slash in OPENAI_API_BASE_URL also breaks the list).",
        ),
        Stage(
            "chat via open-webui",
            INFERENCE,
            lambda: health.probe_chat(ui, "/api/chat/completions", plan.model_id),
            180,
            "The model did not answer through Open WebUI; `deploykit logs inference` shows the server side.",
        ),
    ]


def served_stages(
    stack: LoadedStack, served: Served, ui: httpx.Client, report: UpReport, clients: ExitStack
) -> list[Stage]:
    """The stages of a stack of several models: each server ready, then Open WebUI, then per model: listed in
    Open WebUI and one chat answered through it. An on-demand model's first answer includes its load, and the
    stage says so with the time it took."""
    key = stack.api_key
    email, password = stack.admin
    urls, keys, configs = served.webui_connections(key)

    def admin() -> str:
        token, created = webui.admin_token(ui, email, password)
        ui.headers["Authorization"] = f"Bearer {token}"
        report.admin_created = created
        # Open WebUI keeps its connections in its database after the first start: written here whenever they
        # differ from the stack's, so the model list stays right after a model was added, removed or moved.
        report.notes += webui.sync_connections(ui, urls, keys, configs, served.default_model)
        secret = {name: stack.secrets[name] for name in stack.spec.webui_secrets if name in stack.secrets}
        report.notes += webui.apply_stored(ui, stored_settings({**stack.spec.webui_settings, **secret}))
        return "admin account created" if created else "signed in as admin"

    stages: list[Stage] = []
    for server in served.servers:
        stages += server_stages(server, key, clients)
    stages += [
        *_webui_stages(stack, ui, admin),
    ]
    # Every model listed first, then every chat: a list that lacks one says so before any load is waited for.
    per_model = [model_stages(ui, model) for model in served.models]
    stages += [listed for listed, _ in per_model] + [chat for _, chat in per_model]
    return stages


def model_stages(ui: httpx.Client, model: ServedModel) -> list[Stage]:
    """One model through Open WebUI: listed, then one chat answered (an on-demand model's load timed)."""
    return [
        Stage(
            f"open-webui lists {model.id}",
            WEBUI,
            lambda: health.probe_webui_model(ui, model.id),
            90,
            f"Open WebUI cannot list {model.id}: its connection to {model.service} is wrong or unreachable "
            "(see the notes on its connections).",
        ),
        Stage(
            f"chat {model.id} via open-webui" + (" (loads it)" if model.on_demand else ""),
            model.service,
            _chat_probe(ui, model.id, model.on_demand),
            300 if model.on_demand else 180,
            f"{model.id} did not answer through Open WebUI; `deploykit logs {model.service}` shows why.",
        ),
    ]


def server_stages(server: Server, key: str, clients: ExitStack) -> list[Stage]:
    """One server of a several-model stack ready: a router's models loaded, a single server's model served.
    Its HTTP client is closed with ``clients``."""
    opened = health.router_client(server.url, key) if server.router else health.http_client(server.url, key)
    client = clients.enter_context(opened)
    stages = [
        Stage(
            f"{server.service} /health",
            server.service,
            lambda: health.probe_inference_health(client),
            server.startup_seconds + 60,
            f"The server did not become ready; `deploykit logs {server.service}` shows why.",
        )
    ]
    if server.router:
        # The router's /health answers at once; its models load in child processes afterwards.
        stages.append(
            Stage(
                f"{server.service} models loaded",
                server.service,
                lambda: health.probe_router_loaded(client, server.load_on_start),
                server.startup_seconds + 60,
                f"A model of the router did not load; `deploykit logs {server.service}` shows the child's error.",
            )
        )
    else:
        for model_id in server.models:
            stages.append(
                Stage(
                    f"{server.service} serves {model_id}",
                    server.service,
                    lambda model_id=model_id: health.probe_served_model(client, model_id),  # type: ignore[misc]
                    60,
                    "The server runs but does not serve the expected model id: check --served-model-name.",
                )
            )
    return stages


def _chat_probe(ui: httpx.Client, model_id: str, on_demand: bool) -> Callable[[], str]:
    """A chat through Open WebUI; for an on-demand model its first answer, load included, is timed."""

    def probe() -> str:
        begun = time.monotonic()
        verdict = health.probe_chat(ui, "/api/chat/completions", model_id)
        if on_demand:
            return f"loaded on demand and {verdict} in {time.monotonic() - begun:.1f} s"
        return verdict

    return probe


def _webui_stages(stack: LoadedStack, ui: httpx.Client, admin: Callable[[], str]) -> list[Stage]:
    """The HTTPS proxy's stages where there is one, then Open WebUI up and its admin signed in: every stack's."""
    return [
        *_tls_stages(stack),
        Stage(
            "open-webui /health", WEBUI, lambda: health.probe_webui_health(ui), WEBUI_START_SECONDS, WEBUI_START_HINT
        ),
        Stage(
            "open-webui admin",
            WEBUI,
            admin,
            60,
            "Remove the Open WebUI volume (`deploykit down --volumes`) only if its accounts are expendable.",
        ),
    ]


def _tls_stages(stack: LoadedStack) -> list[Stage]:
    """The HTTPS proxy's stage, before Open WebUI's (which is checked through it), in stacks that have one."""
    from deploykit.running import tls_proxy

    if stack.spec.tls is None:
        return []
    return [
        Stage(
            "tls-proxy https",
            TLS_PROXY,
            tls_proxy.probe(stack),
            60,
            "The HTTPS proxy did not answer as it should; `deploykit logs tls-proxy` shows why.",
        )
    ]


def _container_watch(
    stack: LoadedStack, docker_host: engine.EngineAddress, service: str
) -> Callable[[float, str], None]:
    """An on_tick hook that stops waiting as soon as the service's container has died or restarts."""
    es = stack.engine_stack(docker_host)
    last_check = -10.0
    # Restarts before this wait (a crash the engine already recovered from) are history, not a failure.
    before = {c.name: c.restart_count for c in es.containers() if c.service == service}

    def check(elapsed: float, detail: str) -> None:
        nonlocal last_check
        if elapsed - last_check < 3:
            return
        last_check = elapsed
        for ctr in es.containers():
            restarted = ctr.restart_count > before.get(ctr.name, 0)
            if ctr.service == service and (ctr.state in ("exited", "dead") or restarted):
                raise health.StageFailed(
                    f"the {service} container {ctr.state} (exit code {ctr.exit_code}, restarted {ctr.restart_count}×)"
                )

    return check


def run_stages(
    stages: list[Stage],
    budget: float,
    reporter: Reporter,
    *,
    watch: Callable[[str], Callable[[float, str], None]] | None = None,
    log_tail: Callable[[str], str] | None = None,
    started: float | None = None,
) -> list[StageResult]:
    """Wait for each stage in turn within ``budget`` seconds. Raises HealthError on the first that fails.

    ``watch(service)`` gives an on_tick hook that may stop a wait early (a dead container);
    ``log_tail(service)`` the lines a failure shows; ``started`` (monotonic) is when `up` began, so each
    result also says when, from the start, its stage passed.
    """
    origin = time.monotonic() if started is None else started
    results = []
    for stage in stages:
        reporter.stage(stage.name)
        watcher = watch(stage.service) if watch is not None else None

        def tick(elapsed: float, detail: str, watcher: Callable[[float, str], None] | None = watcher) -> None:
            reporter.tick(elapsed, detail)
            if watcher is not None:
                watcher(elapsed, detail)

        ok, seconds, detail = _wait(stage.probe, max(5.0, min(stage.timeout, budget)), tick)
        budget -= seconds
        result = StageResult(stage.name, ok, round(seconds, 1), detail, at=round(time.monotonic() - origin, 1))
        results.append(result)
        reporter.done(result)
        if not ok:
            raise _failed(
                f"stage '{stage.name}' failed after {seconds:.0f} s: {detail}. The stack is left running for "
                "inspection.",
                stage.hint,
                stage.service,
                log_tail(stage.service) if log_tail is not None else "",
            )
    return results


def _wait(
    probe: Callable[[], str], timeout: float, on_tick: Callable[[float, str], None] | None = None
) -> tuple[bool, float, str]:
    """Wait until ``probe`` passes: (passed, seconds waited, detail); a StageFailed ends the wait at once."""
    begun = time.monotonic()
    try:
        ok, _, detail = health.wait_until(probe, timeout, on_tick=on_tick)
    except health.StageFailed as exc:
        ok, detail = False, str(exc)
    return ok, time.monotonic() - begun, detail


def _failed(message: str, hint: str, service: str, tail: str) -> HealthError:
    """How every wait ends when what it waits for does not come: the sentence, the hint, the service's last lines."""
    return HealthError(message, hint, log_tail=f"--- last lines of {service} ---\n{tail}" if tail else "")


def check_stack(
    stack: LoadedStack,
    docker_host: engine.EngineAddress,
    timeout: float,
    reporter: Reporter,
    started: float | None = None,
) -> UpReport:
    """The staged health check of a started stack, up to one chat answered through Open WebUI."""
    report = UpReport(stack_dir=str(stack.dir), url=local_webui_url(stack), healthy=False)
    key = stack.api_key
    served = served_by(stack)
    with ExitStack() as clients:
        ui = clients.enter_context(stack.webui_client())
        if served.several:
            stages = served_stages(stack, served, ui, report, clients)
        else:
            inference = clients.enter_context(health.http_client(stack.inference_url, key))
            stages = health_stages(stack, inference, ui, report)
        results = run_stages(
            stages,
            timeout,
            reporter,
            watch=lambda service: _container_watch(stack, docker_host, service),
            log_tail=lambda service: stack.engine_stack(docker_host).log_tail(service, 25),
            started=started,
        )
    report.stages = [cast(StageRow, asdict(r)) for r in results]
    if served.several:
        report.models = model_rows(served, results)
    report.healthy = True
    report.credentials = f"{stack.dir / ENV_FILE} ({ADMIN_EMAIL}, {ADMIN_PASSWORD})"
    return report


def model_rows(served: Served, results: list[StageResult]) -> list[ModelRow]:
    """Each model's row from its chat stage."""
    chats = {r.name: r for r in results}
    rows: list[ModelRow] = []
    for model in served.models:
        result = chats.get(f"chat {model.id} via open-webui" + (" (loads it)" if model.on_demand else ""))
        rows.append(
            {
                "model": model.id,
                "service": model.service,
                "default": model.id == served.default_model,
                "served": "on demand" if model.on_demand else "loaded at start",
                "first_answer_s": result.seconds if result is not None else 0.0,
                "detail": result.detail if result is not None else "",
            }
        )
    return rows


def local_webui_url(stack: LoadedStack) -> str:
    """Open WebUI's address on the engine's own machine (up's report, status): https:// behind the proxy."""
    return webui_url("localhost", stack.spec.webui_port, https=stack.spec.tls is not None)


def wait_webui(stack: LoadedStack, docker_host: engine.EngineAddress, timeout: float = WEBUI_START_SECONDS) -> float:
    """Wait for Open WebUI's /health; seconds waited, or HealthError with its log tail."""
    with stack.webui_client() as ui:
        ok, seconds, detail = _wait(lambda: health.probe_webui_health(ui), timeout)
    if not ok:
        message = f"Open WebUI did not answer /health within {timeout:.0f} s: {detail}."
        raise _failed(message, WEBUI_START_HINT, WEBUI, stack.engine_stack(docker_host).log_tail(WEBUI, 25))
    return seconds


def wait_inference_ready(stack: LoadedStack, docker_host: engine.EngineAddress, timeout: float | None = None) -> float:
    """After (re)starting the inference service: wait until it is healthy and serves the model.

    Returns the seconds it took; raises HealthError with the log tail when it died or timed out.
    """
    plan = stack.spec.plan
    limit = timeout if timeout is not None else plan.startup_seconds + 60
    key = stack.api_key
    watch = _container_watch(stack, docker_host, INFERENCE)
    with health.http_client(stack.inference_url, key) as client:

        def ready() -> str:
            health.probe_inference_health(client)
            return health.probe_served_model(client, plan.model_id)

        ok, seconds, detail = _wait(ready, limit, watch)
    if not ok:
        message = f"the inference server did not become ready: {detail}."
        tail = stack.engine_stack(docker_host).log_tail(INFERENCE, 25)
        raise _failed(message, "`deploykit logs inference` shows why.", INFERENCE, tail)
    return seconds


class _Quiet:
    """A Reporter that shows nothing: `tune` shows its own progress."""

    def stage(self, name: str) -> None:
        pass

    def tick(self, elapsed: float, detail: str) -> None:
        pass

    def done(self, result: StageResult) -> None:
        pass

    def note(self, text: str) -> None:
        pass


def wait_server_ready(stack: LoadedStack, docker_host: engine.EngineAddress, service: str) -> float:
    """After (re)starting one server of a stack of several models: wait for its stages (``server_stages``: a
    router until each model it loads at start is `loaded` in its GET /models, a server of its own until it
    serves its model; a model the router loads on demand loads on the first request sent to it). Returns the
    seconds it took; raises HealthError with the log tail when it died or timed out."""
    server = served_by(stack).server(service)
    begun = time.monotonic()
    with ExitStack() as clients:
        run_stages(
            server_stages(server, stack.api_key, clients),
            server.startup_seconds + 60,
            _Quiet(),
            watch=lambda name: _container_watch(stack, docker_host, name),
            log_tail=lambda name: stack.engine_stack(docker_host).log_tail(name, 25),
        )
    return time.monotonic() - begun


def reread_router_preset(stack: LoadedStack, docker_host: engine.EngineAddress, service: str) -> None:
    """The running router re-reads its preset (``GET /models?reload=1``): a model whose flags changed is stopped
    by it, and loaded again here when the router loads it at start; its other models keep running untouched
    (checked on b11669, docs/several-models.md). ``wait_server_ready`` then waits for the load."""
    server = served_by(stack).server(service)
    try:
        with health.router_client(server.url, stack.api_key) as client:
            states = health.reload_router(client)
            for model_id in server.load_on_start:
                if states.get(model_id) not in ("loaded", "loading"):
                    health.load_on_router(client, model_id)
    except health.StageFailed as exc:
        tail = stack.engine_stack(docker_host).log_tail(service, 25)
        hint = f"`deploykit logs {service}` shows why."
        raise _failed(f"the {service} did not take its new preset: {exc}.", hint, service, tail) from None
