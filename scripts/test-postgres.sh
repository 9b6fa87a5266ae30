#!/usr/bin/env bash
# A private PostgreSQL server for the tests (the PostgreSQL store's contract suite, several
# control-plane replicas): its own data directory under /var/tmp, its own port, reachable only
# on 127.0.0.1, trust authentication (it holds nothing but throw-away test databases), fsync off.
# Started if it is not running, reused if it is; databases that killed tests left behind are
# dropped. Prints the URL the tests take from STRATUS_TEST_POSTGRES. Needs root and the
# `postgresql` package (scripts/test.sh installs it).
set -euo pipefail
dir=/var/tmp/stratus-test-pg
port="${STRATUS_TEST_PG_PORT:-55432}"
bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
as_pg() { runuser -u postgres -- "$@"; }
if ! as_pg "$bin/pg_ctl" -D "$dir/data" status >/dev/null 2>&1; then
    if [ ! -s "$dir/data/PG_VERSION" ]; then
        rm -rf "$dir"
        mkdir -p "$dir"
        chown postgres:postgres "$dir"
        chmod 700 "$dir"
        as_pg "$bin/initdb" -D "$dir/data" -A trust -U postgres -E UTF8 --no-sync >"$dir/initdb.log"
    fi
    # A stale pid file from a machine restart would stop the start.
    rm -f "$dir/data/postmaster.pid"
    as_pg "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
        -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=400" \
        start >/dev/null
fi
psql_() { psql -X -q -h 127.0.0.1 -p "$port" -U postgres -d postgres "$@"; }
for db in $(psql_ -Atc "SELECT datname FROM pg_database WHERE datname LIKE 'stratus\_t\_%'"); do
    psql_ -c "DROP DATABASE \"$db\" WITH (FORCE)" >/dev/null
done
echo "postgres://postgres@127.0.0.1:$port/postgres"
