"""A throwaway database on the test machine's PostgreSQL (127.0.0.1:5432, user postgres).

Each test gets a database of its own with a random name, dropped afterwards; `make postgres`
installs and starts the server where it is missing or stopped.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import pytest

SERVER = "postgresql://postgres@127.0.0.1:5432"
HOW_TO = ("PostgreSQL is not answering at 127.0.0.1:5432 (user postgres, trust or ~/.pgpass): "
          "run `make postgres` (Debian: sudo apt-get install postgresql; "
          "sudo pg_ctlcluster 15 main start)")


def _admin() -> psycopg.Connection:
    try:
        return psycopg.connect(f"{SERVER}/postgres", autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.fail(f"{HOW_TO}\n{exc}")


@contextmanager
def scratch_database() -> Iterator[str]:
    """The DSN of a new, empty database; dropped (connections and all) on exit."""
    name = "kiosk_test_" + secrets.token_hex(6)
    with _admin() as admin:
        admin.execute(f'CREATE DATABASE "{name}"')  # a name made here, not input
    try:
        yield f"{SERVER}/{name}"
    finally:
        with _admin() as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
