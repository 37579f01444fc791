"""Registration sessions on disk (SQLite), so a crash or power cut mid-session loses nothing.

Only the session's bookkeeping lives here: who, which plan, which item is done with which
capture id, which fingers are exceptions. The images themselves are sealed and committed to
the durable queue as they are taken; this file never holds biometric data.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY, applicant_ref TEXT NOT NULL, operator_id TEXT NOT NULL,
    plan TEXT NOT NULL, face INTEGER NOT NULL, state TEXT NOT NULL,
    created REAL NOT NULL, updated REAL NOT NULL, reason TEXT
);
CREATE TABLE IF NOT EXISTS items (
    session_id TEXT NOT NULL, key TEXT NOT NULL, status TEXT NOT NULL,
    capture_id TEXT, token_id TEXT, quality INTEGER, force_captured INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0, detail TEXT NOT NULL DEFAULT '{}',
    PRIMARY KEY (session_id, key)
);
CREATE TABLE IF NOT EXISTS exceptions (
    session_id TEXT NOT NULL, position INTEGER NOT NULL, code TEXT NOT NULL, reason TEXT NOT NULL,
    PRIMARY KEY (session_id, position)
);
"""


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
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # what the operator was told is done stays done
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

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
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute(
                "INSERT INTO sessions VALUES (?, ?, ?, ?, ?, 'open', ?, ?, NULL)",
                (session_id, applicant_ref, operator_id, plan, int(face), now, now),
            )
            self._db.executemany(
                "INSERT INTO items (session_id, key, status) VALUES (?, ?, 'pending')",
                [(session_id, k) for k in item_keys],
            )
            self._db.execute("COMMIT")

    def get(self, session_id: str) -> SessionState | None:
        with self._lock:
            row = self._db.execute(
                "SELECT id, applicant_ref, operator_id, plan, face, state, created, "
                "updated, reason FROM sessions WHERE id = ?",
                (session_id,),
            ).fetchone()
            if row is None:
                return None
            items = self._db.execute(
                "SELECT key, status, capture_id, token_id, quality, force_captured, "
                "attempts, detail FROM items WHERE session_id = ? ORDER BY rowid",
                (session_id,),
            ).fetchall()
            excs = self._db.execute(
                "SELECT position, code, reason FROM exceptions WHERE session_id = ?", (session_id,)
            ).fetchall()
        return SessionState(
            id=row[0],
            applicant_ref=row[1],
            operator_id=row[2],
            plan=row[3],
            face=bool(row[4]),
            state=row[5],
            created=row[6],
            updated=row[7],
            reason=row[8],
            items={
                r[0]: ItemState(r[0], r[1], r[2], r[3], r[4], bool(r[5]), r[6], json.loads(r[7]))
                for r in items
            },
            exceptions={r[0]: (r[1], r[2]) for r in excs},
        )

    def list_ids(self, state: str | None = None) -> list[str]:
        with self._lock:
            if state is None:
                rows = self._db.execute("SELECT id FROM sessions ORDER BY created").fetchall()
            else:
                rows = self._db.execute(
                    "SELECT id FROM sessions WHERE state = ? ORDER BY created", (state,)
                ).fetchall()
        return [r[0] for r in rows]

    def save_item(self, session_id: str, item: ItemState) -> None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute(
                "UPDATE items SET status = ?, capture_id = ?, token_id = ?, quality = ?, force_captured = ?, "
                "attempts = ?, detail = ? WHERE session_id = ? AND key = ?",
                (
                    item.status,
                    item.capture_id,
                    item.token_id,
                    item.quality,
                    int(item.force_captured),
                    item.attempts,
                    json.dumps(item.detail),
                    session_id,
                    item.key,
                ),
            )
            self._touch(session_id)
            self._db.execute("COMMIT")

    def set_exception(self, session_id: str, position: int, code: str, reason: str) -> None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute(
                "INSERT OR REPLACE INTO exceptions VALUES (?, ?, ?, ?)", (session_id, position, code, reason)
            )
            self._touch(session_id)
            self._db.execute("COMMIT")

    def set_state(self, session_id: str, state: str, reason: str | None = None) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE sessions SET state = ?, reason = ?, updated = ? WHERE id = ?",
                (state, reason, time.time(), session_id),
            )

    def _touch(self, session_id: str) -> None:
        self._db.execute("UPDATE sessions SET updated = ? WHERE id = ?", (time.time(), session_id))
