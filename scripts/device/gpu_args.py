"""What scripts/device/verify_gpu.sh needs from deploykit, as small commands that print JSON.

    gpu_args.py server-args STACK_DIR        the llama-server argv `deploykit render` wrote, runnable here
    gpu_args.py estimate STACK_DIR           the plan's VRAM figures (plan.json)
    gpu_args.py partial-host HOST GGUF OUT   a copy of the host profile with the GPU's memory cut so that
                                             the planner offloads about half the model's layers
    gpu_args.py buffers LOG                  llama.cpp's buffer sizes from a server log (MiB, by device)

server-args reads compose.yaml as docker compose would: `${VAR}` / `${VAR:?message}` come from the stack's
.env, and the model's container path is mapped back through the bind mount to the file on this host.
Nothing else is changed, so the server runs with exactly the arguments the stack would give it.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

import yaml

_VAR = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::?[?-][^}]*)?\}")
# e.g. "load_tensors:   CPU_Mapped model buffer size =    57.14 MiB" (llama.cpp 0.7.0, -lv 4)
_BUFFER = re.compile(
    r"(?P<device>[A-Za-z0-9_]+) +(?P<kind>model|KV|compute|output|RS) buffer size = +(?P<mib>[\d.]+) MiB"
)


def read_env(path: Path) -> dict[str, str]:
    env: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.lstrip().startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            env[key.strip()] = value.strip().strip("'\"")
    return env


def interpolate(value: str, env: dict[str, str]) -> str:
    def one(match: re.Match[str]) -> str:
        name = match.group("name")
        if name not in env:
            raise SystemExit(f"{name} is not in the stack's .env")
        return env[name]

    return _VAR.sub(one, value).replace("$$", "$")


def server_args(stack_dir: Path) -> list[str]:
    compose = yaml.safe_load((stack_dir / "compose.yaml").read_text(encoding="utf-8"))
    service = compose["services"]["inference"]
    env = read_env(stack_dir / ".env")
    argv = [interpolate(str(a), env) for a in service["command"]]
    mounts = [(str(v["target"]), str(v["source"])) for v in service.get("volumes", []) if v.get("type") == "bind"]
    model = argv.index("-m") + 1
    for target, source in mounts:
        if argv[model].startswith(target.rstrip("/") + "/"):
            argv[model] = source.rstrip("/") + argv[model][len(target.rstrip("/")) :]
    return argv


def estimate(stack_dir: Path) -> dict[str, Any]:
    plan = json.loads((stack_dir / "plan.json").read_text(encoding="utf-8"))["stack"]["plan"]
    memory = plan["memory"]
    return {
        "backend": plan["backend"],
        "device": plan["device"],
        "gpu_layers": plan["gpu_layers"],
        "total_layers": plan["total_layers"],
        "context_length": plan["context_length"],
        "vram_estimate_bytes": memory["total_bytes"],
        "weights_bytes": memory["weights_bytes"],
        "kv_cache_bytes": memory["kv_cache_bytes"],
        "overhead_bytes": memory["overhead_bytes"],
        "budget_bytes": memory["budget_bytes"],
    }


def partial_host(host_file: Path, gguf: Path) -> dict[str, Any]:
    """The smallest GPU (same card otherwise) on which the planner puts at least half the layers on it."""
    from deploykit.app.resolve import load_host_file
    from deploykit.planning.planner import plan_deployment
    from deploykit.seams.modelfile import read_gguf
    from deploykit.values.plan import NoFit, PlanSettings

    host = load_host_file(host_file)
    spec, weights = read_gguf(gguf)
    gpu = host.gpus[0]

    def layers_with(total: int) -> int:
        small = gpu.model_copy(update={"memory_total_bytes": total, "memory_free_bytes": total})
        try:
            plan = plan_deployment(host.model_copy(update={"gpus": (small,)}), spec, PlanSettings(), weights)
        except NoFit:  # nothing fits at all on so small a card
            return 0
        return (plan.gpu_layers or 0) if plan.device == "cuda" else 0

    want = max(1, spec.layers // 2)
    low, high = 1, gpu.memory_total_bytes
    while low < high:  # layers on the GPU grow with its memory: find the least that gives `want`
        mid = (low + high) // 2
        if layers_with(mid) >= want:
            high = mid
        else:
            low = mid + 1
    if not 0 < layers_with(low) < spec.layers:
        raise SystemExit(f"no GPU size gives a partial offload of {spec.layers} layers")
    small = gpu.model_copy(update={"memory_total_bytes": low, "memory_free_bytes": low})
    data = host.model_copy(update={"gpus": (small,), "name": f"{host.name}-partial"}).model_dump(mode="json")
    return data


def buffers(log: Path) -> dict[str, dict[str, float]]:
    """{device: {kind: MiB}}; a kind reported twice (e.g. two KV caches) is summed."""
    out: dict[str, dict[str, float]] = {}
    for match in _BUFFER.finditer(log.read_text(encoding="utf-8", errors="replace")):
        kinds = out.setdefault(match.group("device"), {})
        kinds[match.group("kind")] = round(kinds.get(match.group("kind"), 0.0) + float(match.group("mib")), 2)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("server-args", "estimate"):
        sub.add_parser(name).add_argument("stack_dir", type=Path)
    part = sub.add_parser("partial-host")
    part.add_argument("host", type=Path)
    part.add_argument("gguf", type=Path)
    part.add_argument("out", type=Path)
    sub.add_parser("buffers").add_argument("log", type=Path)
    args = parser.parse_args(argv)
    if args.command == "server-args":
        result: Any = server_args(args.stack_dir)
    elif args.command == "estimate":
        result = estimate(args.stack_dir)
    elif args.command == "partial-host":
        result = partial_host(args.host, args.gguf)
        args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        result = {"memory_total_bytes": result["gpus"][0]["memory_total_bytes"], "path": str(args.out)}
    else:
        result = buffers(args.log)
    json.dump(result, sys.stdout)
    print()


if __name__ == "__main__":
    main()
