#!/usr/bin/env bash
# A throwaway PostgreSQL server for the tests of the outbox's PostgreSQL sink: a fresh cluster in
# a temp dir, reachable only on a unix socket in that dir. Installs Debian's `postgresql` package
# first when it is missing (as root: apt-get update if needed, then apt-get install -y).
#
#   eval "$(scripts/pg.sh start)"   # prints the exports: QUARK_PG_DIR, QUARK_TEST_PG
#   scripts/pg.sh stop [dir]        # stops the cluster and removes its dir ($QUARK_PG_DIR)
#
# The tests read the connection string from QUARK_TEST_PG. The cluster runs with fsync=off:
# the tests kill Quark nodes, never the database server.
set -euo pipefail

find_bin() {
    ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1
}

as_postgres() {
    if [ "$(id -u)" = 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

case "${1:-start}" in
start)
    bin=$(find_bin || true)
    if [ -z "$bin" ] || [ ! -x "$bin/initdb" ]; then
        if [ "$(id -u)" != 0 ]; then
            echo "pg.sh: PostgreSQL is not installed and this is not root: install the postgresql package" >&2
            exit 1
        fi
        echo "pg.sh: installing Debian's postgresql package" >&2
        export DEBIAN_FRONTEND=noninteractive
        if ! apt-get install -y postgresql >&2; then
            apt-get update >&2
            apt-get install -y postgresql >&2
        fi
        bin=$(find_bin)
    fi
    dir=$(mktemp -d /tmp/quark-pg.XXXXXX)
    chmod 755 "$dir"
    if [ "$(id -u)" = 0 ]; then
        chown postgres: "$dir"
    fi
    as_postgres "$bin/initdb" -D "$dir/data" -U postgres --auth=trust --encoding=UTF8 --locale=C >"$dir/initdb.log" 2>&1 ||
        { cat "$dir/initdb.log" >&2; exit 1; }
    as_postgres "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
        -o "-k $dir -c listen_addresses= -p 5432 -c fsync=off -c max_connections=50" start >&2 ||
        { cat "$dir/server.log" >&2; exit 1; }
    echo "export QUARK_PG_DIR=$dir"
    echo "export QUARK_TEST_PG='host=$dir port=5432 user=postgres dbname=postgres'"
    ;;
stop)
    dir="${2:-${QUARK_PG_DIR:?pg.sh stop: give the dir or set QUARK_PG_DIR}}"
    bin=$(find_bin)
    as_postgres "$bin/pg_ctl" -D "$dir/data" -m immediate -w stop >&2 || true
    rm -rf "$dir"
    ;;
*)
    echo "usage: scripts/pg.sh start | stop [dir]" >&2
    exit 2
    ;;
esac
