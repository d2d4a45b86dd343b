"""Staged health checks over HTTP, reusable by `up`, `status`, `chat` and a later `bench`.

Each probe is a function ``(client) -> str`` that returns a short detail when the stage passes and
raises ``NotReady`` while it does not. ``wait_until`` polls a probe until it passes or the time runs
out, calling ``on_tick`` so the caller can show progress and stop early when a container dies.
All HTTP goes through ``http_client``: the one seam for fakes.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import httpx


class NotReady(Exception):
    """The stage has not passed yet; the message says what was seen."""


class StageFailed(Exception):
    """The stage cannot pass (a container exited, a 401): stop waiting."""


def http_client(
    base_url: str,
    token: str | None = None,
    timeout: float = 10.0,
    verify: ssl.SSLContext | bool = True,
    *,
    fresh_connections: bool = False,
) -> httpx.Client:
    """A client for the stack's own servers. ``trust_env=False``: they are reached directly, never through
    HTTP_PROXY/HTTPS_PROXY/ALL_PROXY from the environment (a company proxy would get the API key, and could
    not reach this machine's loopback anyway), and no .netrc adds credentials. ``verify``: how an https://
    server's certificate is checked (a stack's HTTPS proxy: its own context). ``fresh_connections``: a new
    connection per request, for llama.cpp's router, which at times drops a kept-alive connection after a
    proxied POST (docs/several-models.md, "HTTP clients of the router")."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    limits = httpx.Limits(max_keepalive_connections=0) if fresh_connections else httpx.Limits()
    return httpx.Client(
        base_url=base_url, headers=headers, timeout=timeout, verify=verify, trust_env=False, limits=limits
    )


def router_client(base_url: str, token: str | None = None, timeout: float = 10.0) -> httpx.Client:
    """A client for llama.cpp's router: one connection per request (see ``http_client``)."""
    return http_client(base_url, token, timeout, fresh_connections=True)


# Readiness polls: fast at first (a server that is up is seen within a few tens of milliseconds), then
# backing off to a cap that sees a service at most a quarter of a second after it is ready. A refused
# connection costs the starting service nothing, and on the path to the first chat each poll's wait counts.
FIRST_POLL_SECONDS = 0.05
MAX_POLL_SECONDS = 0.25


def poll_intervals(first: float = FIRST_POLL_SECONDS, cap: float = MAX_POLL_SECONDS) -> Iterator[float]:
    """Sleeps between polls: ``first``, doubling up to ``cap``, then ``cap`` for ever."""
    interval = first
    while True:
        yield interval
        interval = min(cap, interval * 2)


def wait_until(
    probe: Callable[[], str],
    timeout: float,
    *,
    on_tick: Callable[[float, str], None] | None = None,
    intervals: Iterable[float] | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> tuple[bool, float, str]:
    """Poll ``probe`` until it passes (True, seconds, detail) or ``timeout`` passes (False, seconds, last)."""
    start = clock()
    last = "not tried yet"
    pauses = iter(intervals if intervals is not None else poll_intervals())
    while True:
        elapsed = clock() - start
        try:
            return True, elapsed, probe()
        except NotReady as exc:
            last = str(exc)
        if on_tick is not None:
            on_tick(elapsed, last)  # may raise StageFailed
        if elapsed >= timeout:
            return False, elapsed, last
        sleep(min(next(pauses), max(0.0, timeout - elapsed)))


def _get(client: httpx.Client, path: str) -> httpx.Response:
    try:
        return client.get(path)
    except httpx.HTTPError as exc:
        raise NotReady(f"{type(exc).__name__} on {path}") from None


def probe_inference_health(client: httpx.Client) -> str:
    r = _get(client, "/health")
    if r.status_code == 200:
        return "ready"
    # llama-server answers 503 {"error": {"message": "Loading model"}} while it loads.
    try:
        message = r.json().get("error", {}).get("message", "")
    except ValueError:
        message = r.text[:80]
    raise NotReady(f"HTTP {r.status_code} {message}".strip())


def _listed_ids(client: httpx.Client, path: str, *, key_is_ours: bool) -> list[str]:
    """Model ids an OpenAI-style list endpoint returns; a refused key is final when the key is ours."""
    r = _get(client, path)
    if key_is_ours and r.status_code in (401, 403):
        raise StageFailed(f"{path} refused the API key (HTTP {r.status_code})")
    if r.status_code != 200:
        raise NotReady(f"{path}: HTTP {r.status_code}")
    return [str(m.get("id")) for m in r.json().get("data", [])]


def probe_served_model(client: httpx.Client, model_id: str) -> str:
    ids = _listed_ids(client, "/v1/models", key_is_ours=True)
    if model_id not in ids:
        raise NotReady(f"/v1/models lists {ids}, not '{model_id}'")
    return f"serves '{model_id}'"


# What a router's GET /models says of a model (its "status"), as deploykit reports it: "failed" is a load that
# ended with "failed": true (the router itself leaves it "unloaded").
ROUTER_STATES = ("loaded", "loading", "unloaded", "sleeping", "downloading", "failed")


def router_states(client: httpx.Client) -> dict[str, str]:
    """Each model a llama.cpp router knows, by id, and its state; NotReady while the router does not answer."""
    r = _get(client, "/models")
    if r.status_code in (401, 403):
        raise StageFailed(f"/models refused the API key (HTTP {r.status_code})")
    if r.status_code != 200:
        raise NotReady(f"/models: HTTP {r.status_code}")
    states = {}
    for entry in r.json().get("data", []):
        status = entry.get("status") or {}
        state = str(status.get("value", "unknown"))
        states[str(entry.get("id"))] = "failed" if status.get("failed") else state
    return states


def router_failures(client: httpx.Client) -> dict[str, int | None]:
    """The router's models whose last load failed, with the child's exit code."""
    r = _get(client, "/models")
    failed = {}
    for entry in r.json().get("data", []) if r.status_code == 200 else []:
        status = entry.get("status") or {}
        if status.get("failed"):
            failed[str(entry.get("id"))] = status.get("exit_code")
    return failed


def probe_router_loaded(client: httpx.Client, model_ids: Iterable[str]) -> str:
    """Passes once each of ``model_ids`` is loaded on the router (its /health answers before any model is).

    A model whose load failed ends the wait at once: the router does not try it again by itself."""
    wanted = list(model_ids)
    states = router_states(client)
    missing = [m for m in wanted if m not in states]
    if missing:
        raise StageFailed(f"the router does not know {', '.join(missing)} (it lists {sorted(states)})")
    failed = [m for m in wanted if states[m] == "failed"]
    if failed:
        codes = router_failures(client)
        said = ", ".join(f"{m} (exit code {codes.get(m)})" for m in failed)
        raise StageFailed(f"the router could not load {said}")
    waiting = {m: states[m] for m in wanted if states[m] != "loaded"}
    if waiting:
        raise NotReady(", ".join(f"{m} {state}" for m, state in waiting.items()))
    if not wanted:
        return f"router serves {len(states)} model(s) on demand"
    return f"loaded {', '.join(wanted)}"


def reload_router(client: httpx.Client) -> dict[str, str]:
    """Make the router read its preset file again (``GET /models?reload=1``): new sections appear, removed ones
    are unloaded, the rest keep running. Returns the states after the reload."""
    try:
        r = client.get("/models", params={"reload": "1"})
    except httpx.HTTPError as exc:
        raise StageFailed(f"{type(exc).__name__} on /models?reload=1") from None
    if r.status_code != 200:
        raise StageFailed(f"/models?reload=1: HTTP {r.status_code} {r.text[:200]}")
    return router_states(client)


def load_on_router(client: httpx.Client, model_id: str) -> None:
    """Ask the router to load ``model_id`` now (``POST /models/load``); one already running is fine."""
    try:
        r = client.post("/models/load", json={"model": model_id})
    except httpx.HTTPError as exc:
        raise StageFailed(f"{type(exc).__name__} on /models/load {model_id}") from None
    if r.status_code != 200 and not (r.status_code == 400 and "already running" in r.text):
        raise StageFailed(f"/models/load {model_id}: HTTP {r.status_code} {r.text[:200]}")


def probe_webui_health(client: httpx.Client) -> str:
    r = _get(client, "/health")
    if r.status_code == 200 and r.json().get("status") is True:
        return "ready"
    raise NotReady(f"HTTP {r.status_code}")


def probe_webui_model(client: httpx.Client, model_id: str) -> str:
    ids = _listed_ids(client, "/api/models", key_is_ours=False)
    if model_id not in ids:
        # Open WebUI starts beside the server and may have asked it for models before it answered;
        # refresh=true drops Open WebUI's cached list and asks the server again.
        ids = _listed_ids(client, "/api/models?refresh=true", key_is_ours=False)
    if model_id not in ids:
        raise NotReady(f"Open WebUI lists {ids or 'no models'}, not '{model_id}'")
    return f"lists '{model_id}'"


def chat_once(
    client: httpx.Client, path: str, model_id: str, message: str, max_tokens: int = 64, **extra: Any
) -> dict[str, Any]:
    """One non-streamed chat completion; returns the raw JSON answer."""
    body: dict[str, Any] = {
        "model": model_id,
        "messages": [{"role": "user", "content": message}],
        "stream": False,
        "max_tokens": max_tokens,
        **extra,
    }
    try:
        r = client.post(path, json=body, timeout=300)
    except httpx.HTTPError as exc:
        raise NotReady(f"{type(exc).__name__} on {path}") from None
    if r.status_code != 200:
        raise NotReady(f"{path}: HTTP {r.status_code} {r.text[:200]}")
    data: dict[str, Any] = r.json()
    return data


def probe_chat(client: httpx.Client, path: str, model_id: str) -> str:
    # Greedy decoding: a health probe should not depend on a tiny model's luck at temperature 1.
    data = chat_once(client, path, model_id, "Say hello in one short sentence.", max_tokens=32, temperature=0)
    return chat_verdict(data)


def chat_verdict(data: dict[str, Any]) -> str:
    """What the chat stage reports for a completion, or NotReady when the model produced nothing."""
    reasoning, text = split_answer(data)
    if text:
        return f"answered: {text[:60]!r}"
    # An R1-style model can spend the whole budget thinking; generated thought still proves the path works.
    if reasoning:
        return f"answered (still thinking): {reasoning[:60]!r}"
    raise NotReady("the model answered with no text")


def split_answer(data: dict[str, Any]) -> tuple[str, str]:
    """(reasoning, answer) of a chat completion.

    vLLM's ``--reasoning-parser deepseek_r1`` and llama.cpp's ``--reasoning-format deepseek`` put an R1
    model's thinking in ``reasoning_content``. A server without that wiring leaves ``<think>…</think>``
    in the content; split it here too, so the answer a user sees is the answer.
    """
    try:
        message = data["choices"][0]["message"]
    except (KeyError, IndexError, TypeError):
        return "", ""
    reasoning = str(message.get("reasoning_content") or message.get("reasoning") or "").strip()
    content = str(message.get("content") or "")
    if "</think>" in content:
        thought, _, content = content.partition("</think>")
        reasoning = (reasoning + "\n" + thought.replace("<think>", "")).strip()
    return reasoning, content.strip()


# A small schema with a string and an integer: enough to tell grammar-constrained output from luck.
PERSON_SCHEMA: dict[str, Any] = {
    "type": "object",
    # A length bound keeps a tiny model from rambling inside the string until max_tokens cuts the JSON.
    "properties": {"name": {"type": "string", "maxLength": 40}, "age": {"type": "integer"}},
    "required": ["name", "age"],
}


def schema_errors(value: object, schema: dict[str, Any]) -> list[str]:
    """The JSON-schema subset the smoke check uses: object, required, string/integer/number/boolean types."""
    kinds: dict[str, type | tuple[type, ...]] = {
        "object": dict,
        "string": str,
        "integer": int,
        "number": (int, float),
        "boolean": bool,
        "array": list,
    }
    expected = schema.get("type")
    if (expected and not isinstance(value, kinds[expected])) or (expected == "integer" and isinstance(value, bool)):
        return [f"expected {expected}, got {type(value).__name__}"]
    errors = []
    if isinstance(value, str) and len(value) > schema.get("maxLength", len(value)):
        errors.append(f"string longer than {schema['maxLength']}")
    if isinstance(value, dict):
        for key in schema.get("required", []):
            if key not in value:
                errors.append(f"missing required '{key}'")
        for key, sub in schema.get("properties", {}).items():
            if key in value:
                errors += [f"{key}: {e}" for e in schema_errors(value[key], sub)]
    return errors


def probe_structured_output(client: httpx.Client, path: str, model_id: str) -> str:
    """A ``response_format`` JSON-schema request must come back as JSON that validates."""
    import json

    data = chat_once(
        client,
        path,
        model_id,
        "Invent a person. Reply with JSON only.",
        max_tokens=96,
        temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON_SCHEMA}},
    )
    _, text = split_answer(data)
    try:
        value = json.loads(text)
    except ValueError:
        raise StageFailed(f"not JSON: {text[:80]!r}") from None
    errors = schema_errors(value, PERSON_SCHEMA)
    if errors:
        raise StageFailed(f"JSON does not match the schema: {'; '.join(errors)} in {text[:80]!r}")
    return f"valid JSON: {text[:60]!r}"
