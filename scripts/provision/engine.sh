#!/usr/bin/env bash
# Docker Engine (Debian's docker.io) + the compose v2 CLI plugin (from Debian trixie's
# docker-compose package), then start dockerd if nothing answers. Idempotent.
set -euo pipefail
# shellcheck source=lib.sh source-path=SCRIPTDIR
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
require_root

DOCKERD_LOG="${DEPLOYKIT_DOCKERD_LOG:-/var/log/deploykit-dockerd.log}"
PLUGIN_DIR=/usr/libexec/docker/cli-plugins
COMPOSE_SUITE="${DEPLOYKIT_COMPOSE_SUITE:-trixie}"

# --- engine binaries -------------------------------------------------------------------------
if command -v dockerd >/dev/null 2>&1; then
    log "dockerd already installed ($(dockerd --version 2>/dev/null | head -n1))"
else
    # Keep the package's service scripts from trying to start anything: no init system here,
    # and this script starts dockerd itself below.
    policy=/usr/sbin/policy-rc.d
    made_policy=""
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"; chmod 0755 "$policy"; made_policy=1
    fi
    apt_install docker.io
    [ -z "$made_policy" ] || rm -f "$policy"
    command -v dockerd >/dev/null 2>&1 || die "docker.io was installed but dockerd is not on PATH."
    log "installed $(dockerd --version | head -n1) ($(took))"
fi

# --- compose v2 plugin -----------------------------------------------------------------------
# Every docker client on PATH (e.g. /usr/local/bin/docker and Debian's /usr/bin/docker) must see it.
docker_clients() {
    local c seen=""
    # shellcheck disable=SC2046
    for c in $(type -ap docker) /usr/bin/docker /usr/local/bin/docker; do
        [ -x "$c" ] || continue
        case " $seen " in *" $(readlink -f "$c") "*) continue ;; esac
        seen="$seen $(readlink -f "$c")"
        printf '%s\n' "$c"
    done
}

compose_ok_everywhere() {
    local c
    while read -r c; do
        "$c" compose version >/dev/null 2>&1 || return 1
    done < <(docker_clients)
}

if compose_ok_everywhere; then
    log "compose plugin already there ($(docker compose version 2>/dev/null | head -n1))"
else
    if [ ! -x "$PLUGIN_DIR/docker-compose" ]; then
        read -r mirror keyring < <(apt_main_source)
        tmp="$(mktemp -d)"
        trap 'rm -rf "$tmp"' EXIT
        mkdir -p "$tmp/lists/partial" "$tmp/cache/archives/partial" "$tmp/dl" "$tmp/x"
        printf 'deb [signed-by=%s] %s %s main\n' "$keyring" "$mirror" "$COMPOSE_SUITE" >"$tmp/sources.list"
        apt_tmp=(-o "Dir::Etc::SourceList=$tmp/sources.list" -o "Dir::Etc::SourceParts=/dev/null"
                 -o "Dir::State::Lists=$tmp/lists" -o "Dir::Cache=$tmp/cache"
                 -o "Dir::Etc::Preferences=/dev/null" -o "Dir::Etc::PreferencesParts=/dev/null"
                 -o "APT::Sandbox::User=root")
        log "fetching docker-compose from Debian $COMPOSE_SUITE (throw-away apt configuration)"
        apt-get "${apt_tmp[@]}" update -qq >&2 || die "apt-get update for $COMPOSE_SUITE failed."
        (cd "$tmp/dl" && apt-get "${apt_tmp[@]}" download -qq docker-compose >&2) \
            || die "apt-get download docker-compose ($COMPOSE_SUITE) failed."
        dpkg -x "$tmp"/dl/docker-compose_*.deb "$tmp/x"
        src="$tmp/x/usr/libexec/docker/cli-plugins/docker-compose"
        [ -x "$src" ] || die "the $COMPOSE_SUITE docker-compose package has no usr/libexec/docker/cli-plugins/docker-compose."
        install -D -m 0755 "$src" "$PLUGIN_DIR/docker-compose"
        rm -rf "$tmp"; trap - EXIT
        log "installed $PLUGIN_DIR/docker-compose"
    fi
    if ! compose_ok_everywhere; then
        # Some client builds only search /usr/local/lib/docker/cli-plugins (and ~/.docker).
        install -d /usr/local/lib/docker/cli-plugins
        ln -sf "$PLUGIN_DIR/docker-compose" /usr/local/lib/docker/cli-plugins/docker-compose
    fi
    while read -r c; do
        "$c" compose version >/dev/null 2>&1 \
            || die "'$c compose version' still fails after installing the compose plugin."
        log "$c compose: $("$c" compose version --short 2>/dev/null || "$c" compose version | head -n1)"
    done < <(docker_clients)
fi

# --- daemon ----------------------------------------------------------------------------------
if engine_up; then
    log "engine already running ($(docker version -f '{{.Server.Version}}' 2>/dev/null), $(took))"
    exit 0
fi

# The default engine's own pidfile, not any dockerd: engine-second.sh runs a second one beside it.
if [ -s /var/run/docker.pid ] && kill -0 "$(cat /var/run/docker.pid)" 2>/dev/null; then
    log "the default dockerd ($(cat /var/run/docker.pid)) exists but does not answer yet; waiting for it"
else
    mkdir -p "$(dirname "$DOCKERD_LOG")"
    log "starting dockerd (log: $DOCKERD_LOG)"
    setsid dockerd >"$DOCKERD_LOG" 2>&1 </dev/null &
fi

for _ in $(seq 1 120); do
    if engine_up; then
        log "engine running: server $(docker version -f '{{.Server.Version}}'), storage $(docker info -f '{{.Driver}}') ($(took))"
        exit 0
    fi
    sleep 0.5
done
log "last lines of $DOCKERD_LOG:"
tail -n 20 "$DOCKERD_LOG" >&2 || true
die "dockerd did not answer within 60 s (see the log lines above)."
