#!/bin/sh
# start-postgres.sh: make sure a PostgreSQL cluster answers on 127.0.0.1:5432 for the tests
# (tests/support/postgres.py). Starts an installed cluster that is down; says what to do when
# that needs root or the server refuses user postgres without a password.
set -eu
ready() { pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; }
usable() {
    PGCONNECT_TIMEOUT=5 psql -X -q -h 127.0.0.1 -p 5432 -U postgres -d postgres -c 'SELECT 1' >/dev/null 2>&1 && exit 0
    echo "PostgreSQL on 127.0.0.1:5432 does not let user postgres in without a password. On a test" \
         "machine add 'host all postgres 127.0.0.1/32 trust' at the top of pg_hba.conf (pg_lsclusters" \
         "shows the cluster; /etc/postgresql/VERSION/main/pg_hba.conf on Debian) and reload" \
         "(sudo pg_ctlcluster VERSION main reload), or put the password in ~/.pgpass." >&2
    exit 1
}
if ready; then
    usable
fi
cluster=$(pg_lsclusters --no-header 2>/dev/null | awk '$3 == 5432 { print $1 " " $2; exit }')
if [ -z "$cluster" ]; then
    echo "no PostgreSQL cluster on port 5432: run 'sudo pg_createcluster --start 15 main' (or your version)" >&2
    exit 1
fi
if [ "$(id -u)" = 0 ]; then
    echo "starting PostgreSQL cluster $cluster"
    # shellcheck disable=SC2086  # "version name", two words on purpose
    pg_ctlcluster $cluster start
else
    echo "PostgreSQL cluster $cluster is stopped: run 'sudo pg_ctlcluster $cluster start'" >&2
    exit 1
fi
for _ in 1 2 3 4 5 6 7 8 9 10; do
    ready && usable
    sleep 1
done
echo "PostgreSQL cluster $cluster did not come up: see /var/log/postgresql/" >&2
exit 1
