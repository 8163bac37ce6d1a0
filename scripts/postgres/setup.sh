#!/usr/bin/env bash
# A throwaway PostgreSQL cluster for the test suite and the benchmarks (ORCH-7006):
# installs Debian's `postgresql` where its server binaries are missing, then
# initdb's a cluster into a temp folder and starts it on a free loopback port.
# Idempotent: a cluster this script started and that still answers is reused.
#
# initdb and postgres refuse to run as root, so as root they run as the system
# user `orchqueue-pg` (created here). Debian installs the server binaries in
# /usr/lib/postgresql/<major>/bin, outside PATH. Loopback only, trust auth: the
# cluster holds test data and nothing else.
#
# Prints the URL, and writes it to $ORCH_PG_DIR/url, where the tests read it (or
# from ORCH_TEST_POSTGRES_URL):
#   eval "$(bash scripts/postgres/setup.sh --export)"
# env: ORCH_PG_DIR (default ${TMPDIR:-/tmp}/orchqueue-postgres)
# usage: scripts/postgres/setup.sh [--export] [--stop]
set -euo pipefail

dir="${ORCH_PG_DIR:-${TMPDIR:-/tmp}/orchqueue-postgres}"
data="$dir/data"
user="orchqueue-pg"
db_user="orchqueue"
log() { echo "[postgres-setup] $*" >&2; }

server_bin() {
    local found
    found=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
    [ -n "$found" ] && [ -x "$found/postgres" ] && [ -x "$found/initdb" ] && echo "$found"
}

bin=$(server_bin || true)
if [ -z "$bin" ]; then
    log "installing PostgreSQL from Debian (package postgresql)"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    # The package's post-install would create and start a cluster of its own:
    # policy-rc.d forbids the start; the cluster of this script is the only one used.
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >/dev/null
    rm -f /usr/sbin/policy-rc.d
    bin=$(server_bin || true)
    [ -n "$bin" ] || { log "postgresql installed but no server binaries under /usr/lib/postgresql"; exit 1; }
fi

# As root, run the server as a dedicated user.
as_owner() {
    if [ "$(id -u)" = 0 ]; then
        runuser -u "$user" -- "$@"
    else
        "$@"
    fi
}
if [ "$(id -u)" = 0 ] && ! id -u "$user" >/dev/null 2>&1; then
    useradd --system --no-create-home --shell /usr/sbin/nologin "$user"
fi

stop_cluster() {
    [ -f "$data/postmaster.pid" ] && as_owner "$bin/pg_ctl" -D "$data" -m fast stop >/dev/null 2>&1 || true
}

if [ "${1:-}" = "--stop" ]; then
    stop_cluster
    rm -rf "$dir"
    exit 0
fi

running() {
    [ -f "$dir/url" ] && [ -f "$data/postmaster.pid" ] \
        && as_owner "$bin/pg_isready" -q -h 127.0.0.1 -p "$(cat "$dir/port")" >/dev/null 2>&1
}

if ! running; then
    stop_cluster
    rm -rf "$dir"
    mkdir -p "$dir"
    [ "$(id -u)" = 0 ] && chown "$user" "$dir"
    port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    log "initdb into $data ($("$bin/postgres" --version))"
    as_owner "$bin/initdb" -D "$data" -U "$db_user" --auth=trust --encoding=UTF8 \
        --no-instructions >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; exit 1; }
    # Several daemons per test, each with a pool of connections.
    as_owner "$bin/pg_ctl" -D "$data" -l "$dir/server.log" -w -t 60 \
        -o "-c listen_addresses=127.0.0.1 -p $port -k $dir -c max_connections=400" \
        start >/dev/null || { tail -n 30 "$dir/server.log" >&2; exit 1; }
    echo "$port" >"$dir/port"
    echo "postgres://$db_user@127.0.0.1:$port/postgres" >"$dir/url"
    log "cluster up on 127.0.0.1:$port (log: $dir/server.log)"
fi

url=$(cat "$dir/url")
if [ "${1:-}" = "--export" ]; then
    echo "export ORCH_TEST_POSTGRES_URL=$url"
else
    echo "$url"
fi
