"""Registration sessions on disk (SQLite), so a crash or power cut mid-session loses nothing.

Only the session's bookkeeping lives here: who, which plan, which item is done with which
capture id, which fingers are exceptions. The images themselves are sealed and committed to
the durable queue as they are taken; this file never holds biometric data.

Personal data is sealed at rest (agent/security/at_rest.py) under the data key
``registrations.key`` beside the database: per session, one sealed value with the applicant
reference, the operator id, the cancel reason and the exceptions (which finger is missing
and why); per item, one with its status, quality and attempts. Only what rows are looked up
by stays in clear: session ids, plan, state, timestamps and capture ids (agent/registration/
erasure.py matches those against the durable queue).

A closed session is erased once the central side has all of it: rows deleted with SQLite's
secure_delete on (deleted content is overwritten with zeros), then the WAL checkpointed and
truncated, so no copy remains in registrations.db or registrations.db-wal either.

Table ``central`` keeps what the central side says of each registration (agent/registration/
central_status.py): nothing personal, in clear, beyond the session's erasure for 30 days.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.security.at_rest import FieldCipher, SealedFieldError
from agent.security.private_files import private_sqlite

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2
PURPOSE = "kiosk-agent registrations v2"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY, plan TEXT NOT NULL, face INTEGER NOT NULL, state TEXT NOT NULL,
    created REAL NOT NULL, updated REAL NOT NULL, personal BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS items (
    session_id TEXT NOT NULL, key TEXT NOT NULL, capture_id TEXT, token_id TEXT,
    progress BLOB NOT NULL,
    PRIMARY KEY (session_id, key)
);
CREATE TABLE IF NOT EXISTS central (
    session_id TEXT PRIMARY KEY, state TEXT NOT NULL, seq INTEGER NOT NULL, detail TEXT NOT NULL,
    updated REAL, closed REAL, queried REAL
);
"""
#: What the central side says of a registration (agent/registration/central_status.py): kept in
#: clear, since it holds nothing personal (states, plan items, reason codes), and beyond the
#: session's erasure, so that the kiosk still knows its own registrations when the word comes;
#: for this long after the session closed.
CENTRAL_KEPT_S = 30 * 86400
_NEW_CENTRAL = "INSERT INTO central (session_id, state, seq, detail) VALUES (?, 'unknown', 0, '{}')"
#: States after which the kiosk no longer asks.
CENTRAL_FINAL = ("complete", "cancelled")


@dataclass
class ItemState:
    key: str
    status: str = "pending"  # pending | captured | exception
    capture_id: str | None = None
    token_id: str | None = None
    quality: int | None = None
    force_captured: bool = False
    attempts: int = 0
    detail: dict[str, Any] = field(default_factory=dict)
    #: When and where the capture was kept (service.py ``capture_context``): sealed with the
    #: rest of the progress, since a location is personal.
    taken: dict[str, Any] = field(default_factory=dict)

    def progress(self) -> dict[str, Any]:
        return {"status": self.status, "quality": self.quality, "force_captured": self.force_captured,
                "attempts": self.attempts, "detail": self.detail, "taken": self.taken}


@dataclass
class SessionState:
    id: str
    applicant_ref: str
    operator_id: str
    plan: str
    face: bool
    state: str  # open | completed | cancelled
    created: float
    updated: float
    reason: str | None
    items: dict[str, ItemState]
    exceptions: dict[int, tuple[str, str]]  # position -> (code, reason)


class SessionStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        # Its own key, beside it: why not one derived from the kiosk key, see at_rest.py.
        self._cipher = FieldCipher.for_key_file(path.with_suffix(".key"), PURPOSE)
        self._db = self._open()
        if not self._key_fits():
            self._db.close()
            self._set_aside()
            self._db = self._open()
            self._key_fits()

    def _open(self) -> sqlite3.Connection:
        private_sqlite(self.path)  # 0600 (and its -wal, -shm) whatever the umask
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=10)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")  # what the operator was told is done stays done
        # Erased sessions, and the old copy of every updated row, are overwritten with zeros.
        db.execute("PRAGMA secure_delete=ON")
        legacy = _columns(db, "sessions") >= {"applicant_ref"}
        if legacy:
            _migrate_v1(db, self._cipher, self.path)
        else:
            _create_schema(db)
        if legacy or db.execute("SELECT 1 FROM meta WHERE key = 'vacuum'").fetchone():
            _vacuum(db)
        return db

    def _key_fits(self) -> bool:
        """Whether the sessions here were sealed with this key (marks a new database as ours)."""
        row = self._db.execute("SELECT value FROM meta WHERE key = 'key_check'").fetchone()
        if row is None:
            self._db.execute("INSERT INTO meta VALUES ('key_check', ?)",
                             (self._cipher.seal("key_check", "meta"),))
            self._db.execute("INSERT OR REPLACE INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
            return True
        try:
            self._cipher.open(row[0], "meta")
        except SealedFieldError:
            return False
        return True

    def _set_aside(self) -> None:
        """The data key was lost or replaced: the sessions here cannot be read any more. They
        are moved aside, never deleted (the old key may turn up), and a new store begins."""
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        for suffix in ("", "-wal", "-shm"):
            src = Path(f"{self.path}{suffix}")
            if src.exists():
                os.replace(src, Path(f"{self.path}.unreadable-{stamp}{suffix}"))
        log.critical("%s was sealed with another data key than %s; moved it aside as %s.unreadable-%s "
                     "and started with no sessions. Interrupted sessions must be started again; "
                     "captures already queued are still sent.", self.path, self.path.with_suffix(".key"),
                     self.path.name, stamp)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # --- writing ------------------------------------------------------------------------

    def create(
        self,
        session_id: str,
        applicant_ref: str,
        operator_id: str,
        plan: str,
        face: bool,
        item_keys: list[str],
    ) -> None:
        now = time.time()
        personal = {"applicant_ref": applicant_ref, "operator_id": operator_id, "reason": None,
                    "exceptions": []}
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute(
                "INSERT INTO sessions VALUES (?, ?, ?, 'open', ?, ?, ?)",
                (session_id, plan, int(face), now, now, self._seal_personal(session_id, personal)),
            )
            self._db.executemany(
                "INSERT INTO items (session_id, key, progress) VALUES (?, ?, ?)",
                [(session_id, k, self._seal_progress(session_id, ItemState(k))) for k in item_keys],
            )
            self._db.execute(_NEW_CENTRAL, (session_id,))
            self._db.execute("COMMIT")

    def save_item(self, session_id: str, item: ItemState) -> None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute(
                "UPDATE items SET capture_id = ?, token_id = ?, progress = ? "
                "WHERE session_id = ? AND key = ?",
                (item.capture_id, item.token_id, self._seal_progress(session_id, item), session_id, item.key),
            )
            self._touch(session_id)
            self._db.execute("COMMIT")

    def set_exception(self, session_id: str, position: int, code: str, reason: str) -> None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            personal = self._personal(session_id)
            if personal is not None:
                kept = [e for e in personal["exceptions"] if e[0] != position]
                personal["exceptions"] = sorted([*kept, [position, code, reason]])
                self._write_personal(session_id, personal)
            self._db.execute("COMMIT")

    def set_state(self, session_id: str, state: str, reason: str | None = None) -> None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            personal = self._personal(session_id)
            if personal is not None:
                personal["reason"] = reason
                self._write_personal(session_id, personal)
                self._db.execute("UPDATE sessions SET state = ? WHERE id = ?", (state, session_id))
                if state != "open":
                    # Sessions from before the table have no row yet.
                    self._db.execute(_NEW_CENTRAL.replace("INSERT", "INSERT OR IGNORE"), (session_id,))
                    self._db.execute("UPDATE central SET closed = ? WHERE session_id = ?",
                                     (time.time(), session_id))
            self._db.execute("COMMIT")

    def _personal(self, session_id: str) -> dict[str, Any] | None:
        row = self._db.execute("SELECT personal FROM sessions WHERE id = ?", (session_id,)).fetchone()
        return None if row is None else self._cipher.open(row[0], "sessions", session_id)

    def _write_personal(self, session_id: str, personal: dict[str, Any]) -> None:
        self._db.execute("UPDATE sessions SET personal = ?, updated = ? WHERE id = ?",
                         (self._seal_personal(session_id, personal), time.time(), session_id))

    def _touch(self, session_id: str) -> None:
        self._db.execute("UPDATE sessions SET updated = ? WHERE id = ?", (time.time(), session_id))

    def _seal_personal(self, session_id: str, personal: dict[str, Any]) -> bytes:
        return self._cipher.seal(personal, "sessions", session_id)

    def _seal_progress(self, session_id: str, item: ItemState) -> bytes:
        return self._cipher.seal(item.progress(), "items", session_id, item.key)

    # --- reading ------------------------------------------------------------------------

    def get(self, session_id: str) -> SessionState | None:
        with self._lock:
            row = self._db.execute(
                "SELECT id, plan, face, state, created, updated, personal FROM sessions WHERE id = ?",
                (session_id,),
            ).fetchone()
            if row is None:
                return None
            items = self._db.execute(
                "SELECT key, capture_id, token_id, progress FROM items WHERE session_id = ? ORDER BY rowid",
                (session_id,),
            ).fetchall()
        personal = self._cipher.open(row[6], "sessions", session_id)
        return SessionState(
            id=row[0],
            applicant_ref=personal["applicant_ref"],
            operator_id=personal["operator_id"],
            plan=row[1],
            face=bool(row[2]),
            state=row[3],
            created=row[4],
            updated=row[5],
            reason=personal["reason"],
            items={key: self._item(session_id, key, capture_id, token_id, progress)
                   for key, capture_id, token_id, progress in items},
            exceptions={p: (c, r) for p, c, r in personal["exceptions"]},
        )

    def _item(self, session_id: str, key: str, capture_id: str | None, token_id: str | None,
              sealed: bytes) -> ItemState:
        p = self._cipher.open(sealed, "items", session_id, key)
        return ItemState(key, p["status"], capture_id, token_id, p["quality"], p["force_captured"],
                         p["attempts"], p["detail"], p.get("taken", {}))  # none before 2026-12-02

    def list_ids(self, state: str | None = None) -> list[str]:
        with self._lock:
            if state is None:
                rows = self._db.execute("SELECT id FROM sessions ORDER BY created").fetchall()
            else:
                rows = self._db.execute(
                    "SELECT id FROM sessions WHERE state = ? ORDER BY created", (state,)
                ).fetchall()
        return [r[0] for r in rows]

    # --- erasure ------------------------------------------------------------------------

    def closed_sessions(self) -> dict[str, set[str]]:
        """Completed and cancelled sessions, each with the queue ids that belong to it: its
        manifest (queued under the session id) and its captures and token images."""
        with self._lock:
            rows = self._db.execute(
                "SELECT s.id, i.capture_id, i.token_id FROM sessions s "
                "LEFT JOIN items i ON i.session_id = s.id WHERE s.state != 'open'"
            ).fetchall()
        out: dict[str, set[str]] = {}
        for session_id, capture_id, token_id in rows:
            ids = out.setdefault(session_id, {session_id})
            ids.update(i for i in (capture_id, token_id) if i)
        return out

    def erase(self, session_ids: Iterable[str]) -> int:
        """Delete the sessions for good: zeroed in the database, then no copy in the WAL."""
        rows = [(s,) for s in session_ids]
        if not rows:
            return 0
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany("DELETE FROM items WHERE session_id = ?", rows)
            erased = self._db.executemany("DELETE FROM sessions WHERE id = ?", rows).rowcount
            self._db.execute("COMMIT")
            # The WAL still holds the frames that wrote those rows (and, before secure_delete
            # zeroed them, the pages that held them) until it is checkpointed and truncated.
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return erased

    # --- the central side's word (agent/registration/central_status.py) -------------------

    def central(self, session_id: str) -> dict[str, Any]:
        """{state, missing, reason, updated_at}: what the central side last said of it."""
        with self._lock:
            row = self._db.execute("SELECT state, detail, updated FROM central WHERE session_id = ?",
                                   (session_id,)).fetchone()
        state, detail, updated = row if row else ("unknown", "{}", None)
        detail = json.loads(detail)
        return {"state": state, "missing": detail.get("missing", []), "reason": detail.get("reason"),
                "updated_at": _iso(updated)}

    def central_known(self, session_id: str) -> bool:
        """Whether the registration is this kiosk's (a session, or one erased not long ago)."""
        with self._lock:
            row = self._db.execute("SELECT 1 FROM central WHERE session_id = ? UNION "
                                   "SELECT 1 FROM sessions WHERE id = ?", (session_id, session_id)).fetchone()
        return row is not None

    def record_central(self, session_id: str, state: str, seq: int,
                       detail: dict[str, Any]) -> tuple[str, str | None]:
        """Keep a verified status: ("accepted", the previous state), or why not: the session is
        not this kiosk's ("unknown_registration"), or its seq is not above the last ("replayed"
        when equal, "stale" when lower)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute("SELECT state, seq FROM central WHERE session_id = ?",
                                       (session_id,)).fetchone()
                legacy = self._db.execute("SELECT 1 FROM sessions WHERE id = ?", (session_id,)).fetchone()
                if row is None and legacy:
                    row = ("unknown", 0)  # a session from before this table
                    self._db.execute(_NEW_CENTRAL, (session_id,))
                if row is None:
                    return "unknown_registration", None
                if seq <= row[1]:
                    return ("replayed" if seq == row[1] else "stale"), row[0]
                self._db.execute("UPDATE central SET state = ?, seq = ?, detail = ?, updated = ? "
                                 "WHERE session_id = ?",
                                 (state, seq, json.dumps(detail), time.time(), session_id))
                return "accepted", row[0]
            finally:
                self._db.execute("COMMIT")

    def central_due(self, closed_before: float, limit: int) -> list[str]:
        """Closed sessions without the central side's final word, asked about longest ago
        first (marked asked now); older than CENTRAL_KEPT_S ones are forgotten here."""
        now = time.time()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("DELETE FROM central WHERE closed < ? AND session_id NOT IN "
                             "(SELECT id FROM sessions)", (now - CENTRAL_KEPT_S,))
            rows = self._db.execute(
                "SELECT session_id FROM central WHERE closed IS NOT NULL AND closed <= ? "
                f"AND state NOT IN {CENTRAL_FINAL} ORDER BY COALESCE(queried, 0), closed LIMIT ?",
                (closed_before, limit)).fetchall()
            ids = [r[0] for r in rows]
            self._db.executemany("UPDATE central SET queried = ? WHERE session_id = ?",
                                 [(now, i) for i in ids])
            self._db.execute("COMMIT")
        return ids

    def central_closed_since(self, since: float) -> list[tuple[str, float]]:
        """(session id, closed at) of registrations closed since ``since``, erased ones included
        (the operator console lists the day's registrations)."""
        with self._lock:
            return self._db.execute("SELECT session_id, closed FROM central WHERE closed >= ? "
                                    "ORDER BY closed DESC", (since,)).fetchall()

    def central_counts(self) -> dict[str, int]:
        """Closed registrations by the central side's state (unknown: no word yet)."""
        with self._lock:
            rows = self._db.execute("SELECT state, COUNT(*) FROM central WHERE closed IS NOT NULL "
                                    "GROUP BY state").fetchall()
        return {"complete": 0, "incomplete": 0, "failed": 0, "cancelled": 0, "unknown": 0, **dict(rows)}


def _iso(when: float | None) -> str | None:
    return None if when is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when))


def _columns(db: sqlite3.Connection, table: str) -> set[str]:
    return {row[1] for row in db.execute(f"PRAGMA table_info({table})")}


def _create_schema(db: sqlite3.Connection) -> None:
    # One statement at a time: executescript() would commit a transaction in progress.
    for statement in _SCHEMA.split(";"):
        if statement.strip():
            db.execute(statement)


def _migrate_v1(db: sqlite3.Connection, cipher: FieldCipher, path: Path) -> None:
    """Seal the sessions an older version kept in clear, in one transaction, and mark the
    file for a VACUUM, which rewrites it without the pages that held them."""
    db.execute("BEGIN IMMEDIATE")
    for table in ("sessions", "items", "exceptions"):
        db.execute(f"ALTER TABLE {table} RENAME TO v1_{table}")
    _create_schema(db)
    exceptions: dict[str, list[list[Any]]] = {}
    for session_id, position, code, reason in db.execute(
            "SELECT session_id, position, code, reason FROM v1_exceptions ORDER BY position"):
        exceptions.setdefault(session_id, []).append([position, code, reason])
    for sid, applicant_ref, operator_id, plan, face, state, created, updated, reason in db.execute(
            "SELECT id, applicant_ref, operator_id, plan, face, state, created, updated, reason "
            "FROM v1_sessions").fetchall():
        personal = {"applicant_ref": applicant_ref, "operator_id": operator_id, "reason": reason,
                    "exceptions": exceptions.get(sid, [])}
        db.execute("INSERT INTO sessions VALUES (?, ?, ?, ?, ?, ?, ?)",
                   (sid, plan, face, state, created, updated, cipher.seal(personal, "sessions", sid)))
    for sid, key, status, capture_id, token_id, quality, force, attempts, detail in db.execute(
            "SELECT session_id, key, status, capture_id, token_id, quality, force_captured, attempts, "
            "detail FROM v1_items ORDER BY rowid").fetchall():
        item = ItemState(key, status, capture_id, token_id, quality, bool(force), attempts,
                         json.loads(detail or "{}"))
        db.execute("INSERT INTO items (session_id, key, capture_id, token_id, progress) "
                   "VALUES (?, ?, ?, ?, ?)",
                   (sid, key, capture_id, token_id, cipher.seal(item.progress(), "items", sid, key)))
    for table in ("exceptions", "items", "sessions"):
        db.execute(f"DROP TABLE v1_{table}")
    db.execute("INSERT OR REPLACE INTO meta VALUES ('vacuum', '1')")
    db.execute("COMMIT")
    log.warning("sealed the registration sessions an older version kept in clear in %s", path)


def _vacuum(db: sqlite3.Connection) -> None:
    # secure_delete was off in older versions: an updated row's old copy may still sit in a
    # page's free space. VACUUM rewrites every page; the checkpoint empties the WAL after it.
    db.execute("VACUUM")
    db.execute("DELETE FROM meta WHERE key = 'vacuum'")
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
