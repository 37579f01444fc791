"""Supervisor approval of completed registrations, when the kiosk's policy asks for it
(``console.approval = "required"``, docs/console.md).

Captures are sealed into the durable queue as they are taken (a crash must lose nothing), so
approval cannot hold them back by not queueing them. Instead, under the policy, a session's
captures and then its manifest are committed **held**: in the queue, durable, but out of the
send order (agent/transport/durable_queue.py). Approving releases them (state ``queued``; the
publisher rewinds to pick them up); rejecting moves them to ``withheld``: kept on the kiosk
for the audit and never sent, until an audited ``queue.purge`` of that state. A session whose
items are still in the queue is never erased, so a held or rejected session's record stays.

This file is the decisions: one row per completed registration that needed one, in
``approvals.db`` beside ``registrations.db`` (0600). It holds ids, states, times, who decided
and a reason code from a fixed list: nothing personal.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from agent.security.private_files import private_sqlite

#: Why a supervisor rejects; codes, so that nothing free-form (a name) lands in clear.
REJECT_REASONS = ("quality", "identity", "incomplete", "duplicate", "other")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS approvals (
    session_id TEXT PRIMARY KEY,
    state TEXT NOT NULL,            -- awaiting | approved | rejected
    awaiting_since REAL NOT NULL,
    decided_at REAL, decided_by TEXT, reason TEXT
);
"""


class Approvals:
    def __init__(self, path: Path) -> None:
        private_sqlite(path)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # a decision must survive a power cut
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def awaiting(self, session_id: str) -> None:
        """Record that ``session_id`` waits for a supervisor (again after a crash: no change)."""
        with self._lock:
            self._db.execute("INSERT OR IGNORE INTO approvals (session_id, state, awaiting_since) "
                             "VALUES (?, 'awaiting', ?)", (session_id, time.time()))

    def decide(self, session_id: str, state: str, who: str, reason: str | None = None) -> bool:
        """Approve or reject; False when it is not awaiting (decided already, or unknown)."""
        assert state in ("approved", "rejected")
        with self._lock:
            return self._db.execute(
                "UPDATE approvals SET state = ?, decided_at = ?, decided_by = ?, reason = ? "
                "WHERE session_id = ? AND state = 'awaiting'",
                (state, time.time(), who, reason, session_id)).rowcount == 1

    def get(self, session_id: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute(
                "SELECT session_id, state, awaiting_since, decided_at, decided_by, reason "
                "FROM approvals WHERE session_id = ?", (session_id,)).fetchone()
        return _row(row) if row else None

    def listed(self, state: str | None = None, limit: int = 200) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT session_id, state, awaiting_since, decided_at, decided_by, reason FROM approvals "
                "WHERE ? IS NULL OR state = ? ORDER BY awaiting_since DESC LIMIT ?",
                (state, state, limit)).fetchall()
        return [_row(r) for r in rows]

    def count_awaiting(self) -> int:
        with self._lock:
            return self._db.execute("SELECT count(*) FROM approvals WHERE state = 'awaiting'").fetchone()[0]


def _row(row: tuple[Any, ...]) -> dict[str, Any]:
    keys = ("session_id", "state", "awaiting_since", "decided_at", "decided_by", "reason")
    return dict(zip(keys, row, strict=True))
