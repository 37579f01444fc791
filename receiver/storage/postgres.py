"""Captures in PostgreSQL: the store many receivers share (receiver.store = "postgresql://...").

One row per capture, keyed (verified kiosk id, capture id), image bytes in the row, so
the one transaction that files a capture is all there is to make durable. The store is
*batched*: the receiver files everything that arrives within ``receiver.group_commit_ms``
in one open transaction and commits once (receiver/group_commit.py publishes the receipts
after that). ``INSERT ... ON CONFLICT DO NOTHING`` makes the first writer win, across
receivers too; a row already there with the same image SHA-256 is a duplicate, with
another a conflict (refused by the caller, never receipted as a duplicate). A second
receiver inserting the same key waits on the first one's open transaction, at most a
group-commit window, and then sees its row.

Every value reaches SQL as a bound parameter; ids are checked by receiver/paths.py first
all the same, so both stores refuse the same names. The DSN is never logged (it may hold a
password). Chunked transfers (receiver/storage/pg_chunks.py) and registration records with
their status (receiver/storage/pg_registrations.py) are tables too, in the same batch, so any
receiver of the share group can take any part; ``output_dir`` holds no state of theirs, only
the receiver's lock file and a reassembly's scratch file while it runs. The finished
transaction goes to the ``outbox`` table with a NOTIFY.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg

from agent.capture.record import CaptureRecord
from agent.config_types import ConfigError
from receiver.paths import check_item_id, kiosk_folder
from receiver.storage.base import Outcome, StoreUnavailable
from receiver.storage.migrate import SchemaTooNew, migrate
from receiver.store import make_dirs

log = logging.getLogger(__name__)

#: The channel a matching service LISTENs on; the payload is the registration id.
NOTIFY_CHANNEL = "registration_complete"
#: Kiosk ids whose check (receiver/paths.py) passed, remembered at most (then forgotten).
CHECKED_KIOSKS_MAX = 4096


class PostgresStore:
    batched = True

    def __init__(self, dsn: str, root: Path, receiver_name: str) -> None:
        self.root = Path(root)
        make_dirs(self.root)
        self.name = receiver_name
        self._dsn = dsn
        self._conn: psycopg.Connection | None = None
        self._rolled_back = False
        #: Rollbacks so far: what a caller keeps in memory about the open batch (the chunks
        #: held, receiver/storage/pg_chunks.py) is stale once this moves.
        self.rollbacks = 0
        self.commits = 0
        #: Kiosk ids that passed kiosk_folder's check: a row key names no file, so the check
        #: (a profiled 13 % of receiver time, mostly resolving the path) runs once per id.
        self._checked_kiosks: set[str] = set()
        #: Captures filed since the last flush: (kiosk id, record, whom to tell the outcome).
        self._staged: list[tuple[str, CaptureRecord, Callable[[Outcome], None]]] = []
        with self._connect(autocommit=True) as conn:
            try:
                migrate(conn)
            except SchemaTooNew as exc:
                raise ConfigError("receiver.store", [str(exc)]) from None

    def _connect(self, *, autocommit: bool) -> psycopg.Connection:
        try:
            return psycopg.connect(self._dsn, autocommit=autocommit, connect_timeout=10,
                                   application_name=f"kiosk-agent-receiver {self.name}"[:63])
        except psycopg.Error as exc:
            # psycopg's message names host and database, never the password.
            raise StoreUnavailable(f"cannot connect to the capture database: {exc}") from None

    @property
    def conn(self) -> psycopg.Connection:
        """The connection of the open batch (a transaction starts with its first statement)."""
        if self._conn is None or self._conn.closed:
            self._conn = self._connect(autocommit=False)
        return self._conn

    def folder(self, kiosk_id: str) -> Path:
        return kiosk_folder(self.root, kiosk_id)

    def _run(self, query: str, params: tuple[Any, ...], flush_first: bool = True) -> psycopg.Cursor:
        if flush_first:
            self.flush()  # anything else sees (and follows) the captures staged before it
        with self._errors():
            return self.conn.execute(query, params)

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """A failed statement takes the batch with it: rolled back, said as StoreUnavailable."""
        try:
            yield
        except psycopg.Error as exc:
            self.rollback()
            raise StoreUnavailable(f"capture database: {type(exc).__name__}: {exc}") from None

    def _key(self, kiosk_id: str, capture_id: str) -> tuple[str, str]:
        """The row key; UnsafeName for ids the file store could not name a file with either."""
        if type(kiosk_id) is not str or kiosk_id not in self._checked_kiosks:
            self.folder(kiosk_id)
            if type(kiosk_id) is str:  # the exact string that passed, never a look-alike
                if len(self._checked_kiosks) >= CHECKED_KIOSKS_MAX:
                    self._checked_kiosks.clear()
                self._checked_kiosks.add(kiosk_id)
        return kiosk_id, check_item_id(capture_id, "capture id")

    def store(self, kiosk_id: str, record: CaptureRecord) -> Outcome:
        decided: list[Outcome] = []
        self.stage(kiosk_id, record, decided.append)
        self.flush()
        return decided[0]

    def stage(self, kiosk_id: str, record: CaptureRecord, decided: Callable[[Outcome], None]) -> None:
        # Written with the batch's other captures in one pipeline (flush): a round trip per
        # batch, not per capture. Ids are checked now, so a hostile one is refused at once.
        self._key(kiosk_id, record.id)
        self._staged.append((kiosk_id, record, decided))

    def flush(self) -> None:
        """Write the staged captures, then tell each caller its outcome, in arrival order."""
        staged, self._staged = self._staged, []
        if not staged:
            return
        rows = {}
        for kiosk_id, record, _ in staged:
            registration = (record.registration or {}).get("id")
            rows.setdefault((kiosk_id, record.id), (
                kiosk_id, record.id, record.image_sha256, record.image_format,
                registration if isinstance(registration, str) else None,
                json.dumps(record.metadata(), sort_keys=True), record.image))
        # In key order: receivers that write overlapping batches take the row locks in the
        # same order, so they wait for each other instead of deadlocking. executemany sends
        # them all in one pipeline (one round trip), with RETURNING telling which went in.
        keys = sorted(rows)
        with self._errors():
            with self.conn.cursor() as cursor:
                cursor.executemany(
                    "INSERT INTO captures (kiosk_id, capture_id, image_sha256, image_format, registration_id,"
                    " metadata, image, stored_by) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
                    " ON CONFLICT (kiosk_id, capture_id) DO NOTHING RETURNING 1",
                    [(*rows[key], self.name) for key in keys], returning=True)
                inserted = {key for key, result in zip(keys, cursor.results(), strict=True)
                            if result.fetchone() is not None}
        there = {key: rows[key][2] for key in inserted}
        others = [key for key in rows if key not in inserted]
        if others:
            there.update(((k, c), sha) for k, c, sha in self._run(
                "SELECT kiosk_id, capture_id, image_sha256 FROM captures WHERE (kiosk_id, capture_id)"
                " IN (SELECT * FROM unnest(%s::text[], %s::text[]))",
                ([k for k, _ in others], [c for _, c in others]), flush_first=False).fetchall())
        for kiosk_id, record, decided in staged:
            key = (kiosk_id, record.id)
            if key in inserted:
                inserted.discard(key)  # this batch's first copy; a later one is a duplicate
                decided("stored")
            else:
                decided("duplicate" if there.get(key) == record.image_sha256 else "conflict")

    def load(self, kiosk_id: str, capture_id: str) -> tuple[dict[str, Any], bytes] | None:
        row = self._run("SELECT metadata, image FROM captures WHERE kiosk_id = %s AND capture_id = %s",
                        self._key(kiosk_id, capture_id)).fetchone()
        return None if row is None else (row[0], bytes(row[1]))

    def has(self, kiosk_id: str, capture_id: str) -> bool:
        return self._run("SELECT 1 FROM captures WHERE kiosk_id = %s AND capture_id = %s",
                         self._key(kiosk_id, capture_id)).fetchone() is not None

    def count(self) -> int:
        row = self._run("SELECT count(*) FROM captures", ()).fetchone()
        return int(row[0]) if row else 0

    def publish_registration(self, kiosk_id: str, registration_id: str, transaction: Path) -> bool:
        # For a caller that keeps its own record of completion elsewhere: committed at once,
        # so the row is durable before that record is. (The receiver's own registrations
        # complete through pg_registrations.py, whose state row commits with the outbox row.)
        added = self.hand_off(kiosk_id, registration_id, transaction.read_bytes())
        self.commit()
        return added

    def hand_off(self, kiosk_id: str, registration_id: str, transaction: bytes) -> bool:
        """The outbox row and its NOTIFY, in the open batch; True when this call added it."""
        added = self._run(
            "INSERT INTO outbox (kiosk_id, registration_id, transaction, created_by) VALUES (%s, %s, %s, %s)"
            " ON CONFLICT (kiosk_id, registration_id) DO NOTHING RETURNING id",
            (*self._key(kiosk_id, registration_id), transaction, self.name)).fetchone()
        if added is not None:
            # Delivered with the COMMIT, never before it, never for a rolled-back batch.
            self._run("SELECT pg_notify(%s, %s)", (NOTIFY_CHANNEL, registration_id))
        return added is not None

    def security_event(self, kiosk_id: str, kind: str, reason: str) -> None:
        # In the open batch: one more row, no connection of its own (anyone on the broker can
        # cause these, so each must stay cheap). Text columns cannot hold NUL.
        try:
            self._run("INSERT INTO security_events (kiosk_id, kind, reason, receiver)"
                      " VALUES (%s, %s, %s, %s)",
                      (kiosk_id[:200].replace("\0", ""), kind[:64], reason[:1000].replace("\0", ""),
                       self.name))
        except StoreUnavailable as exc:
            log.warning("security event not recorded in the database: %s", exc)

    def commit(self) -> None:
        if self._rolled_back:
            # A statement failed since the last commit and took the batch's earlier work with
            # it: what came after must not be receipted as if the whole batch were durable.
            self._rolled_back = False
            raise StoreUnavailable("the batch was rolled back after a database error")
        try:
            self.flush()
        except StoreUnavailable:
            self._rolled_back = False  # said now: nothing of the batch was decided or is durable
            raise
        if self._conn is None or self._conn.closed:
            return
        try:
            self._conn.commit()
            self.commits += 1
        except psycopg.Error as exc:
            self.rollback()
            self._rolled_back = False
            raise StoreUnavailable(f"capture database commit failed: {type(exc).__name__}: {exc}") from None

    def rollback(self) -> None:
        self._staged = []  # never written: their callers hear nothing, so nothing is receipted
        self._rolled_back = True
        self.rollbacks += 1
        if self._conn is None:
            return
        try:
            self._conn.rollback()
        except psycopg.Error:
            self._conn.close()  # broken: the next statement reconnects

    def close(self) -> None:
        if self._conn is not None:
            self.rollback()
            self._conn.close()
            self._conn = None
