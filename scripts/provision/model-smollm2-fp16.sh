#!/usr/bin/env bash
# The real tiny model for vLLM: SmolLM2-135M-Instruct as a Hugging Face FP16 checkpoint
# (config.json, model.safetensors, tokenizer files with a repaired byte-level tokenizer,
# generation_config.json), converted from the Q4_1 GGUF that model-smollm2.sh fetches.
#
# The conversion (scripts/convert_gguf_to_hf.py: transformers' GGUF loader + the tokenizer fix
# + a round-trip check) runs inside the vLLM CPU image (image-vllm.sh), which has torch,
# transformers, gguf and accelerate, with no network, as the calling user; the host needs none
# of them. It writes into a temporary folder beside the target and renames it into place when
# complete, so a finished folder is never partial. Skips when the folder is complete.
#   model-smollm2-fp16.sh [--force]
# Prints the folder's path on stdout. Needs the engine, not root (unless the image must be built).
set -euo pipefail
# shellcheck source=lib.sh source-path=SCRIPTDIR
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

MODEL_DIR="$(model_cache)"
NAME=smollm2-135m-instruct-fp16
TARGET="$MODEL_DIR/$NAME"
CONVERTER="$REPO_ROOT/scripts/convert_gguf_to_hf.py"
KEY=VLLM_CPU_IMAGE
DEFAULT_IMAGE="${DEPLOYKIT_VLLM_CPU_REPO:-deploykit-local/vllm-cpu}:${DEPLOYKIT_VLLM_CPU_VERSION:-$(pinned vllm.version)}"
REQUIRED=(config.json generation_config.json tokenizer.json tokenizer_config.json deploykit-conversion.json)
force=""
[ "${1:-}" = "--force" ] && force=1

complete() {
    local f
    for f in "${REQUIRED[@]}"; do [ -s "$TARGET/$f" ] || return 1; done
    compgen -G "$TARGET/*.safetensors" >/dev/null
}

if [ -z "$force" ] && complete; then
    log "FP16 model already there: $TARGET"
    echo "$TARGET"
    exit 0
fi

[ -f "$CONVERTER" ] || die "$CONVERTER is missing."
gguf="$(bash "$PROVISION_DIR/model-smollm2.sh")"
[ -f "$gguf" ] || die "model-smollm2.sh gave no GGUF file."
case "$(readlink -f "$gguf")" in
    "$(readlink -f "$MODEL_DIR")"/*) ;;
    *) die "the GGUF $gguf is not inside the model cache $MODEL_DIR." ;;
esac

require_engine
image="$(images_env_get "$KEY")"
image_exists "$image" || image="$DEFAULT_IMAGE"
if ! image_exists "$image"; then
    [ "$(id -u)" -eq 0 ] || die "the vLLM CPU image $image is missing; build it first (as root): scripts/provision/image-vllm.sh"
    image="$(bash "$PROVISION_DIR/image-vllm.sh" | sed -n "s/^$KEY=//p")"
    image_exists "$image" || die "image-vllm.sh did not leave an image."
fi

# One conversion at a time per cache (several provisioning runs may share it).
mkdir -p "$MODEL_DIR"
exec 9>"$MODEL_DIR/.$NAME.lock"
flock 9
if [ -z "$force" ] && complete; then
    log "FP16 model already there (converted meanwhile): $TARGET"
    echo "$TARGET"
    exit 0
fi
# Left-overs of an interrupted conversion (the converter names them .NAME.tmp-*/.NAME.old-*).
rm -rf --one-file-system "$MODEL_DIR/.$NAME.tmp-"* "$MODEL_DIR/.$NAME.old-"*

logf="$(mktemp "${TMPDIR:-/tmp}/deploykit-fp16-convert.XXXXXX")"
trap 'rm -f "$logf"' EXIT
log "converting $(basename "$gguf") to FP16 in $image (log: $logf)"
args=("/models/$(basename "$gguf")" "/models/$NAME")
[ -z "$force" ] || args+=(--force)
set +e
docker run --rm --network none --user "$(id -u):$(id -g)" \
    --label org.deploykit.provision=convert-gguf \
    -e HOME=/tmp -e HF_HOME=/tmp/hf -e HF_HUB_OFFLINE=1 -e TRANSFORMERS_OFFLINE=1 \
    -e VLLM_NO_USAGE_STATS=1 -e PYTHONUNBUFFERED=1 \
    -v "$MODEL_DIR:/models" \
    -v "$CONVERTER:/opt/deploykit/convert_gguf_to_hf.py:ro" \
    "$image" python3 /opt/deploykit/convert_gguf_to_hf.py "${args[@]}" 2>&1 \
    | tee "$logf" | { grep --line-buffered '^convert: ' | sed -u 's/^/provision: /' >&2 || true; }
rc="${PIPESTATUS[0]}"
set -e
if [ "$rc" -ne 0 ]; then
    grep -v '^convert: ' "$logf" | tail -n 25 >&2
    die "the conversion failed (exit $rc; see the lines above)."
fi
complete || die "the conversion finished but $TARGET is incomplete."
log "FP16 model ready: $TARGET ($(du -sh "$TARGET" | cut -f1), $(took))"
echo "$TARGET"
