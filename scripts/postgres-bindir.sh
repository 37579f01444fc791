#!/bin/sh
# postgres-bindir.sh: print the bin folder of the newest PostgreSQL server installed from
# Debian's packages (/usr/lib/postgresql/<version>/bin), for scripts/start-postgres.sh and the
# tests that run initdb and pg_ctl themselves (tests/support/postgres.py), so both pick the
# same server. A version folder counts only with initdb in it: postgresql-client-<version>
# makes the folder too, with psql and no server.
set -eu
ROOT=${POSTGRES_LIB:-/usr/lib/postgresql}
newest=""
for dir in "$ROOT"/*/bin; do
    [ -x "$dir/initdb" ] && newest="$newest$(basename "$(dirname "$dir")")
"
done
version=$(printf '%s' "$newest" | sort -V | tail -n 1)
if [ -z "$version" ]; then
    echo "no PostgreSQL server is installed (no $ROOT/<version>/bin/initdb):" \
         "run 'sudo apt-get install postgresql' (as root 'make postgres' does it)" >&2
    exit 1
fi
echo "$ROOT/$version/bin"
