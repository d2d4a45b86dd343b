#!/usr/bin/env bash
# Provision a fresh Debian 12 machine for deploykit's real end-to-end runs (CI and `make demo`).
#   scripts/provision/provision.sh [TARGET...]     TARGET: engine | engine-second | images | images-webui-old |
#                                                  images-vllm | model | model-fp16 | model-second | browser | all
# Every step is idempotent: a second run skips what is there and takes seconds.
# Image steps merge their keys into build/images.env (LLAMACPP_IMAGE=..., OPENWEBUI_IMAGE=...).
set -euo pipefail
# shellcheck source=lib.sh source-path=SCRIPTDIR
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# target -> scripts (in order). An optional target is one line here, e.g.
#   [images-vllm]="image-vllm.sh"
declare -A TARGET_SCRIPTS=(
    [engine]="engine.sh"
    [engine-second]="engine-second.sh"  # the fleet e2e's ssh:// workstation
    [images]="image-llamacpp.sh image-openwebui.sh image-caddy.sh"
    [images-vllm]="image-vllm.sh"
    [images-webui-old]="image-openwebui-old.sh"  # the older release the cross-version upgrade e2e starts on
    [model]="model-smollm2.sh"
    [model-fp16]="model-smollm2-fp16.sh"
    [model-second]="model-smollm2-q8.sh"  # a second GGUF (Q8_0 of the first) for the several-models tests
    [browser]="browser.sh"
)
ALL_TARGETS=(engine engine-second images images-webui-old images-vllm model model-fp16 model-second browser)
MIN_FREE_GB="${DEPLOYKIT_MIN_FREE_GB:-12}"

usage() {
    local t; t="$(printf '%s|' "${!TARGET_SCRIPTS[@]}" | tr '|' '\n' | sort | paste -sd'|')"
    echo "usage: $0 [$t|all]..." >&2
    exit 2
}

check_disk() {
    local p free
    for p in /var/lib/docker "$(build_tmp_root)"; do
        free="$(free_gb "$p")"
        log "free disk for $p: ${free} GB"
        [ "$free" -ge "$MIN_FREE_GB" ] || die "only ${free} GB free on the disk holding $p; building the images needs at least ${MIN_FREE_GB} GB (set DEPLOYKIT_BUILD_TMP to a bigger disk or free some space)."
    done
}

targets=()
for a in "${@:-all}"; do
    case "$a" in
        -h|--help) usage ;;
        all) targets+=("${ALL_TARGETS[@]}") ;;
        *) [ -n "${TARGET_SCRIPTS[$a]+x}" ] || { echo "provision: unknown target '$a'" >&2; usage; }
           targets+=("$a") ;;
    esac
done

require_root
engine_done=""
for t in "${targets[@]}"; do
    case "$t" in
        images*)  # every image target needs a running engine and room to build
            if [ -z "$engine_done" ]; then bash "$PROVISION_DIR/engine.sh"; engine_done=1; fi
            check_disk ;;
        engine) [ -z "$engine_done" ] || continue; engine_done=1 ;;
    esac
    start=$SECONDS
    for s in ${TARGET_SCRIPTS[$t]}; do
        [ -f "$PROVISION_DIR/$s" ] || die "target $t needs $PROVISION_DIR/$s, which is missing."
        # The scripts print their result (KEY=VALUE, a path) on stdout and progress on stderr;
        # image scripts merge their own key into build/images.env.
        bash "$PROVISION_DIR/$s" >/dev/null
    done
    case "$t" in
        images*) log "images recorded in ${DEPLOYKIT_IMAGES_ENV#"$REPO_ROOT"/}:"
                 sed 's/^/provision:   /' "$DEPLOYKIT_IMAGES_ENV" >&2 ;;
    esac
    log "target $t done in $((SECONDS - start))s"
done
log "all done in $(took)"
