"""A throwaway database on the test machine's PostgreSQL (127.0.0.1:5432, user postgres, or
the test cluster on 127.0.0.1:54329 that `make postgres` makes where 5432 wants a password).

Each test gets a database of its own with a random name, dropped afterwards; `make postgres`
installs and starts the server where it is missing or stopped.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import pytest

#: The machine's own server first; else the loopback-only test cluster that
#: scripts/start-postgres.sh makes where the machine's server asks user postgres for a password
#: (Debian's default): it holds nothing but these throwaway databases.
SERVERS = ("postgresql://postgres@127.0.0.1:5432", "postgresql://postgres@127.0.0.1:54329")
HOW_TO = ("PostgreSQL is not answering at 127.0.0.1:5432 or the test cluster at 127.0.0.1:54329 "
          "(user postgres, trust or ~/.pgpass): run `make postgres` (Debian: sudo apt-get install "
          "postgresql)")
_server: list[str] = []


def _admin() -> psycopg.Connection:
    errors = []
    for server in _server or SERVERS:
        try:
            admin = psycopg.connect(f"{server}/postgres", autocommit=True, connect_timeout=5)
        except psycopg.OperationalError as exc:
            errors.append(f"{server}: {exc}")
            continue
        _server[:] = [server]
        return admin
    pytest.fail(HOW_TO + "\n" + "\n".join(errors))


@contextmanager
def scratch_database() -> Iterator[str]:
    """The DSN of a new, empty database; dropped (connections and all) on exit."""
    name = "kiosk_test_" + secrets.token_hex(6)
    with _admin() as admin:
        admin.execute(f'CREATE DATABASE "{name}"')  # a name made here, not input
    try:
        yield f"{_server[0]}/{name}"
    finally:
        with _admin() as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
