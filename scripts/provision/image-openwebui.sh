#!/usr/bin/env bash
# deploykit-local/open-webui:<version>: Open WebUI (the version pinned in
# deploykit/catalog/versions.toml, or DEPLOYKIT_OPENWEBUI_VERSION) pip-installed (with a CPU-only torch) into a venv
# at /app/venv of a Debian bookworm minbase tree, then imported into the engine (no registry to
# pull the upstream image from). The build uses this machine's pip configuration (files, PIP_*
# variables, and the local folders they name such as find-links) and DNS; none of it stays in the
# image. Skips when the tag exists. Records the tag in build/images.env under OPENWEBUI_IMAGE (or
# DEPLOYKIT_OPENWEBUI_IMAGE_KEY: image-openwebui-old.sh builds an older release beside the pinned one)
# and prints KEY=<tag> on stdout.
set -euo pipefail
# shellcheck source=lib.sh source-path=SCRIPTDIR
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

OPENWEBUI_VERSION="${DEPLOYKIT_OPENWEBUI_VERSION:-$(pinned open_webui.version)}"
TORCH_SPEC="${DEPLOYKIT_TORCH_SPEC:-torch==$(pinned torch.cpu)}"
WHEELS_DIR="${DEPLOYKIT_WHEELS_DIR:-/opt/wheels}"
SUITE=bookworm
PACKAGES=python3,python3-venv,ca-certificates,curl
KEY="${DEPLOYKIT_OPENWEBUI_IMAGE_KEY:-OPENWEBUI_IMAGE}"
# Each version keeps its own logs, so building one image does not overwrite the other's.
LOG_NAME="openwebui-$OPENWEBUI_VERSION"
TAG="${DEPLOYKIT_OPENWEBUI_REPO:-deploykit-local/open-webui}:$OPENWEBUI_VERSION"
VENV=/app/venv
DATA_DIR=/app/backend/data

# ---------------------------------------------------------------------------------------------
# Inner step: pip_build_run (below) starts it in a private mount namespace, so every mount that
# pip_build_chroot (lib.sh) makes here vanishes when it exits, whatever happens.
#   image-openwebui.sh __build ROOTFS BINDS_FILE ENV_FILE
if [ "${1:-}" = "__build" ]; then
    # shellcheck disable=SC2016 # expanded by the shell inside the tree
    pip_build_chroot "$2" "$3" "$4" '
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

reuse_image "Open WebUI $OPENWEBUI_VERSION" "$KEY" "$TAG" && exit 0
new_rootfs "$LOG_NAME" "$SUITE" "$PACKAGES"

# --- bring this machine's pip configuration and DNS in (removed again below) -------------------
# The NAME=VALUE pairs are what the inner step's sh script reads.
pip_build_prepare "$rootfs" "$tmp" "$WHEELS_DIR" \
    "VENV=$VENV" "TORCH_SPEC=$TORCH_SPEC" "OPENWEBUI_VERSION=$OPENWEBUI_VERSION"

# --- pip install inside the tree ---------------------------------------------------------------
log "pip install $TORCH_SPEC open-webui==$OPENWEBUI_VERSION into $VENV (log: $LOG_DIR/deploykit-$LOG_NAME-pip.log)"
t0=$SECONDS
pip_build_run "${BASH_SOURCE[0]}" "$rootfs" "$tmp" "$LOG_DIR/deploykit-$LOG_NAME-pip.log" \
    "pip install of open-webui==$OPENWEBUI_VERSION in the $SUITE tree failed (see the lines above)."
log "pip install done in $((SECONDS - t0))s"

# --- take the build-only things out again --------------------------------------------------------
pip_build_clean "$rootfs"
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
