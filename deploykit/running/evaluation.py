"""`deploykit eval` at run time: the questions sent to a running stack (its inference server's OpenAI API, or
Open WebUI's as the admin), the answers kept one line each in the stack folder as they come (so an
interrupted run continues and a finished one is read back), and HumanEval's completions checked in the
sandbox. Scoring is ``deploykit.quality``'s; the figures are made in ``deploykit.app.quality``."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from deploykit.running.bench import Target

REQUEST_TIMEOUT_S = 900.0  # one answer of a reasoning model on a CPU can take minutes


@dataclass(frozen=True)
class Question:
    """One request to send: ``key`` names the item and sample ("HumanEval/3#0")."""

    key: str
    messages: list[dict[str, str]]


@dataclass(frozen=True)
class Sampling:
    max_tokens: int
    temperature: float
    top_p: float
    seed: int | None = None


@dataclass(frozen=True)
class Reply:
    """What came back: the text, the thinking a server split off, why it stopped ("stop", "length"), or the
    error that stood for the answer."""

    content: str = ""
    reasoning: str = ""
    finish_reason: str = ""
    error: str = ""


class ResultStore:
    """One settings' results in the stack folder, a JSON line per record, appended and flushed as each
    comes, so nothing finished is lost to an interruption. Records of one key merge, later over earlier."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock = threading.Lock()
        self.records: dict[str, dict[str, Any]] = {}
        if path.is_file():
            for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
                try:
                    row = json.loads(line)
                except ValueError:
                    continue  # a line torn by the interruption: its item is asked again
                if isinstance(row, dict) and isinstance(row.get("key"), str):
                    self.records.setdefault(row["key"], {}).update(row)

    def _ends_a_line(self) -> bool:
        with self.path.open("rb") as f:
            f.seek(-1, os.SEEK_END)
            return f.read(1) == b"\n"

    def get(self, key: str) -> dict[str, Any]:
        return self.records.get(key, {})

    def add(self, key: str, **fields: Any) -> None:
        row = {"key": key, **fields}
        with self.lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as out:
                if out.tell() and not self._ends_a_line():
                    out.write("\n")  # a line torn by a kill: the next record starts a line of its own
                out.write(json.dumps(row, ensure_ascii=False) + "\n")
                out.flush()
                os.fsync(out.fileno())
            self.records.setdefault(key, {}).update(row)


def _body(target: Target, question: Question, sampling: Sampling) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": target.model,
        "messages": question.messages,
        "max_tokens": sampling.max_tokens,
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "stream": False,
    }
    if sampling.seed is not None:
        body["seed"] = sampling.seed
    return body


def ask(client: httpx.Client, target: Target, question: Question, sampling: Sampling) -> Reply:
    """One chat completion, not streamed; any failure is the reply's ``error``, never an exception."""
    try:
        response = client.post(target.path, json=_body(target, question, sampling))
    except httpx.HTTPError as exc:
        return Reply(error=f"{type(exc).__name__}: {exc}"[:200])
    if response.status_code != 200:
        return Reply(error=f"HTTP {response.status_code} {response.text[:160]}")
    try:
        data = response.json()
        choice = data["choices"][0]
        message = choice.get("message") or {}
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        return Reply(error=f"not a chat completion: {response.text[:160]}")
    reasoning = message.get("reasoning_content") or message.get("reasoning") or ""
    return Reply(
        content=str(message.get("content") or ""),
        reasoning=str(reasoning),
        finish_reason=str(choice.get("finish_reason") or ""),
    )


def client_for(target: Target, connections: int) -> httpx.Client:
    return httpx.Client(
        base_url=target.base_url,
        verify=target.verify,
        headers={"Authorization": f"Bearer {target.token}"} if target.token else {},
        timeout=httpx.Timeout(REQUEST_TIMEOUT_S, connect=10.0),
        limits=httpx.Limits(max_connections=connections + 1),
        trust_env=False,  # the stack's own servers: never through a proxy from the environment
    )


def ask_all(
    target: Target,
    questions: Sequence[Question],
    sampling: Sampling,
    store: ResultStore,
    *,
    concurrency: int,
    on_reply: Callable[[str], None],
) -> None:
    """Every question the store has no answer to, ``concurrency`` at a time; each reply kept as it comes.
    A reply that is an error is kept too (it counts as one), and asked again by the next run."""
    pending = [q for q in questions if "content" not in store.get(q.key) or store.get(q.key).get("error")]
    with client_for(target, concurrency) as client:

        def one(question: Question) -> None:
            reply = ask(client, target, question, sampling)
            store.add(question.key, **asdict(reply), passed=None, reason="")
            on_reply(question.key)

        with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
            for _ in pool.map(one, pending):
                pass
