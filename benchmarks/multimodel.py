"""Several models in one stack (issue 17): a swap's first answer against a cold start, memory against the plan.

    python benchmarks/multimodel.py [--rounds N] [--keep] [--write]

Brings up the hand-written prototype in tests/fixtures/multimodel/ (vLLM's CPU build with the FP16 SmolLM2,
llama.cpp's router with its Q4_1 and Q8_0 GGUF files, Open WebUI with one connection to each), checks that
Open WebUI lists all three models and that each answers a chat through Open WebUI, then, side by side:

- memory: with both GGUF models loaded (--models-max 2) and every slot used once, each container's memory
  (cgroup usage minus page cache, as benchmarks/memory_estimate.py measures) against what deploykit.packing
  plans for the same three models (target: within ±15 %);
- swap: with --models-max 1, a model's first answer when the other GGUF model is loaded (the router unloads it,
  loads this one, answers), against the same model's cold start alone (a single-model llama-server container
  with the same flags, from `docker run` to its first answer). Target: swap ≤ 1.5 × cold start. The rounds
  interleave the two, so a busy machine slows both alike; the warm answer (model already loaded) shows how
  much of each is the answer itself.

Needs build/images.env (LLAMACPP_IMAGE, VLLM_CPU_IMAGE, OPENWEBUI_IMAGE) and the models of the provisioning
targets model, model-fp16, model-second. Ports 30862-30865; everything is labelled
``org.deploykit.stack=e2e-mm-bench`` and removed at the end (unless --keep). With --keep, the secrets stay in
build/e2e-mm-bench.json, so the next run finds the stack as it left it (vLLM's slow start is not repeated).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import statistics
import subprocess
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import httpx

from deploykit.catalog import builtin_models, builtin_profiles, find_model, find_profile
from deploykit.planning.packing import MemoryPool, ModelDemand, Packing, demand_from_plan, pack
from deploykit.planning.planner import plan_deployment
from deploykit.seams.modelfile import read_model_path
from deploykit.values.paths import model_cache
from deploykit.values.plan import PlanSettings
from deploykit.values.units import GiB, MiB, gib

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "multimodel"
PROJECT = "e2e-mm-bench"
WEBUI_PORT, ROUTER_PORT, VLLM_PORT, ALONE_PORT = 30862, 30863, 30864, 30865
GGUF = {"smollm2-q4": "SmolLM2-135M-Instruct.Q4_1.gguf", "smollm2-q8": "SmolLM2-135M-Instruct.Q8_0.gguf"}
FP16 = "smollm2-135m-instruct-fp16"
# The router's own process beside its children: VmRSS 18.9 MiB measured (docs/several-models.md).
ROUTER_BYTES = 19 * MiB
# The flags the preset gives every model (models.ini [*]); a cold start alone runs with the same.
LLAMA_FLAGS = ["-c", "16384", "-np", "4", "-t", "2", "-b", "2048", "-ub", "512", "--flash-attn", "on",
               "-ctk", "f16", "-ctv", "f16", "--jinja"]  # fmt: skip
RESULTS = ROOT / "docs" / "benchmarks.md"
SECRETS = ROOT / "build" / f"{PROJECT}.json"
PROMPT = [{"role": "user", "content": "Say hello in five words."}]


def images() -> dict[str, str]:
    lines = (ROOT / "build" / "images.env").read_text(encoding="utf-8").splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line)


def run(*args: str, env: dict[str, str] | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, check=check, env={**os.environ, **(env or {})})


class Stack:
    """The prototype under one compose project, with its secrets and loopback clients."""

    def __init__(self, imgs: dict[str, str]) -> None:
        if not SECRETS.exists():
            SECRETS.parent.mkdir(parents=True, exist_ok=True)
            fresh = {"key": "mm-" + secrets.token_hex(12), "webui_secret": secrets.token_hex(16),
                     "admin_password": secrets.token_hex(12)}  # fmt: skip
            SECRETS.write_text(json.dumps(fresh), encoding="utf-8")
            SECRETS.chmod(0o600)
        kept = json.loads(SECRETS.read_text(encoding="utf-8"))
        self.key, self.password = str(kept["key"]), str(kept["admin_password"])
        self.env = {
            **{k: imgs[k] for k in ("LLAMACPP_IMAGE", "VLLM_CPU_IMAGE", "OPENWEBUI_IMAGE")},
            "MODEL_CACHE": str(model_cache()),
            "MM_API_KEY": self.key,
            "MM_WEBUI_SECRET": str(kept["webui_secret"]),
            "MM_STACK": PROJECT,
            "MM_WEBUI_PORT": str(WEBUI_PORT),
            "MM_ROUTER_PORT": str(ROUTER_PORT),
            "MM_VLLM_PORT": str(VLLM_PORT),
        }
        self.token = ""

    def compose(self, *args: str, models_max: int = 2) -> None:
        run("docker", "compose", "-p", PROJECT, "-f", str(FIXTURE / "compose.yaml"), *args,
            env={**self.env, "MM_MODELS_MAX": str(models_max)})  # fmt: skip

    def client(self, port: int, token: str) -> httpx.Client:
        # A connection per request: the router drops a kept-alive one after a proxied POST (docs/several-models.md).
        return httpx.Client(
            base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {token}"}, timeout=600,
            trust_env=False, limits=httpx.Limits(max_keepalive_connections=0),
        )  # fmt: skip

    def router(self) -> httpx.Client:
        return self.client(ROUTER_PORT, self.key)

    def webui(self) -> httpx.Client:
        return self.client(WEBUI_PORT, self.token)

    def sign_in(self) -> None:
        """The admin's token: signed in, else signed up (the first account of a fresh volume is the admin)."""
        with httpx.Client(base_url=f"http://127.0.0.1:{WEBUI_PORT}", timeout=60, trust_env=False) as c:
            body = {"name": "mm admin", "email": "admin@e2e-mm.local", "password": self.password}
            r = c.post("/api/v1/auths/signin", json=body)
            if r.status_code != 200:
                r = c.post("/api/v1/auths/signup", json=body)
            r.raise_for_status()
            self.token = str(r.json()["token"])

    def load_all(self) -> None:
        with self.router() as c:
            for model_id, state in router_state(self).items():
                if state == "unloaded":
                    c.post("/models/load", json={"model": model_id}).raise_for_status()


def chat(client: httpx.Client, path: str, model: str) -> float:
    """Seconds for one short answer; raises unless it has content."""
    t0 = time.monotonic()
    r = client.post(path, json={"model": model, "messages": PROMPT, "max_tokens": 8, "temperature": 0, "stream": False})
    r.raise_for_status()
    content = r.json()["choices"][0]["message"]["content"]
    if not content:
        raise RuntimeError(f"{model} answered nothing")
    return time.monotonic() - t0


def router_state(stack: Stack) -> dict[str, str]:
    with stack.router() as c:
        return {m["id"]: m["status"]["value"] for m in c.get("/models").json()["data"]}


def wait_for(what: str, ok: Callable[[], bool], timeout: float = 900) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if ok():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(what)


def prove_listed_and_answering(stack: Stack) -> list[str]:
    """Every model in Open WebUI's list, each answering a chat through Open WebUI."""
    with stack.webui() as c:
        listed = sorted(m["id"] for m in c.get("/api/models").json()["data"])
        answered = [f"{m} {chat(c, '/api/chat/completions', m):.1f}s" for m in (FP16_ID, *GGUF)]
    return [f"Open WebUI lists {', '.join(listed)}", "answered through Open WebUI: " + ", ".join(answered)]


FP16_ID = "smollm2-fp16"


def planned() -> Packing:
    """deploykit.packing's plan for the three models on this host's RAM (the planner's own per-model figures)."""
    models = builtin_models()
    spec = find_model("smollm2-135m-instruct", models)
    demands: list[ModelDemand] = []
    _, fp16_weights = read_model_path(model_cache() / FP16)
    vllm = plan_deployment(find_profile("cpu-vllm", builtin_profiles()), spec, PlanSettings(), weights=fp16_weights)
    demands.append(
        demand_from_plan(
            vllm,
            on_demand=False,
            takes_share=False,
            min_context=512,
            model_id=FP16_ID,
            kv_bytes_per_token=spec.kv_bytes_per_token(),
            kv_granularity_bytes=GiB,
        )
    )
    cpu = find_profile("cpu", builtin_profiles())
    for model_id, name in GGUF.items():
        _, weights = read_model_path(model_cache() / name)
        llama = plan_deployment(cpu, spec, PlanSettings(parallel=4), weights=weights)
        demands.append(demand_from_plan(llama, on_demand=True, takes_share=False, min_context=512, model_id=model_id))
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return pack(demands, [MemoryPool("RAM", "ram", total - 2 * GiB, total)], router_overhead_bytes=ROUTER_BYTES)


def container_bytes(service: str) -> int:
    name = run("docker", "ps", "-q", "--filter", f"label=com.docker.compose.project={PROJECT}",
               "--filter", f"label=com.docker.compose.service={service}").stdout.split()[0]  # fmt: skip
    import docker

    stats = docker.from_env().containers.get(name).stats(stream=False)["memory_stats"]
    cache = stats.get("stats", {}).get("inactive_file", stats.get("stats", {}).get("cache", 0))
    return int(stats["usage"]) - int(cache)


def fill_slots(stack: Stack) -> None:
    """One prompt of most of a slot's context per slot of each GGUF model, so every KV page is touched."""
    from concurrent.futures import ThreadPoolExecutor

    filler = "The quick brown fox jumps over the lazy dog. " * 280
    with stack.router() as c:

        def one(job: tuple[str, int]) -> None:
            messages = [{"role": "user", "content": f"{job[1]}: {filler}"}]
            c.post("/v1/chat/completions", json={"model": job[0], "messages": messages, "max_tokens": 4})

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(one, [(m, i) for m in GGUF for i in range(4)]))


def memory_rows(stack: Stack, packing: Packing) -> list[str]:
    fill_slots(stack)
    with stack.client(VLLM_PORT, stack.key) as c:
        chat(c, "/v1/chat/completions", FP16_ID)
    plan_router = sum(packing.placement(m).total_bytes for m in GGUF) + ROUTER_BYTES
    rows = [("vllm (smollm2-fp16)", packing.placement(FP16_ID).total_bytes, container_bytes("vllm")),
            ("router (q4 + q8 + router)", plan_router, container_bytes("router"))]  # fmt: skip
    rows.append(("both servers (3 models)", rows[0][1] + rows[1][1], rows[0][2] + rows[1][2]))
    out = [f"| {'what':28} | {'plan MiB':>9} | {'measured MiB':>12} | {'plan error':>10} |", "|---|---:|---:|---:|"]
    for name, plan_bytes, measured in rows:
        error = (plan_bytes - measured) / measured
        out.append(f"| {name:28} | {plan_bytes / MiB:9.0f} | {measured / MiB:12.0f} | {error:+10.0%} |")
    return out


def cold_alone(imgs: dict[str, str], key: str, model_id: str) -> float:
    """From `docker run` of a single-model llama-server to its first answer."""
    name = f"{PROJECT}-alone"
    run("docker", "rm", "-f", name, check=False)
    t0 = time.monotonic()
    run("docker", "run", "-d", "--name", name, "--label", f"org.deploykit.stack={PROJECT}",
        "-p", f"127.0.0.1:{ALONE_PORT}:8080", "-v", f"{model_cache()}:/models:ro", imgs["LLAMACPP_IMAGE"],
        "-m", f"/models/{GGUF[model_id]}", "--alias", model_id, "--host", "0.0.0.0", "--port", "8080",
        *LLAMA_FLAGS, "--api-key", key)  # fmt: skip
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{ALONE_PORT}", headers={"Authorization": f"Bearer {key}"},
                          timeout=600, trust_env=False) as c:  # fmt: skip
            wait_for("llama-server alone", lambda: c.get("/health").status_code == 200, 300)
            chat(c, "/v1/chat/completions", model_id)
        return time.monotonic() - t0
    finally:
        run("docker", "rm", "-f", name, check=False)


def after_swap(stack: Stack, model_id: str, via: str) -> float:
    """The other GGUF model loaded, then this one's first answer (router: unload, load, answer)."""
    other = next(m for m in GGUF if m != model_id)
    with stack.router() as c:
        chat(c, "/v1/chat/completions", other)
    wait_for("the swap's starting point", lambda: router_state(stack) == {other: "loaded", model_id: "unloaded"}, 60)
    if via == "router":
        with stack.router() as c:
            return chat(c, "/v1/chat/completions", model_id)
    with stack.webui() as c:
        return chat(c, "/api/chat/completions", model_id)


def warm(stack: Stack, model_id: str) -> float:
    with stack.router() as c:
        return chat(c, "/v1/chat/completions", model_id)


def swap_rows(imgs: dict[str, str], stack: Stack, rounds: int) -> list[str]:
    measures: dict[str, Callable[[str], float]] = {
        "cold": lambda m: cold_alone(imgs, stack.key, m),
        "swap": lambda m: after_swap(stack, m, "router"),
        "warm": lambda m: warm(stack, m),
        "swap-webui": lambda m: after_swap(stack, m, "webui"),
    }
    times: dict[tuple[str, str], list[float]] = {}
    for _ in range(rounds):
        for model_id in GGUF:
            for kind, measure in measures.items():
                times.setdefault((model_id, kind), []).append(measure(model_id))
    out = [
        "| model | cold start alone s | first answer after a swap s | ratio | warm answer s | swap via Open WebUI s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for model_id in GGUF:
        med = {kind: statistics.median(times[(model_id, kind)]) for kind in ("cold", "swap", "warm", "swap-webui")}
        rounds_of = {k: ", ".join(f"{t:.2f}" for t in times[(model_id, k)]) for k in ("cold", "swap")}
        out.append(
            f"| {model_id} | {med['cold']:.2f} ({rounds_of['cold']}) | {med['swap']:.2f} ({rounds_of['swap']}) | "
            f"{med['swap'] / med['cold']:.2f} × | {med['warm']:.2f} | {med['swap-webui']:.2f} |"
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--keep", action="store_true", help="leave the stack running")
    parser.add_argument("--write", action="store_true", help="append the tables to docs/benchmarks.md")
    args = parser.parse_args()
    imgs = images()
    stack = Stack(imgs)
    lines: list[str] = []
    try:
        t0 = time.monotonic()
        stack.compose("up", "-d", "--wait", models_max=2)
        lines.append(f"stack up (vLLM first, then the router, Open WebUI beside): {time.monotonic() - t0:.0f}s")
        stack.sign_in()
        stack.load_all()
        wait_for("both GGUF models loaded", lambda: set(router_state(stack).values()) == {"loaded"}, 300)
        lines.extend(prove_listed_and_answering(stack))
        packing = planned()
        lines += ["", "Memory with all three models loaded (--models-max 2):", "", *memory_rows(stack, packing)]
        stack.compose("up", "-d", "--wait", "router", models_max=1)
        wait_for("the router at --models-max 1", lambda: "loaded" in router_state(stack).values(), 300)
        lines += ["", f"Swap against cold start (--models-max 1), median of {args.rounds} interleaved rounds:", ""]
        lines += swap_rows(imgs, stack, args.rounds)
    finally:
        run("docker", "rm", "-f", f"{PROJECT}-alone", check=False)
        if not args.keep:
            stack.compose("down", "--volumes", "--remove-orphans")
            SECRETS.unlink(missing_ok=True)
    load = os.getloadavg()
    ram = gib(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    head = (
        f"Machine: {platform.node()} ({os.cpu_count()} CPUs, {ram} RAM), "
        f"load average {load[0]:.1f} at the end; {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; "
        f"command: python benchmarks/multimodel.py --rounds {args.rounds}"
    )
    print(head, *lines, sep="\n")
    if args.write:
        with RESULTS.open("a", encoding="utf-8") as f:
            f.write("\n## Several models: swap vs cold start, memory vs plan (multimodel.py)\n\n" + head + "\n\n")
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
