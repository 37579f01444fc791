"""Throwaway PostgreSQL databases for the tests and the benchmarks (tests/central/,
bench/central_ingest.py, bench/fleet.py), and the newest installed server's programs.

The machine's own server on 127.0.0.1:5432 where it lets user postgres in without a password,
else the loopback-only test cluster on 127.0.0.1:54329 that `make postgres`
(scripts/start-postgres.sh) makes where the machine's server asks for one (Debian's default):
that cluster holds nothing but these throwaway databases. Here, not under tests/, because
`make bench` runs without the test tools; psycopg is the `central` extra, imported when used.
"""

from __future__ import annotations

import secrets
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

SERVERS = ("postgresql://postgres@127.0.0.1:5432", "postgresql://postgres@127.0.0.1:54329")
HOW_TO = ("PostgreSQL is not answering at 127.0.0.1:5432 or the test cluster at 127.0.0.1:54329 "
          "(user postgres, trust or ~/.pgpass): run `make postgres` (Debian: sudo apt-get install "
          "postgresql)")
#: The one script that picks the server version, shared with scripts/start-postgres.sh.
BINDIR_SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "postgres-bindir.sh"
_found: list[str] = []


class PostgresUnavailable(RuntimeError):
    """No server to make a scratch database on, or no server installed; says what to do."""


def find_server() -> str:
    """The first of SERVERS that lets user postgres in (remembered for the process)."""
    if _found:
        return _found[0]
    errors = []
    for server in SERVERS:
        try:
            _connect(server).close()
        except PostgresUnavailable as exc:
            errors.append(str(exc))
            continue
        _found[:] = [server]
        return server
    raise PostgresUnavailable(HOW_TO + "\n" + "\n".join(errors))


def _connect(server: str) -> Any:
    import psycopg  # the `central` extra (tests and `make bench` install it)

    try:
        return psycopg.connect(f"{server}/postgres", autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        raise PostgresUnavailable(f"{server}: {exc}") from None


@contextmanager
def scratch_database(server: str | None = None) -> Iterator[str]:
    """The DSN of a new, empty database on ``server`` (find_server's by default); dropped,
    connections and all, on exit."""
    server = server or find_server()
    name = "kiosk_test_" + secrets.token_hex(6)
    with _connect(server) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')  # a name made here, not input
    try:
        yield f"{server}/{name}"
    finally:
        with _connect(server) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def server_bindir() -> Path:
    """/usr/lib/postgresql/<newest installed server>/bin, as scripts/start-postgres.sh picks it."""
    try:
        done = subprocess.run(["sh", str(BINDIR_SCRIPT)], capture_output=True, text=True, timeout=30)
    except OSError as exc:
        raise PostgresUnavailable(f"cannot run {BINDIR_SCRIPT}: {exc}") from None
    if done.returncode != 0:
        raise PostgresUnavailable(done.stderr.strip() or f"{BINDIR_SCRIPT} failed ({done.returncode})")
    return Path(done.stdout.strip())
