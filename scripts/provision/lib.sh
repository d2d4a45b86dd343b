# shellcheck shell=bash
# Shared helpers for scripts/provision/*.sh. Source it; do not run it.
#
# Rules kept here for every provisioning script:
#  - no registry or mirror host name is ever written into the repository: the Debian mirror is
#    read at run time from the machine's apt sources, pip uses its own configuration;
#  - progress goes to stderr as short "provision: ..." lines, so a script's stdout stays free for
#    its result (e.g. "LLAMACPP_IMAGE=...").

PROVISION_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$PROVISION_DIR/../.." && pwd)"
DEPLOYKIT_IMAGES_ENV="${DEPLOYKIT_IMAGES_ENV:-$REPO_ROOT/build/images.env}"
# Every pinned version is named once, in this file; read one with `pinned TABLE.KEY`.
VERSIONS_FILE="$REPO_ROOT/deploykit/catalog/versions.toml"
export DEBIAN_FRONTEND=noninteractive
# Logs of apt, debootstrap and pip are kept here (build scratch trees are not).
LOG_DIR="${DEPLOYKIT_LOG_DIR:-/var/log}"

log() { printf 'provision: %s\n' "$*" >&2; }
die() { printf 'provision: ERROR: %s\n' "$*" >&2; exit 1; }

# Seconds since the script started (bash's SECONDS), for "done in Ns" lines.
took() { printf '%ss' "$SECONDS"; }

# pinned TABLE.KEY: a version from deploykit/catalog/versions.toml, e.g. `pinned vllm.version`.
pinned() {
    python3 - "$VERSIONS_FILE" "$1" <<'PY' || die "cannot read $1 from $VERSIONS_FILE."
import sys
import tomllib

table, key = sys.argv[2].split(".", 1)
with open(sys.argv[1], "rb") as f:
    values = tomllib.load(f)[table]
value = values[key]
# "{version}" in a value stands for the same table's version (see versions.toml).
print(value.format(**values) if isinstance(value, str) else value)
PY
}

# The model cache folder: deploykit/values/paths.py holds the rule (DEPLOYKIT_MODEL_CACHE, else the XDG cache).
model_cache() {
    python3 "$REPO_ROOT/deploykit/values/paths.py" model-cache || die "cannot work out the model cache folder."
}

require_root() {
    [ "$(id -u)" -eq 0 ] || die "this script must run as root (it installs packages and starts services)."
}

# ---------------------------------------------------------------------------------------------
# apt helpers

_APT_UPDATED=""
# apt/dpkg chatter goes to this log; its tail is shown when something fails.
APT_LOG="${DEPLOYKIT_APT_LOG:-$LOG_DIR/deploykit-provision-apt.log}"

apt_quiet() {
    if ! "$@" >>"$APT_LOG" 2>&1; then
        tail -n 15 "$APT_LOG" >&2 || true
        return 1
    fi
}

apt_update_once() {
    if [ -z "$_APT_UPDATED" ]; then
        log "apt-get update"
        apt_quiet apt-get update || die "apt-get update failed (see the lines above); check the machine's apt sources."
        _APT_UPDATED=1
    fi
}

pkg_installed() {
    [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null || true)" = "install ok installed" ]
}

# apt_install PKG...: installs the packages that are missing; runs apt-get update only when a
# package has no install candidate in the current lists, or when the install fails (stale lists).
apt_install() {
    local missing=() p policy
    for p in "$@"; do pkg_installed "$p" || missing+=("$p"); done
    [ "${#missing[@]}" -gt 0 ] || return 0
    for p in "${missing[@]}"; do
        policy="$(apt-cache policy "$p" 2>/dev/null || true)"
        if ! printf '%s\n' "$policy" | grep -q 'Candidate: [^(]'; then
            apt_update_once
            break
        fi
    done
    log "apt-get install ${missing[*]} (log: $APT_LOG)"
    if ! apt_quiet apt-get install -y --no-install-recommends "${missing[@]}"; then
        [ -z "$_APT_UPDATED" ] || die "apt-get install ${missing[*]} failed (see the lines above)."
        apt_update_once
        apt_quiet apt-get install -y --no-install-recommends "${missing[@]}" \
            || die "apt-get install ${missing[*]} failed (see the lines above)."
    fi
}

# Prints "URI KEYRING" of the machine's main Debian archive (the first source whose suite is a
# plain release name such as "bookworm", not "bookworm-security"/"-updates"). DEPLOYKIT_APT_MIRROR
# overrides the URI.
apt_main_source() {
    local deb822=/etc/apt/sources.list.d/debian.sources line uri="" keyring=""
    if [ -r "$deb822" ]; then
        line="$(awk '
            function flush() {
                if (uri != "" && types ~ /(^| )deb( |$)/ && suites ~ /(^| )[a-z]+( |$)/ && !done) {
                    print uri, (key == "" ? "-" : key); done = 1
                }
                uri = ""; suites = ""; types = ""; key = ""
            }
            /^[[:space:]]*#/ { next }
            /^[[:space:]]*$/ { flush(); next }
            tolower($1) == "uris:"      { uri = $2 }
            tolower($1) == "suites:"    { $1 = ""; suites = $0 }
            tolower($1) == "types:"     { $1 = ""; types = $0 }
            tolower($1) == "signed-by:" { key = $2 }
            END { flush() }' "$deb822")"
        uri="${line%% *}"; keyring="${line#* }"
    fi
    if [ -z "$uri" ] && [ -r /etc/apt/sources.list ]; then
        # deb [opts] URI SUITE COMPONENTS...
        line="$(sed -E -n 's/^[[:space:]]*deb[[:space:]]+(\[([^]]*)\][[:space:]]+)?([^[:space:]]+)[[:space:]]+([a-z]+)[[:space:]].*$/\3 \2/p' \
            /etc/apt/sources.list | head -n1)"
        uri="${line%% *}"
        keyring="$(printf '%s\n' "${line#* }" | sed -n -E 's/.*signed-by=([^[:space:]]+).*/\1/p')"
    fi
    [ -n "${DEPLOYKIT_APT_MIRROR:-}" ] && uri="$DEPLOYKIT_APT_MIRROR"
    [ -n "$uri" ] || die "could not read a Debian mirror URI from /etc/apt/sources.list.d/debian.sources or /etc/apt/sources.list (set DEPLOYKIT_APT_MIRROR)."
    if [ -z "$keyring" ] || [ "$keyring" = "-" ] || [ ! -r "$keyring" ]; then
        keyring=/usr/share/keyrings/debian-archive-keyring.gpg
    fi
    printf '%s %s\n' "${uri%/}" "$keyring"
}

# ---------------------------------------------------------------------------------------------
# engine / images helpers

engine_up() { docker info >/dev/null 2>&1; }

require_engine() {
    engine_up || die "the Docker engine does not answer ('docker info' fails); run scripts/provision/engine.sh first."
}

image_exists() { [ -n "$1" ] && docker image inspect "$1" >/dev/null 2>&1; }

# images_env_get KEY: value of KEY in build/images.env, or nothing.
images_env_get() {
    [ -r "$DEPLOYKIT_IMAGES_ENV" ] || return 0
    sed -n "s/^$1=//p" "$DEPLOYKIT_IMAGES_ENV" | tail -n1
}

# images_env_set KEY VALUE: merges one key into build/images.env (other keys are kept), atomically.
images_env_set() {
    local key="$1" value="$2" dir tmp
    dir="$(dirname "$DEPLOYKIT_IMAGES_ENV")"
    mkdir -p "$dir"
    tmp="$(mktemp "$dir/.images.env.XXXXXX")"
    if [ -r "$DEPLOYKIT_IMAGES_ENV" ]; then
        grep -v "^$key=" "$DEPLOYKIT_IMAGES_ENV" >"$tmp" || true
    fi
    printf '%s=%s\n' "$key" "$value" >>"$tmp"
    chmod 0644 "$tmp"
    mv -f "$tmp" "$DEPLOYKIT_IMAGES_ENV"
}

# human size of an image
image_size() { docker image inspect -f '{{.Size}}' "$1" | awk '{ printf "%.0f MB", $1 / 1000000 }'; }

# free_gb PATH: free space in whole GB on the filesystem holding PATH (or its nearest parent).
free_gb() {
    local p="$1"
    while [ ! -e "$p" ]; do p="$(dirname "$p")"; done
    df -P -B1G "$p" | awk 'NR == 2 { print $4 }'
}

# Build scratch space (rootfs trees). Big: keep it on a disk, not a tmpfs.
build_tmp_root() { printf '%s\n' "${DEPLOYKIT_BUILD_TMP:-/var/tmp}"; }

# provisioned_image COMPONENT: newest image this project provisioned for COMPONENT, if any.
# (Lets a run skip a rebuild when build/images.env was removed but the engine still has the image.)
provisioned_image() {
    docker images --filter "label=org.deploykit.provisioned=true" \
        --filter "label=org.deploykit.component=$1" --format '{{.Repository}}:{{.Tag}}' \
        | grep -v '<none>' | head -n1 || true
}

# mounts_under DIR: mount points at or below DIR in this mount namespace (deepest first).
mounts_under() {
    local d
    d="$(readlink -f "$1")"
    awk -v d="$d" '$5 == d || index($5, d "/") == 1 { print $5 }' /proc/self/mountinfo | sort -r
}

# safe_rm_tree DIR: removes a build tree, but never through a mount that is still attached
# (a bind mount of a host folder inside a rootfs must not have its contents deleted).
# Builds run their mounts in a private mount namespace (unshare), so normally nothing is left.
safe_rm_tree() {
    local dir="$1" m left
    [ -n "$dir" ] && [ -d "$dir" ] || return 0
    while read -r m; do
        [ -n "$m" ] && umount -R "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
    done < <(mounts_under "$dir")
    left="$(mounts_under "$dir")"
    if [ -n "$left" ]; then
        log "WARNING: not removing $dir: still mounted: $left"
        return 0
    fi
    rm -rf --one-file-system "$dir"
}

# in_private_mounts CMD...: runs CMD in its own mount namespace; whatever it mounts disappears
# when it exits, however it exits.
in_private_mounts() { unshare --mount --propagation private "$@"; }

# debootstrap_rootfs SUITE ROOTFS INCLUDE LOGFILE: a minbase Debian tree from the machine's mirror.
debootstrap_rootfs() {
    local suite="$1" rootfs="$2" include="$3" logfile="$4" mirror keyring
    apt_install debootstrap
    read -r mirror keyring < <(apt_main_source)
    log "debootstrap $suite (minbase + $include) into $rootfs (log: $logfile)"
    if ! in_private_mounts debootstrap --variant=minbase --include="$include" --keyring="$keyring" \
            "$suite" "$rootfs" "$mirror" >"$logfile" 2>&1; then
        tail -n 20 "$logfile" >&2
        [ -r "$rootfs/debootstrap/debootstrap.log" ] && tail -n 20 "$rootfs/debootstrap/debootstrap.log" >&2
        die "debootstrap $suite failed (see the lines above)."
    fi
}

# reuse_image LABEL KEY TAG: when TAG is in the engine, records it as KEY in build/images.env,
# prints KEY=TAG and succeeds; otherwise fails, and the caller builds it.
reuse_image() {
    local label="$1" key="$2" tag="$3"
    image_exists "$tag" || return 1
    log "$label image already there: $tag ($(image_size "$tag"))"
    [ "$(images_env_get "$key")" = "$tag" ] || images_env_set "$key" "$tag"
    echo "$key=$tag"
}

# new_rootfs NAME SUITE INCLUDE: a scratch folder that is removed when the script exits, holding a
# fresh minbase tree; sets the globals tmp (the folder) and rootfs (the tree in it). The
# debootstrap log is kept as $LOG_DIR/deploykit-NAME-debootstrap.log.
new_rootfs() {
    local name="$1" suite="$2" include="$3"
    tmp="$(mktemp -d "$(build_tmp_root)/deploykit-$name.XXXXXX")"
    trap 'safe_rm_tree "$tmp"' EXIT
    rootfs="$tmp/rootfs"
    debootstrap_rootfs "$suite" "$rootfs" "$include" "$LOG_DIR/deploykit-$name-debootstrap.log"
    log "rootfs ready ($(took), $(du -sh "$rootfs" | cut -f1))"
}

# rootfs_slim ROOTFS: drops apt caches/lists and the build host's DNS/host name from a tree.
rootfs_slim() {
    local r="$1"
    rm -rf "$r"/var/cache/apt/*.bin "$r"/var/cache/apt/archives/*.deb \
           "$r"/var/cache/apt/archives/partial/* "$r"/var/lib/apt/lists/* \
           "$r"/var/cache/debconf/*-old "$r"/var/log/apt/* "$r"/var/log/dpkg.log \
           "$r"/root/.cache "$r"/tmp/* "$r"/var/tmp/*
    mkdir -p "$r/var/lib/apt/lists/partial"
    # The engine provides these at run time; the build host's must not end up in the image.
    : >"$r/etc/resolv.conf"
    : >"$r/etc/hostname"
}

# import_rootfs ROOTFS TAG CHANGE...: tar the tree into the engine as TAG with --change lines.
import_rootfs() {
    local rootfs="$1" tag="$2"; shift 2
    local args=() c
    for c in "$@"; do args+=(--change "$c"); done
    log "docker import -> $tag"
    tar --numeric-owner -C "$rootfs" -cf - . | docker import "${args[@]}" - "$tag" >/dev/null \
        || die "docker import of $tag failed."
}

# ---------------------------------------------------------------------------------------------
# pip builds inside a rootfs (image-openwebui.sh, image-vllm.sh)
#
# Such a build brings this machine's pip configuration (files, PIP_* and proxy variables, the
# local folders they name such as find-links) and DNS into the tree (pip_build_prepare), runs pip
# there from the script's inner step in a private mount namespace with those folders bound
# read-only (pip_build_run, pip_build_chroot), then takes all of it out again (pip_build_clean).
# The steps share this state as globals, not locals, because they run one after another from the
# script's top level (and a script may read them for its own log lines or clean-up):
#   injected    paths inside the tree created for the build, removed by pip_build_clean
#   conf_files  the host's pip configuration files that the build uses
#   envs        the whole environment of the pip step inside the tree (written to WORKDIR/env)
injected=()
conf_files=()
envs=()

# mkdir_tracked ROOTFS DIR: creates DIR in the tree, remembering the top-most folder it had to
# create (in injected), so that pip_build_clean removes exactly what the build added.
mkdir_tracked() {
    local rootfs="$1" d="$2" top=""
    while [ ! -e "$rootfs$d" ]; do top="$d"; d="$(dirname "$d")"; done
    [ -z "$top" ] && return 0
    mkdir -p "$rootfs$2"
    injected+=("$top")
}

# inject_file ROOTFS HOST_FILE PATH_IN_ROOTFS: copies a host file into the tree for the build
# (tracked in injected); a file the tree has already is left alone.
inject_file() {
    local rootfs="$1" src="$2" dst="$1$3"
    [ -e "$dst" ] && return 0
    mkdir_tracked "$rootfs" "$(dirname "$3")"
    cp -L "$src" "$dst"
    injected+=("$3")
}

# pip_local_paths WHEELS_DIR: local paths that pip's configuration names (find-links folders,
# file:// indexes, cert and constraint files), plus WHEELS_DIR; resolved, one a line. A file://
# index ".../simple" links to "../../files", so its parent folder is given.
pip_local_paths() {
    local wheels_dir="$1"
    { [ "${#conf_files[@]}" -gt 0 ] && sed -n 's/^[^#;=]*=//p' "${conf_files[@]}"; \
      env | sed -n 's/^PIP_[A-Z0-9_]*=//p'; echo "$wheels_dir"; } \
    | tr -s '[:space:],' '\n' | sed -n -E 's#^file://##; s#/+$##; /^\//p' \
    | while IFS= read -r p; do
        [ -e "$p" ] || continue
        [ "$(basename "$p")" = simple ] && p="$(dirname "$p")"
        readlink -f "$p"
    done | sort -u
}

# pip_build_prepare ROOTFS WORKDIR WHEELS_DIR [NAME=VALUE...]: readies ROOTFS for the pip step.
# Copies this machine's DNS and pip configuration files in (the user's land in /root, a
# PIP_CONFIG_FILE at /etc/deploykit-build-pip.conf); makes the mount targets for the local paths
# that configuration names and lists them in WORKDIR/binds (bound read-only by pip_build_chroot,
# at the same place, so the configuration stays valid inside); writes the step's environment to
# WORKDIR/env: a plain root environment, the NAME=VALUE pairs the script passes (what its inner
# step reads), the host's PIP_* and proxy variables, and FIND_LINKS ("--find-links WHEELS_DIR"
# when that folder exists, for the step's pip command line).
pip_build_prepare() {
    local rootfs="$1" workdir="$2" wheels_dir="$3"; shift 3
    local xdg_dirs d user_conf kv find_links="" p
    cp -L /etc/resolv.conf "$rootfs/etc/resolv.conf"
    cat /etc/hosts >"$rootfs/etc/hosts"

    injected=()
    conf_files=()
    xdg_dirs="${XDG_CONFIG_DIRS:-/etc/xdg}"
    for d in ${xdg_dirs//:/ }; do
        [ -f "$d/pip/pip.conf" ] && { inject_file "$rootfs" "$d/pip/pip.conf" "$d/pip/pip.conf"; conf_files+=("$d/pip/pip.conf"); }
    done
    [ -f /etc/pip.conf ] && { inject_file "$rootfs" /etc/pip.conf /etc/pip.conf; conf_files+=(/etc/pip.conf); }
    user_conf="${XDG_CONFIG_HOME:-$HOME/.config}/pip/pip.conf"
    [ -f "$user_conf" ] && { inject_file "$rootfs" "$user_conf" /root/.config/pip/pip.conf; conf_files+=("$user_conf"); }
    [ -f "$HOME/.pip/pip.conf" ] && { inject_file "$rootfs" "$HOME/.pip/pip.conf" /root/.pip/pip.conf; conf_files+=("$HOME/.pip/pip.conf"); }

    envs=(HOME=/root LANG=C.UTF-8 PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
          PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1 "$@")
    if [ -n "${PIP_CONFIG_FILE:-}" ] && [ -f "$PIP_CONFIG_FILE" ]; then
        inject_file "$rootfs" "$PIP_CONFIG_FILE" /etc/deploykit-build-pip.conf
        conf_files+=("$PIP_CONFIG_FILE")
        envs+=(PIP_CONFIG_FILE=/etc/deploykit-build-pip.conf)
    fi
    while IFS= read -r kv; do
        case "$kv" in PIP_CONFIG_FILE=*) ;; *) envs+=("$kv") ;; esac
    done < <(env | grep -E '^(PIP_[A-Z0-9_]+|https?_proxy|HTTPS?_PROXY|no_proxy|NO_PROXY)=' || true)
    if [ -d "$wheels_dir" ]; then
        find_links="--find-links $wheels_dir"
    fi
    envs+=("FIND_LINKS=$find_links")

    : >"$workdir/binds"
    while IFS= read -r p; do
        [ "$p" = / ] && continue
        if [ -d "$p" ]; then
            [ -e "$rootfs$p" ] && [ ! -d "$rootfs$p" ] && { log "WARNING: cannot bind folder $p over a file"; continue; }
            mkdir_tracked "$rootfs" "$p"
        else
            [ -d "$rootfs$p" ] && { log "WARNING: cannot bind file $p over a folder"; continue; }
            if [ ! -e "$rootfs$p" ]; then
                mkdir_tracked "$rootfs" "$(dirname "$p")"
                : >"$rootfs$p"
                injected+=("$p")
            fi
        fi
        echo "$p" >>"$workdir/binds"
    done < <(pip_local_paths "$wheels_dir")
    printf '%s\n' "${envs[@]}" >"$workdir/env"
    log "pip configuration for the build: ${conf_files[*]:-none}; local paths bound: $(tr '\n' ' ' <"$workdir/binds")"
}

# pip_build_run SCRIPT ROOTFS WORKDIR LOGFILE FAILMSG: runs the script's inner step
# ("bash SCRIPT __build ROOTFS WORKDIR/binds WORKDIR/env", which calls pip_build_chroot) in a
# private mount namespace, with its output in LOGFILE; if it fails, shows the log's tail and dies
# with FAILMSG. (SCRIPT is the caller's own path: BASH_SOURCE here would name lib.sh.)
pip_build_run() {
    local script="$1" rootfs="$2" workdir="$3" logfile="$4" failmsg="$5"
    if ! in_private_mounts "$BASH" "$script" __build "$rootfs" "$workdir/binds" "$workdir/env" \
            >"$logfile" 2>&1; then
        tail -n 25 "$logfile" >&2
        die "$failmsg"
    fi
}

# pip_build_chroot ROOTFS BINDS_FILE ENV_FILE SH_SCRIPT: the inner step's body, to be called in
# the private mount namespace that pip_build_run opens (every mount made here vanishes when it
# exits, whatever happens). Mounts /proc, /dev and each path of BINDS_FILE (read-only) into the
# tree, then replaces this process with `sh -euc SH_SCRIPT` chrooted there, in the environment of
# ENV_FILE only.
pip_build_chroot() {
    local rootfs="$1" binds="$2" envfile="$3" script="$4" p
    local -a step_env
    mount -t proc proc "$rootfs/proc"
    mount --bind /dev "$rootfs/dev"
    while IFS= read -r p; do
        [ -n "$p" ] || continue
        mount --bind "$p" "$rootfs$p"
        mount -o remount,bind,ro "$rootfs$p"
    done <"$binds"
    mapfile -t step_env <"$envfile"
    exec chroot "$rootfs" /usr/bin/env -i "${step_env[@]}" /bin/sh -euc "$script"
}

# pip_build_clean ROOTFS: takes out again what pip_build_prepare and pip brought in: the
# injected paths (newest first), pip's configuration and cache in /etc and /root, and the build
# host's /etc/hosts. Refuses while anything is still mounted in the tree.
pip_build_clean() {
    local rootfs="$1" i
    [ -z "$(mounts_under "$rootfs")" ] || die "mounts are still attached under $rootfs; not continuing."
    for ((i = ${#injected[@]} - 1; i >= 0; i--)); do
        rm -rf --one-file-system "${rootfs:?}${injected[$i]}"
    done
    rm -f "$rootfs/etc/pip.conf" "$rootfs/etc/deploykit-build-pip.conf"
    rm -rf "$rootfs/root/.cache" "$rootfs/root/.config/pip" "$rootfs/root/.pip"
    printf '127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n' >"$rootfs/etc/hosts"
}
