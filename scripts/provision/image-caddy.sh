#!/usr/bin/env bash
# deploykit-local/caddy:<Debian version>: the HTTPS proxy of stacks rendered with --tls, from Debian bookworm's
# caddy package, as there is no container registry to pull upstream's caddy image from. Skips when the
# image recorded in build/images.env (CADDY_IMAGE) still exists. Prints CADDY_IMAGE=<tag> on stdout.
set -euo pipefail
# shellcheck source=lib.sh source-path=SCRIPTDIR
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
require_root
require_engine

KEY=CADDY_IMAGE
REPO="${DEPLOYKIT_CADDY_REPO:-deploykit-local/caddy}"
SUITE="${DEPLOYKIT_CADDY_SUITE:-bookworm}"
PACKAGES=caddy

if [ "${DEPLOYKIT_REFRESH_IMAGES:-0}" != 1 ]; then
    recorded="$(images_env_get "$KEY")"
    image_exists "$recorded" || recorded="$(provisioned_image caddy)"
    reuse_image caddy "$KEY" "$recorded" && exit 0
fi

new_rootfs caddy "$SUITE" "$PACKAGES"

version="$(dpkg-query --admindir="$rootfs/var/lib/dpkg" -W -f='${Version}' caddy)"
[ -n "$version" ] || die "caddy is not installed in the $SUITE rootfs."
[ -x "$rootfs/usr/bin/caddy" ] || die "the $SUITE rootfs has no /usr/bin/caddy."
tested="$(pinned caddy.version)"
# The Caddyfile deploykit renders uses options of the pinned minor line (deploykit/catalog/versions.toml).
case "${version#*:}" in
    "$tested".*) ;;
    *) log "WARNING: $SUITE has caddy $version; deploykit pins the $tested line (deploykit/catalog/versions.toml)." ;;
esac
tag="$REPO:$(printf '%s' "${version#*:}" | tr -c 'A-Za-z0-9_.-' '-')"
log "caddy $version -> tag $tag"

# Only the binary runs: the package's service files and site folders are not wanted, nor file capabilities
# (tar below does not carry them; compose.yaml runs Caddy as nobody, listening above 1024).
rm -rf "$rootfs/etc/caddy" "$rootfs/usr/share/caddy" "$rootfs/lib/systemd" "$rootfs/usr/lib/systemd"
rootfs_slim "$rootfs"

if image_exists "$tag"; then
    log "$tag already in the engine (an earlier build); reusing it"
else
    # As upstream's image: caddy on the PATH, no entrypoint, its state under /config and /data.
    import_rootfs "$rootfs" "$tag" \
        'ENV XDG_CONFIG_HOME=/config XDG_DATA_HOME=/data' \
        'WORKDIR /srv' \
        'CMD ["caddy", "run", "--config", "/etc/caddy/Caddyfile", "--adapter", "caddyfile"]' \
        "LABEL org.deploykit.provisioned=true org.deploykit.component=caddy org.deploykit.caddy.version=$version org.deploykit.base=debian-$SUITE"
fi
images_env_set "$KEY" "$tag"
log "caddy image built: $tag ($(image_size "$tag"), $(took))"
echo "$KEY=$tag"
