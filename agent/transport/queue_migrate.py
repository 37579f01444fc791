"""Taking a queue file back to an older schema, for the updater's rollback.

After a failed update the updater switches back to the release that ran before; if the new
release migrated the queue (agent/transport/durable_queue.py), the old one refuses the file.
So the new release, which knows both layouts, rewrites the file into the old one first:

    python -m agent.transport.queue_migrate --to 1 [--state-dir DIR] PATH
    python -m agent.transport.queue_migrate --to 1 --config CONFIG      (the updater's form)

Exit 0: rewritten; 1: refused or failed, the file untouched; 2: usage. One line on stdout or
stderr either way.

2 -> 1: every payload is decrypted with its key and stored as schema 1 stored it (the sealed
capture, already encrypted to the central service); the small rows, the keys with them, go
into schema 1's AUTOINCREMENT table, and ``sqlite_sequence`` takes the last sequence number
so numbers are never reused; the totals lose ``last_seq`` and the triggers come back. One
transaction, with ``secure_delete`` on: the pages that held keys and ciphertext are zeroed,
and the WAL is checkpointed and truncated after the commit. Items ``held`` or ``withheld``
(registration approval) are refused: schema 1 does not know the states and would send them.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from agent.lock import StateLock, StateLocked
from agent.transport import durable_queue as dq

#: The schemas this release can take a queue back to (the updater asks before installing).
DOWNGRADES_TO = (1,)

# Exactly what schema 1 (agent/transport/durable_queue.py before schema 2) creates.
_V1 = """
ALTER TABLE items RENAME TO items_v2;
ALTER TABLE totals RENAME TO totals_v2;
CREATE TABLE items (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'queued',   -- queued | sent | rejected
    created REAL NOT NULL,
    size INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_attempt REAL,
    reason TEXT
);
INSERT INTO items (seq, id, kind, state, created, size, attempts, last_attempt, reason)
    SELECT seq, id, kind, state, created, size, attempts, last_attempt, reason FROM items_v2 ORDER BY seq;
CREATE TABLE totals (
    one INTEGER PRIMARY KEY CHECK (one = 1), items INTEGER NOT NULL, bytes INTEGER NOT NULL
);
INSERT INTO totals SELECT one, items, bytes FROM totals_v2;
DELETE FROM sqlite_sequence WHERE name = 'items';
INSERT INTO sqlite_sequence (name, seq) VALUES ('items', max(
    (SELECT last_seq FROM totals_v2), coalesce((SELECT max(seq) FROM items), 0)));
DROP TABLE items_v2;
DROP TABLE totals_v2;
CREATE TRIGGER IF NOT EXISTS items_added AFTER INSERT ON items BEGIN
    UPDATE totals SET items = items + 1, bytes = bytes + new.size WHERE one = 1;
END;
CREATE TRIGGER IF NOT EXISTS items_removed AFTER DELETE ON items BEGIN
    DELETE FROM blobs WHERE seq = old.seq;
    UPDATE totals SET items = items - 1, bytes = bytes - old.size WHERE one = 1;
END;
UPDATE meta SET value = '1' WHERE key = 'schema';
"""


class DowngradeError(dq.QueueError):
    """The queue was not rewritten (and was not changed)."""


def schema_of(db: sqlite3.Connection, path: Path) -> int:
    columns = {row[1] for row in db.execute("PRAGMA table_info(items)")}
    if not columns:
        raise DowngradeError(f"{path}: not a queue (no items table)")
    row = db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
    return 1 if "key" not in columns else int(row[0]) if row else dq.SCHEMA_VERSION


def downgrade(path: str | os.PathLike[str], to_schema: int = 1,
              state_dir: str | os.PathLike[str] | None = None) -> int:
    """Rewrite the schema-2 queue at ``path`` in schema ``to_schema``; returns how many items
    it holds. ``state_dir``: the folder whose lock the agent holds (default: the queue's)."""
    path = Path(path)
    if to_schema not in DOWNGRADES_TO:
        raise DowngradeError(f"{path}: this release cannot take a queue to schema {to_schema}")
    if not path.is_file():
        raise DowngradeError(f"{path}: no queue file there")
    try:
        lock = StateLock(Path(state_dir) if state_dir is not None else path.parent, "kiosk-agent").acquire()
    except StateLocked as exc:
        raise DowngradeError(f"{path}: not rewritten: {exc}") from None
    try:
        return _downgrade(path)
    finally:
        lock.release()


def _downgrade(path: Path) -> int:
    db = sqlite3.connect(path, isolation_level=None)
    try:
        if db.execute("PRAGMA journal_mode=WAL").fetchone()[0].lower() != "wal":
            raise DowngradeError(f"{path}: SQLite refused WAL mode")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA secure_delete=ON")  # the pages that held keys and ciphertext: zeroed
        db.execute("BEGIN IMMEDIATE")
        try:
            version = schema_of(db, path)
            if version != 2:
                already = "already " if version in DOWNGRADES_TO else ""
                raise DowngradeError(f"{path}: {already}at queue schema {version}, not 2; nothing done")
            held = db.execute("SELECT count(*) FROM items WHERE state IN ('held', 'withheld')").fetchone()[0]
            if held:
                raise DowngradeError(f"{path}: {held} item(s) held or withheld for a registration's "
                                     "approval; schema 1 would send them: release or purge them first")
            rows = db.execute("SELECT i.seq, i.id, i.key, b.payload FROM items i JOIN blobs b USING (seq) "
                              "WHERE i.key IS NOT NULL").fetchall()
            for seq, item_id, key, stored in rows:
                try:
                    payload = AESGCM(key).decrypt(dq._NONCE, stored, dq._bound(seq, item_id))
                except InvalidTag:
                    raise DowngradeError(f"{path}: item {item_id} (seq {seq}) does not decrypt with its key; "
                                         "the file is damaged: keep it and ask support") from None
                db.execute("UPDATE blobs SET payload = ? WHERE seq = ?", (payload, seq))
            # The schema-1 open insists on its own sequence table: created by AUTOINCREMENT.
            for statement in _statements(_V1):
                db.execute(statement)
            count = db.execute("SELECT items FROM totals").fetchone()[0]
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        # The WAL held the keys and the old rows until now.
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    except sqlite3.DatabaseError as exc:
        raise DowngradeError(f"{path}: not rewritten: {exc}") from None
    finally:
        db.close()
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return count


def _statements(script: str) -> list[str]:
    """One statement at a time inside the caller's transaction (executescript would commit)."""
    out, part = [], ""
    for line in script.strip().splitlines(keepends=True):
        part += line
        if sqlite3.complete_statement(part):
            out.append(part.strip())
            part = ""
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agent.transport.queue_migrate",
                                     description="rewrite a queue file in an older schema (for a rollback)")
    parser.add_argument("--to", type=int, required=True, help="the schema to go to")
    parser.add_argument("--state-dir", type=Path, help="the folder the agent locks (default: the queue's)")
    parser.add_argument("--config", type=Path, help="take the queue and state folder from this config")
    parser.add_argument("path", type=Path, nargs="?", help="the queue file")
    args = parser.parse_args(argv)
    if (args.path is None) == (args.config is None):
        parser.error("give the queue PATH or --config, one of them")
    path, state_dir = args.path, args.state_dir
    try:
        if args.config is not None:
            from agent.config import load_config  # heavy: only for the updater's form

            config = load_config(args.config)
            path, state_dir = config.queue.path, config.state_dir
        count = downgrade(path, args.to, state_dir)
    except (dq.QueueError, StateLocked, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # a config that does not load, say: one line, not a traceback
        print(f"error: {path or args.config}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(f"{path}: rewritten in queue schema {args.to}, {count} item(s) kept")
    return 0


if __name__ == "__main__":
    sys.exit(main())
