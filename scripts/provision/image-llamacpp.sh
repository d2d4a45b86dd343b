#!/usr/bin/env bash
# deploykit-local/llama-server:<llama.cpp version>: llama-server from Debian unstable ("sid")
# packages, as there is no container registry to pull from. Skips when the image recorded in
# build/images.env (LLAMACPP_IMAGE) still exists. Prints LLAMACPP_IMAGE=<tag> on stdout.
set -euo pipefail
# shellcheck source=lib.sh source-path=SCRIPTDIR
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
require_root
require_engine

KEY=LLAMACPP_IMAGE
REPO="${DEPLOYKIT_LLAMACPP_REPO:-deploykit-local/llama-server}"
SUITE="${DEPLOYKIT_LLAMACPP_SUITE:-sid}"
PACKAGES=llama.cpp-tools,ca-certificates,curl

# DEPLOYKIT_REFRESH_IMAGES=1 rebuilds from today's sid even when an image is there.
if [ "${DEPLOYKIT_REFRESH_IMAGES:-0}" != 1 ]; then
    recorded="$(images_env_get "$KEY")"
    image_exists "$recorded" || recorded="$(provisioned_image llama-server)"
    reuse_image llama.cpp "$KEY" "$recorded" && exit 0
fi

new_rootfs llamacpp "$SUITE" "$PACKAGES"

version="$(dpkg-query --admindir="$rootfs/var/lib/dpkg" -W -f='${Version}' llama.cpp-tools)"
[ -n "$version" ] || die "llama.cpp-tools is not installed in the $SUITE rootfs."
[ -x "$rootfs/usr/bin/llama-server" ] || die "the $SUITE rootfs has no /usr/bin/llama-server."
# Debian version -> tag: drop the epoch and a "0~" prefix, "+"/"~"/":" become "-"
# (e.g. 1:0~b1234-1 -> b1234-1, 8064+dfsg-1 -> 8064-dfsg-1).
tagver="${version#*:}"
tagver="${tagver#0~}"
tagver="$(printf '%s' "$tagver" | tr -c 'A-Za-z0-9_.-' '-' | sed -E 's/^[.-]+//' | cut -c1-120)"
[ -n "$tagver" ] || die "could not turn llama.cpp-tools version '$version' into an image tag."
tag="$REPO:$tagver"
log "llama.cpp-tools $version -> tag $tag"
tested="$(pinned llamacpp.debian)"
# sid moves on and drops old versions, so a newer build is used, but said: the GPU image pins and the
# planner's measurements are for the version in deploykit/catalog/versions.toml.
[ "$version" = "$tested" ] || log "WARNING: sid has llama.cpp-tools $version; deploykit pins $tested"\
    "(deploykit/catalog/versions.toml): update the [llamacpp] table after testing this one."

rootfs_slim "$rootfs"

if image_exists "$tag"; then
    log "$tag already in the engine (an earlier build); reusing it"
else
    import_rootfs "$rootfs" "$tag" \
        'ENTRYPOINT ["llama-server"]' \
        "LABEL org.deploykit.provisioned=true org.deploykit.component=llama-server org.deploykit.llamacpp.version=$version org.deploykit.base=debian-$SUITE"
fi
images_env_set "$KEY" "$tag"
log "llama.cpp image built: $tag ($(image_size "$tag"), $(took))"
echo "$KEY=$tag"
