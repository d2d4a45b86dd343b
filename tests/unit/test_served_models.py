"""Running several models: the router's readiness and states, Open WebUI's stored connections kept in step,
and the per-model stages, against fake servers behind httpx's MockTransport (the real ones:
tests/e2e/test_several_models.py)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from deploykit.seams import health, webui
from deploykit.seams.health import NotReady, StageFailed


def router(models: list[dict[str, Any]], seen: list[httpx.Request] | None = None) -> httpx.Client:
    def handler(request: httpx.Request) -> httpx.Response:
        if seen is not None:
            seen.append(request)
        if request.url.path == "/models":
            return httpx.Response(200, json={"data": models})
        return httpx.Response(404)

    return httpx.Client(base_url="http://router.test", transport=httpx.MockTransport(handler))


def entry(model_id: str, value: str, **extra: object) -> dict[str, Any]:
    return {"id": model_id, "status": {"value": value, **extra}}


def test_router_states_name_a_failed_load_failed() -> None:
    client = router([entry("a", "loaded"), entry("b", "unloaded", failed=True, exit_code=1), entry("c", "sleeping")])
    assert health.router_states(client) == {"a": "loaded", "b": "failed", "c": "sleeping"}


def test_router_readiness_waits_for_every_load_on_start_model() -> None:
    client = router([entry("a", "loaded"), entry("b", "loading"), entry("c", "unloaded")])
    with pytest.raises(NotReady, match="b loading"):
        health.probe_router_loaded(client, ["a", "b"])
    assert health.probe_router_loaded(client, ["a"]) == "loaded a"  # c is on demand: not waited for


def test_router_readiness_fails_at_once_on_a_failed_load_with_its_exit_code() -> None:
    client = router([entry("a", "loaded"), entry("b", "unloaded", failed=True, exit_code=1)])
    with pytest.raises(StageFailed, match=r"could not load b \(exit code 1\)"):
        health.probe_router_loaded(client, ["a", "b"])


def test_router_readiness_fails_for_a_model_the_router_does_not_know() -> None:
    with pytest.raises(StageFailed, match="does not know b"):
        health.probe_router_loaded(router([entry("a", "loaded")]), ["a", "b"])


def test_router_reload_asks_for_the_preset_again() -> None:
    seen: list[httpx.Request] = []
    states = health.reload_router(router([entry("a", "loaded")], seen))
    assert states == {"a": "loaded"}
    assert seen[0].url.params["reload"] == "1"


def test_router_clients_open_a_connection_per_request_and_ignore_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.invalid:3128")
    with health.router_client("http://127.0.0.1:1", "k") as client:
        pool = client._transport._pool  # type: ignore[attr-defined]
        assert pool._max_keepalive_connections == 0
        assert client._mounts == {}  # trust_env=False: no proxy mounted from HTTP_PROXY


class FakeWebui:
    """Open WebUI's config endpoints: what is stored, and what was posted."""

    def __init__(self, stored: dict[str, Any], default_models: str | None) -> None:
        self.stored = stored
        self.default_models = default_models
        self.posted: list[tuple[str, Any]] = []

    def client(self) -> httpx.Client:
        def handler(request: httpx.Request) -> httpx.Response:
            path = request.url.path
            if request.method == "POST":
                body = json.loads(request.content)
                self.posted.append((path, body))
                if path == "/openai/config/update":
                    self.stored = body
                if path == "/api/v1/configs/import":
                    self.default_models = body["config"]["ui.default_models"]
                return httpx.Response(200, json={})
            if path == "/openai/config":
                return httpx.Response(200, json=self.stored)
            if path == "/api/v1/configs/export":
                return httpx.Response(200, json={"ui.default_models": self.default_models})
            return httpx.Response(404)

        return httpx.Client(base_url="http://webui.test", transport=httpx.MockTransport(handler))


URLS = ["http://inference-fp16:8000/v1", "http://router:8080/v1"]
CONFIGS = {"1": {"provider": "llama.cpp"}}


def stored(urls: list[str], configs: dict[str, Any]) -> dict[str, Any]:
    return {
        "ENABLE_OPENAI_API": True,
        "OPENAI_API_BASE_URLS": urls,
        "OPENAI_API_KEYS": ["k"] * len(urls),
        "OPENAI_API_CONFIGS": configs,
    }


def test_connections_in_step_are_left_alone() -> None:
    ui = FakeWebui(stored(URLS, {"1": {"provider": "llama.cpp", "tags": ["admin's"]}}), "q4")
    assert webui.sync_connections(ui.client(), URLS, ["k", "k"], CONFIGS, "q4") == []
    assert ui.posted == []


def test_a_stored_list_from_before_is_replaced_whole_keeping_an_admins_own_settings() -> None:
    # Open WebUI started with the router alone; a vLLM model was added in front of it since.
    ui = FakeWebui(stored(["http://router:8080/v1"], {"0": {"provider": "llama.cpp", "tags": ["mine"]}}), "q4")
    notes = webui.sync_connections(ui.client(), URLS, ["k", "k"], CONFIGS, "q4")
    assert notes == ["wrote Open WebUI's 2 OpenAI connection(s): the API URLs (['http://router:8080/v1']), the API "
                     "keys, connection 1's settings differed"]  # fmt: skip
    path, body = ui.posted[0]
    assert path == "/openai/config/update"
    assert set(body) == {"ENABLE_OPENAI_API", "OPENAI_API_BASE_URLS", "OPENAI_API_KEYS", "OPENAI_API_CONFIGS"}
    assert body["OPENAI_API_BASE_URLS"] == URLS and body["OPENAI_API_KEYS"] == ["k", "k"]
    # The router moved from index 0 to 1: its settings (the admin's tags too) moved with it.
    assert body["OPENAI_API_CONFIGS"] == {"0": {}, "1": {"provider": "llama.cpp", "tags": ["mine"]}}


def test_the_default_models_are_written_when_they_differ() -> None:
    ui = FakeWebui(stored(URLS, CONFIGS), "old-model")
    assert webui.sync_connections(ui.client(), URLS, ["k", "k"], CONFIGS, "q4") == [
        "set Open WebUI's default model(s) to q4"
    ]
    assert ui.posted == [("/api/v1/configs/import", {"config": {"ui.default_models": "q4"}})]


def test_an_unreadable_config_is_a_note_not_a_write() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(401)

    client = httpx.Client(base_url="http://webui.test", transport=httpx.MockTransport(handler))
    notes = webui.sync_connections(client, URLS, ["k", "k"], CONFIGS, "q4")
    assert notes == ["could not read Open WebUI's connections (HTTPStatusError); they were not checked"]


def several() -> Any:
    from deploykit.running.served import Served, ServedModel, Server

    servers = (
        Server("inference-fp16", "http://vllm.test", "http://inference-fp16:8000/v1", False, ("fp16",), ("fp16",), 60),
        Server("router", "http://router.test", "http://router:8080/v1", True, ("q4", "q8"), ("q4",), 30),
    )
    models = (
        ServedModel("fp16", "inference-fp16", "vllm", False, 3 * 2**30, 4096, 2, 8),
        ServedModel("q4", "router", "llamacpp", False, 2**29, 4096, 2, 4),
        ServedModel("q8", "router", "llamacpp", True, 2**29, 4096, 2, 4),
    )
    return Served(servers, models, "q4")


def test_a_several_model_stack_checks_each_server_then_each_model_through_open_webui(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from contextlib import ExitStack

    from deploykit.running.stages import UpReport, run_stages, served_stages
    from tests.unit.test_stages import Reporter, stack

    states = {"q4": "loading", "q8": "unloaded"}
    chats: list[str] = []

    def server(request: httpx.Request) -> httpx.Response:
        if request.url.host == "router.test" and request.url.path == "/models":
            answer = {"data": [entry(m, v) for m, v in states.items()]}
            states["q4"] = "loaded"  # loaded by the second poll
            return httpx.Response(200, json=answer)
        if request.url.path == "/health":
            return httpx.Response(200, json={"status": "ok"})
        if request.url.path == "/v1/models":
            return httpx.Response(200, json={"data": [{"id": "fp16"}]})
        return httpx.Response(404)

    def ui_handler(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path == "/health":
            return httpx.Response(200, json={"status": True})
        if path == "/api/config":
            return httpx.Response(200, json={"onboarding": False})
        if path == "/api/v1/auths/signin":
            return httpx.Response(200, json={"token": "tok"})
        if path == "/openai/config":
            return httpx.Response(200, json=stored(URLS, CONFIGS) | {"OPENAI_API_KEYS": ["sk-test"] * 2})
        if path == "/api/v1/configs/export":
            return httpx.Response(200, json={"ui.default_models": "q4"})
        if path == "/api/models":
            return httpx.Response(200, json={"data": [{"id": m} for m in ("fp16", "q4", "q8")]})
        if path == "/api/chat/completions":
            chats.append(json.loads(request.content)["model"])
            return httpx.Response(200, json={"choices": [{"message": {"content": "Hi."}}]})
        return httpx.Response(404)

    def fake_client(base_url: str, token: str | None = None, timeout: float = 10, **_: object) -> httpx.Client:
        return httpx.Client(base_url=base_url, transport=httpx.MockTransport(server))

    monkeypatch.setattr(health, "http_client", fake_client)
    monkeypatch.setattr(health, "router_client", fake_client)
    ui = httpx.Client(base_url="http://webui.test", transport=httpx.MockTransport(ui_handler))
    report = UpReport("d", "u", False)
    with ExitStack() as clients:
        stages = served_stages(stack(tmp_path), several(), ui, report, clients)
        assert [(s.name, s.service) for s in stages] == [
            ("inference-fp16 /health", "inference-fp16"),
            ("inference-fp16 serves fp16", "inference-fp16"),
            ("router /health", "router"),
            ("router models loaded", "router"),
            ("open-webui /health", "open-webui"),
            ("open-webui admin", "open-webui"),
            ("open-webui lists fp16", "open-webui"),
            ("open-webui lists q4", "open-webui"),
            ("open-webui lists q8", "open-webui"),
            ("chat fp16 via open-webui", "inference-fp16"),
            ("chat q4 via open-webui", "router"),
            ("chat q8 via open-webui (loads it)", "router"),
        ]
        results = run_stages(stages, 60, Reporter())
    assert all(r.ok for r in results)
    assert results[3].detail == "loaded q4"
    assert results[-1].detail.startswith("loaded on demand and answered: 'Hi.' in ")
    assert chats == ["fp16", "q4", "q8"]
    assert report.notes == []  # the stored connections were already the stack's


def test_a_planned_stack_of_three_is_two_servers_reached_on_their_published_ports() -> None:
    """What the running tier sees of a real plan_stack: vLLM's model on a service of its own, started first, and
    the two GGUF models behind one router on the next port; Open WebUI's connection 1 is the router."""
    from deploykit.catalog import builtin_models, builtin_profiles, find_model, find_profile
    from deploykit.planning.stackplan import plan_stack
    from deploykit.running.served import served_from
    from deploykit.values.plan import ModelInput, PlanSettings

    catalog = builtin_models()
    entries = [
        ModelInput(model=find_model("smollm2-135m-instruct", catalog), backend="vllm"),
        ModelInput(model=find_model("qwen2.5-1.5b-instruct", catalog)),
        ModelInput(model=find_model("deepseek-r1-distill-qwen-1.5b", catalog)),
    ]
    planned = plan_stack(find_profile("cpu", builtin_profiles()), entries, PlanSettings(), inference_port=35871)
    served = served_from(planned, "127.0.0.1")
    assert [(s.service, s.url, s.router, s.models) for s in served.servers] == [
        ("inference-smollm2-135m-instruct", "http://127.0.0.1:35871", False, ("smollm2-135m-instruct",)),
        ("router", "http://127.0.0.1:35872", True, ("qwen2.5-1.5b-instruct", "deepseek-r1-distill-qwen-1.5b")),
    ]
    assert served.servers[1].load_on_start == ("qwen2.5-1.5b-instruct", "deepseek-r1-distill-qwen-1.5b")
    assert served.default_model == "smollm2-135m-instruct" and served.several
    assert not any(m.on_demand for m in served.models)  # together: every model loaded at start
    assert [m.planned_bytes for m in served.models] == [p.total_bytes for p in planned.packing.placements]
    urls, keys, configs = served.webui_connections("k")
    assert urls == ["http://inference-smollm2-135m-instruct:8000/v1", "http://router:8080/v1"]
    assert keys == ["k", "k"] and configs == {"1": {"provider": "llama.cpp"}}
    with pytest.raises(Exception, match="does not serve a model 'nope'"):
        served.require("nope")


def test_the_stacks_models_are_written_as_tables_and_one_model_leaves_none(tmp_path: Any) -> None:
    import tomllib

    from deploykit.config.settings import write_stack_models

    (tmp_path / "deploykit.toml").write_text('# mine\nparallel = 2\n\n[webui_env]\nA = "b"\n', encoding="utf-8")
    write_stack_models(tmp_path, [{"id": "q4", "file": "/m/q4.gguf"}, {"id": "q8", "backend": "llamacpp"}])
    text = (tmp_path / "deploykit.toml").read_text()
    data = tomllib.loads(text)
    assert data["models"] == [{"id": "q4", "file": "/m/q4.gguf"}, {"id": "q8", "backend": "llamacpp"}]
    assert data["parallel"] == 2 and data["webui_env"] == {"A": "b"} and text.startswith("# mine\n")
    write_stack_models(tmp_path, [{"id": "q4"}])
    assert "models" not in tomllib.loads((tmp_path / "deploykit.toml").read_text())


def test_models_add_and_remove_check_what_the_stack_serves(tmp_path: Any) -> None:
    from deploykit.app.stack import changed_choices
    from deploykit.values.errors import UsageError
    from deploykit.values.stackplan import ModelChoice
    from tests.unit.test_stages import MODEL, stack

    one = stack(tmp_path)
    added = changed_choices(one, [ModelChoice(id="qwen2.5-1.5b-instruct")], [])
    assert [c.id for c in added] == [MODEL, "qwen2.5-1.5b-instruct"]
    with pytest.raises(UsageError, match="serves smollm2-135m-instruct already"):
        changed_choices(one, [ModelChoice(id=MODEL)], [])
    with pytest.raises(UsageError, match="does not serve a model 'nope'"):
        changed_choices(one, [], ["nope"])
    with pytest.raises(UsageError, match="keeps at least one model"):
        changed_choices(one, [], [MODEL])


def test_bench_model_loads_that_models_server_with_a_connection_per_request_to_a_router(tmp_path: Any) -> None:
    from deploykit.app.measure import bench_target
    from deploykit.catalog import builtin_models, builtin_profiles, find_model, find_profile
    from deploykit.planning.render import StackSpec
    from deploykit.planning.stackplan import plan_stack
    from deploykit.running.stack import LoadedStack
    from deploykit.values.errors import UsageError
    from deploykit.values.plan import ModelInput, PlanInputs, PlanSettings
    from tests.unit.test_stages import SECRETS

    catalog = builtin_models()
    host = find_profile("cpu", builtin_profiles())
    entries = (
        ModelInput(model=find_model("smollm2-135m-instruct", catalog), backend="vllm"),
        ModelInput(model=find_model("qwen2.5-1.5b-instruct", catalog)),
        ModelInput(model=find_model("deepseek-r1-distill-qwen-1.5b", catalog)),
    )
    planned = plan_stack(host, entries, PlanSettings(), inference_port=35871)
    spec = StackSpec(
        project="deploykit-unit", plan=planned.plan, model_host_path="/m/a", images={}, webui_port=35870,
        webui_bind="127.0.0.1", inference_port=35871, models=planned.models, packing=planned.packing,
        model_paths={m.model_id: f"/m/{m.model_id}" for m in planned.models},
    )  # fmt: skip
    inputs = PlanInputs(host=host, model=entries[0].model, settings=PlanSettings(), models=entries)
    stack = LoadedStack(tmp_path, spec, dict(SECRETS), inputs)
    routed = bench_target(stack, "inference", "qwen2.5-1.5b-instruct")
    assert (routed.base_url, routed.model) == ("http://127.0.0.1:35872", "qwen2.5-1.5b-instruct")
    assert routed.fresh_connections and routed.metrics_model == "qwen2.5-1.5b-instruct"
    alone = bench_target(stack, "inference")  # the default: vLLM's model on a server of its own
    assert (alone.base_url, alone.model, alone.fresh_connections) == (
        "http://127.0.0.1:35871",
        planned.default_model,
        False,
    )
    assert alone.metrics_model is None
    with pytest.raises(UsageError, match="does not serve a model 'nope'"):
        bench_target(stack, "inference", "nope")


def test_up_waits_on_a_server_compose_gave_up_on_then_starts_the_rest(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """vLLM's CPU start on a busy host outlasts its Docker healthcheck: compose stops with "dependency failed
    to start"; up waits on that server's own readiness, then asks compose again."""
    from deploykit.running import lifecycle
    from deploykit.seams.compose import ContainerState
    from deploykit.values.errors import EngineError
    from tests.unit.test_stages import Reporter, stack

    calls: list[str] = []

    class SlowStart:
        def up(self) -> None:
            calls.append("up")
            if len(calls) == 1:
                raise EngineError(
                    "docker compose up failed: dependency failed to start: container "
                    "deploykit-unit-inference-fp16-1 is unhealthy",
                    "See `deploykit doctor`.",
                )

        def containers(self) -> list[ContainerState]:
            return [ContainerState("inference-fp16", "c", "running", "healthy", None, 0, None, "i", ())]

        def log_tail(self, service: str, lines: int = 30) -> str:
            return ""

    def fake_client(base_url: str, token: str | None = None, timeout: float = 10, **_: object) -> httpx.Client:
        calls.append(f"probe {base_url}")
        return httpx.Client(base_url=base_url, transport=httpx.MockTransport(lambda r: httpx.Response(200)))

    monkeypatch.setattr(lifecycle, "served_by", lambda s: several())
    monkeypatch.setattr(lifecycle, "_container_watch", lambda *a: None)
    monkeypatch.setattr(health, "http_client", fake_client)
    reporter = Reporter()
    lifecycle.start_servers(stack(tmp_path), SlowStart(), None, reporter)  # type: ignore[arg-type]
    assert calls == ["up", "probe http://vllm.test", "up"]
    assert reporter.lines == ["inference-fp16 is still starting (compose stopped waiting for it); waiting on it …"]
