#!/usr/bin/env bash
# A second real GGUF for the several-models tests: SmolLM2-135M-Instruct requantised from the shipped
# Q4_1 file to Q8_0 by llama-quantize in the provisioned llama.cpp image (Debian's llama.cpp-tools
# ships it), so nothing new is downloaded. Q8_0 holds the Q4_1 values almost exactly (its answers differ
# only a little) in a file of another size (138 MiB against 94 MiB): a second model for the router tests.
# The output is byte-for-byte repeatable (same input, same build): its SHA-256 is checked, and another
# llama.cpp build's different bytes are said (a warning), not refused: the tests need a GGUF, not these bytes.
# Skips when a GGUF file is there. Prints the model's path on stdout.
# Needs the engine, not root (unless the llama.cpp image must be built first). Takes about a second.
set -euo pipefail
# shellcheck source=lib.sh source-path=SCRIPTDIR
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

MODEL_DIR="$(model_cache)"
NAME=SmolLM2-135M-Instruct.Q8_0.gguf
TARGET="$MODEL_DIR/$NAME"
# What llama-quantize of the pinned build ([llamacpp] in deploykit/catalog/versions.toml) writes from the
# Q4_1 file (144811072 bytes; measured twice, 2026-12-02).
SHA256=7b46609d11703c058397e5cfe4cc6e4b2508cb1eb4c80ddc472a5d421fbdb508
KEY=LLAMACPP_IMAGE

is_gguf() { [ -f "$1" ] && [ "$(head -c 4 "$1")" = GGUF ]; }

if is_gguf "$TARGET"; then
    log "model already there: $TARGET"
    echo "$TARGET"
    exit 0
fi

source_gguf="$(bash "$PROVISION_DIR/model-smollm2.sh")"
[ -f "$source_gguf" ] || die "model-smollm2.sh gave no GGUF file."
[ "$(dirname "$(readlink -f "$source_gguf")")" = "$(readlink -f "$MODEL_DIR")" ] \
    || die "the GGUF $source_gguf is not inside the model cache $MODEL_DIR."

require_engine
image="$(images_env_get "$KEY")"
image_exists "$image" || image="$(provisioned_image llama-server)"
if ! image_exists "$image"; then
    [ "$(id -u)" -eq 0 ] || die "the llama.cpp image is missing; build it first (as root): scripts/provision/image-llamacpp.sh"
    image="$(bash "$PROVISION_DIR/image-llamacpp.sh" | sed -n "s/^$KEY=//p")"
    image_exists "$image" || die "image-llamacpp.sh did not leave an image."
fi

mkdir -p "$MODEL_DIR"
part="$(mktemp "$MODEL_DIR/.$NAME.XXXXXX")"
logf="$(mktemp "${TMPDIR:-/tmp}/deploykit-quantize.XXXXXX")"
trap 'rm -f "$part" "$logf"' EXIT
log "llama-quantize --allow-requantize $(basename "$source_gguf") -> Q8_0 in $image"
if ! docker run --rm --network none --user "$(id -u):$(id -g)" \
        --label org.deploykit.provision=quantize-gguf \
        -v "$MODEL_DIR:/models" --entrypoint llama-quantize "$image" \
        --allow-requantize "/models/$(basename "$source_gguf")" "/models/$(basename "$part")" Q8_0 2 \
        >"$logf" 2>&1; then
    tail -n 15 "$logf" >&2
    die "llama-quantize failed (see the lines above)."
fi
is_gguf "$part" || die "llama-quantize wrote no GGUF file (see $logf)."
echo "$SHA256  $part" | sha256sum --check --status \
    || log "WARNING: $NAME differs from the pinned build's bytes (SHA-256 $SHA256): another llama.cpp build?"
chmod 0644 "$part"
mv -f "$part" "$TARGET"
log "model ready: $TARGET ($(took))"
echo "$TARGET"
