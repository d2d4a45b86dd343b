#!/usr/bin/env bash
# Prepare, here, what scripts/device/verify_gpu.sh needs on the device machine, in the ignored folder
# .gpucheck/ — name it in the device tool's `carry` list:  carry: [".gpucheck"]
#
#   .gpucheck/llama.cpp-src.tar.gz  llama.cpp's source, stripped to what a CUDA build of llama-server and
#                                   convert_hf_to_gguf.py need (no models/, docs/, benches/, tests/, other
#                                   GPU backends): about 10 MB instead of 176 MB
#   .gpucheck/wheels/*.whl          deploykit's dependencies that the device's Python 3.12 lacks (no
#                                   registry there): pydantic, pydantic-settings, docker and their needs
#   .gpucheck/MANIFEST.json         where each came from, with sizes
#
# Source: Debian's llama.cpp source package (the CPU image's build, 0.7.0 = build 11669) would be the
# first choice, but the apt mirror here answers 404 for it (and for ggml's, which Debian splits out)
# as of 2026-11-28, so the tree comes from PyPI's llama-cpp-python sdist, which vendors llama.cpp
# (0.3.36: llama.cpp 0.5.0, commit 0c1e57098). LLAMACPP_SRC=DIR uses another llama.cpp tree instead
# (e.g. one unpacked from Debian's source).
#
# Needs pip (with this machine's index configuration) and python3; no root. Re-running rebuilds.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
DEST="$ROOT/.gpucheck"
SDIST="${LLAMA_CPP_PYTHON:-llama-cpp-python==0.3.36}"
# deploykit's runtime dependencies missing from the device image (see .library KINDS.md's package list);
# click, jinja2, pyyaml, rich, httpx, requests and numpy are there already (typing-extensions too, but
# pydantic wants a recent one).
WHEELS=(pydantic pydantic-core pydantic-settings annotated-types typing-inspection typing-extensions python-dotenv docker)
# GPU backends other than CUDA, and folders neither the build nor the converter reads.
STRIP=(models docs benches tests media examples/llama.android .devops .github pocs skills
       ggml/src/ggml-vulkan ggml/src/ggml-sycl ggml/src/ggml-metal ggml/src/ggml-cann ggml/src/ggml-musa
       ggml/src/ggml-opencl ggml/src/ggml-webgpu ggml/src/ggml-hip ggml/src/ggml-hexagon ggml/src/ggml-et
       ggml/src/ggml-openvino ggml/src/ggml-virtgpu ggml/src/ggml-zdnn ggml/src/ggml-zendnn)

log() { printf 'prepare: %s\n' "$*" >&2; }
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
rm -rf "$DEST"
mkdir -p "$DEST/wheels"

if [ -n "${LLAMACPP_SRC:-}" ]; then
    src="$LLAMACPP_SRC"
    origin="local tree $LLAMACPP_SRC"
else
    log "fetching the $SDIST sdist (about 77 MB)"
    python3 -m pip download --quiet --no-deps --no-binary :all: -d "$work" "$SDIST"
    tar -xzf "$work"/llama_cpp_python-*.tar.gz -C "$work"
    src="$(echo "$work"/llama_cpp_python-*/vendor/llama.cpp)"
    commit="$(grep -m1 -o 'llama.cpp@[0-9a-f]*' "$work"/llama_cpp_python-*/CHANGELOG.md | cut -d@ -f2 || true)"
    origin="PyPI sdist $SDIST (vendor/llama.cpp, llama.cpp commit ${commit:-unknown})"
fi
[ -f "$src/convert_hf_to_gguf.py" ] && [ -d "$src/ggml/src/ggml-cuda" ] \
    || { log "ERROR: $src is not a llama.cpp tree with ggml-cuda"; exit 1; }

log "stripping the tree"
mkdir -p "$work/tree"
cp -a "$src" "$work/tree/llama.cpp"
for path in "${STRIP[@]}"; do rm -rf "${work:?}/tree/llama.cpp/$path"; done
rm -f "$work/tree/llama.cpp/.git"   # a submodule pointer to nothing: the build would ask git for a build number
version="$(sed -n 's/^set(LLAMA_VERSION_\(MAJOR\|MINOR\|PATCH\) \([0-9]*\))/\2/p' "$work/tree/llama.cpp/CMakeLists.txt" | paste -sd.)"
tar -C "$work/tree" -czf "$DEST/llama.cpp-src.tar.gz" llama.cpp

log "fetching wheels for the device's Python 3.12 (x86-64)"
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$DEST/wheels" "${WHEELS[@]}"

python3 - "$DEST" "$origin" "${version:-unknown}" <<'PY'
import json
import sys
from pathlib import Path

dest, origin, version = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
files = {str(p.relative_to(dest)): p.stat().st_size for p in sorted(dest.rglob("*")) if p.is_file()}
manifest = {"llama_cpp_source": origin, "llama_cpp_version": version, "files": files,
            "total_bytes": sum(files.values())}
(dest / "MANIFEST.json").write_text(json.dumps(manifest, indent=2) + "\n")
print(json.dumps({k: manifest[k] for k in ("llama_cpp_source", "llama_cpp_version", "total_bytes")}))
PY
du -sh "$DEST" "$DEST/llama.cpp-src.tar.gz" "$DEST/wheels" >&2
