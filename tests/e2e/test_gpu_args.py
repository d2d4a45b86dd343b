"""Every GPU command line deploykit renders, run through the pinned release's own argument handling — no GPU.

The provisioned CPU images are the same releases as the GPU images the stacks name (vLLM 0.32.0, llama.cpp
build 11669), and their argument parsers are the ones the GPU images run. For each stack shape below the
stack is rendered with deploykit's library, as `deploykit render` would, and `docker compose config`
(with the stack's .env) gives the inference service's entrypoint, command and environment. Then, in one
container per image for the whole batch:

- vLLM (tests/e2e/gpu_args_vllm.py): the entrypoint module's own start-up — FlexibleArgumentParser +
  make_arg_parser, validate_parsed_serve_args, validate_api_server_args, AsyncEngineArgs.from_cli_args,
  and the model-free checks of create_engine_config — stopping before the model and the device;
- llama.cpp (tests/e2e/gpu_args_llamacpp.sh): llama-server itself with the rendered argv and a model path
  that does not exist: it must get past argument parsing and stop at loading the model.

Every VLLM_*, LLAMA_ARG_* and NVIDIA_* name in a rendered inference environment must be one the image reads:
vLLM's registry (vllm.envs.environment_variables, from the image), llama-server's --help (it names each flag's
variable, from the image), the NVIDIA Container Toolkit's names (tests/fixtures/gpu/
nvidia-container-toolkit-env.json, with its source).

Each parser is shown to refuse deliberately broken commands, so these tests can fail. A new stack shape
(several models per stack, issue 17) is one more entry in SHAPES; every inference service of a rendered
stack is checked. docs/gpu-verification.md says what this proves and what it does not.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from deploykit.app.stack import StackRequest, render_stack
from deploykit.catalog import builtin_models, builtin_profiles
from deploykit.config.settings import Images, load_settings
from deploykit.seams.detect import parse_nvidia_smi_xml
from deploykit.values.errors import PlanError
from deploykit.values.host import HostProfile
from deploykit.values.versions import pinned
from tests.e2e.conftest import ROOT, images, need, remove_by_label

pytestmark = pytest.mark.e2e

PROJECT = "deploykit-e2e-gpuargs"
LABEL = f"org.deploykit.stack={PROJECT}"
HERE = Path(__file__).resolve().parent
FIXTURES = ROOT / "tests" / "fixtures"
GPU_FIXTURES = FIXTURES / "gpu"
H200_DETECTED = GPU_FIXTURES / "h200" / "detect.json"
TWO_GTX_1070_XML = GPU_FIXTURES / "pai-2x-gtx-1070.xml"
NVIDIA_ENV = GPU_FIXTURES / "nvidia-container-toolkit-env.json"
TINY_GGUF = FIXTURES / "gguf" / "tiny.gguf"
VLLM_MARK = "@@deploykit-gpuargs-vllm@@"
LLAMA_MARK = "@@deploykit-gpuargs-llamacpp@@"
# The prefixes whose names must be known, and which backend's image reads each (None: the GPU runtime).
CHECKED_PREFIXES = {"VLLM_": "vllm", "LLAMA_ARG_": "llamacpp", "NVIDIA_": None}


# ------------------------------------------------------------------------------------------------ shapes


@dataclass(frozen=True)
class Shape:
    """One way a stack is rendered: a host (a built-in profile, or a host file made in the stack's folder),
    a model, and planner settings as a user gives them (``backend`` = `--backend`, knobs = config keys)."""

    name: str
    profile: str = "auto"
    host: Callable[[Path], Path] | None = None
    model_id: str | None = None
    model_path: Path | None = None
    settings: Mapping[str, object] = field(default_factory=dict)
    # Shapes named for a case (not the catalog sweep) must plan; a catalog pair the planner refuses is skipped.
    must_plan: bool = True


def _device_script(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(f"gpuargs_{name}", ROOT / "scripts" / "device" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def partial_offload_host(folder: Path) -> Path:
    """The real H200's detection with its memory cut until the planner puts about half of tiny.gguf's layers
    on it: scripts/device/gpu_args.py partial-host, which the device check uses too."""
    path = folder / "partial-host.json"
    path.write_text(json.dumps(_device_script("gpu_args").partial_host(H200_DETECTED, TINY_GGUF)))
    return path


def two_gtx_1070_host(folder: Path) -> Path:
    """Two GTX 1070s as deploykit's nvidia-smi XML parser reads the real recording; CPU and RAM from the
    recorded H200 host (the recording has neither)."""
    detected = HostProfile.model_validate_json(H200_DETECTED.read_text())
    gpus = parse_nvidia_smi_xml(TWO_GTX_1070_XML.read_text())
    path = folder / "two-gtx-1070.json"
    path.write_text(detected.model_copy(update={"name": "two-gtx-1070", "gpus": gpus}).model_dump_json())
    return path


GPU_PROFILES = tuple(p.name for p in builtin_profiles() if p.gpus)
MODELS = tuple(m.id for m in builtin_models())
BACKENDS = (None, "vllm", "llamacpp")  # None: the planner's choice


def catalog_shapes() -> list[Shape]:
    """Every built-in GPU profile × every catalog model × planner's choice / --backend vllm / llamacpp."""
    return [
        Shape(f"{profile}/{model}/{backend or 'auto'}", profile, model_id=model, settings={"backend": backend},
              must_plan=False)
        for profile in GPU_PROFILES for model in MODELS for backend in BACKENDS
    ]  # fmt: skip


SHAPES: list[Shape] = [
    *catalog_shapes(),
    # Forced partial offload: the device check's own host (tiny.gguf, half its layers on the GPU).
    Shape("h200-partial-offload/tiny.gguf", host=partial_offload_host, model_path=TINY_GGUF),
    # A host file with two GPUs, from a real nvidia-smi -q -x recording.
    *(
        Shape(f"2x-gtx-1070/{model}/{backend or 'auto'}", host=two_gtx_1070_host, model_id=model,
              settings={"backend": backend}, must_plan=backend != "vllm")
        for model in ("deepseek-r1-distill-qwen-1.5b", "deepseek-r1-distill-qwen-7b") for backend in BACKENDS
    ),
    # The serving knobs a user (or `deploykit tune`) sets: each reaches the command line.
    Shape("h200/vllm/tuned", "h200", settings={"backend": "vllm", "max_context": 16384, "max_num_seqs": 64,
          "batch_size": 4096, "gpu_memory_utilization": 0.5}),
    Shape("rtx4090/vllm/batch-512", "rtx4090", settings={"backend": "vllm", "batch_size": 512}),
    Shape("rtx3060/vllm/batch-128", "rtx3060", settings={"batch_size": 128}),
    Shape("rtx3060/llamacpp/q8_0-cache", "rtx3060", settings={"backend": "llamacpp", "kv_cache_type": "q8_0",
          "parallel": 2, "batch_size": 1024, "ubatch_size": 256, "threads": 4}),
    Shape("gtx1650/llamacpp/7b-q4_0-flash-off", "gtx1650", model_id="deepseek-r1-distill-qwen-7b",
          settings={"kv_cache_type": "q4_0", "flash_attn": "off", "max_context": 8192}),
    Shape("rtx4060/llamacpp/flash-off-bf16", "rtx4060", settings={"backend": "llamacpp", "flash_attn": "off",
          "kv_cache_type": "bf16", "parallel": 1}),
    # The CPU builds' own stacks (their environment has VLLM_* names), as the reference stacks render them.
    Shape("cpu/default", "cpu"),
    Shape("cpu-vllm/default", "cpu-vllm"),
    # Several models in one stack (issue 17): every model served alone is one more inference service, vLLM with
    # the share the packer gave it (three decimals); the llama.cpp router's own check is
    # tests/e2e/test_several_models_args.py.
    Shape("rtx3060/several/vllm-fp16+llamacpp-q4", "rtx3060", settings={"models": (
          {"id": "deepseek-r1-distill-qwen-1.5b"}, {"id": "deepseek-r1-distill-qwen-7b", "quantization": "Q4_K_M"})}),
    Shape("h200/several/three-vllm", "h200", settings={"models": (
          {"id": "deepseek-r1-distill-qwen-1.5b"}, {"id": "qwen2.5-1.5b-instruct"},
          {"id": "deepseek-r1-distill-qwen-7b"})}),
    Shape("gtx1650/several/on-demand+vllm", "gtx1650", settings={"models": (
          {"id": "deepseek-r1-distill-qwen-1.5b"}, {"id": "qwen2.5-1.5b-instruct"},
          {"id": "smollm2-135m-instruct"})}),
    Shape("cpu-vllm/several/fp16+gguf", "cpu-vllm", settings={"models": (
          {"id": "smollm2-135m-instruct"}, {"id": "qwen2.5-1.5b-instruct", "backend": "llamacpp"})}),
]  # fmt: skip


# ------------------------------------------------------------------------------------------------ rendering


@dataclass(frozen=True)
class Check:
    """One inference service of one rendered shape: what its container would run."""

    id: str
    shape: str
    profile: str  # what the stack's plan names as its host
    backend: str
    plan: str  # "vllm/cuda", "llamacpp/cuda 20/28 layers", …
    image: str
    entrypoint: list[str]
    command: list[str]
    environment: dict[str, str]


def image_backends() -> dict[str, str]:
    """The images a stack can name for its inference service, and which server each one is."""
    defaults, versions = Images(), pinned()
    vllm = (defaults.vllm, defaults.vllm_cpu, versions.get("vllm", "image_older_cuda"))
    return {image: "vllm" for image in vllm if image} | {
        defaults.llama_server: "llamacpp",
        defaults.llama_server_cuda: "llamacpp",
    }


def compose_config(stack_dir: Path) -> dict[str, Any]:
    """`docker compose config` of the rendered stack, variables from its own .env only."""
    env = {key: os.environ[key] for key in ("PATH", "HOME", "DOCKER_CONFIG") if key in os.environ}
    out = subprocess.run(
        ["docker", "compose", "--project-directory", str(stack_dir), "-f", str(stack_dir / "compose.yaml"),
         "config", "--format", "json"],
        capture_output=True, text=True, env=env, check=False, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, f"docker compose config refused {stack_dir}: {out.stderr}"
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def render_shape(shape: Shape, folder: Path) -> list[Check] | str:
    """The shape's checks, or the planner's reason when it refuses a catalog pair."""
    folder.mkdir(parents=True)
    host_file = shape.host(folder) if shape.host else None
    settings = load_settings(**{k: v for k, v in shape.settings.items() if v is not None})
    request = StackRequest(folder / "stack", profile=shape.profile, host_file=host_file,
                               model_id=shape.model_id, model_path=shape.model_path)  # fmt: skip
    try:
        render_stack(settings, request)
    except PlanError as exc:
        if shape.must_plan:
            raise
        return str(exc)
    stored = json.loads((request.stack_dir / "plan.json").read_text())
    # A stack of several models: each service's own model's plan (one model: the stack's plan).
    plans = {m["service"]: m["plan"] for m in stored["stack"].get("models", ())}
    config = compose_config(request.stack_dir)
    checks = []
    for name, service in sorted(config["services"].items()):
        if not service.get("labels", {}).get("org.deploykit.service", "").startswith("inference"):
            continue
        plan = plans.get(name, stored["stack"]["plan"])
        where = f"{plan['backend']}/{plan['device']}"
        if plan["backend"] == "llamacpp" and plan["device"] == "cuda":
            where += f" {plan['gpu_layers']}/{plan['total_layers']} layers"
        backend = image_backends().get(service["image"])
        assert backend is not None, f"{shape.name}: {name} runs {service['image']}, not an image deploykit pins"
        checks.append(Check(
            id=f"{len(checks)}", shape=shape.name, profile=stored["inputs"]["host"]["name"], backend=backend,
            plan=where, image=service["image"], entrypoint=list(service.get("entrypoint") or []),
            command=[str(word) for word in service.get("command") or []],
            environment={k: str(v) for k, v in (service.get("environment") or {}).items()},
        ))  # fmt: skip
    assert checks, f"{shape.name}: the rendered stack has no inference service"
    return checks


# ------------------------------------------------------------------------------------------------ running


def docker_run(args: list[str], stdin: str | None = None, timeout: float = 900) -> str:
    """One labelled, network-less container, removed when it exits; its stdout, then its stderr."""
    run = subprocess.run(
        ["docker", "run", "--rm", "--label", LABEL, "--network", "none", "-i", *args],
        input=stdin, capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip
    return run.stdout + run.stderr


@dataclass(frozen=True)
class Verdict:
    refused: str | None  # None: accepted; else where and why, in the parser's own words
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class ParserRun:
    version: str
    env_names: frozenset[str]
    verdicts: dict[str, Verdict]
    seconds: float


def run_vllm(image: str, checks: Mapping[str, Check]) -> ParserRun:
    """vLLM's start-up up to the model, for every check, in one container."""
    batch = {
        "checks": [
            {"id": key, "entrypoint": c.entrypoint, "command": c.command, "environment": c.environment}
            for key, c in checks.items()
        ]
    }
    started = time.monotonic()
    out = docker_run(
        ["-v", f"{HERE / 'gpu_args_vllm.py'}:/gpuargs/check.py:ro", "--entrypoint", "python3", image,
         "/gpuargs/check.py"],
        stdin=json.dumps(batch),
    )  # fmt: skip
    line = next((line for line in out.splitlines() if line.startswith(VLLM_MARK)), None)
    assert line is not None, f"the vLLM checker printed no result:\n{out[-6000:]}"
    report = json.loads(line.removeprefix(VLLM_MARK))
    verdicts = {}
    for result in report["results"]:
        refused = None if result["stage"] is None else f"{result['stage']}: {_last_error_line(result['error'])}"
        assert result["stage"] != "checker", f"the vLLM checker itself failed:\n{result['error']}"
        verdicts[result["id"]] = Verdict(refused, tuple(result["warnings"]))
    return ParserRun(report["version"], frozenset(report["env_names"]), verdicts, time.monotonic() - started)


def _last_error_line(error: str) -> str:
    """argparse prints its usage first; the line that says what is wrong comes last."""
    lines = [line.strip() for line in error.splitlines() if line.strip()]
    said = [line for line in lines if ": error: " in line]
    return said[-1] if said else " ".join(lines)


# llama-server's own words (common/arg.cpp): a flag it does not know, a value its handler threw on, a flag
# without its value, a LLAMA_ARG_* value it could not use.
LLAMA_REFUSALS = re.compile(
    r"^(error: invalid argument: .*|error while handling argument .*|error while handling environment variable .*)$",
    re.MULTILINE,
)
# Past argument parsing: the server starts loading the model (tools/server), and the file is not there.
LLAMA_LOADING = "load_model: loading model '{model}'"
LLAMA_MODEL_FAILURES = ("failed to open GGUF file '{model}'", "exiting due to model loading error")


def llama_verdict(command: list[str], code: int, output: str) -> Verdict:
    refusal = LLAMA_REFUSALS.search(output)
    if refusal:
        return Verdict(f"argument parsing: {refusal.group(0)}")
    model = command[command.index("-m") + 1] if "-m" in command else "?"
    stopped_at_model = all(s.format(model=model) in output for s in LLAMA_MODEL_FAILURES)
    if LLAMA_LOADING.format(model=model) in output and stopped_at_model:
        warnings = tuple(sorted({line for line in output.splitlines() if line.startswith("warning:")}))
        return Verdict(None, warnings)
    return Verdict(f"neither refused an argument nor stopped at the model (exit {code}):\n{output[-3000:]}")


def image_entrypoint(image: str) -> list[str]:
    out = subprocess.run(["docker", "image", "inspect", "--format", "{{json .Config.Entrypoint}}", image],
                         capture_output=True, text=True, check=True)  # fmt: skip
    entrypoint: list[str] = json.loads(out.stdout) or []
    return entrypoint


def run_llamacpp(image: str, checks: Mapping[str, Check], batch_dir: Path) -> ParserRun:
    """llama-server with each rendered argv and environment, in one container."""
    batch_dir.mkdir()
    default_entrypoint = image_entrypoint(image)
    for key, c in checks.items():
        words = [f"{k}={v}" for k, v in c.environment.items()] + (c.entrypoint or default_entrypoint) + c.command
        (batch_dir / f"{key}.args").write_bytes(b"\0".join(w.encode() for w in words))
    started = time.monotonic()
    out = docker_run(
        ["-v", f"{batch_dir}:/gpuargs/batch:ro", "-v", f"{HERE / 'gpu_args_llamacpp.sh'}:/gpuargs/check.sh:ro",
         "--entrypoint", "bash", image, "/gpuargs/check.sh", "/gpuargs/batch"],
    )  # fmt: skip
    part = {name: re.search(rf"^{LLAMA_MARK} {name}\n(.*?)^{LLAMA_MARK} ", out, re.MULTILINE | re.DOTALL)
            for name in ("version", "help")}  # fmt: skip
    assert part["version"] and part["help"], f"the llama.cpp checker printed no version or help:\n{out[-6000:]}"
    runs = re.finditer(rf"^{LLAMA_MARK} begin (\S+)\n(.*?)^{LLAMA_MARK} end \1 (\d+)$", out, re.MULTILINE | re.DOTALL)
    verdicts = {m.group(1): llama_verdict(checks[m.group(1)].command, int(m.group(3)), m.group(2)) for m in runs}
    assert set(verdicts) == set(checks), f"the llama.cpp checker did not run every check:\n{out[-6000:]}"
    names = frozenset(re.findall(r"\(env:\s+([A-Za-z0-9_]+)\)", part["help"].group(1)))
    return ParserRun(part["version"].group(1).strip(), names, verdicts, time.monotonic() - started)


# ------------------------------------------------------------------------------------------------ broken


def swap(words: list[str], old: str, new: str) -> list[str]:
    assert old in words, f"{old} is not in {words}"
    return [new if word == old else word for word in words]


def set_value(words: list[str], flag: str, value: str) -> list[str]:
    at = words.index(flag) + 1
    return [*words[:at], value, *words[at + 1 :]]


@dataclass(frozen=True)
class Broken:
    """A real rendered check made wrong on purpose, and the word its refusal must name."""

    what: str
    backend: str
    change: Callable[[Check], Check]
    named: str


BROKEN = [
    Broken("misspelt flag", "vllm",
           lambda c: replace(c, command=swap(c.command, "--gpu-memory-utilization", "--gpu-memory-utilisation")),
           "--gpu-memory-utilisation"),
    Broken("value not among the choices", "vllm",
           lambda c: replace(c, command=set_value(c.command, "--dtype", "bfloat17")), "bfloat17"),
    Broken("two flags refused together", "vllm",
           lambda c: replace(c, command=[*c.command, "--enable-per-request-metrics", "--disable-log-stats"]),
           "--disable-log-stats"),
    Broken("two values refused together", "vllm",
           lambda c: replace(c, command=set_value(c.command, "--max-num-batched-tokens", "128")),
           "max_num_batched_tokens (128)"),
    Broken("misspelt reasoning parser", "vllm",
           lambda c: replace(c, command=set_value(c.command, "--reasoning-parser", "deepseek-r1")), "deepseek-r1"),
    Broken("bad environment value", "vllm",
           lambda c: replace(c, environment={**c.environment, "VLLM_CPU_KVCACHE_SPACE": "4GiB"}),
           "VLLM_CPU_KVCACHE_SPACE"),
    Broken("misspelt flag", "llamacpp", lambda c: replace(c, command=swap(c.command, "-ngl", "--n-gpu-layer")),
           "--n-gpu-layer"),
    Broken("value that is not a number", "llamacpp", lambda c: replace(c, command=set_value(c.command, "-ngl", "abc")),
           '"-ngl"'),
    Broken("value not among the choices", "llamacpp",
           lambda c: replace(c, command=set_value(c.command, "--flash-attn", "maybe")), '"--flash-attn"'),
    Broken("KV cache type it does not have", "llamacpp",
           lambda c: replace(c, command=set_value(c.command, "-ctk", "q8")), '"-ctk"'),
    Broken("bad environment value", "llamacpp",
           lambda c: replace(c, environment={**c.environment, "LLAMA_ARG_N_GPU_LAYERS": "abc"}),
           '"LLAMA_ARG_N_GPU_LAYERS"'),
]  # fmt: skip


BROKEN_BASE_FLAGS = {"vllm": ("--gpu-memory-utilization", "--reasoning-parser"), "llamacpp": ("-ngl", "-ctk")}


def broken_base(checks: list[Check], backend: str) -> Check | None:
    """The check the broken ones start from: a real GPU command of that backend with every flag they change."""
    needs = BROKEN_BASE_FLAGS[backend]
    return next((c for c in checks if c.backend == backend and all(flag in c.command for flag in needs)), None)


# ------------------------------------------------------------------------------------------------ the run


@dataclass(frozen=True)
class GpuArgsRun:
    checks: list[Check]  # every inference service of every shape that planned
    refused_plans: dict[str, str]  # catalog pairs the planner refused, with its reason
    verdicts: dict[str, Verdict]  # by Check.id … of the representative with the same command
    groups: dict[str, list[Check]]  # representative id → the checks with the same command (bar the API key)
    broken: dict[str, tuple[Broken, Check, Verdict]]
    parsers: dict[str, ParserRun]
    nvidia_names: frozenset[str]
    nvidia_prefixes: tuple[str, ...]
    render_seconds: float


def dedupe_key(c: Check) -> tuple[object, ...]:
    # Stacks differ in their random API key only, where everything else is the same: run one of them.
    masked = c.command[:]
    if "--api-key" in masked:
        masked = set_value(masked, "--api-key", "<key>")
    return c.backend, tuple(c.entrypoint), tuple(masked), tuple(sorted(c.environment.items()))


def render_all(folder: Path) -> tuple[list[Check], dict[str, str]]:
    checks: list[Check] = []
    refused: dict[str, str] = {}
    for index, shape in enumerate(SHAPES):
        rendered = render_shape(shape, folder / f"{index:03d}")
        if isinstance(rendered, str):
            refused[shape.name] = rendered
            continue
        checks += [replace(c, id=f"s{index:03d}-{c.id}") for c in rendered]
    return checks, refused


def run_everything(folder: Path, built: Mapping[str, str]) -> GpuArgsRun:
    started = time.monotonic()
    checks, refused = render_all(folder / "stacks")
    render_seconds = time.monotonic() - started
    groups: dict[tuple[object, ...], list[Check]] = {}
    for c in checks:
        groups.setdefault(dedupe_key(c), []).append(c)
    representatives = {members[0].id: members for members in groups.values()}
    bases = {backend: broken_base(checks, backend) for backend in BROKEN_BASE_FLAGS}
    broken = {f"broken{i}": (b, b.change(base)) for i, b in enumerate(BROKEN) if (base := bases[b.backend])}
    batches: dict[str, dict[str, Check]] = {"vllm": {}, "llamacpp": {}}
    for key, members in representatives.items():
        batches[members[0].backend][key] = members[0]
    for key, (b, c) in broken.items():
        batches[b.backend][key] = c
    parsers = {
        "vllm": run_vllm(built["VLLM_CPU_IMAGE"], batches["vllm"]),
        "llamacpp": run_llamacpp(built["LLAMACPP_IMAGE"], batches["llamacpp"], folder / "llamacpp-batch"),
    }
    verdicts = {key: parsers[m[0].backend].verdicts[key] for key, m in representatives.items()}
    nvidia = json.loads(NVIDIA_ENV.read_text())
    return GpuArgsRun(
        checks, refused, verdicts, representatives,
        {key: (b, c, parsers[b.backend].verdicts[key]) for key, (b, c) in broken.items()},
        parsers, frozenset(nvidia["names"]), tuple(nvidia["prefixes"]), render_seconds,
    )  # fmt: skip


@pytest.fixture(scope="module")
def gpu_args(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GpuArgsRun]:
    ok = subprocess.run(["docker", "info"], capture_output=True, check=False).returncode == 0
    need(ok, "no Docker Engine is reachable")
    built = images()
    need({"VLLM_CPU_IMAGE", "LLAMACPP_IMAGE"} <= built.keys(), "the vLLM CPU and llama.cpp images are not built")
    for key in ("VLLM_CPU_IMAGE", "LLAMACPP_IMAGE"):
        there = subprocess.run(["docker", "image", "inspect", built[key]], capture_output=True, check=False)
        need(there.returncode == 0, f"{key}={built[key]} is not in the engine (make provision builds it)")
    folder = tmp_path_factory.mktemp("gpuargs")
    with pytest.MonkeyPatch.context() as patch:  # a user's render, with no config of this machine's user
        patch.setenv("XDG_CONFIG_HOME", str(folder / "config"))
        patch.setenv("XDG_CACHE_HOME", str(folder / "cache"))
        for key in [k for k in os.environ if k.startswith("DEPLOYKIT_")]:
            patch.delenv(key)
        try:
            result = run_everything(folder, built)
        finally:
            remove_by_label(LABEL)
    yield result


# ------------------------------------------------------------------------------------------------ the tests


def named_flag(refusal: str) -> str:
    """The flag (or variable) a parser's refusal names, as it names it."""
    for pattern in (r"unrecognized arguments: (\S+)", r"argument (--[\w-]+)", r'argument "([^"]+)"',
                    r"invalid argument: (\S+)", r'environment variable "([^"]+)"', r"(VLLM_\w+)="):  # fmt: skip
        found = re.search(pattern, refusal)
        if found:
            return found.group(1)
    field_name = re.search(r"\b([a-z]+(?:_[a-z]+)+) \(", refusal)  # a config's field, e.g. max_num_seqs (256)
    return f"--{field_name.group(1).replace('_', '-')}" if field_name else "?"


def describe(c: Check) -> str:
    return f"shape {c.shape} (profile {c.profile}, {c.plan})"


def test_every_rendered_inference_command_is_accepted_by_the_pinned_parser(
    gpu_args: GpuArgsRun, capsys: pytest.CaptureFixture[str]
) -> None:
    with capsys.disabled():
        print("\n" + report(gpu_args))
    refused = [
        f"{describe(c)}: {c.backend} refuses {named_flag(v.refused)} — {v.refused}\n    argv: {members[0].command}"
        for key, members in gpu_args.groups.items()
        for v in [gpu_args.verdicts[key]]
        if v.refused
        for c in members
    ]
    assert not refused, "the pinned release refuses rendered commands:\n" + "\n".join(refused)


def test_the_parsers_are_the_pinned_releases(gpu_args: GpuArgsRun) -> None:
    versions = pinned()
    assert gpu_args.parsers["vllm"].version == versions.get("vllm", "version")
    assert f"build {versions.get('llamacpp', 'build')}," in gpu_args.parsers["llamacpp"].version
    assert f"version: {versions.get('llamacpp', 'version')} " in gpu_args.parsers["llamacpp"].version


def test_each_parser_refuses_a_deliberately_broken_command(gpu_args: GpuArgsRun) -> None:
    ran = {(b.backend, b.what) for b, _, _ in gpu_args.broken.values()}
    for backend, flags in BROKEN_BASE_FLAGS.items():
        assert all((b.backend, b.what) in ran for b in BROKEN if b.backend == backend), (
            f"no rendered {backend} command has {' and '.join(flags)}: the broken commands start from one"
        )
    for b, c, verdict in gpu_args.broken.values():
        assert verdict.refused, f"{b.backend} accepted a {b.what}: {c.command} {c.environment}"
        assert b.named in verdict.refused, f"{b.backend}'s refusal of a {b.what} does not name {b.named}: {verdict}"


def unknown_variables(c: Check, run: GpuArgsRun) -> list[str]:
    """Names in the service's environment, under a checked prefix, that its image does not read."""
    problems = []
    for name in sorted(c.environment):
        owner = next((o for prefix, o in CHECKED_PREFIXES.items() if name.startswith(prefix)), "unchecked")
        if owner == "unchecked":
            continue
        if owner is None:
            if name not in run.nvidia_names and not name.startswith(run.nvidia_prefixes):
                problems.append(f"{name}: not a variable the NVIDIA Container Toolkit reads ({NVIDIA_ENV.name})")
        elif owner != c.backend:
            problems.append(f"{name}: a {owner} variable, in a service that runs {c.backend}")
        elif name not in run.parsers[owner].env_names:
            problems.append(f"{name}: not a variable {owner} {run.parsers[owner].version.splitlines()[0]} reads")
    return problems


def test_every_inference_variable_is_one_the_image_reads(gpu_args: GpuArgsRun) -> None:
    unknown = [f"{describe(c)}: {p}" for c in gpu_args.checks for p in unknown_variables(c, gpu_args)]
    assert not unknown, "rendered stacks set variables their image does not read:\n" + "\n".join(unknown)
    # The registries are the images' own, and hold what a stack sets and what the broken checks use.
    assert {"VLLM_CPU_KVCACHE_SPACE", "VLLM_CPU_OMP_THREADS_BIND", "VLLM_API_KEY"} <= gpu_args.parsers["vllm"].env_names
    assert {"LLAMA_ARG_N_GPU_LAYERS", "LLAMA_ARG_CTX_SIZE"} <= gpu_args.parsers["llamacpp"].env_names
    assert any(c.environment for c in gpu_args.checks), "no rendered stack has an environment to check"


@pytest.mark.parametrize(
    ("backend", "variable", "named"),
    [
        ("vllm", "VLLM_CPU_KVCACHE_SPAC", "not a variable vllm"),
        ("vllm", "LLAMA_ARG_CTX_SIZE", "a llamacpp variable"),
        ("llamacpp", "LLAMA_ARG_N_GPU_LAYER", "not a variable llamacpp"),
        ("llamacpp", "VLLM_CPU_KVCACHE_SPACE", "a vllm variable"),
        ("vllm", "NVIDIA_VISIBLE_DEVICE", "not a variable the NVIDIA Container Toolkit"),
    ],
)
def test_a_misspelt_variable_is_caught(gpu_args: GpuArgsRun, backend: str, variable: str, named: str) -> None:
    base = broken_base(gpu_args.checks, backend)
    assert base is not None and unknown_variables(base, gpu_args) == []
    problems = unknown_variables(replace(base, environment={**base.environment, variable: "1"}), gpu_args)
    assert len(problems) == 1 and problems[0].startswith(f"{variable}: {named}"), problems


def test_correctly_spelt_variables_pass(gpu_args: GpuArgsRun) -> None:
    spelt = {"VLLM_CPU_KVCACHE_SPACE": "1", "NVIDIA_DRIVER_CAPABILITIES": "compute,utility",
             "NVIDIA_REQUIRE_CUDA": "cuda>=13.0", "HF_HUB_OFFLINE": "1"}  # fmt: skip
    base = broken_base(gpu_args.checks, "vllm")
    assert base is not None and unknown_variables(replace(base, environment=spelt), gpu_args) == []


def test_the_shapes_reach_every_gpu_branch(gpu_args: GpuArgsRun) -> None:
    by_shape = {c.shape: c for c in gpu_args.checks}
    for profile in GPU_PROFILES:
        plans = {c.plan.split()[0] for c in gpu_args.checks if c.shape.startswith(f"{profile}/")}
        assert {"vllm/cuda", "llamacpp/cuda"} <= plans, f"{profile} was not rendered for both backends: {plans}"
    partial = [c for c in gpu_args.checks if re.search(r"llamacpp/cuda (\d+)/(\d+)", c.plan) and
               int(c.plan.split()[1].split("/")[0]) < int(c.plan.split()[1].split("/")[1])]  # fmt: skip
    assert {c.shape for c in partial} >= {"h200-partial-offload/tiny.gguf", "gtx1650/deepseek-r1-distill-qwen-7b/auto"}
    assert by_shape["2x-gtx-1070/deepseek-r1-distill-qwen-1.5b/auto"].plan.startswith("llamacpp/cuda")
    dtypes = {c.command[c.command.index("--dtype") + 1] for c in gpu_args.checks if c.plan == "vllm/cuda"}
    assert dtypes == {"bfloat16", "float16"}
    assert {"vllm/cpu", "llamacpp/cpu"} <= {c.plan for c in gpu_args.checks}


def report(run: GpuArgsRun) -> str:
    """What was checked, against which releases, how long it took: printed in the test output."""
    vllm, llama = run.parsers["vllm"], run.parsers["llamacpp"]
    lines = [
        f"GPU command lines checked by the pinned parsers: vLLM {vllm.version} (vllm.envs: {len(vllm.env_names)} "
        f"names), llama.cpp {llama.version.splitlines()[0]} (--help: {len(llama.env_names)} variables)",
        f"  {len(run.checks)} inference services of {len({c.shape for c in run.checks})} shapes rendered in "
        f"{run.render_seconds:.1f} s; {len(run.groups)} distinct commands; vLLM container {vllm.seconds:.1f} s, "
        f"llama.cpp container {llama.seconds:.1f} s; {len(run.broken)} broken commands refused as they must be",
    ]
    for key, members in run.groups.items():
        verdict = run.verdicts[key]
        state = "accepted" if verdict.refused is None else f"REFUSED: {verdict.refused}"
        lines.append(f"  {members[0].plan:<30} {state}: " + ", ".join(m.shape for m in members))
    for shape, reason in run.refused_plans.items():
        lines.append(f"  (no plan) {shape}: {reason.splitlines()[0][:150]}")
    said = sorted({w for v in run.verdicts.values() for w in v.warnings})
    lines += [f"  warning from the parser: {w[:200]}" for w in said]
    return "\n".join(lines)
