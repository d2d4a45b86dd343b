"""Several models in one deploykit stack (issue 17): memory against the plan, a swap against a cold start.

    python benchmarks/multimodel.py [--rounds N] [--mixed] [--keep] [--write]

Brings up real deploykit stacks (`deploykit up`, the offline images of build/images.env) of two GGUF models, the
shipped SmolLM2-135M Q4_1 and its Q8_0 (scripts/provision: model, model-second), and measures, in one run:

- together (the `cpu` profile: the planner loads both, --models-max 2): Open WebUI lists both and each answers a
  chat through it; then, with every slot of each model used once by a short prompt (see use_slots), the
  router container's memory (its processes' RSS summed, as `deploykit status` counts it) against
  the plan's figures in plan.json (both models + the router's own process), and each model's llama-server child
  (its RSS, weights mapped in) against that model's figure. Target: within ±15 % for the stack's processes (the
  sum of their RSS, which counts the mapped weights whoever read them first; the libraries the children share
  are counted once per process, a few MiB). The cgroup's figure is shown beside it: page cache is charged to the
  cgroup that first read a page, so weights an earlier container (or `llama-quantize`) read are missing there.
- on demand (a host file of 2500 MiB RAM, as `deploykit detect --json` writes one: the planner fits one model at a
  time and chooses --models-max 1): a model's first answer when the other one is loaded (the router unloads it,
  loads this one, answers) against the same model's cold start alone (a single-model llama-server container
  with the flags of the stack's models.ini section, from `docker run` to its first answer). Target: swap ≤ 1.5 ×
  cold start. The rounds interleave the two, so a busy machine slows both alike; the warm answer (model already
  loaded) shows how much of each is the answer itself.
- with --mixed, also vLLM's CPU build (the FP16 folder, model-fp16) beside llama.cpp (Q4_1) in one stack: each
  server's container against its model's plan figure (vLLM's CPU start takes minutes on 2 cores).

Stacks deploykit-e2e-mmb-{pair,ondemand,mixed} under build/, ports 36860-36869; each is taken down with its
volumes at the end (unless --keep).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from deploykit.values.paths import model_cache
from deploykit.values.stackplan import PRESET_PATH
from deploykit.values.units import MiB, gib

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "benchmarks.md"
STACKS = ROOT / "build" / "multimodel-bench"
CACHE = model_cache()
Q4, Q8 = "smollm2-q4", "smollm2-q8"
FILES = {Q4: CACHE / "SmolLM2-135M-Instruct.Q4_1.gguf", Q8: CACHE / "SmolLM2-135M-Instruct.Q8_0.gguf"}
TWO_GGUF = ("--model", Q4, "--model-file", str(FILES[Q4]), "--model", Q8, "--model-file", str(FILES[Q8]))
FP16 = "smollm2-fp16"
# Open WebUI's port, then the servers' loopback ports from the next one on; the lone cold start's last.
PORTS = {"pair": 36860, "ondemand": 36863, "mixed": 36866}
ALONE_PORT = 36869
# RAM that leaves ~450 MiB after the 2 GiB kept for Open WebUI and the OS: the two models need more together,
# one of them fits, so the planner serves them on demand with --models-max 1 (tests/e2e/test_several_models.py).
SMALL_HOST_MIB = 2500
ENDING = "\n## Several models"
CHANGED = (
    "What changed since the prototype's entry (2026-12-02 07:30, the hand-written compose of the since removed "
    "tests/fixtures/multimodel/): these are deploykit's own stacks, planned, rendered and brought up by "
    "`deploykit up`, their plan figures read from plan.json; the cold start runs the stack's models.ini flags.\n\n"
)
PROMPT = [{"role": "user", "content": "Say hello in five words."}]
READING = (
    "Reading it: the processes' RSS counts each model's mmapped weights; the cgroup's figure leaves out the page "
    "cache of GGUF files another container read first (the kernel charges a page to the cgroup that first reads "
    "it), which is why `deploykit status` sums the RSS of a server's processes (`docker top -o pid,rss`) and "
    "falls back to the cgroup's anonymous + mapped pages only where the engine's host has no ps."
)


def images() -> dict[str, str]:
    lines = (ROOT / "build" / "images.env").read_text(encoding="utf-8").splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line)


def run(*args: str, env: dict[str, str] | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, check=check, env={**os.environ, **(env or {})})


@dataclass
class Stack:
    """One deploykit stack folder under build/, with the environment every command of it runs with."""

    name: str
    env: dict[str, str]

    @property
    def dir(self) -> Path:
        return STACKS / self.name

    @property
    def project(self) -> str:
        return f"deploykit-{self.name}"

    def deploykit(self, *args: str, timeout: float = 1800) -> Any:
        r = subprocess.run([sys.executable, "-m", "deploykit", *args, "--dir", str(self.dir), "--json"],
                           capture_output=True, text=True, timeout=timeout, env={**os.environ, **self.env})  # fmt: skip
        if r.returncode != 0:
            raise RuntimeError(f"deploykit {args[0]} failed ({r.returncode}): {r.stderr[-3000:]}")
        return json.loads(r.stdout)

    def secrets(self) -> dict[str, str]:
        pairs = (line.split("=", 1) for line in (self.dir / ".env").read_text().splitlines() if "=" in line)
        return {k: v.strip("'") for k, v in pairs if not k.startswith("#")}

    def plan(self) -> dict[str, Any]:
        stack: dict[str, Any] = json.loads((self.dir / "plan.json").read_text())["stack"]
        return stack

    def router(self) -> httpx.Client:
        return client(PORTS[self.name.removeprefix("e2e-mmb-")] + 1, self.secrets()["INFERENCE_API_KEY"])

    def webui(self) -> httpx.Client:
        s, port = self.secrets(), PORTS[self.name.removeprefix("e2e-mmb-")]
        body = {"email": s["DEPLOYKIT_ADMIN_EMAIL"], "password": s["DEPLOYKIT_ADMIN_PASSWORD"]}
        with httpx.Client(timeout=60, trust_env=False) as c:
            r = c.post(f"http://127.0.0.1:{port}/api/v1/auths/signin", json=body)
            r.raise_for_status()
        return client(port, str(r.json()["token"]))

    def container(self, service: str) -> str:
        ids = run("docker", "ps", "-q", "--filter", f"label=com.docker.compose.project={self.project}",
                  "--filter", f"label=com.docker.compose.service={service}").stdout.split()  # fmt: skip
        if not ids:
            raise RuntimeError(f"no running {service} container in {self.project}")
        return ids[0]


def client(port: int, token: str) -> httpx.Client:
    # A connection per request: the router drops a kept-alive one after a proxied POST (docs/several-models.md).
    return httpx.Client(
        base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {token}"}, timeout=600,
        trust_env=False, limits=httpx.Limits(max_keepalive_connections=0),
    )  # fmt: skip


@contextmanager
def stack_up(name: str, imgs: dict[str, str], keep: bool, *args: str) -> Iterator[tuple[Stack, float]]:
    """`deploykit up` of a stack (its seconds from the command to every model answering), down at the end."""
    ports = PORTS[name]
    env = {
        "DEPLOYKIT_WEBUI_PORT": str(ports),
        "DEPLOYKIT_INFERENCE_PORT": str(ports + 1),
        "DEPLOYKIT_MODEL_CACHE": str(CACHE),
        "DEPLOYKIT_IMAGES__LLAMA_SERVER": imgs["LLAMACPP_IMAGE"],
        "DEPLOYKIT_IMAGES__OPEN_WEBUI": imgs["OPENWEBUI_IMAGE"],
        **({"DEPLOYKIT_IMAGES__VLLM_CPU": imgs["VLLM_CPU_IMAGE"]} if "VLLM_CPU_IMAGE" in imgs else {}),
    }
    stack = Stack(f"e2e-mmb-{name}", env)
    stack.dir.parent.mkdir(parents=True, exist_ok=True)
    if (stack.dir / "plan.json").is_file():  # one left by --keep or an interrupted run: its up would take 2 s
        down(stack)
    try:
        t0 = time.monotonic()
        stack.deploykit("up", *args)
        yield stack, time.monotonic() - t0
    finally:
        if not keep and stack.dir.exists():
            down(stack)


def down(stack: Stack) -> None:
    subprocess.run([sys.executable, "-m", "deploykit", "down", "--dir", str(stack.dir), "--volumes", "--yes"],
                   capture_output=True, env={**os.environ, **stack.env}, check=False)  # fmt: skip


def chat(c: httpx.Client, path: str, model: str) -> float:
    """Seconds for one short answer; raises unless it has content."""
    t0 = time.monotonic()
    r = c.post(path, json={"model": model, "messages": PROMPT, "max_tokens": 8, "temperature": 0, "stream": False})
    r.raise_for_status()
    if not r.json()["choices"][0]["message"]["content"]:
        raise RuntimeError(f"{model} answered nothing")
    return time.monotonic() - t0


def router_state(stack: Stack) -> dict[str, str]:
    with stack.router() as c:
        return {m["id"]: m["status"]["value"] for m in c.get("/models").json()["data"]}


def wait_for(what: str, ok: Callable[[], bool], timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if ok():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(what)


def listed_and_answering(stack: Stack, models: tuple[str, ...]) -> list[str]:
    """Every model in Open WebUI's list, each answering a chat through Open WebUI."""
    with stack.webui() as c:
        listed = sorted(m["id"] for m in c.get("/api/models", params={"refresh": "true"}).json()["data"])
        answered = [f"{m} {chat(c, '/api/chat/completions', m):.1f}s" for m in models]
    missing = set(models) - set(listed)
    if missing:
        raise RuntimeError(f"Open WebUI does not list {sorted(missing)}: {listed}")
    return [f"Open WebUI lists {', '.join(listed)}; answered through Open WebUI: {', '.join(answered)}"]


def container_bytes(container: str) -> int:
    """What the container's cgroup is charged (seams/compose.resident_bytes: `deploykit status` without ps)."""
    import docker

    from deploykit.seams.compose import resident_bytes

    held = resident_bytes(docker.from_env().containers.get(container).stats(stream=False)["memory_stats"])
    if held is None:
        raise RuntimeError(f"the engine reports no memory for container {container}")
    return held


def processes_rss(container: str) -> list[tuple[list[str], int]]:
    """Each process of a container: its command line and its RSS in bytes (mapped file pages included)."""
    # -ww: ps cuts command lines to 80 columns unless told (dockerd runs it without a terminal or COLUMNS).
    out = run("docker", "top", container, "-ww", "-o", "pid,rss,args").stdout.splitlines()[1:]
    return [(words, int(rss) * 1024) for _, rss, *words in (line.split() for line in out)]


def process_rss(container: str) -> dict[str, int]:
    """RSS (bytes) of each llama-server in the router's container: each model's child by its --alias, the
    router's own process under "router"."""
    return {
        words[words.index("--alias") + 1] if "--alias" in words else "router": rss
        for words, rss in processes_rss(container)
    }


def use_slots(stack: Stack, placements: list[dict[str, Any]]) -> None:
    """A short prompt per slot of each model at once, so every slot has run once. Long prompts that fill each
    slot's context took minutes each on the 2 shared cores and timed the stack out; llama.cpp clears its KV buffer
    when it loads a model, so each child's RSS is at its full size without them; the mapped weights count as
    mapped file pages whichever LRU list the kernel keeps them on."""
    jobs = [(p["model_id"], f"{i}: say one word.") for p in placements for i in range(p["slots"])]
    with stack.router() as c:

        def one(job: tuple[str, str]) -> None:
            body = {"model": job[0], "messages": [{"role": "user", "content": job[1]}], "max_tokens": 4}
            c.post("/v1/chat/completions", json=body).raise_for_status()

        with ThreadPoolExecutor(len(jobs)) as pool:
            list(pool.map(one, jobs))


def error_row(what: str, plan_bytes: int, measured: int) -> str:
    error = (plan_bytes - measured) / measured
    return f"| {what} | {plan_bytes / MiB:.0f} | {measured / MiB:.0f} | {error:+.0%} |"


TABLE_HEAD = ["| what | plan MiB | measured MiB | plan error |", "|---|---:|---:|---:|"]


def memory_rows(stack: Stack) -> list[str]:
    packing = stack.plan()["packing"]
    placements = packing["placements"]
    use_slots(stack, placements)
    router = stack.container("router")
    measured, rss = container_bytes(router), process_rss(router)
    models_bytes = sum(p["total_bytes"] for p in placements)
    router_own = packing["budgets"][0]["planned_bytes"] - models_bytes
    rows = [
        error_row(f"{p['model_id']}: its llama-server child (RSS)", p["total_bytes"], rss[p["model_id"]])
        for p in placements
    ]
    rows.append(error_row("the router's own process (RSS)", router_own, rss["router"]))
    names = " + ".join(p["model_id"] for p in placements)
    planned = models_bytes + router_own
    stack_what = f"**the router container's processes, RSS summed (`deploykit status`)** ({names} + router)"
    rows.append(error_row(stack_what, planned, sum(rss.values())))
    rows.append(error_row("the router container's cgroup: anonymous + mapped pages charged to it", planned, measured))
    return [*TABLE_HEAD, *rows]


def swap_flags(stack: Stack, model_id: str) -> list[str]:
    """The model's section of the stack's models.ini (and [*]) as llama-server flags, its model path aside."""
    flags: list[str] = []
    section = ""
    for raw in (stack.dir / PRESET_PATH).read_text().splitlines():
        line = raw.strip()
        if line.startswith("["):
            section = line.strip("[]")
        elif "=" in line and not line.startswith("#") and section in ("*", model_id):
            key, value = (part.strip() for part in line.split("=", 1))
            if key in ("model", "load-on-startup"):
                continue
            flags += [f"--{key}"] if value == "true" else [f"--{key}", value]
    return flags


def cold_alone(imgs: dict[str, str], stack: Stack, key: str, model_id: str) -> float:
    """From `docker run` of a single-model llama-server with the stack's flags for it to its first answer."""
    name = f"{stack.project}-alone"
    run("docker", "rm", "-f", name, check=False)
    t0 = time.monotonic()
    run("docker", "run", "-d", "--name", name, "--label", f"org.deploykit.stack={stack.project}",
        "-p", f"127.0.0.1:{ALONE_PORT}:8080", "-v", f"{FILES[model_id]}:/models/{model_id}.gguf:ro",
        imgs["LLAMACPP_IMAGE"], "-m", f"/models/{model_id}.gguf", "--alias", model_id, "--host", "0.0.0.0",
        "--port", "8080", *swap_flags(stack, model_id), "--api-key", key)  # fmt: skip
    try:
        with client(ALONE_PORT, key) as c:
            wait_for("llama-server alone", lambda: c.get("/health").status_code == 200)
            chat(c, "/v1/chat/completions", model_id)
        return time.monotonic() - t0
    finally:
        run("docker", "rm", "-f", name, check=False)


def after_swap(stack: Stack, model_id: str, via: str) -> float:
    """The other model loaded, then this one's first answer (router: unload, load, answer)."""
    other = next(m for m in FILES if m != model_id)
    with stack.router() as c:
        chat(c, "/v1/chat/completions", other)
    wait_for("the swap's starting point", lambda: router_state(stack) == {other: "loaded", model_id: "unloaded"})
    if via == "router":
        with stack.router() as c:
            return chat(c, "/v1/chat/completions", model_id)
    with stack.webui() as c:
        return chat(c, "/api/chat/completions", model_id)


def warm(stack: Stack, model_id: str) -> float:
    with stack.router() as c:
        chat(c, "/v1/chat/completions", model_id)  # loaded, if it was not
        return chat(c, "/v1/chat/completions", model_id)


def swap_rows(imgs: dict[str, str], stack: Stack, rounds: int) -> list[str]:
    key = stack.secrets()["INFERENCE_API_KEY"]
    measures: dict[str, Callable[[str], float]] = {
        "cold": lambda m: cold_alone(imgs, stack, key, m),
        "swap": lambda m: after_swap(stack, m, "router"),
        "warm": lambda m: warm(stack, m),
        "swap-webui": lambda m: after_swap(stack, m, "webui"),
    }
    times: dict[tuple[str, str], list[float]] = {}
    for _ in range(rounds):
        for model_id in FILES:
            for kind, measure in measures.items():
                times.setdefault((model_id, kind), []).append(measure(model_id))
    out = [
        "| model | cold start alone s | first answer after a swap s | ratio | warm answer s | swap via Open WebUI s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for model_id in FILES:
        med = {kind: statistics.median(times[(model_id, kind)]) for kind in measures}
        rounds_of = {k: ", ".join(f"{t:.2f}" for t in times[(model_id, k)]) for k in ("cold", "swap")}
        out.append(
            f"| {model_id} | {med['cold']:.2f} ({rounds_of['cold']}) | {med['swap']:.2f} ({rounds_of['swap']}) | "
            f"{med['swap'] / med['cold']:.2f} × | {med['warm']:.2f} | {med['swap-webui']:.2f} |"
        )
    return out


def small_host() -> Path:
    """The built-in `cpu` profile with 2 cores and SMALL_HOST_MIB of RAM, as `deploykit detect --json` writes it."""
    from deploykit.catalog import builtin_profiles, find_profile

    host = find_profile("cpu", builtin_profiles()).model_dump(mode="json")
    host |= {"name": "small", "description": "2 cores, little RAM", "source": "file"}
    host["cpu"] |= {"physical_cores": 2, "logical_cores": 2}
    host["memory"]["total_bytes"] = SMALL_HOST_MIB * MiB
    path = STACKS / "small-host.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(host), encoding="utf-8")
    return path


def mixed_rows(stack: Stack) -> list[str]:
    """Each server's container against its model's plan figure, after a chat each through Open WebUI."""
    services = {row["model"]: row["service"] for row in stack.deploykit("status")["models"]}
    with stack.webui() as c:
        for model in services:
            chat(c, "/api/chat/completions", model)
    rows = []
    for p in stack.plan()["packing"]["placements"]:
        service = services[p["model_id"]]
        container = stack.container(service)
        what = f"{p['model_id']} ({p['backend']}, service {service})"
        summed = sum(rss for _, rss in processes_rss(container))
        rows.append(error_row(f"{what}: its processes, RSS summed (`deploykit status`)", p["total_bytes"], summed))
        rows.append(error_row(f"{what}: its cgroup", p["total_bytes"], container_bytes(container)))
    return [*TABLE_HEAD, *rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--mixed", action="store_true", help="also vLLM's CPU build beside llama.cpp (slow)")
    parser.add_argument("--keep", action="store_true", help="leave the stacks running")
    parser.add_argument("--write", action="store_true", help="replace the section in docs/benchmarks.md")
    args = parser.parse_args()
    imgs = images()
    lines: list[str] = []
    with stack_up("pair", imgs, args.keep, "--profile", "cpu", *TWO_GGUF) as (stack, took):
        packing = stack.plan()["packing"]
        lines.append(f"Together (`deploykit up --profile cpu`, {packing['mode']}, --models-max "
                     f"{packing['models_max']}): up {took:.0f} s, both models answering.")  # fmt: skip
        lines += listed_and_answering(stack, (Q4, Q8))
        lines += ["", "Memory with both models loaded and every slot used once:", "", *memory_rows(stack), "", READING]
    with stack_up("ondemand", imgs, args.keep, "--host", str(small_host()), *TWO_GGUF) as (stack, took):
        packing = stack.plan()["packing"]
        if packing["mode"] != "on_demand" or packing["models_max"] != 1:
            raise RuntimeError(f"the small host was planned {packing['mode']}, --models-max {packing['models_max']}")
        wait_for("the router's first model loaded", lambda: "loaded" in router_state(stack).values())
        slots = {p["model_id"]: f"{p['slots']} × {p['context']}" for p in packing["placements"]}
        lines += ["", f"On demand (`--host` of {SMALL_HOST_MIB} MiB RAM: the planner chose --models-max 1; slots × "
                  f"context {slots}): up {took:.0f} s. Swap against cold start, median of {args.rounds} interleaved "
                  "rounds:", ""]  # fmt: skip
        lines += swap_rows(imgs, stack, args.rounds)
    if args.mixed:
        fp16 = ("--model", FP16, "--model-file", str(CACHE / "smollm2-135m-instruct-fp16"),
                "--model", Q4, "--model-file", str(FILES[Q4]))  # fmt: skip
        with stack_up("mixed", imgs, args.keep, "--profile", "cpu-vllm", *fp16) as (stack, took):
            lines += ["", f"vLLM CPU ({FP16}) beside llama.cpp ({Q4}): up {took:.0f} s, after a chat each:", ""]
            lines += mixed_rows(stack)
    load = os.getloadavg()
    ram = gib(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    command = "python benchmarks/multimodel.py" + (f" --rounds {args.rounds}" if args.rounds != 3 else "")
    head = (
        f"Machine: {platform.node()} ({os.cpu_count()} CPUs, {ram} RAM, shared with other jobs: load average "
        f"{load[0]:.1f} at the end); {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; command: "
        f"`{command}{' --mixed' if args.mixed else ''}`"
    )
    print(head, *lines, sep="\n")
    if args.write:
        write_section(head, lines)


def write_section(head: str, lines: list[str]) -> None:
    """The several-models section of docs/benchmarks.md replaced by this run's (one run's figures, not a log)."""
    text = RESULTS.read_text(encoding="utf-8")
    title = "## Several models: memory vs plan, swap vs cold start (multimodel.py, real deploykit stacks)\n\n"
    start = text.find(ENDING)
    end = text.find("\n## ", start + 1) if start >= 0 else -1
    before, after = (text, "") if start < 0 else (text[:start], "" if end < 0 else text[end:])
    RESULTS.write_text(before.rstrip("\n") + "\n\n" + title + CHANGED + head + "\n\n" + "\n".join(lines) + "\n" + after,
                       encoding="utf-8")  # fmt: skip


if __name__ == "__main__":
    main()
