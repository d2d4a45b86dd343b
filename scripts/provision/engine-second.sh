#!/usr/bin/env bash
# A second Docker Engine on this machine, reached over ssh:// through Debian's OpenSSH server on
# loopback: the "remote workstation" of the fleet end-to-end tests. Idempotent; never touches the
# first engine (its socket, data root, bridge or iptables chains).
#
#   dockerd  --data-root /var/lib/deploykit-second  --exec-root /run/deploykit-second/exec
#            -H unix:///run/deploykit-second/docker.sock  (its own containerd, namespace, pid file)
#            its own default bridge dk2br0 (10.212.0.1/24), compose networks in 10.213.0.0/16, no
#            iptables rules of its own; also -H tcp://127.0.0.1:$DEPLOYKIT_SECOND_TLS_PORT (22876)
#            with --tlsverify: a CA, a server cert (IP:127.0.0.1, DNS:localhost) and a client cert made
#            here by openssl in /etc/deploykit-second/tls/ (the client's in client/, as DOCKER_CERT_PATH)
#   sshd     127.0.0.1:$DEPLOYKIT_SECOND_SSH_PORT (22879), root by key only, its own host key and
#            authorized_keys; `SetEnv DOCKER_HOST=unix:///run/deploykit-second/docker.sock` makes
#            the `docker system dial-stdio` that ssh:// clients run land on the second engine.
#
# Prints SECOND_ENGINE=ssh://root@127.0.0.1:PORT and SECOND_ENGINE_TLS=tcp://127.0.0.1:TLSPORT and records
# them (and SECOND_ENGINE_CERTS, the client's cert folder) in build/images.env.
set -euo pipefail
# shellcheck source=lib.sh source-path=SCRIPTDIR
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
require_root

PORT="${DEPLOYKIT_SECOND_SSH_PORT:-22879}"
ETC=/etc/deploykit-second
RUN=/run/deploykit-second
DATA=/var/lib/deploykit-second
SOCK="$RUN/docker.sock"
POOL=10.213.0.0/16
BRIDGE=dk2br0
BRIDGE_CIDR=10.212.0.1/24
DOCKERD_LOG="${DEPLOYKIT_SECOND_DOCKERD_LOG:-$LOG_DIR/deploykit-second-dockerd.log}"
SSHD_LOG="$LOG_DIR/deploykit-second-sshd.log"
URL="ssh://root@127.0.0.1:$PORT"
TLS_PORT="${DEPLOYKIT_SECOND_TLS_PORT:-22876}"
TLS="$ETC/tls"
TLS_URL="tcp://127.0.0.1:$TLS_PORT"

command -v dockerd >/dev/null 2>&1 || die "dockerd is missing: run the engine target first."
mkdir -p "$ETC" "$RUN" "$DATA"

# --- TLS material for its tcp:// listener (Docker's file names: ca.pem, cert.pem, key.pem) -----
make_cert() {  # make_cert NAME SUBJECT EXTFILE: NAME-key.pem and NAME.pem signed by the CA
    openssl genrsa -out "$TLS/$1-key.pem" 2048 2>/dev/null
    openssl req -new -key "$TLS/$1-key.pem" -subj "$2" -out "$TLS/$1.csr" 2>/dev/null
    openssl x509 -req -in "$TLS/$1.csr" -CA "$TLS/ca.pem" -CAkey "$TLS/ca-key.pem" -CAcreateserial \
        -days 3650 -sha256 -extfile "$3" -out "$TLS/$1.pem" 2>/dev/null
    rm -f "$TLS/$1.csr"
}
if [ ! -f "$TLS/client/key.pem" ]; then
    install -d -m 0700 "$TLS" "$TLS/client"
    openssl genrsa -out "$TLS/ca-key.pem" 2048 2>/dev/null
    openssl req -x509 -new -key "$TLS/ca-key.pem" -sha256 -days 3650 -subj "/CN=deploykit-second CA" \
        -out "$TLS/ca.pem" 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n' >"$TLS/server.ext"
    printf 'extendedKeyUsage=clientAuth\n' >"$TLS/client.ext"
    make_cert server "/CN=localhost" "$TLS/server.ext"
    make_cert client-cert "/CN=deploykit-controller" "$TLS/client.ext"
    cp "$TLS/ca.pem" "$TLS/client/ca.pem"
    mv "$TLS/client-cert.pem" "$TLS/client/cert.pem"
    mv "$TLS/client-cert-key.pem" "$TLS/client/key.pem"
    chmod 0600 "$TLS"/*.pem "$TLS/client"/*.pem
    log "TLS material for $TLS_URL made in $TLS"
fi

# --- the second engine -----------------------------------------------------------------------
second_up() { DOCKER_HOST="unix://$SOCK" docker info >/dev/null 2>&1; }
tls_up() { DOCKER_HOST="$TLS_URL" DOCKER_TLS_VERIFY=1 DOCKER_CERT_PATH="$TLS/client" docker info >/dev/null 2>&1; }

if second_up && ! tls_up; then
    # Started before it had a tcp:// listener: restart it (only it; never the first engine).
    pid="$(cat "$RUN/docker.pid" 2>/dev/null || true)"
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        log "restarting the second engine (pid $pid) to add its TLS listener $TLS_URL"
        kill -TERM "$pid"
        for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
        kill -0 "$pid" 2>/dev/null && die "the second dockerd (pid $pid) did not stop within 30 s."
    fi
fi
if second_up; then
    log "second engine already running at unix://$SOCK and $TLS_URL"
else
    # Its own (empty) config file: an /etc/docker/daemon.json written for the first engine must not apply.
    [ -f "$ETC/daemon.json" ] || echo '{}' >"$ETC/daemon.json"
    # Its own default bridge, made here: dockerd would create or take "docker0", which is the first
    # engine's, and with --bridge=none it DELETES docker0 at start-up. Compose's networks come from a
    # pool the first engine does not use. --iptables=false: the first engine owns the DOCKER chains and
    # a second daemon would rewrite them; published ports go through docker-proxy.
    if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
        ip link add "$BRIDGE" type bridge
        ip addr add "$BRIDGE_CIDR" dev "$BRIDGE"
        ip link set "$BRIDGE" up
    fi
    # Starting a second dockerd deletes the first engine's docker0 bridge (seen on 20.10 even with
    # --bridge set to its own): note it here and put it back, same address, once this one is up.
    docker0_cidr="$(ip -o -4 addr show docker0 2>/dev/null | awk '{print $4}' | head -n1)"
    log "starting the second dockerd (log: $DOCKERD_LOG)"
    setsid dockerd \
        --config-file "$ETC/daemon.json" \
        --data-root "$DATA" \
        --exec-root "$RUN/exec" \
        --pidfile "$RUN/docker.pid" \
        -H "unix://$SOCK" \
        -H "$TLS_URL" --tlsverify \
        --tlscacert "$TLS/ca.pem" --tlscert "$TLS/server.pem" --tlskey "$TLS/server-key.pem" \
        --containerd-namespace deploykit-second \
        --containerd-plugins-namespace deploykit-second-plugins \
        --bridge "$BRIDGE" \
        --iptables=false --ip-masq=false \
        --default-address-pool "base=$POOL,size=24" \
        >"$DOCKERD_LOG" 2>&1 </dev/null &
    for _ in $(seq 1 120); do second_up && break; sleep 0.5; done
    if ! second_up; then
        tail -n 20 "$DOCKERD_LOG" >&2 || true
        die "the second dockerd did not answer within 60 s (see the log lines above)."
    fi
    for _ in $(seq 1 20); do tls_up && break; sleep 0.5; done
    tls_up || die "the second dockerd does not answer on $TLS_URL with the client certificate."
    if [ -n "$docker0_cidr" ] && ! ip link show docker0 >/dev/null 2>&1; then
        log "restoring the first engine's docker0 ($docker0_cidr), deleted by the second dockerd's start"
        ip link add docker0 type bridge
        ip addr add "$docker0_cidr" dev docker0
        ip link set docker0 up
    fi
    log "second engine running ($(took))"
fi

# br_netfilter sends bridged frames through FORWARD, whose policy the first engine set to DROP:
# let the second engine's containers talk to each other (its own subnets only).
if [ "$(cat /proc/sys/net/bridge/bridge-nf-call-iptables 2>/dev/null || echo 0)" = 1 ]; then
    for net in "$POOL" "${BRIDGE_CIDR%.*}.0/24"; do
        iptables -C FORWARD -s "$net" -d "$net" -j ACCEPT 2>/dev/null \
            || iptables -I FORWARD -s "$net" -d "$net" -j ACCEPT
    done
fi

# --- sshd on loopback ------------------------------------------------------------------------
if [ ! -x /usr/sbin/sshd ]; then
    # Keep the package from starting the system sshd on port 22: only ours runs, on loopback.
    policy=/usr/sbin/policy-rc.d
    made_policy=""
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"; chmod 0755 "$policy"; made_policy=1
    fi
    apt_install openssh-server
    [ -z "$made_policy" ] || rm -f "$policy"
fi

[ -f "$ETC/ssh_host_ed25519_key" ] || ssh-keygen -q -t ed25519 -N "" -C deploykit-second -f "$ETC/ssh_host_ed25519_key"
install -d -m 0700 /root/.ssh
[ -f /root/.ssh/id_ed25519 ] || ssh-keygen -q -t ed25519 -N "" -C "root@deploykit-controller" -f /root/.ssh/id_ed25519
touch "$ETC/authorized_keys"; chmod 0600 "$ETC/authorized_keys"
grep -qxF "$(cat /root/.ssh/id_ed25519.pub)" "$ETC/authorized_keys" || cat /root/.ssh/id_ed25519.pub >>"$ETC/authorized_keys"

cat >"$ETC/sshd_config.new" <<EOF
# Written by scripts/provision/engine-second.sh: the ssh:// door to the second Docker Engine.
Port $PORT
ListenAddress 127.0.0.1
HostKey $ETC/ssh_host_ed25519_key
PidFile $RUN/sshd.pid
AuthorizedKeysFile $ETC/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
X11Forwarding no
# Every session (the SDK's and the docker CLI's "docker system dial-stdio") talks to the second engine.
SetEnv DOCKER_HOST=unix://$SOCK
EOF
mkdir -p /run/sshd
/usr/sbin/sshd -t -f "$ETC/sshd_config.new" || die "sshd rejected $ETC/sshd_config.new."
changed=""
cmp -s "$ETC/sshd_config.new" "$ETC/sshd_config" || { mv "$ETC/sshd_config.new" "$ETC/sshd_config"; changed=1; }
rm -f "$ETC/sshd_config.new"

sshd_pid="$(cat "$RUN/sshd.pid" 2>/dev/null || true)"
if [ -n "$sshd_pid" ] && kill -0 "$sshd_pid" 2>/dev/null; then
    if [ -n "$changed" ]; then kill -HUP "$sshd_pid"; log "sshd reloaded (new configuration)"; fi
else
    /usr/sbin/sshd -f "$ETC/sshd_config" -E "$SSHD_LOG"
    log "sshd listening on 127.0.0.1:$PORT (log: $SSHD_LOG)"
fi

# The controller trusts this host key for [127.0.0.1]:PORT (and only it).
known=/root/.ssh/known_hosts
entry="[127.0.0.1]:$PORT $(cut -d' ' -f1,2 "$ETC/ssh_host_ed25519_key.pub")"
if ! grep -qxF "$entry" "$known" 2>/dev/null; then
    [ ! -f "$known" ] || ssh-keygen -q -R "[127.0.0.1]:$PORT" -f "$known" >/dev/null 2>&1 || true
    printf '%s\n' "$entry" >>"$known"
fi

for _ in $(seq 1 20); do
    root="$(DOCKER_HOST="$URL" docker info -f '{{.DockerRootDir}}' 2>/dev/null || true)"
    [ -z "$root" ] || break
    sleep 0.5
done
[ "$root" = "$DATA" ] || die "docker over $URL answers from '${root:-nothing}', not the second engine ($DATA)."
log "second engine reachable as $URL (data root $DATA, $(took))"
images_env_set SECOND_ENGINE "$URL"
images_env_set SECOND_ENGINE_TLS "$TLS_URL"
images_env_set SECOND_ENGINE_CERTS "$TLS/client"
echo "SECOND_ENGINE=$URL"
echo "SECOND_ENGINE_TLS=$TLS_URL"
