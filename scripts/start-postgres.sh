#!/bin/sh
# start-postgres.sh: make sure a PostgreSQL server answers user postgres without a password on
# 127.0.0.1 for the tests (tests/support/postgres.py): the machine's own cluster on port 5432
# when it lets postgres in, else a test cluster of our own on 127.0.0.1:54329.
#
# Debian's own cluster asks for a password over TCP; rather than weaken its pg_hba.conf, the
# tests get a separate cluster ("kiosk-agent-test") that listens on loopback only, trusts
# user postgres there, and holds nothing but throwaway test databases.
set -eu
TEST_PORT=54329
TEST_NAME=kiosk-agent-test
usable() {
    PGCONNECT_TIMEOUT=5 psql -X -q -h 127.0.0.1 -p "$1" -U postgres -d postgres -c 'SELECT 1' >/dev/null 2>&1
}
wait_usable() {
    for _ in 1 2 3 4 5 6 7 8 9 10; do
        usable "$1" && return 0
        sleep 1
    done
    return 1
}
usable 5432 && exit 0
main=$(pg_lsclusters --no-header 2>/dev/null | awk '$3 == 5432 && $4 == "down" { print $1 " " $2; exit }')
if [ -n "$main" ] && [ "$(id -u)" = 0 ]; then
    echo "starting PostgreSQL cluster $main"
    # shellcheck disable=SC2086  # "version name", two words on purpose
    pg_ctlcluster $main start || true
    wait_usable 5432 && exit 0
fi
usable "$TEST_PORT" && exit 0
if [ "$(id -u)" != 0 ]; then
    echo "PostgreSQL on 127.0.0.1:5432 does not let user postgres in without a password (or is" \
         "not running), and making the tests' own cluster needs root: run 'sudo make postgres'," \
         "or let postgres in (a 'host all postgres 127.0.0.1/32 trust' line in pg_hba.conf, or" \
         "~/.pgpass)." >&2
    exit 1
fi
test_cluster=$(pg_lsclusters --no-header 2>/dev/null | awk -v n="$TEST_NAME" '$2 == n { print $1 " " $2; exit }')
if [ -z "$test_cluster" ]; then
    # The newest server installed, as the tests that run initdb themselves pick it.
    bindir=$(sh "$(dirname "$0")/postgres-bindir.sh") || exit 1
    version=$(basename "$(dirname "$bindir")")
    echo "creating the tests' PostgreSQL cluster $version/$TEST_NAME on 127.0.0.1:$TEST_PORT"
    pg_createcluster "$version" "$TEST_NAME" -p "$TEST_PORT" -o listen_addresses=localhost \
        -- --auth-local=peer --auth-host=trust >/dev/null
    test_cluster="$version $TEST_NAME"
fi
echo "starting PostgreSQL cluster $test_cluster"
# shellcheck disable=SC2086
pg_ctlcluster $test_cluster start 2>/dev/null || true
wait_usable "$TEST_PORT" && exit 0
echo "PostgreSQL cluster $test_cluster did not come up on 127.0.0.1:$TEST_PORT: see /var/log/postgresql/" >&2
exit 1
