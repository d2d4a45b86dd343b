#!/usr/bin/env bash
# Record, on a real NVIDIA machine, exactly what deploykit/seams/detect.py reads, so tests replay real outputs.
#
#   OUT=/some/folder bash scripts/device/record_gpu.sh
#
# Needs only bash, nvidia-smi and python3 with pynvml (nvidia-ml-py); deploykit itself is not imported.
# Every step may fail on its own (`|| true`): a missing tool costs that file, not the others.
# exit-codes.txt says how each command ended; a non-empty *.stderr file holds what it printed there.
# Copy the folder to tests/fixtures/gpu/<card>/ (e.g. h200/) without editing the files.
set -u
: "${OUT:?set OUT to the folder the recordings go into}"
mkdir -p "$OUT"

record() {  # record FILE COMMAND...: stdout to FILE, stderr beside it, exit code in exit-codes.txt
    local file="$1"; shift
    "$@" >"$OUT/$file" 2>"$OUT/$file.stderr"
    printf '%s: exit %s: %s\n' "$file" "$?" "$*" >>"$OUT/exit-codes.txt"
}

record nvidia-smi.txt nvidia-smi || true
record nvidia-smi-q.xml nvidia-smi -q -x || true
# The compute-capability query detect.py runs (NVIDIA_SMI_COMPUTE_CAP_ARGS), byte for byte.
record query-gpu.csv nvidia-smi --query-gpu=index,compute_cap --format=csv,noheader || true
# The same facts through --query-gpu, to cross-check the XML and NVML readings.
record query-gpu-full.csv nvidia-smi \
    --query-gpu=index,name,uuid,memory.total,memory.free,driver_version,compute_cap --format=csv || true
record cpuinfo.txt cat /proc/cpuinfo || true
record meminfo.txt cat /proc/meminfo || true

# The NVML calls detect.read_nvml makes, keyed by call name; a failed call is {"nvml_error": code}.
# tests/unit/test_detect.py replays this file through a stand-in pynvml module.
record nvml.json python3 - <<'PY' || true
import json
import sys

import pynvml as nvml


def call(fn, *args):
    try:
        value = fn(*args)
    except nvml.NVMLError as exc:
        return {"nvml_error": exc.value, "message": str(exc)}
    return value.decode() if isinstance(value, bytes) else value


recording = {}
try:
    nvml.nvmlInit()
except nvml.NVMLError as exc:
    recording["nvmlInit"] = {"nvml_error": exc.value, "message": str(exc)}
else:
    recording["nvmlSystemGetDriverVersion"] = call(nvml.nvmlSystemGetDriverVersion)
    recording["nvmlSystemGetCudaDriverVersion"] = call(nvml.nvmlSystemGetCudaDriverVersion)
    devices = []
    for index in range(nvml.nvmlDeviceGetCount()):
        handle = nvml.nvmlDeviceGetHandleByIndex(index)
        memory = call(nvml.nvmlDeviceGetMemoryInfo, handle)
        if not isinstance(memory, dict):
            memory = {"total": memory.total, "free": memory.free, "used": memory.used}
        devices.append({
            "nvmlDeviceGetName": call(nvml.nvmlDeviceGetName, handle),
            "nvmlDeviceGetUUID": call(nvml.nvmlDeviceGetUUID, handle),
            "nvmlDeviceGetMemoryInfo": memory,
            "nvmlDeviceGetCudaComputeCapability": call(nvml.nvmlDeviceGetCudaComputeCapability, handle),
        })
    recording["devices"] = devices
    nvml.nvmlShutdown()
json.dump(recording, sys.stdout, indent=2)
print()
PY

find "$OUT" -name '*.stderr' -empty -delete
ls -l "$OUT"
