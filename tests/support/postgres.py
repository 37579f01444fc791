"""A throwaway database on the test machine's PostgreSQL (devtools/postgres.py: 127.0.0.1:5432,
user postgres, or the test cluster on 127.0.0.1:54329 that `make postgres` makes where 5432
wants a password), and the newest installed server's programs, as test failures that say
what to do when there is no server.

Each test gets a database of its own with a random name, dropped afterwards; `make postgres`
installs and starts the server where it is missing or stopped.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from devtools import postgres


@contextmanager
def scratch_database() -> Iterator[str]:
    """The DSN of a new, empty database; dropped (connections and all) on exit."""
    try:
        server = postgres.find_server()
    except postgres.PostgresUnavailable as exc:
        pytest.fail(str(exc))
    with postgres.scratch_database(server) as dsn:
        yield dsn


def server_bindir() -> Path:
    """The bin folder of the newest installed PostgreSQL server (initdb, pg_ctl)."""
    try:
        return postgres.server_bindir()
    except postgres.PostgresUnavailable as exc:
        pytest.fail(str(exc))
