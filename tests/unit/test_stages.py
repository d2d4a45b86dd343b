"""Health stages as data, run without an engine: fake servers behind httpx's MockTransport, a fake
engine behind the ``engine`` seam, and a fake clock for the readiness polls."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from deploykit.catalog import builtin_models, builtin_profiles, find_model, find_profile
from deploykit.planning.planner import plan_deployment
from deploykit.planning.render import StackSpec
from deploykit.running import lifecycle
from deploykit.running.stack import LoadedStack
from deploykit.running.stages import StageResult, UpReport, health_stages, run_stages
from deploykit.seams import engine
from deploykit.seams.health import MAX_POLL_SECONDS, NotReady, StageFailed, poll_intervals, wait_until
from deploykit.values.errors import EngineError, HealthError, PreflightError
from deploykit.values.host import DockerEngine
from deploykit.values.plan import PlanInputs, PlanSettings

MODEL = "smollm2-135m-instruct"
SECRETS = {
    "INFERENCE_API_KEY": "sk-test",
    "WEBUI_SECRET_KEY": "w",
    "DEPLOYKIT_ADMIN_EMAIL": "admin@x.local",
    "DEPLOYKIT_ADMIN_PASSWORD": "pw",
    "DEPLOYKIT_STACK_ID": "id1",
}


def stack(tmp_path: Path) -> LoadedStack:
    inputs = PlanInputs(
        host=find_profile("cpu", builtin_profiles()), model=find_model(MODEL, builtin_models()), settings=PlanSettings()
    )
    plan = plan_deployment(inputs.host, inputs.model, inputs.settings)
    spec = StackSpec(
        project="deploykit-unit",
        plan=plan,
        model_host_path=str(tmp_path / "m.gguf"),
        images={"inference": "a:1", "open-webui": "b:1"},
        webui_port=19868,
        webui_bind="127.0.0.1",
        inference_port=19869,
    )
    return LoadedStack(tmp_path, spec, dict(SECRETS), inputs)


class Reporter:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def stage(self, name: str) -> None:
        self.lines.append(f"stage {name}")

    def tick(self, elapsed: float, detail: str) -> None:
        pass

    def done(self, result: StageResult) -> None:
        self.lines.append(f"done {result.name} {result.ok}")

    def note(self, text: str) -> None:
        self.lines.append(text)


def servers(stale_models: bool = True, loading: int = 2) -> tuple[httpx.Client, httpx.Client, list[str]]:
    """llama-server and Open WebUI as MockTransport handlers; returns both clients and the request log."""
    seen: list[str] = []
    health_calls = itertools.count()

    def inference(request: httpx.Request) -> httpx.Response:
        seen.append(f"inference {request.url.path}")
        assert request.headers["Authorization"] == "Bearer sk-test"
        if request.url.path == "/health":
            if next(health_calls) < loading:
                return httpx.Response(503, json={"error": {"message": "Loading model"}})
            return httpx.Response(200, json={"status": "ok"})
        if request.url.path == "/v1/models":
            return httpx.Response(200, json={"data": [{"id": MODEL}]})
        return httpx.Response(404)

    def webui(request: httpx.Request) -> httpx.Response:
        path = request.url.path + (f"?{request.url.query.decode()}" if request.url.query else "")
        seen.append(f"webui {path}")
        if path == "/health":
            return httpx.Response(200, json={"status": True})
        if path == "/api/config":
            return httpx.Response(200, json={"onboarding": True})
        if path == "/api/v1/auths/signup":
            return httpx.Response(200, json={"token": "tok"})
        assert request.headers.get("Authorization") == "Bearer tok", path
        if path == "/openai/config":
            return httpx.Response(
                200,
                json={
                    "ENABLE_OPENAI_API": True,
                    "OPENAI_API_BASE_URLS": ["http://inference:8080/v1"],
                    "OPENAI_API_KEYS": ["sk-test"],
                },
            )
        if path == "/api/models":
            # Open WebUI, started beside the server, listed the connection before it answered.
            return httpx.Response(200, json={"data": [] if stale_models else [{"id": MODEL}]})
        if path == "/api/models?refresh=true":
            return httpx.Response(200, json={"data": [{"id": MODEL}]})
        if path == "/api/chat/completions":
            return httpx.Response(200, json={"choices": [{"message": {"content": "Hello there."}}]})
        return httpx.Response(404)

    return (
        httpx.Client(base_url="http://inference.test", transport=httpx.MockTransport(inference),
                     headers={"Authorization": "Bearer sk-test"}),
        httpx.Client(base_url="http://webui.test", transport=httpx.MockTransport(webui)),
        seen,
    )  # fmt: skip


def test_stages_are_data_with_a_service_timeout_and_hint(tmp_path: Path) -> None:
    inference, ui, _ = servers()
    stages = health_stages(stack(tmp_path), inference, ui, UpReport("d", "u", False))
    assert [(s.name, s.service) for s in stages] == [
        ("inference /health", "inference"),
        ("inference /v1/models", "inference"),
        ("open-webui /health", "open-webui"),
        ("open-webui admin", "open-webui"),
        ("open-webui model", "open-webui"),
        ("chat via open-webui", "inference"),
    ]
    assert all(s.hint and s.timeout > 0 for s in stages)


def test_run_stages_up_to_a_chat_refreshing_a_stale_model_list(tmp_path: Path) -> None:
    inference, ui, seen = servers(stale_models=True)
    report = UpReport("d", "u", False)
    reporter = Reporter()
    results = run_stages(health_stages(stack(tmp_path), inference, ui, report), 60, reporter)
    assert [r.ok for r in results] == [True] * 6
    assert results[-1].detail == "answered: 'Hello there.'"
    assert all(r.at is not None for r in results)
    assert [r.at for r in results] == sorted(r.at for r in results)  # type: ignore[type-var]
    assert report.admin_created is True and report.drift == []
    assert "webui /api/models?refresh=true" in seen
    assert seen.count("inference /health") == 3  # two "Loading model" answers, then ready


def test_a_failing_stage_raises_with_its_hint_and_its_services_log(tmp_path: Path) -> None:
    inference, ui, _ = servers()
    stages = health_stages(stack(tmp_path), inference, ui, UpReport("d", "u", False))

    def dead(service: str) -> Callable[[float, str], None]:
        def tick(elapsed: float, detail: str) -> None:
            raise StageFailed(f"the {service} container exited (exit code 1, restarted 0×)")

        return tick

    with pytest.raises(HealthError) as info:
        run_stages(stages, 60, Reporter(), watch=dead, log_tail=lambda service: f"{service}: out of memory")
    assert "stage 'inference /health' failed" in info.value.message
    assert info.value.hint == stages[0].hint
    assert "inference: out of memory" in info.value.log_tail


def test_polls_start_fast_then_back_off_to_the_cap() -> None:
    assert list(itertools.islice(poll_intervals(), 6)) == [0.05, 0.1, 0.2, 0.25, 0.25, 0.25]


def test_wait_until_sees_readiness_within_one_capped_poll() -> None:
    now = [0.0]
    ready_at = 7.3

    def probe() -> str:
        if now[0] < ready_at:
            raise NotReady("loading")
        return "ready"

    def sleep(seconds: float) -> None:
        now[0] += seconds

    ok, seconds, detail = wait_until(probe, 60, clock=lambda: now[0], sleep=sleep)
    assert ok and detail == "ready"
    assert ready_at <= seconds <= ready_at + MAX_POLL_SECONDS


def test_wait_until_gives_up_at_the_timeout() -> None:
    now = [0.0]

    def probe() -> str:
        raise NotReady("HTTP 503 Loading model")

    ok, seconds, detail = wait_until(probe, 5, clock=lambda: now[0], sleep=lambda s: now.__setitem__(0, now[0] + s))
    assert not ok and seconds == pytest.approx(5) and detail == "HTTP 503 Loading model"


def fake_engine(monkeypatch: pytest.MonkeyPatch, *, reachable: bool = True, owners: dict | None = None) -> None:
    monkeypatch.setattr(
        engine, "probe_engine", lambda host: DockerEngine(reachable=reachable, error=None if reachable else "no socket")
    )
    monkeypatch.setattr(engine, "require_compose_v2", lambda version: "2.26.1")
    monkeypatch.setattr(engine, "project_owners", lambda host, project: owners or {})
    monkeypatch.setattr(engine, "image_present", lambda host, ref: ref == "a:1")
    monkeypatch.setattr(lifecycle, "ports_held_by", lambda stack, host: set())


def test_preflight_passes_and_notes_images_to_pull(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_engine(monkeypatch)
    monkeypatch.setattr(lifecycle, "port_problem", lambda bind, port: None)
    notes = lifecycle.preflight(stack(tmp_path), engine.EngineAddress(), 0)
    assert notes == ["image b:1 (open-webui) is not on this engine yet; compose will pull it."]


def test_preflight_refuses_a_busy_port(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_engine(monkeypatch)
    busy = "in use by another program"
    monkeypatch.setattr(lifecycle, "port_problem", lambda bind, port: busy if port == 19868 else None)
    with pytest.raises(PreflightError) as info:
        lifecycle.preflight(stack(tmp_path), engine.EngineAddress(), 0)
    assert "port 19868 on 127.0.0.1: in use" in info.value.message
    assert "DEPLOYKIT_WEBUI_PORT" in (info.value.hint or "")


def test_preflight_refuses_another_stacks_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    other = engine.ProjectOwner(working_dir="/elsewhere/stack", volumes=("deploykit-unit_open-webui-data",))
    fake_engine(monkeypatch, owners={"id2": other})
    with pytest.raises(PreflightError) as info:
        lifecycle.preflight(stack(tmp_path), engine.EngineAddress(), 0)
    assert "/elsewhere/stack" in info.value.message


def test_preflight_without_an_engine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_engine(monkeypatch, reachable=False)
    with pytest.raises(EngineError) as info:
        lifecycle.preflight(stack(tmp_path), engine.EngineAddress(), 0)
    assert "cannot connect to the Docker Engine" in info.value.message and "no socket" in info.value.message
