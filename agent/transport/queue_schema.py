"""The durable queue's table layout, how older layouts are brought up to it, and where a
damaged file goes.

Kept apart from agent/transport/durable_queue.py because it changes for a different reason:
a new layout means a new ``SCHEMA_VERSION``, a migration here, and a way back in
agent/transport/queue_migrate.py, since the updater compares this number between releases and
rolls a queue back before it starts the previous release (docs/updates.md).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from pathlib import Path

from agent.errors import PermanentError

log = logging.getLogger("agent.transport.durable_queue")  # the name operators know from the log


class QueueSchemaError(PermanentError):
    """The file holds a queue layout this agent version cannot read."""


#: 2: one key per payload (crypto-shredding), no triggers, no AUTOINCREMENT; schema-1 files are
#: migrated at open (``_migrate_v1``). The updater compares this number between releases.
SCHEMA_VERSION = 2

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS items (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'queued',   -- queued | sent | rejected | held | withheld
    created REAL NOT NULL,
    size INTEGER NOT NULL,                  -- of the payload as sent (before wrapping)
    attempts INTEGER NOT NULL DEFAULT 0,
    last_attempt REAL,
    reason TEXT,
    key BLOB                                -- the payload's key; NULL: stored in clear (schema 1)
);
CREATE TABLE IF NOT EXISTS blobs (seq INTEGER PRIMARY KEY, payload BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS totals (
    one INTEGER PRIMARY KEY CHECK (one = 1), items INTEGER NOT NULL, bytes INTEGER NOT NULL,
    last_seq INTEGER NOT NULL DEFAULT 0
);
INSERT OR IGNORE INTO totals VALUES (1, 0, 0, 0);
"""

# Schema 1 kept its totals with triggers and its sequence with AUTOINCREMENT. The items table
# is rebuilt (small rows only); payloads stay where they are, in clear form, key NULL.
_MIGRATE_V1 = """
CREATE TABLE IF NOT EXISTS blobs (seq INTEGER PRIMARY KEY, payload BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS totals (
    one INTEGER PRIMARY KEY CHECK (one = 1), items INTEGER NOT NULL, bytes INTEGER NOT NULL);
INSERT OR IGNORE INTO totals VALUES (1, 0, 0);
CREATE TABLE items_v2 (
    seq INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, kind TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'queued', created REAL NOT NULL, size INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0, last_attempt REAL, reason TEXT, key BLOB);
INSERT INTO items_v2 (seq, id, kind, state, created, size, attempts, last_attempt, reason)
    SELECT seq, id, kind, state, created, size, attempts, last_attempt, reason FROM items;
DROP TRIGGER IF EXISTS items_added;
DROP TRIGGER IF EXISTS items_removed;
ALTER TABLE totals ADD COLUMN last_seq INTEGER NOT NULL DEFAULT 0;
UPDATE totals SET last_seq = max(
    coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'items'), 0),
    coalesce((SELECT max(seq) FROM items), 0));
DROP TABLE items;
ALTER TABLE items_v2 RENAME TO items;
INSERT OR REPLACE INTO meta VALUES ('schema', '2');
"""


def create_or_migrate(db: sqlite3.Connection, path: object) -> None:
    """Create the tables of a new queue, or bring a schema-1 queue to this schema."""
    columns = {row[1] for row in db.execute("PRAGMA table_info(items)")}
    version = None
    if db.execute("SELECT 1 FROM sqlite_master WHERE name = 'meta'").fetchone():
        version = db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
    if version is not None and int(version[0]) not in (1, SCHEMA_VERSION):
        raise QueueSchemaError(
            f"{path}: queue schema {version[0]} is not {SCHEMA_VERSION}; "
            "this agent version cannot read it, install the version that wrote it"
        )
    if columns and "key" not in columns:
        # Written by schema 1 (meta may lack its row if that agent died while creating
        # it): migrated in one transaction, so a power cut leaves one schema or the other.
        db.executescript(f"BEGIN IMMEDIATE;\n{_MIGRATE_V1}\nCOMMIT;")
        log.info("queue %s migrated from schema 1 to %d; its backlog is kept", path, SCHEMA_VERSION)
    else:
        db.executescript(f"BEGIN IMMEDIATE;\n{_SCHEMA}\n"
                         f"INSERT OR IGNORE INTO meta VALUES ('schema', '{SCHEMA_VERSION}');\nCOMMIT;")


def quarantine(path: Path, exc: Exception) -> dict[str, object]:
    """Move a damaged queue database aside, never delete it: it may still hold captures.
    Returns what telemetry reports (the error, where the files went)."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    moved = []
    for suffix in ("", "-wal", "-shm"):
        src = Path(f"{path}{suffix}")
        if src.exists():
            dst = Path(f"{path}.corrupt-{stamp}{suffix}")
            os.replace(src, dst)
            moved.append(str(dst))
    log.critical(
        "queue database %s is damaged (%s); moved it aside to %s and started a new, empty "
        "queue. Captures in the damaged file were NOT sent: keep the file and ask support "
        "to recover it (sqlite3 .recover).", path, exc, ", ".join(moved),
    )
    return {"error": str(exc), "moved_to": moved}
