"""The durable capture queue: SQLite in WAL mode with synchronous=FULL.

A capture counts as taken only once ``put`` has returned: the row is then on disk and
survives a power cut. Items leave only through ``ack`` (the central side has the capture).
The queue, not the MQTT client, is the source of truth for what still has to be sent.

Start-up does not grow with the backlog: running totals (and the last sequence number, so
numbers are never reused) are kept in one row updated in the same transaction as each insert
and delete, and nothing is scanned or loaded at open.

Two rows per item, each written for one reason. The payload row (``blobs``) is written once
and deleted once, never updated. The small row (``items``) carries everything that changes
(state, attempts) and the payload's own key.

Erasure by crypto-shredding. Each payload is stored encrypted under a random 256-bit key of
its own (AES-256-GCM), and the key lives only in the item's small row. Deleting an item zeroes
the small row (``secure_delete`` is on for everything but one statement) and deletes the
payload row without zeroing it: what stays in free pages is ciphertext under a key that no
longer exists anywhere in the database, and the WAL, which holds both until the next
checkpoint, is checkpointed and truncated (``erase_if_due``). Zeroing the 100 KB payload
itself, as ``secure_delete`` does, wrote every capture a second time (docs/performance.md).
Each key encrypts exactly one payload once, so a constant nonce never repeats under a key.
Payloads stored before schema 2 have no key (NULL): they are deleted with zeroing, as then.

One connection for reads and writes, guarded by a lock: capture workers and the publisher
share it, and one connection keeps the commit order equal to ``seq`` order. Checkpoints use
a second one, off the commit path (agent/transport/wal_checkpoints.py).
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
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from agent.errors import AgentError, PermanentError, TransientError
from agent.security.private_files import private_dir, private_sqlite
from agent.transport.disk_reserve import DiskReserve
from agent.transport.queue_schema import SCHEMA_VERSION as SCHEMA_VERSION  # the updater asks here
from agent.transport.queue_schema import QueueSchemaError, create_or_migrate, quarantine
from agent.transport.queue_types import QueuedItem, QueueStats
from agent.transport.wal_checkpoints import WalCheckpoints

log = logging.getLogger(__name__)

#: Each key encrypts one payload, once: the (key, nonce) pair cannot repeat.
_NONCE = bytes(12)
#: The columns every read returns, in QueuedItem's order, then the key.
_READ = ("SELECT i.seq, i.id, i.kind, b.payload, i.attempts, i.created, i.key "
         "FROM items i JOIN blobs b ON b.seq = i.seq ")


def _select_in(db: sqlite3.Connection, sql: str, ids: list[str]) -> list[tuple]:  # type: ignore[type-arg]
    """``sql`` with ``{}`` for an IN list, over ``ids`` in chunks below SQLite's limit on bound parameters."""
    rows: list[tuple] = []  # type: ignore[type-arg]
    for start in range(0, len(ids), 500):
        chunk = ids[start:start + 500]
        rows += db.execute(sql.format(",".join("?" * len(chunk))), chunk)
    return rows


def _bound(seq: int, item_id: str) -> bytes:
    """Associated data: a payload copied to another row does not open there."""
    return f"{seq}/{item_id}".encode()


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


class DurableQueue:
    def __init__(self, path: str | os.PathLike[str], *, max_bytes: int, min_free_bytes: int,
                 erase_interval_s: float = 5.0, reserve_bytes: int = 0) -> None:
        self.path = Path(path)
        #: Free-space watermark and the ballast given back when the disk is full.
        self.disk = DiskReserve(self.path, reserve_bytes=reserve_bytes, min_free_bytes=min_free_bytes)
        self.max_bytes = max_bytes
        self.min_free_bytes = min_free_bytes
        self.erase_interval_s = erase_interval_s
        self._erase_due = False
        self._last_erase = 0.0
        #: Set when a damaged database was moved aside at open (telemetry reports it).
        self.quarantined: dict[str, object] | None = None
        #: Called (on the committing thread, after the commit) when an item joins the send
        #: order, so the MQTT thread wakes at once instead of polling (agent/daemon.py).
        self.on_commit: Callable[[], None] | None = None
        #: Grows whenever items join the send order: a reader that found nothing new at
        #: version v need not ask again until it changes (the publisher's idle turns).
        self.version = 0
        self._lock = threading.Lock()
        private_dir(self.path.parent)
        try:
            self._db = self._connect()
        except sqlite3.DatabaseError as exc:
            self.quarantined = quarantine(self.path, exc)
            self._db = self._connect()
        self._next_seq = self._db.execute("SELECT last_seq FROM totals").fetchone()[0] + 1
        self._wal = WalCheckpoints(self.path)
        self.disk.refill()

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
            db.execute("PRAGMA wal_autocheckpoint=0")  # never on the commit path: WalCheckpoints
            # Deleted rows are overwritten with zeros, not just unlinked from the b-tree; only
            # the delete of wrapped payloads turns it off, for one statement (_delete).
            db.execute("PRAGMA secure_delete=ON")
            try:
                create_or_migrate(db, self.path)
            except QueueSchemaError as exc:
                raise QueueError(str(exc)) from None
            # Reads the first rows of every table: a damaged header or root page fails here.
            db.execute("SELECT * FROM totals").fetchone()
            db.execute("SELECT seq FROM items ORDER BY seq LIMIT 1").fetchone()
            db.execute("SELECT seq FROM blobs ORDER BY seq LIMIT 1").fetchone()
        except BaseException:
            db.close()
            raise
        return db

    def close(self) -> None:
        self.erase_if_due(force=True)
        self._wal.close()
        with self._lock:
            self._db.close()

    # --- writing ------------------------------------------------------------------------

    def put(self, item_id: str, kind: str, encode: Callable[[int], bytes], *, held: bool = False) -> int:
        """Durably commit one item and return its sequence number.

        ``held``: kept out of the send order until ``release`` (a registration awaiting a
        supervisor's approval, agent/registration/approval.py); committed all the same, so a
        crash loses nothing.

        ``encode(seq)`` builds the payload once the sequence number is known, inside the
        transaction, so the number in the payload and the queue order always agree.
        Raises QueueFull (nothing written) when the quota or free disk would be breached.
        """
        with self._lock:
            seq = self._next_seq
            payload = encode(seq)
            self._check_space(len(payload))
            key = os.urandom(32)
            wrapped = AESGCM(key).encrypt(_NONCE, payload, _bound(seq, item_id))
            with self._transaction("commit a capture") as db:
                db.execute(
                    "INSERT INTO items (seq, id, kind, created, size, state, key) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (seq, item_id, kind, time.time(), len(payload), "held" if held else "queued", key),
                )
                db.execute("INSERT INTO blobs (seq, payload) VALUES (?, ?)", (seq, wrapped))
                db.execute("UPDATE totals SET items = items + 1, bytes = bytes + ?, last_seq = ? "
                           "WHERE one = 1", (len(payload), seq))
            self._next_seq = seq + 1
            self._wal.written(len(wrapped))
            if not held:
                self._joined()
            return seq

    def _joined(self) -> None:
        """Items joined the send order: tell the sender (after the commit, lock released or not)."""
        self.version += 1
        if self.on_commit is not None:
            self.on_commit()

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
        problem = self.disk.shortfall(size)
        if problem:
            raise QueueFull(f"capture refused: {problem}")

    def mark_sent(self, seqs: Iterable[int]) -> None:
        """Count one more send attempt for each item (kept for statistics and support). The
        publisher folds these into its next ``ack`` instead; this is for when none comes."""
        rows = [(time.time(), s) for s in seqs]
        if not rows:
            return
        with self._lock, self._transaction("count send attempts") as db:
            self._count_attempts(db, rows)

    @staticmethod
    def _count_attempts(db: sqlite3.Connection, rows: list[tuple[float, int]]) -> None:
        db.executemany("UPDATE items SET state = 'sent', attempts = attempts + 1, last_attempt = ? "
                       "WHERE seq = ? AND state NOT IN ('rejected', 'held', 'withheld')", rows)

    def ack(self, item_ids: Iterable[str], sent: Iterable[int] = ()) -> int:
        """Delete acknowledged items, and count a send attempt for each seq in ``sent``, in one
        transaction (one fsync for all the receipts of a loop turn); returns how many of the
        items were still here."""
        ids = list(dict.fromkeys(item_ids))
        attempts = [(time.time(), s) for s in sent]
        if not ids and not attempts:
            return 0
        with self._lock:
            try:
                with self._transaction("delete acknowledged captures") as db:
                    self._count_attempts(db, attempts)
                    deleted = self._delete(db, self._rows_of(db, ids))
            except QueueFull:
                # A full disk must not stop the queue from draining: with the reserve given
                # back, delete one capture per transaction and truncate the WAL in between,
                # so no transaction needs more room than one capture. (Attempt counts are
                # statistics: dropped here.) No truncation where it cannot fit (it would fail
                # half-way, using the room up): the deletes go on in the reserve's room, and a
                # QueueFull, should that run out too, keeps the rest for the next turn.
                self.disk.release()
                deleted, truncate = 0, True
                for one in ids:
                    with self._transaction("delete acknowledged captures") as db:
                        deleted += self._delete(db, self._rows_of(db, [one]))
                    if truncate:
                        truncate = (self.disk.has_room_for_checkpoint(self._db, self.path)
                                    and self._wal.checkpoint("TRUNCATE"))
            self._erase_due = self._erase_due or deleted > 0
        self.erase_if_due()
        return deleted

    @staticmethod
    def _rows_of(db: sqlite3.Connection, ids: list[str]) -> list[tuple[int, int, bool]]:
        """(seq, size, wrapped) of the items among ``ids`` still here."""
        return _select_in(db, "SELECT seq, size, key IS NOT NULL FROM items WHERE id IN ({})", ids)

    @staticmethod
    def _delete(db: sqlite3.Connection, rows: list[tuple[int, int, bool]]) -> int:
        """Delete items (seq, size, wrapped) inside the caller's transaction: what erasure
        rests on. The small rows, with the keys, are zeroed; wrapped payloads are not (their
        key is what goes); a payload from schema 1, stored in clear form, is."""
        if not rows:
            return 0
        wrapped = [(seq,) for seq, _, w in rows if w]
        clear = [(seq,) for seq, _, w in rows if not w]
        if clear:
            db.executemany("DELETE FROM blobs WHERE seq = ?", clear)
        if wrapped:
            db.execute("PRAGMA secure_delete=OFF")
            try:
                db.executemany("DELETE FROM blobs WHERE seq = ?", wrapped)
            finally:
                # Before anything else is deleted or updated: every other freed page is zeroed.
                db.execute("PRAGMA secure_delete=ON")
        db.executemany("DELETE FROM items WHERE seq = ?", [(seq,) for seq, _, _ in rows])
        db.execute("UPDATE totals SET items = items - ?, bytes = bytes - ? WHERE one = 1",
                    (len(rows), sum(size for _, size, _ in rows)))
        return len(rows)

    def erase_if_due(self, force: bool = False) -> bool:
        """Checkpoint and truncate the WAL so acknowledged captures leave no copy in it: the
        database's deleted rows are zeroed (secure_delete), but the WAL keeps the frames written
        when they were inserted until then. At most every ``erase_interval_s`` (fsyncs)."""
        if not self._erase_due or (not force and time.monotonic() - self._last_erase < self.erase_interval_s):
            return False
        with self._lock:
            fits = self.disk.has_room_for_checkpoint(self._db, self.path)
        if not fits:  # a full disk: the attempt would only use up its last room
            self._last_erase = time.monotonic()
            return False
        # The bulk without holding back the captures being committed, then the rest.
        self._wal.checkpoint("PASSIVE")
        done = self._wal.checkpoint("TRUNCATE")
        self._last_erase = time.monotonic()
        if not done:  # a reader (queue stats) or a long commit in the way: try again next time
            return False
        self._erase_due = False
        self.disk.refill()
        return True

    def reject(self, item_id: str, reason: str) -> None:
        """Keep an item the central side refused aside, out of the send order, for support."""
        with self._lock, self._transaction("set a rejected capture aside") as db:
            db.execute("UPDATE items SET state = 'rejected', reason = ? WHERE id = ?", (reason, item_id))

    def retry_rejected(self) -> int:
        """Put every rejected item back in the send order (after a fix on the central side)."""
        with self._lock:
            with self._transaction("retry rejected captures") as db:
                count = db.execute("UPDATE items SET state = 'queued', reason = NULL "
                                   "WHERE state = 'rejected'").rowcount
            if count:
                self._joined()
        return count

    def release(self, item_ids: Iterable[str]) -> int:
        """Put held items in the send order (a supervisor approved their registration); the
        publisher must rewind, as they may sit before its cursor. How many were released."""
        return self._move(item_ids, "held", "queued", "release held captures")

    def withhold(self, item_ids: Iterable[str]) -> int:
        """Keep held items on the kiosk for good, never sent (a rejected registration, kept
        for the audit until an audited purge of state ``withheld``)."""
        return self._move(item_ids, "held", "withheld", "withhold rejected captures")

    def _move(self, item_ids: Iterable[str], old: str, new: str, what: str) -> int:
        rows = [(new, i, old) for i in item_ids]
        if not rows:
            return 0
        with self._lock:
            with self._transaction(what) as db:
                count = db.executemany("UPDATE items SET state = ? WHERE id = ? AND state = ?", rows).rowcount
            if count and new == "queued":
                self._joined()
        return count

    def oldest_waiting(self) -> float | None:
        """When the oldest item waiting for the central side (queued or sent, not held back on
        the kiosk nor refused) was committed; None when nothing waits."""
        with self._lock:
            row = self._db.execute(
                "SELECT min(created) FROM items WHERE state IN ('queued', 'sent')").fetchone()
        return row[0] if row else None

    def purge(self, states: tuple[str, ...]) -> tuple[int, int]:
        """Delete every item in the given states; (items, bytes) deleted. For an audited admin
        command only: a purged capture that was never delivered is gone for good."""
        marks = ",".join("?" * len(states))
        with self._lock:
            with self._transaction("purge the queue") as db:
                rows = db.execute(f"SELECT seq, size, key IS NOT NULL FROM items WHERE state IN ({marks})",
                                  states).fetchall()
                count = self._delete(db, rows)
            self._erase_due = True
        return count, sum(size for _, size, _ in rows)

    # --- reading ------------------------------------------------------------------------

    def next_batch(self, after_seq: int, limit: int) -> list[QueuedItem]:
        """Items to send, in order, with seq > after_seq (rejected, held and withheld ones skipped)."""
        with self._lock:
            rows = self._db.execute(
                _READ + "WHERE i.seq > ? AND i.state NOT IN ('rejected', 'held', 'withheld') "
                "ORDER BY i.seq LIMIT ?",
                (after_seq, limit),
            ).fetchall()
        return [self._item(row) for row in rows]

    def get(self, item_id: str) -> QueuedItem | None:
        with self._lock:
            row = self._db.execute(_READ + "WHERE i.id = ?", (item_id,)).fetchone()
        return self._item(row) if row else None

    def _item(self, row: tuple) -> QueuedItem:  # type: ignore[type-arg]
        seq, item_id, kind, stored, attempts, created, key = row
        if key is None:  # stored by schema 1, in clear form
            return QueuedItem(seq, item_id, kind, stored, attempts, created)
        try:
            payload = AESGCM(key).decrypt(_NONCE, stored, _bound(seq, item_id))
        except InvalidTag:
            # The file was changed below SQLite (a disk fault): never send garbage in its name.
            raise QueueError(f"{self.path}: item {item_id} (seq {seq}) does not decrypt with its key; "
                             "the queue file is damaged: keep it and ask support") from None
        return QueuedItem(seq, item_id, kind, payload, attempts, created)

    def pending_ids(self, item_ids: Iterable[str]) -> set[str]:
        """Which of ``item_ids`` are still here, in any state (not yet acknowledged)."""
        with self._lock:
            rows = _select_in(self._db, "SELECT id FROM items WHERE id IN ({})", list(item_ids))
        return {r[0] for r in rows}

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
            # held/withheld (registrations awaiting or refused approval) only when there are any.
            by_state={s: by_state.get(s, 0) for s in ("queued", "sent", "rejected")}
            | {s: by_state[s] for s in ("held", "withheld") if by_state.get(s)},
            max_bytes=self.max_bytes,
            disk_free_bytes=shutil.disk_usage(self.path.parent).free,
        )

    def integrity_check(self) -> str:
        """SQLite's full integrity check ('ok' when sound); reads the whole file."""
        with self._lock:
            return self._db.execute("PRAGMA integrity_check").fetchone()[0]
