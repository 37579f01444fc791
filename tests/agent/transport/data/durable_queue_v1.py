"""The durable queue as of schema 1 (commit 7d87da2), kept to check downgraded files against.

A capture counts as taken only once ``put`` has returned: the row is then on disk and
survives a power cut. Items leave only through ``ack`` (the central side has the capture).
The queue, not the MQTT client, is the source of truth for what still has to be sent.

Start-up does not grow with the backlog: running totals are kept by triggers in the same
transaction as each insert and delete, and nothing is scanned or loaded at open. Payloads
live in their own table so that bookkeeping updates never rewrite image bytes.

One connection, guarded by a lock: capture workers and the publisher share it. SQLite
serialises writers anyway, and one connection keeps the commit order equal to ``seq`` order.
"""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from agent.errors import AgentError, PermanentError, TransientError
from agent.security.private_files import create_private, private_dir, private_sqlite

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS items (
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
CREATE TABLE IF NOT EXISTS blobs (seq INTEGER PRIMARY KEY, payload BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS totals (
    one INTEGER PRIMARY KEY CHECK (one = 1), items INTEGER NOT NULL, bytes INTEGER NOT NULL
);
INSERT OR IGNORE INTO totals VALUES (1, 0, 0);
CREATE TRIGGER IF NOT EXISTS items_added AFTER INSERT ON items BEGIN
    UPDATE totals SET items = items + 1, bytes = bytes + new.size WHERE one = 1;
END;
CREATE TRIGGER IF NOT EXISTS items_removed AFTER DELETE ON items BEGIN
    DELETE FROM blobs WHERE seq = old.seq;
    UPDATE totals SET items = items - 1, bytes = bytes - old.size WHERE one = 1;
END;
"""


class QueueError(AgentError):
    """Base of the queue's errors, transient or permanent by subclass. Raised itself (and
    permanent) for a queue that cannot be used at all: a file system without WAL support, a
    schema this version cannot read; neither mends itself."""


# Transient: the backlog drains once the kiosk is online again, giving back quota and disk.
class QueueFull(QueueError, TransientError):
    """A new capture was refused (quota or free disk); nothing queued was dropped."""


# Permanent: a failing disk or a file system remounted read-only needs a person.
class QueueWriteError(QueueError, PermanentError):
    """SQLite could not write (I/O error, read-only file system); nothing was changed."""


@dataclass(frozen=True)
class QueuedItem:
    seq: int
    id: str
    kind: str
    payload: bytes = field(repr=False)
    attempts: int
    created: float


@dataclass(frozen=True)
class QueueStats:
    pending: int
    pending_bytes: int
    oldest_age_s: float | None
    by_state: dict[str, int]
    max_bytes: int
    disk_free_bytes: int

    def as_dict(self) -> dict[str, object]:
        return {
            "pending": self.pending,
            "pending_bytes": self.pending_bytes,
            "oldest_age_s": self.oldest_age_s,
            "by_state": self.by_state,
            "max_bytes": self.max_bytes,
            "disk_free_bytes": self.disk_free_bytes,
        }


class DurableQueue:
    def __init__(self, path: str | os.PathLike[str], *, max_bytes: int, min_free_bytes: int,
                 erase_interval_s: float = 5.0, reserve_bytes: int = 0) -> None:
        self.path = Path(path)
        #: Ballast file given back when the disk is full, so acknowledged captures can still be
        #: deleted (with secure_delete a delete writes as much as the capture's size to the WAL).
        self.reserve_path = Path(f"{self.path}.reserve")
        self.reserve_bytes = reserve_bytes
        self.max_bytes = max_bytes
        self.min_free_bytes = min_free_bytes
        self.erase_interval_s = erase_interval_s
        self._erase_due = False
        self._last_erase = 0.0
        #: Set when a damaged database was moved aside at open (telemetry reports it).
        self.quarantined: dict[str, object] | None = None
        self._lock = threading.Lock()
        private_dir(self.path.parent)
        try:
            self._db = self._connect()
        except sqlite3.DatabaseError as exc:
            self._quarantine(exc)
            self._db = self._connect()
        self._next_seq = self._db.execute(
            "SELECT coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'items'), 0) + 1"
        ).fetchone()[0]
        self._refill_reserve()

    # --- opening ------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        private_sqlite(self.path)  # 0600, and so its -wal and -shm, whatever the umask
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        try:
            mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise QueueError(f"{self.path}: SQLite refused WAL mode (got {mode}); "
                                 "put the queue on a local file system")
            db.execute("PRAGMA synchronous=FULL")
            # Deleted captures are overwritten with zeros, not just unlinked from the b-tree.
            db.execute("PRAGMA secure_delete=ON")
            db.executescript(_SCHEMA)
            version = db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
            if version is None:
                db.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
            elif int(version[0]) != SCHEMA_VERSION:
                raise QueueError(
                    f"{self.path}: queue schema {version[0]} is not {SCHEMA_VERSION}; "
                    "this agent version cannot read it, install the version that wrote it"
                )
            # Reads the first rows of every table: a damaged header or root page fails here.
            db.execute("SELECT * FROM totals").fetchone()
            db.execute("SELECT seq FROM items ORDER BY seq LIMIT 1").fetchone()
            # And the sequence table, read just after: damage there escaped the checks and
            # stopped the agent at every start (found by tests/reliability/test_power_loss.py).
            db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'items'").fetchone()
        except BaseException:
            db.close()
            raise
        return db

    def _quarantine(self, exc: Exception) -> None:
        """Move a damaged database aside, never delete it: it may still hold captures."""
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        moved = []
        for suffix in ("", "-wal", "-shm"):
            src = Path(f"{self.path}{suffix}")
            if src.exists():
                dst = Path(f"{self.path}.corrupt-{stamp}{suffix}")
                os.replace(src, dst)
                moved.append(str(dst))
        self.quarantined = {"error": str(exc), "moved_to": moved}
        log.critical(
            "queue database %s is damaged (%s); moved it aside to %s and started a new, empty "
            "queue. Captures in the damaged file were NOT sent: keep the file and ask support "
            "to recover it (sqlite3 .recover).", self.path, exc, ", ".join(moved),
        )

    def close(self) -> None:
        self.erase_if_due(force=True)
        with self._lock:
            self._db.close()

    # --- writing ------------------------------------------------------------------------

    def put(self, item_id: str, kind: str, encode: Callable[[int], bytes]) -> int:
        """Durably commit one item and return its sequence number.

        ``encode(seq)`` builds the payload once the sequence number is known, inside the
        transaction, so the number in the payload and the queue order always agree.
        Raises QueueFull (nothing written) when the quota or free disk would be breached.
        """
        with self._lock:
            seq = self._next_seq
            payload = encode(seq)
            self._check_space(len(payload))
            with self._transaction("commit a capture") as db:
                db.execute(
                    "INSERT INTO items (seq, id, kind, created, size) VALUES (?, ?, ?, ?, ?)",
                    (seq, item_id, kind, time.time(), len(payload)),
                )
                db.execute("INSERT INTO blobs (seq, payload) VALUES (?, ?)", (seq, payload))
            self._next_seq = seq + 1
            return seq

    @contextmanager
    def _transaction(self, what: str) -> Iterator[sqlite3.Connection]:
        """One write transaction (caller holds the lock); SQLite errors become QueueErrors."""
        db = self._db
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
        except sqlite3.OperationalError as exc:
            if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or "full" in str(exc):
                raise QueueFull(
                    f"cannot {what}: the disk holding {self.path.parent} is full. Queued captures "
                    "are kept; free disk space (and raise queue.min_free_bytes so the agent "
                    "refuses captures before the disk fills)."
                ) from exc
            raise QueueWriteError(f"cannot {what} in {self.path}: {exc}") from exc

    def _check_space(self, size: int) -> None:
        queued = self._db.execute("SELECT bytes FROM totals").fetchone()[0]
        if queued + size > self.max_bytes:
            raise QueueFull(
                f"capture refused: the queue holds {queued:,} bytes and its quota "
                f"(queue.max_bytes) is {self.max_bytes:,}. Queued captures are kept; "
                "reconnect the kiosk so they can be sent, or raise the quota."
            )
        free = shutil.disk_usage(self.path.parent).free
        if free - size < self.min_free_bytes:
            raise QueueFull(
                f"capture refused: only {free:,} bytes free on the disk holding {self.path.parent} "
                f"(queue.min_free_bytes is {self.min_free_bytes:,}). Queued captures are kept; "
                "free disk space or reconnect the kiosk so they can be sent."
            )

    def mark_sent(self, seqs: Iterable[int]) -> None:
        """Count one more send attempt for each item (kept for statistics and support)."""
        rows = [(time.time(), s) for s in seqs]
        if not rows:
            return
        with self._lock, self._transaction("count send attempts") as db:
            db.executemany(
                "UPDATE items SET state = 'sent', attempts = attempts + 1, last_attempt = ? "
                "WHERE seq = ? AND state != 'rejected'",
                rows,
            )

    def ack(self, item_ids: Iterable[str]) -> int:
        """Delete acknowledged items; returns how many were still here."""
        ids = [(i,) for i in item_ids]
        if not ids:
            return 0
        with self._lock:
            try:
                deleted = self._delete(ids)
            except QueueFull:
                # A full disk must not stop the queue from draining: with the reserve given
                # back, delete one capture per transaction and truncate the WAL in between,
                # so no transaction needs more room than one capture.
                self._release_reserve()
                deleted = 0
                for one in ids:
                    deleted += self._delete([one])
                    self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._erase_due = self._erase_due or deleted > 0
        self.erase_if_due()
        return deleted

    def _release_reserve(self) -> None:
        try:
            self.reserve_path.unlink()
        except FileNotFoundError:
            return
        log.warning("disk full: released the queue's %d-byte reserve so acknowledged captures can "
                    "be deleted; free disk space", self.reserve_bytes)

    def _refill_reserve(self) -> None:
        """Recreate the reserve once there is room for it beside the free-space watermark."""
        if not self.reserve_bytes or self.reserve_path.exists():
            return
        if shutil.disk_usage(self.path.parent).free < self.reserve_bytes + self.min_free_bytes:
            return
        tmp = self.reserve_path.with_suffix(".tmp")
        tmp.unlink(missing_ok=True)  # left by a crash
        try:
            with os.fdopen(create_private(tmp), "wb") as fh:
                os.posix_fallocate(fh.fileno(), 0, self.reserve_bytes)  # real blocks, not a sparse file
            os.replace(tmp, self.reserve_path)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            log.warning("cannot create the queue's disk reserve %s: %s", self.reserve_path, exc)

    def _delete(self, ids: list[tuple[str]]) -> int:
        with self._transaction("delete acknowledged captures") as db:
            # rowcount counts rows of the statement itself, not the trigger's.
            return db.executemany("DELETE FROM items WHERE id = ?", ids).rowcount

    def erase_if_due(self, force: bool = False) -> bool:
        """Checkpoint and truncate the WAL so acknowledged captures leave no copy in it.

        secure_delete zeroes deleted rows in the database, but the WAL still holds the
        frames written when they were inserted until it is checkpointed and truncated.
        Done at most every ``erase_interval_s``, as each checkpoint costs an fsync.
        """
        if not self._erase_due or (not force and time.monotonic() - self._last_erase < self.erase_interval_s):
            return False
        with self._lock:
            busy, _, _ = self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        self._last_erase = time.monotonic()
        if busy:  # another connection (queue stats) is reading: try again next time
            return False
        self._erase_due = False
        self._refill_reserve()
        return True

    def reject(self, item_id: str, reason: str) -> None:
        """Keep an item the central side refused aside, out of the send order, for support."""
        with self._lock, self._transaction("set a rejected capture aside") as db:
            db.execute("UPDATE items SET state = 'rejected', reason = ? WHERE id = ?", (reason, item_id))

    def retry_rejected(self) -> int:
        """Put every rejected item back in the send order (after a fix on the central side)."""
        with self._lock, self._transaction("retry rejected captures") as db:
            return db.execute("UPDATE items SET state = 'queued', reason = NULL "
                              "WHERE state = 'rejected'").rowcount

    def purge(self, states: tuple[str, ...]) -> tuple[int, int]:
        """Delete every item in the given states; (items, bytes) deleted. For an audited admin
        command only: a purged capture that was never delivered is gone for good."""
        marks = ",".join("?" * len(states))
        with self._lock:
            size = self._db.execute(
                f"SELECT coalesce(sum(length(b.payload)), 0) FROM items i JOIN blobs b ON b.seq = i.seq "
                f"WHERE i.state IN ({marks})", states).fetchone()[0]
            with self._transaction("purge the queue") as db:
                count = db.execute(f"DELETE FROM items WHERE state IN ({marks})", states).rowcount
            self._erase_due = True
        return count, size

    # --- reading ------------------------------------------------------------------------

    def next_batch(self, after_seq: int, limit: int) -> list[QueuedItem]:
        """Items to send, in order, with seq > after_seq (rejected ones skipped)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT i.seq, i.id, i.kind, b.payload, i.attempts, i.created "
                "FROM items i JOIN blobs b ON b.seq = i.seq "
                "WHERE i.seq > ? AND i.state != 'rejected' ORDER BY i.seq LIMIT ?",
                (after_seq, limit),
            ).fetchall()
        return [QueuedItem(*row) for row in rows]

    def get(self, item_id: str) -> QueuedItem | None:
        with self._lock:
            row = self._db.execute(
                "SELECT i.seq, i.id, i.kind, b.payload, i.attempts, i.created "
                "FROM items i JOIN blobs b ON b.seq = i.seq WHERE i.id = ?",
                (item_id,),
            ).fetchone()
        return QueuedItem(*row) if row else None

    def pending_ids(self, item_ids: Iterable[str]) -> set[str]:
        """Which of ``item_ids`` are still here, in any state (not yet acknowledged)."""
        ids, found = list(item_ids), set()
        with self._lock:
            for start in range(0, len(ids), 500):  # below SQLite's limit on bound parameters
                chunk = ids[start:start + 500]
                marks = ",".join("?" * len(chunk))
                rows = self._db.execute(f"SELECT id FROM items WHERE id IN ({marks})", chunk)
                found.update(r[0] for r in rows)
        return found

    def totals(self) -> tuple[int, int]:
        """(items, bytes) queued, from the running totals: O(1)."""
        with self._lock:
            items, size = self._db.execute("SELECT items, bytes FROM totals").fetchone()
        return items, size

    def stats(self) -> QueueStats:
        with self._lock:
            db = self._db
            items, size = db.execute("SELECT items, bytes FROM totals").fetchone()
            oldest = db.execute("SELECT created FROM items ORDER BY seq LIMIT 1").fetchone()
            by_state = dict(db.execute("SELECT state, count(*) FROM items GROUP BY state"))
        return QueueStats(
            pending=items,
            pending_bytes=size,
            oldest_age_s=round(time.time() - oldest[0], 3) if oldest else None,
            by_state={s: by_state.get(s, 0) for s in ("queued", "sent", "rejected")},
            max_bytes=self.max_bytes,
            disk_free_bytes=shutil.disk_usage(self.path.parent).free,
        )

    def integrity_check(self) -> str:
        """SQLite's full integrity check ('ok' when sound); reads the whole file."""
        with self._lock:
            return self._db.execute("PRAGMA integrity_check").fetchone()[0]
