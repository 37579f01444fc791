"""Schema migrations for the PostgreSQL store: numbered ``migrations/NNN_name.sql`` files,
applied in order, each in the transaction that records it in ``schema_version``.

Receivers started together (a fleet's, after a deploy) would each find the schema missing;
a transaction-scoped advisory lock makes the others wait, and they then find it applied.
"""

from __future__ import annotations

import logging
import re
from importlib import resources

import psycopg

log = logging.getLogger(__name__)

#: Any constant both sides agree on: "kiosk-agent receiver schema".
ADVISORY_LOCK_KEY = 0x6B61_7273
_NAME = re.compile(r"(\d{3})_[a-z0-9_]+\.sql")


def migrations() -> list[tuple[int, str, str]]:
    """(version, file name, SQL) of every migration shipped, in order."""
    found = []
    for entry in resources.files("receiver.storage.migrations").iterdir():
        match = _NAME.fullmatch(entry.name)
        if match:
            found.append((int(match.group(1)), entry.name, entry.read_text(encoding="utf-8")))
    found.sort()
    if [v for v, _, _ in found] != list(range(1, len(found) + 1)):
        names = [name for _, name, _ in found]
        raise RuntimeError(f"migrations must be numbered 001, 002, ... without gaps: {names}")
    return found


class SchemaTooNew(RuntimeError):
    """The database was migrated by a newer receiver: this code does not know its tables."""

    def __init__(self, current: int, shipped: int) -> None:
        super().__init__(f"the database schema is at version {current}, newer than this receiver's "
                         f"{shipped}: upgrade this receiver (every receiver on one database runs one "
                         "version), or point receiver.store at a database of this version")
        self.current, self.shipped = current, shipped


def current_version(conn: psycopg.Connection) -> int:
    """The schema version recorded in the database; 0 when none (a new, empty database)."""
    found = conn.execute("SELECT to_regclass('schema_version') IS NOT NULL").fetchone()
    if not found or not found[0]:
        return 0
    row = conn.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()
    return int(row[0]) if row else 0


def migrate(conn: psycopg.Connection) -> list[int]:
    """Bring the schema up to date; the versions this call applied (none when current).
    SchemaTooNew when a newer receiver has migrated it further: an older one would write
    rows the newer one's tables do not expect, so it refuses to start."""
    applied: list[int] = []
    shipped = migrations()
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (ADVISORY_LOCK_KEY,))
        conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version integer PRIMARY KEY, "
                     "name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())")
        current = current_version(conn)
        if current > len(shipped):
            raise SchemaTooNew(current, len(shipped))
        for version, name, sql in shipped:
            if version <= current:
                continue
            conn.execute(sql.encode())  # trusted text shipped with the package, no parameters
            conn.execute("INSERT INTO schema_version (version, name) VALUES (%s, %s)", (version, name))
            applied.append(version)
    if applied:
        log.info("database schema migrated to version %d", applied[-1])
    return applied
