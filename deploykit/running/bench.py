"""Load generation and serving statistics for ``deploykit bench`` and ``deploykit tune``.

Closed-loop load like ``vllm bench serve --max-concurrency``: N workers each send streaming chat
completions one after another until the level's requests are done. Every token chunk's arrival time is
kept, so time to first token (TTFT), time per output token (TPOT) and inter-token latency (ITL) come
out as ``vllm bench serve`` and GuideLLM define them, under the same names.

The statistics (``percentile``, ``summarize``, ``parse_prometheus``) are pure functions; all HTTP is in
``_stream_one`` and ``server_counters``, through httpx.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import secrets
import ssl
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Required, TypedDict

import httpx

from deploykit.backends.base import ServerMetrics

# Common short English words: close to one token each in the usual BPE vocabularies.
_WORD_TEXT = (
    "the of and to in is was for on that with as by at from his her they this have which one had not but "
    "were all she when there can more an been has who their time would will about if out up what so no "
    "into than them only some could other new two then like over may first any now such most these"
)
_WORDS = tuple(_WORD_TEXT.split())


@dataclass(frozen=True)
class Target:
    """Where the load goes: the inference server's OpenAI API, or Open WebUI's chat endpoint."""

    base_url: str
    path: str
    token: str
    model: str
    via: str  # "inference" | "open-webui"
    counters: ServerMetrics  # which counters the server's /metrics has (its backend names them)
    metrics_url: str  # the inference server, whichever way the load goes
    metrics_token: str
    verify: ssl.SSLContext | bool = True  # Open WebUI behind a stack's HTTPS proxy: its certificate's check
    # llama.cpp's router: a connection per request (it drops kept-alive ones after a proxied POST at times),
    # and its /metrics are each model's, asked for by ?model=.
    fresh_connections: bool = False
    metrics_model: str | None = None


@dataclass(frozen=True)
class Workload:
    concurrency: int
    requests: int
    prompt_tokens: int
    max_tokens: int


@dataclass
class RequestResult:
    ok: bool
    latency: float  # seconds from sending to the last byte
    ttft: float | None = None  # seconds to the first generated token
    itl: list[float] = field(default_factory=list)  # seconds between successive token chunks
    prompt_tokens: int = 0
    output_tokens: int = 0
    server_decode_tps: float | None = None  # llama.cpp's own timings.predicted_per_second
    error: str = ""


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile with linear interpolation between closest ranks (numpy's default)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def _dist(prefix: str, seconds: Sequence[float]) -> dict[str, float]:
    ms = [s * 1000 for s in seconds]
    return {
        f"mean_{prefix}_ms": _mean(ms),
        f"median_{prefix}_ms": percentile(ms, 50),
        f"p95_{prefix}_ms": percentile(ms, 95),
        f"p99_{prefix}_ms": percentile(ms, 99),
    }


def summarize(results: Sequence[RequestResult], duration: float) -> dict[str, float]:
    """A level's figures under ``vllm bench serve``'s result names (plus p95 and per-request tok/s)."""
    done = [r for r in results if r.ok]
    total_in = sum(r.prompt_tokens for r in done)
    total_out = sum(r.output_tokens for r in done)
    tpot = _tpots(done)
    duration = max(duration, 1e-9)
    return {
        "completed": len(done),
        "failed": len(results) - len(done),
        "duration": duration,
        "total_input_tokens": total_in,
        "total_output_tokens": total_out,
        "request_throughput": len(done) / duration,
        "output_throughput": total_out / duration,
        "total_token_throughput": (total_in + total_out) / duration,
        "output_throughput_per_request": _mean([r.output_tokens / r.latency for r in done if r.latency > 0]),
        **_dist("ttft", [r.ttft for r in done if r.ttft is not None]),
        **_dist("tpot", tpot),
        **_dist("itl", [gap for r in done for gap in r.itl]),
        **_dist("e2el", [r.latency for r in done]),
    }


def parse_prometheus(text: str) -> dict[str, float]:
    """Sample values by metric name, summed over label sets (vLLM labels by model and engine)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name_part, _, value = line.rpartition(" ")
        name = name_part.split("{", 1)[0].strip()
        try:
            out[name] = out.get(name, 0.0) + float(value)
        except ValueError:
            continue
    return out


class ServerCounters(TypedDict, total=False):
    """Our token counts and speeds against the server's own counters; ``available`` False without /metrics."""

    available: Required[bool]
    server_output_tokens: int
    server_prompt_tokens: int
    output_tokens_ratio: float | None
    server_request_tokens_per_s: float | None
    request_tokens_per_s: float
    request_speed_ratio: float | None
    server_decode_tokens_per_s: float | None
    decode_tokens_per_s: float
    decode_speed_ratio: float | None


def compare_counters(
    results: Sequence[RequestResult], before: dict[str, float], after: dict[str, float], counters: ServerMetrics
) -> ServerCounters:
    """Our token counts against the server's own counters over the same interval."""
    prompt_name, output_name = counters.prompt_tokens, counters.generated_tokens
    seconds_name, prompt_seconds = counters.generated_seconds, counters.prompt_seconds
    if output_name not in after or output_name not in before:
        return {"available": False}
    done = [r for r in results if r.ok]
    ours = sum(r.output_tokens for r in done)
    server_out = after[output_name] - before[output_name]
    out: ServerCounters = {
        "available": True,
        "server_output_tokens": int(server_out),
        "server_prompt_tokens": int(after.get(prompt_name, 0) - before.get(prompt_name, 0)),
        "output_tokens_ratio": ours / server_out if server_out else None,
    }
    if seconds_name and seconds_name in after and prompt_seconds and prompt_seconds in after:
        # Tokens over the time the server spent on the requests (prompt + generation), against ours over the
        # requests' latency: the same figure when no request waits for a free slot (concurrency ≤ slots).
        busy = after[seconds_name] - before.get(seconds_name, 0) + after[prompt_seconds] - before.get(prompt_seconds, 0)
        latency = sum(r.latency for r in done)
        out["server_request_tokens_per_s"] = server_out / busy if busy > 0 else None
        out["request_tokens_per_s"] = ours / latency if latency > 0 else 0.0
        out["request_speed_ratio"] = (
            out["request_tokens_per_s"] / (server_out / busy) if busy > 0 and server_out else None
        )
    if seconds_name and seconds_name in after:
        seconds = after[seconds_name] - before.get(seconds_name, 0)
        # Per-slot generation speed as the server times it (tokens over the time from first to last token).
        # Ours is higher when the server holds back the first tokens of the stream (llama-server's chat
        # parser does, with --jinja), so this one is shown, not held to 10 %.
        decode_time = sum(r.latency - r.ttft for r in done if r.ttft is not None)
        ours_tps = ours / decode_time if decode_time > 0 else 0.0
        server_tps = server_out / seconds if seconds > 0 else None
        out["server_decode_tokens_per_s"] = server_tps
        out["decode_tokens_per_s"] = ours_tps
        out["decode_speed_ratio"] = ours_tps / server_tps if server_tps and server_out else None
    return out


def _tpots(done: Iterable[RequestResult]) -> list[float]:
    return [(r.latency - r.ttft) / (r.output_tokens - 1) for r in done if r.ttft is not None and r.output_tokens > 1]


def make_prompt(index: int, words: int, run: str = "") -> str:
    """A prompt of about ``words`` tokens, different for every request so no prefix cache helps.

    ``run`` (new for each load) begins the text: llama-server keeps earlier prompts' KV in its prompt cache,
    and a second load with the same prompts measured its first-token times from that cache (28 ms, not 400).
    """
    rng = random.Random(index)
    return f"Request {run}{index}. Continue this text: " + " ".join(rng.choice(_WORDS) for _ in range(max(1, words)))


def new_run() -> str:
    """A tag that makes one load's prompts its own."""
    return secrets.token_hex(4) + "-"


def load_prompts(count: int, words: int) -> list[str]:
    """``count`` prompts for one load: different from each other and from every other load's."""
    run = new_run()
    return [make_prompt(i, words, run) for i in range(count)]


def _body(target: Target, prompt: str, max_tokens: int) -> dict[str, Any]:
    return {
        "model": target.model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
        # Every request generates exactly max_tokens, so levels and stacks compare like for like.
        "ignore_eos": True,
    }


async def _stream_one(client: httpx.AsyncClient, target: Target, prompt: str, max_tokens: int) -> RequestResult:
    start = time.perf_counter()
    arrivals: list[float] = []
    usage: dict[str, Any] = {}
    timings: dict[str, Any] = {}
    try:
        async with client.stream("POST", target.path, json=_body(target, prompt, max_tokens)) as response:
            if response.status_code != 200:
                text = (await response.aread()).decode("utf-8", "replace")
                return RequestResult(
                    False, time.perf_counter() - start, error=f"HTTP {response.status_code} {text[:120]}"
                )
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                try:
                    chunk = json.loads(data)
                except ValueError:
                    continue
                if chunk.get("error"):
                    return RequestResult(False, time.perf_counter() - start, error=str(chunk["error"])[:160])
                for choice in chunk.get("choices") or []:
                    delta = choice.get("delta") or {}
                    if delta.get("content") or delta.get("reasoning_content") or delta.get("reasoning"):
                        arrivals.append(time.perf_counter())
                usage = chunk.get("usage") or usage
                timings = chunk.get("timings") or timings
    except httpx.HTTPError as exc:
        return RequestResult(False, time.perf_counter() - start, error=f"{type(exc).__name__}: {exc}"[:160])
    latency = time.perf_counter() - start
    if not arrivals:
        return RequestResult(False, latency, error="the stream carried no tokens")
    return RequestResult(
        ok=True,
        latency=latency,
        ttft=arrivals[0] - start,
        itl=[b - a for a, b in itertools.pairwise(arrivals)],
        prompt_tokens=int(usage.get("prompt_tokens") or 0),
        output_tokens=int(usage.get("completion_tokens") or len(arrivals)),
        server_decode_tps=timings.get("predicted_per_second"),
    )


def _client(target: Target, connections: int) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=target.base_url,
        verify=target.verify,
        headers={"Authorization": f"Bearer {target.token}"} if target.token else {},
        timeout=httpx.Timeout(600.0, connect=10.0),
        limits=httpx.Limits(
            max_connections=connections + 2,
            max_keepalive_connections=0 if target.fresh_connections else connections + 2,
        ),
        trust_env=False,  # the stack's own servers: never through a proxy from the environment
    )


async def _run(
    target: Target,
    workload: Workload,
    prompts: Sequence[str],
    on_result: Callable[[RequestResult], None],
    time_limit: float | None = None,
) -> tuple[list[RequestResult], float]:
    queue = list(reversed(prompts))
    results: list[RequestResult] = []
    start = time.perf_counter()
    async with _client(target, workload.concurrency) as client:

        async def worker() -> None:
            while queue:
                prompt = queue.pop()
                left = None if time_limit is None else time_limit - (time.perf_counter() - start)
                try:
                    result = await asyncio.wait_for(_stream_one(client, target, prompt, workload.max_tokens), left)
                except TimeoutError:
                    result = RequestResult(
                        False, time.perf_counter() - start, error=f"cut at the {time_limit:.0f} s limit"
                    )
                results.append(result)
                on_result(result)

        await asyncio.gather(*(worker() for _ in range(workload.concurrency)))
        return results, time.perf_counter() - start


def server_counters(target: Target) -> dict[str, float]:
    """The inference server's Prometheus counters; empty when /metrics is off or unreachable."""
    headers = {"Authorization": f"Bearer {target.metrics_token}"} if target.metrics_token else {}
    try:
        params = {"model": target.metrics_model} if target.metrics_model else None
        r = httpx.get(target.metrics_url + "/metrics", params=params, headers=headers, timeout=10, trust_env=False)
    except httpx.HTTPError:
        return {}
    return parse_prometheus(r.text) if r.status_code == 200 else {}


def calibrate_words(target: Target, prompt_tokens: int) -> int:
    """Words per prompt that give about ``prompt_tokens`` prompt tokens (chat template included).

    One short request, which also warms the server up; falls back to one word a token.
    """
    words = max(1, prompt_tokens)

    async def once() -> RequestResult:
        async with _client(target, 1) as client:
            return await _stream_one(client, target, load_prompts(1, words)[0], 2)

    result = asyncio.run(once())
    if not result.ok:
        raise ConnectionError(result.error)
    if result.prompt_tokens > 0:
        words = max(1, round(words * prompt_tokens / result.prompt_tokens))
    return words


class BenchLevel(TypedDict):
    """A ``LevelResult`` as plain data (``asdict``), as `bench --json` prints it."""

    concurrency: int
    metrics: dict[str, float]
    server: ServerCounters
    errors: list[str]


@dataclass
class LevelResult:
    concurrency: int
    metrics: dict[str, float]
    server: ServerCounters
    errors: list[str]


def run_level(
    target: Target,
    workload: Workload,
    words: int,
    on_result: Callable[[RequestResult], None],
    time_limit: float | None = None,
) -> LevelResult:
    """One concurrency level: the load, its figures, and the server's counters over the same interval.

    With ``time_limit``, requests still running when it passes are cut and count as failed.
    """
    prompts = load_prompts(workload.requests, words)
    before = server_counters(target)
    results, duration = asyncio.run(_run(target, workload, prompts, on_result, time_limit))
    after = server_counters(target)
    errors = sorted({r.error for r in results if not r.ok})[:3]
    return LevelResult(
        workload.concurrency,
        summarize(results, duration),
        compare_counters(results, before, after, target.counters),
        errors,
    )


def warm_up(target: Target, workload: Workload, words: int, time_limit: float | None = None) -> None:
    """One unmeasured round at the workload's concurrency, with short answers and prompts of their own.

    A restarted llama-server is slow the first time each slot is used: measured here, a 4-chat round right
    after a restart gave 78 tok/s and the next ones 112-117, which ordered `tune`'s candidates by slot count
    rather than by speed. Its prompts are its own, so no prefix cache flatters the run after.
    """
    prompts = load_prompts(workload.concurrency, words)
    round_ = Workload(workload.concurrency, workload.concurrency, workload.prompt_tokens, min(16, workload.max_tokens))
    asyncio.run(_run(target, round_, prompts, lambda _r: None, time_limit))


# ---------------------------------------------------------------- chart


def chart_html(series: Mapping[str, Sequence[BenchLevel]], title: str) -> str:
    """A self-contained HTML page: output tok/s and TTFT against concurrency, one line per stack."""
    charts = [
        ("Output token throughput (tok/s)", "output_throughput", "aggregate"),
        ("Output tok/s per request", "output_throughput_per_request", "per request"),
        ("Median TTFT (ms)", "median_ttft_ms", "p50"),
        ("P99 TTFT (ms)", "p99_ttft_ms", "p99"),
    ]
    svgs = [
        _line_chart(
            label, {name: [(lv["concurrency"], lv["metrics"][key]) for lv in levels] for name, levels in series.items()}
        )
        for label, key, _ in charts
    ]
    body = "\n".join(f'<div class="c">{svg}</div>' for svg in svgs)
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>"
        + _esc(title)
        + "</title><style>body{font-family:sans-serif;margin:2em}.c{display:inline-block;margin:1em}</style>"
        + "</head><body><h1>"
        + _esc(title)
        + "</h1>\n"
        + body
        + "\n</body></html>\n"
    )


_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd")


def _esc(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def _line_chart(label: str, lines: dict[str, list[tuple[float, float]]], width: int = 420, height: int = 280) -> str:
    pad_l, pad_r, pad_t, pad_b = 60, 20, 30, 40
    xs = sorted({x for pts in lines.values() for x, _ in pts}) or [1.0]
    y_max = max([y for pts in lines.values() for _, y in pts] + [1e-9]) * 1.1
    plot_w, plot_h = width - pad_l - pad_r, height - pad_t - pad_b

    def px(x: float) -> float:  # concurrency levels evenly spaced, as a category axis
        return pad_l + (xs.index(x) + 0.5) * plot_w / len(xs)

    def py(y: float) -> float:
        return pad_t + plot_h - y / y_max * plot_h

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">',
        f'<text x="{width / 2}" y="18" text-anchor="middle" font-size="14">{_esc(label)}</text>',
        f'<line x1="{pad_l}" y1="{pad_t + plot_h}" x2="{pad_l + plot_w}" y2="{pad_t + plot_h}" stroke="#000"/>',
        f'<line x1="{pad_l}" y1="{pad_t}" x2="{pad_l}" y2="{pad_t + plot_h}" stroke="#000"/>',
        f'<text x="{width / 2}" y="{height - 6}" text-anchor="middle" font-size="12">concurrency</text>',
    ]
    for frac in (0, 0.5, 1):
        y = y_max / 1.1 * frac
        parts.append(f'<text x="{pad_l - 6}" y="{py(y) + 4:.1f}" text-anchor="end" font-size="11">{y:.0f}</text>')
    for x in xs:
        parts.append(
            f'<text x="{px(x):.1f}" y="{pad_t + plot_h + 16}" text-anchor="middle" font-size="11">{x:g}</text>'
        )
    for i, (name, pts) in enumerate(lines.items()):
        colour = _COLOURS[i % len(_COLOURS)]
        coords = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in sorted(pts))
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{coords}"/>')
        for x, y in pts:
            parts.append(
                f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3" fill="{colour}"><title>{y:.1f}</title></circle>'
            )
        parts.append(
            f'<text x="{pad_l + 8}" y="{pad_t + 14 + 14 * i}" font-size="11" fill="{colour}">{_esc(name)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)
