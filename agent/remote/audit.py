"""What remote management must remember across restarts: seen nonces and the audit log.

One SQLite file in ``remote.state_dir``. Nonces are kept until their command has expired
(plus the clock skew), so a captured command cannot be replayed, even after a restart. The
audit log records who ran what and with which result; arguments are stored with
secret-looking values masked, and it is trimmed to the newest ``MAX_AUDIT_ROWS``.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

MAX_AUDIT_ROWS = 10_000
_SECRET_WORDS = ("password", "secret", "token", "key")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS nonces (nonce TEXT PRIMARY KEY, forget_after REAL NOT NULL);
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL, request_id TEXT, operator TEXT, command TEXT, args TEXT,
    result TEXT NOT NULL, code TEXT, message TEXT
);
"""


def mask_secrets(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: ("**********" if any(w in str(k).lower() for w in _SECRET_WORDS) else mask_secrets(v))
                for k, v in value.items()}
    if isinstance(value, list):
        return [mask_secrets(v) for v in value]
    return value


class RemoteStore:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10)
        self._db.execute("PRAGMA journal_mode=WAL")
        # Not FULL: losing the last few audit rows or nonces to a power cut is accepted, an fsync
        # per refused command (a flood of garbage) is not.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._last_prune = 0.0

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def remember_nonce(self, nonce: str, forget_after: float) -> bool:
        """True the first time a nonce is seen; False for a replay."""
        with self._lock:
            now = time.time()
            if now - self._last_prune > 60:
                self._db.execute("DELETE FROM nonces WHERE forget_after < ?", (now,))
                self._last_prune = now
            try:
                self._db.execute("INSERT INTO nonces VALUES (?, ?)", (nonce, forget_after))
            except sqlite3.IntegrityError:
                return False
            return True

    def audit(self, *, request_id: str | None, operator: str | None, command: str | None,
              args: dict[str, Any] | None, result: str, code: str | None = None,
              message: str | None = None) -> dict[str, Any]:
        entry = {"at": time.time(), "request_id": request_id, "operator": operator, "command": command,
                 "args": mask_secrets(args or {}), "result": result, "code": code, "message": message}
        with self._lock:
            self._db.execute(
                "INSERT INTO audit (at, request_id, operator, command, args, result, code, message) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (entry["at"], request_id, operator, command, json.dumps(entry["args"], default=str),
                 result, code, message))
            self._db.execute("DELETE FROM audit WHERE seq <= (SELECT max(seq) FROM audit) - ?",
                             (MAX_AUDIT_ROWS,))
        return entry

    def recent_audit(self, limit: int = 50) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT at, request_id, operator, command, args, result, code, message FROM audit "
                "ORDER BY seq DESC LIMIT ?", (limit,)).fetchall()
        keys = ("at", "request_id", "operator", "command", "args", "result", "code", "message")
        out = [dict(zip(keys, row, strict=True)) for row in rows]
        for entry in out:
            entry["args"] = json.loads(entry["args"])
        return out
