#!/usr/bin/env bash
# The GPU path on a real NVIDIA GPU, in one call of the device tool (one H200, 16 cores, nvcc, CMake,
# ninja, Python with torch + transformers; no Docker, no registry), sized to end within 8 minutes:
#
#   1. llama-server built with CUDA for sm_90 only, from the llama.cpp tree scripts/device/prepare_gpu_check.sh
#      put in .gpucheck/ (this script reads .gpucheck/; carry it);
#   2. a Qwen2-architecture model with random weights made there (make_tiny_model.py) and converted to
#      GGUF by that tree's converter (to_gguf.py), so nothing large travels;
#   3. `deploykit detect` + `deploykit render --profile auto` with that GGUF (full offload), and a render
#      for the same card cut down so that the planner offloads half the layers (forced partial offload);
#   4. for each plan: llama-server with exactly the arguments compose.yaml holds (gpu_args.py), /health,
#      one chat, and nvidia-smi's memory use beside the plan's VRAM estimate; then the same arguments
#      plus `-lv 4` once more, for llama.cpp's own buffer sizes (model, KV, compute) by device.
#
# Run (here, after `bash scripts/device/prepare_gpu_check.sh`), one call:
#   run(command="bash scripts/device/verify_gpu.sh", carry=[".gpucheck"], timeout_s=540)
# What comes back in $OUT: summary.json (steps with seconds and exit codes, versions, per plan the
# estimate and the measurement), verify.log (this script's own progress), logs.tar.gz (every step's log,
# the rendered stacks, detect.json, nvidia-smi -q). Copy them to tests/fixtures/gpu/h200/ unedited.
#
# DRY_RUN=1 runs what needs no GPU, on any machine: unpacking, the model, the GGUF, the renders (from the
# recorded H200 host profile) and the argument extraction; it skips the CUDA build and prints the server
# commands it would run. With LLAMA_SERVER=PROGRAM as well (any llama-server, e.g. a CPU build or a
# wrapper around the provisioned image) it runs the servers too: /health, the chat, the buffer sizes. Needs OUT, python3 with torch + transformers (PYTHON=... to choose),
# and deploykit importable (PYTHONPATH or an installed venv).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
: "${OUT:?set OUT to the folder the results go into}"
DRY_RUN="${DRY_RUN:-0}"
PY="${PYTHON:-python3}"
WORK="${GPU_CHECK_WORK:-/tmp/gpucheck}"
CARRY="$ROOT/.gpucheck"
BUDGET_S="${GPU_CHECK_BUDGET_S:-470}"   # everything, so that the call ends well inside its limit
MODEL_LAYERS="${GPU_CHECK_LAYERS:-8}"
MODEL_HIDDEN="${GPU_CHECK_HIDDEN:-896}"
if [ "$DRY_RUN" = 1 ]; then MODEL_LAYERS="${GPU_CHECK_LAYERS:-4}"; MODEL_HIDDEN="${GPU_CHECK_HIDDEN:-256}"; fi
DEVICE_DIR="$ROOT/scripts/device"
LOGS="$WORK/logs"
STEPS="$WORK/steps.jsonl"
deadline=$((SECONDS + BUDGET_S))

rm -rf "$WORK"
mkdir -p "$LOGS" "$OUT"
: >"$STEPS"
exec > >(tee -a "$OUT/verify.log") 2>&1
say() { printf '[%4ss] %s\n' "$SECONDS" "$*"; }

# step NAME TIMEOUT_S COMMAND...: output to logs/NAME.log, seconds and exit code to steps.jsonl.
# The timeout is cut to what is left of the budget; a step never stops the script by failing.
step() {
    local name="$1" limit="$2" left rc t0
    shift 2
    left=$((deadline - SECONDS))
    [ "$left" -lt "$limit" ] && limit="$left"
    if [ "$limit" -le 5 ]; then
        say "$name: skipped, the ${BUDGET_S}s budget is spent"
        printf '{"step": "%s", "rc": null, "seconds": 0, "note": "budget spent"}\n' "$name" >>"$STEPS"
        return 1
    fi
    say "$name (at most ${limit}s)"
    t0=$SECONDS
    set +e
    timeout --kill-after=5 "$limit" "$@" >"$LOGS/$name.log" 2>&1
    rc=$?
    set -e
    printf '{"step": "%s", "rc": %d, "seconds": %d}\n' "$name" "$rc" "$((SECONDS - t0))" >>"$STEPS"
    if [ "$rc" -ne 0 ]; then
        say "$name: exit $rc after $((SECONDS - t0))s; last lines:"
        tail -n 15 "$LOGS/$name.log" | sed 's/^/    /'
    else
        say "$name: ok in $((SECONDS - t0))s"
    fi
    return "$rc"
}

finish() {
    set +e
    [ -f "$WORK/server.pid" ] && kill "$(cat "$WORK/server.pid")" 2>/dev/null
    "$PY" - "$WORK" "$OUT/summary.json" "$DRY_RUN" <<'PY'
import json
import sys
from pathlib import Path

work, out, dry = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3] == "1"
steps = [json.loads(line) for line in (work / "steps.jsonl").read_text().splitlines() if line.strip()]
plans = {}
for path in sorted(work.glob("result-*.json")):
    plans[path.stem.removeprefix("result-")] = json.loads(path.read_text())
facts = {}
for name in ("facts.json", "model.json", "manifest.json"):
    if (work / name).is_file():
        facts[name.removesuffix(".json")] = json.loads((work / name).read_text())
summary = {"dry_run": dry, "steps": steps, "plans": plans, **facts}
out.write_text(json.dumps(summary, indent=2) + "\n")
print(json.dumps({k: v for k, v in summary.items() if k != "steps"}, indent=2)[:6000])
PY
    cp -r "$WORK"/stack-* "$LOGS"/ 2>/dev/null
    cp "$WORK"/*.json "$LOGS"/ 2>/dev/null
    rm -f "$LOGS"/stack-*/.env   # secrets of a throw-away stack, but secrets all the same
    tar -C "$WORK" -czf "$OUT/logs.tar.gz" logs
    say "done: $OUT/summary.json, $OUT/logs.tar.gz ($(du -h "$OUT/logs.tar.gz" | cut -f1))"
}
trap finish EXIT

# --- 0. what is there -------------------------------------------------------------------------
[ -f "$CARRY/llama.cpp-src.tar.gz" ] || { say "no $CARRY/llama.cpp-src.tar.gz: run scripts/device/prepare_gpu_check.sh and carry .gpucheck"; exit 1; }
cp "$CARRY/MANIFEST.json" "$WORK/manifest.json"
step env 30 bash -c 'uname -a; nproc; free -g; (nvidia-smi || true); (nvcc --version || true); cmake --version; ninja --version; '"$PY"' -c "import sys, torch, transformers; print(sys.version, torch.__version__, torch.cuda.is_available(), transformers.__version__)"' || true
if [ "$DRY_RUN" != 1 ]; then
    nvidia-smi -q -x >"$LOGS/nvidia-smi-q.xml" 2>&1 || true
fi

# --- 1. deploykit's own dependencies, from the carried wheels -------------------------------------
if [ "$DRY_RUN" != 1 ] || ! "$PY" -c 'import deploykit.app' 2>/dev/null; then
    step deps 90 "$PY" -m pip install --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$WORK/site" "$CARRY"/wheels/*.whl || exit 1
    export PYTHONPATH="$WORK/site:$ROOT${PYTHONPATH:+:$PYTHONPATH}"
fi

# --- 2. the llama.cpp tree, and llama-server built for sm_90 ------------------------------------
step unpack 60 tar -xzf "$CARRY/llama.cpp-src.tar.gz" -C "$WORK" || exit 1
export PYTHONPATH="$WORK/llama.cpp/gguf-py${PYTHONPATH:+:$PYTHONPATH}"   # deploykit reads GGUF headers with it
SERVER="${LLAMA_SERVER:-$WORK/llama.cpp/build/bin/llama-server}"
configure() {
    local extra=()
    # cuBLAS from the toolkit, or else from the CUDA wheels beside PyTorch (nvidia-cublas).
    if ! ls "${CUDA_HOME:-/usr/local/cuda}"/lib64/libcublas.so* >/dev/null 2>&1; then
        local wheel
        wheel="$("$PY" - <<'PY' 2>/dev/null || true
import glob
import os
import site

for root in site.getsitepackages():
    for lib in sorted(glob.glob(os.path.join(root, "nvidia", "**", "libcublas.so*"), recursive=True)):
        print(os.path.dirname(os.path.dirname(lib)))  # .../nvidia/cu13 (lib/, include/)
        raise SystemExit
PY
)"
        echo "no libcublas in ${CUDA_HOME:-/usr/local/cuda}/lib64; trying the wheel at '${wheel}'"
        if [ -n "$wheel" ]; then
            extra+=("-DCUDA_cublas_LIBRARY=$(ls "$wheel"/lib/libcublas.so* | head -n1)"
                    "-DCUDA_cublasLt_LIBRARY=$(ls "$wheel"/lib/libcublasLt.so* | head -n1)"
                    "-DCMAKE_CUDA_FLAGS=-I$wheel/include" "-DCMAKE_CXX_FLAGS=-I$wheel/include")
        fi
    fi
    # The driver library for the VMM memory pool: the toolkit's stub, or the driver itself; else no VMM.
    local cuda="${CUDA_HOME:-/usr/local/cuda}" driver
    if ! ls "$cuda"/lib64/stubs/libcuda.so "$cuda"/lib64/libcuda.so >/dev/null 2>&1; then
        driver="$(ldconfig -p 2>/dev/null | awk '/libcuda\.so(\.1)? /{print $NF; exit}')"
        [ -n "$driver" ] || driver="$(ls /usr/local/nvidia/lib64/libcuda.so* /usr/lib/x86_64-linux-gnu/libcuda.so* 2>/dev/null | head -n1 || true)"
        if [ -n "$driver" ]; then
            echo "no libcuda stub in $cuda; linking the driver's $driver"
            extra+=("-DCUDA_cuda_driver_LIBRARY=$driver")
        else
            echo "no libcuda anywhere: building without VMM (GGML_CUDA_NO_VMM=ON; the legacy memory pool)"
            extra+=(-DGGML_CUDA_NO_VMM=ON)
        fi
    fi
    cmake -S "$WORK/llama.cpp" -B "$WORK/llama.cpp/build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
        -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 -DGGML_NATIVE=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
        -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF "${extra[@]}"
}
if [ -n "${LLAMA_SERVER:-}" ]; then
    say "using the llama-server given: $LLAMA_SERVER"
elif [ "$DRY_RUN" = 1 ]; then
    say "dry run: would configure and build llama-server (CUDA, sm_90, $(nproc) jobs)"
else
    export -f configure
    export WORK PY
    step configure 90 bash -c configure || exit 1
    step build 400 cmake --build "$WORK/llama.cpp/build" --target llama-server -j "$(nproc)" || exit 1
    "$SERVER" --version >"$LOGS/llama-server-version.log" 2>&1 || true
    ls -l "$SERVER" >>"$LOGS/llama-server-version.log"
fi

# --- 3. a small Qwen2 model, made here, converted by the tree's converter -------------------------
step model 120 "$PY" "$DEVICE_DIR/make_tiny_model.py" "$WORK/hf" --layers "$MODEL_LAYERS" --hidden "$MODEL_HIDDEN" || exit 1
tail -n 1 "$LOGS/model.log" >"$WORK/model.json"
step gguf 120 "$PY" "$DEVICE_DIR/to_gguf.py" "$WORK/llama.cpp" "$WORK/hf" "$WORK/tiny-qwen2.gguf" --outtype f16 || exit 1
GGUF="$WORK/tiny-qwen2.gguf"

# --- 4. the plans, rendered by deploykit ----------------------------------------------------------
DK=("$PY" -m deploykit)
if [ "$DRY_RUN" = 1 ]; then
    cp "$ROOT/tests/fixtures/gpu/h200/detect.json" "$WORK/host.json"   # the recorded H200
    where=(--host "$WORK/host.json")
else
    step detect 60 bash -c "$(printf '%q ' "${DK[@]}") detect --json >$WORK/host.json" || true
    where=(--profile auto)   # what the issue asks for: the detected host, as a user would run it
fi
step render-full 60 "${DK[@]}" render "${where[@]}" --model-file "$GGUF" --dir "$WORK/stack-full" || exit 1
step partial-host 60 "$PY" "$DEVICE_DIR/gpu_args.py" partial-host "$WORK/host.json" "$GGUF" "$WORK/host-partial.json" || exit 1
step render-partial 60 "${DK[@]}" render --host "$WORK/host-partial.json" --model-file "$GGUF" --dir "$WORK/stack-partial" || exit 1

# --- 5. each plan on the GPU: exact arguments, /health, one chat, memory --------------------------
gpu_mib() { nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits 2>/dev/null | head -n1 | tr -d ' '; }

# serve NAME ARGV_JSON LOG EXTRA...: start llama-server, wait for /health, chat once, measure, stop.
serve() {
    local name="$1" argv_json="$2" log="$3" pid before after apps
    shift 3
    mapfile -t args < <("$PY" -c 'import json, sys; print("\n".join(json.loads(sys.argv[1])))' "$argv_json")
    before="$(gpu_mib)"
    "$SERVER" "${args[@]}" "$@" >"$log" 2>&1 &
    pid=$!
    echo "$pid" >"$WORK/server.pid"   # so the caller can stop it if this step runs out of time
    "$PY" - "$argv_json" "$WORK/http-$name.json" <<'PY'
import json
import sys
import time
import urllib.request

argv = json.loads(sys.argv[1])
port, key = argv[argv.index("--port") + 1], argv[argv.index("--api-key") + 1]
base = f"http://127.0.0.1:{port}"
result = {"health": None, "health_seconds": None, "chat": None}
t0 = time.monotonic()
while time.monotonic() - t0 < 90:
    try:
        with urllib.request.urlopen(base + "/health", timeout=2) as r:
            if r.status == 200:
                result["health"], result["health_seconds"] = 200, round(time.monotonic() - t0, 1)
                break
    except OSError:
        time.sleep(0.5)
if result["health"] == 200:
    body = json.dumps({"model": argv[argv.index("--alias") + 1], "max_tokens": 8,
                       "messages": [{"role": "user", "content": "Say hello"}]}).encode()
    req = urllib.request.Request(base + "/v1/chat/completions", body, method="POST",
                                 headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"})
    t1 = time.monotonic()
    with urllib.request.urlopen(req, timeout=60) as r:
        answer = json.loads(r.read())
    result["chat"] = {"status": 200, "seconds": round(time.monotonic() - t1, 2),
                      "finish_reason": answer["choices"][0].get("finish_reason"),
                      "usage": answer.get("usage")}
json.dump(result, open(sys.argv[2], "w"))
print(json.dumps(result))
PY
    after="$(gpu_mib)"
    apps="$(nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader,nounits 2>/dev/null | tr '\n' ';')"
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    rm -f "$WORK/server.pid"
    printf '{"gpu_used_mib_before": %s, "gpu_used_mib_serving": %s, "compute_apps": "%s"}\n' \
        "${before:-null}" "${after:-null}" "$apps" >"$WORK/measure-$name.json"
    sleep 2   # let the driver hand the memory back before the next baseline
}
stop_server() {
    if [ -f "$WORK/server.pid" ]; then kill "$(cat "$WORK/server.pid")" 2>/dev/null || true; rm -f "$WORK/server.pid"; sleep 1; fi
}
export -f serve gpu_mib
export SERVER WORK PY

for plan in full partial; do
    argv="$("$PY" "$DEVICE_DIR/gpu_args.py" server-args "$WORK/stack-$plan")"
    "$PY" "$DEVICE_DIR/gpu_args.py" estimate "$WORK/stack-$plan" >"$WORK/estimate-$plan.json"
    # The API key is a throw-away stack's, but the files travel and may be committed: not written down.
    "$PY" -c 'import json, sys; a = json.loads(sys.argv[1]); a[a.index("--api-key") + 1] = "<INFERENCE_API_KEY>"; print(json.dumps(a))' "$argv" >"$WORK/argv-$plan.json"
    if [ "$DRY_RUN" = 1 ] && [ -z "${LLAMA_SERVER:-}" ]; then
        say "dry run: $plan plan would run: llama-server $("$PY" -c 'import json, shlex, sys; print(shlex.join(json.load(open(sys.argv[1]))))' "$WORK/argv-$plan.json")"
        say "dry run: $plan estimate: $(cat "$WORK/estimate-$plan.json")"
        continue
    fi
    step "serve-$plan" 120 bash -c 'serve "$1" "$2" "$3"' _ "$plan" "$argv" "$LOGS/server-$plan.log" || true
    stop_server
    # The same arguments once more with -lv 4: only then does llama.cpp print its buffer sizes.
    step "serve-$plan-verbose" 120 bash -c 'serve "$1" "$2" "$3" -lv 4' _ "$plan-verbose" "$argv" "$LOGS/server-$plan-verbose.log" || true
    stop_server
    "$PY" "$DEVICE_DIR/gpu_args.py" buffers "$LOGS/server-$plan-verbose.log" >"$WORK/buffers-$plan.json" || echo '{}' >"$WORK/buffers-$plan.json"
done

# --- 6. estimate beside measurement ------------------------------------------------------------------
"$PY" - "$WORK" <<'PY'
import json
import sys
from pathlib import Path

work = Path(sys.argv[1])
MiB = 1024**2


def load(name):
    path = work / name
    return json.loads(path.read_text()) if path.is_file() and path.read_text().strip() else None


for plan in ("full", "partial"):
    est = load(f"estimate-{plan}.json")
    result = {"argv": load(f"argv-{plan}.json"), "estimate": est, "http": load(f"http-{plan}.json"),
              "measured": load(f"measure-{plan}.json"), "buffers_mib": load(f"buffers-{plan}.json")}
    m = result["measured"]
    if est and m and m.get("gpu_used_mib_serving") is not None and m.get("gpu_used_mib_before") is not None:
        used = (m["gpu_used_mib_serving"] - m["gpu_used_mib_before"]) * MiB
        result["measured_vram_bytes"] = used
        result["estimate_over_measured"] = round(est["vram_estimate_bytes"] / used, 3) if used > 0 else None
        result["off_by_more_than_15_percent"] = used > 0 and abs(est["vram_estimate_bytes"] / used - 1) > 0.15
        # llama.cpp's own GPU buffers (CUDA0 ..., not CUDA_Host): what is left of the measurement is the CUDA
        # runtime (context, cuBLAS) — the planner's LLAMACPP_CUDA_RUNTIME_BYTES (320 MiB) — and fragmentation.
        gpu = {d: kinds for d, kinds in (result["buffers_mib"] or {}).items() if d.startswith("CUDA") and "Host" not in d}
        if gpu:
            on_gpu = sum(sum(kinds.values()) for kinds in gpu.values())
            result["gpu_buffers_mib"] = round(on_gpu, 2)
            result["cuda_runtime_mib_measured"] = round(used / MiB - on_gpu, 1)
    (work / f"result-{plan}.json").write_text(json.dumps(result, indent=2))
PY
