#!/usr/bin/env bash
# deploykit-local/open-webui:0.12.4: Open WebUI pip-installed (with a CPU-only torch) into a venv
# at /app/venv of a Debian bookworm minbase tree, then imported into the engine (no registry to
# pull the upstream image from). The build uses this machine's pip configuration (files, PIP_*
# variables, and the local folders they name such as find-links) and DNS; none of it stays in the
# image. Skips when the tag exists. Prints OPENWEBUI_IMAGE=<tag> on stdout.
set -euo pipefail
# shellcheck source=lib.sh source-path=SCRIPTDIR
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

OPENWEBUI_VERSION="${DEPLOYKIT_OPENWEBUI_VERSION:-0.12.4}"
TORCH_SPEC="${DEPLOYKIT_TORCH_SPEC:-torch==2.13.0+cpu}"
WHEELS_DIR="${DEPLOYKIT_WHEELS_DIR:-/opt/wheels}"
SUITE=bookworm
PACKAGES=python3,python3-venv,ca-certificates,curl
KEY=OPENWEBUI_IMAGE
TAG="${DEPLOYKIT_OPENWEBUI_REPO:-deploykit-local/open-webui}:$OPENWEBUI_VERSION"
VENV=/app/venv
DATA_DIR=/app/backend/data

# ---------------------------------------------------------------------------------------------
# Inner step: runs in a private mount namespace (see in_private_mounts), so every mount made
# here vanishes when it exits, whatever happens.
#   image-openwebui.sh __build ROOTFS BINDS_FILE ENV_FILE
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
            $FIND_LINKS "$TORCH_SPEC" "open-webui==$OPENWEBUI_VERSION"
        "$VENV/bin/open-webui" --help >/dev/null
        "$VENV/bin/pip" check || true
    '
fi

# ---------------------------------------------------------------------------------------------
require_root
require_engine

if image_exists "$TAG"; then
    log "Open WebUI image already there: $TAG ($(image_size "$TAG"))"
    [ "$(images_env_get "$KEY")" = "$TAG" ] || images_env_set "$KEY" "$TAG"
    echo "$KEY=$TAG"
    exit 0
fi

tmp="$(mktemp -d "$(build_tmp_root)/deploykit-openwebui.XXXXXX")"
trap 'safe_rm_tree "$tmp"' EXIT
rootfs="$tmp/rootfs"

debootstrap_rootfs "$SUITE" "$rootfs" "$PACKAGES" "$LOG_DIR/deploykit-openwebui-debootstrap.log"
log "rootfs ready ($(took), $(du -sh "$rootfs" | cut -f1))"

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
cp -L /etc/hosts "$rootfs/etc/hosts.deploykit-build" && cat "$rootfs/etc/hosts.deploykit-build" >"$rootfs/etc/hosts"
rm -f "$rootfs/etc/hosts.deploykit-build"

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
      PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1
      "VENV=$VENV" "TORCH_SPEC=$TORCH_SPEC" "OPENWEBUI_VERSION=$OPENWEBUI_VERSION")
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
log "pip install $TORCH_SPEC open-webui==$OPENWEBUI_VERSION into $VENV (log: $LOG_DIR/deploykit-openwebui-pip.log)"
t0=$SECONDS
if ! in_private_mounts "$BASH" "${BASH_SOURCE[0]}" __build "$rootfs" "$tmp/binds" "$tmp/env" \
        >"$LOG_DIR/deploykit-openwebui-pip.log" 2>&1; then
    tail -n 25 "$LOG_DIR/deploykit-openwebui-pip.log" >&2
    die "pip install of open-webui==$OPENWEBUI_VERSION in the $SUITE tree failed (see the lines above)."
fi
log "pip install done in $((SECONDS - t0))s"

# --- take the build-only things out again --------------------------------------------------------
[ -z "$(mounts_under "$rootfs")" ] || die "mounts are still attached under $rootfs; not continuing."
for ((i = ${#injected[@]} - 1; i >= 0; i--)); do
    rm -rf --one-file-system "${rootfs:?}${injected[$i]}"
done
rm -f "$rootfs/etc/pip.conf" "$rootfs/etc/deploykit-build-pip.conf"
rm -rf "$rootfs/root/.cache" "$rootfs/root/.config/pip" "$rootfs/root/.pip"
printf '127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n' >"$rootfs/etc/hosts"
rootfs_slim "$rootfs"
mkdir -p "$rootfs$DATA_DIR"
pyver="$(chroot "$rootfs" python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
torchver="$(chroot "$rootfs" "$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("torch"))')"
log "tree ready: Python $pyver, torch $torchver, $(du -sh "$rootfs" | cut -f1)"

import_rootfs "$rootfs" "$TAG" \
    "ENV PATH=$VENV/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
    "ENV LANG=C.UTF-8" \
    "ENV DATA_DIR=$DATA_DIR" \
    "ENV HF_HUB_OFFLINE=1" \
    "ENV OFFLINE_MODE=true" \
    "ENV ENABLE_OLLAMA_API=false" \
    "WORKDIR $DATA_DIR" \
    "EXPOSE 8080" \
    'ENTRYPOINT ["open-webui", "serve", "--host", "0.0.0.0", "--port", "8080"]' \
    "LABEL org.deploykit.provisioned=true org.deploykit.component=open-webui org.deploykit.openwebui.version=$OPENWEBUI_VERSION org.deploykit.torch.version=$torchver org.deploykit.base=debian-$SUITE"
images_env_set "$KEY" "$TAG"
log "Open WebUI image built: $TAG ($(image_size "$TAG"), $(took))"
echo "$KEY=$TAG"
