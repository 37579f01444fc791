"""What remote management must remember across restarts: seen nonces and the audit log.

One SQLite file in ``remote.state_dir``. Nonces are kept until their command has expired
(plus the clock skew), so a captured command cannot be replayed, even after a restart.

The audit log has two tables, each trimmed on its own, so that neither can push the other out:

- ``audit``: commands from an enrolled operator, signed and fresh (not a replay): who ran
  what, with which arguments (secret-looking values masked) and which result; the newest
  ``MAX_AUDIT_ROWS``.
- ``refusals``: commands refused before that was established (garbage, bad or missing
  signatures, unknown operators, expired commands, replays). Anyone who can publish to the
  broker can send those, as many as they like, so they are recorded small (no arguments,
  every field cut short) and at most ``REFUSALS_PER_MINUTE`` one by one; the rest of the
  minute is one summary row with their count by code. The newest ``MAX_REFUSAL_ROWS`` are
  kept: a flood costs a few hundred kilobytes and never a genuine row.
"""

from __future__ import annotations

import collections
import json
import re
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from agent.security.private_files import private_sqlite

MAX_AUDIT_ROWS = 10_000
MAX_REFUSAL_ROWS = 2_000
REFUSALS_PER_MINUTE = 30
#: Longest text kept from a refused command (its name, claimed operator, id) and its reason.
FIELD_CHARS = 64
MESSAGE_CHARS = 160
_SECRET_WORDS = ("password", "secret", "token", "key")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS nonces (nonce TEXT PRIMARY KEY, forget_after REAL NOT NULL);
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL, request_id TEXT, operator TEXT, command TEXT, args TEXT,
    result TEXT NOT NULL, code TEXT, message TEXT
);
CREATE TABLE IF NOT EXISTS refusals (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL, request_id TEXT, operator TEXT, command TEXT, code TEXT, message TEXT,
    count INTEGER NOT NULL DEFAULT 1
);
"""


def mask_secrets(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: ("**********" if any(w in str(k).lower() for w in _SECRET_WORDS) else mask_secrets(v))
                for k, v in value.items()}
    if isinstance(value, list):
        return [mask_secrets(v) for v in value]
    if isinstance(value, str) and "@" in value:
        # A URL's user:password (update.apply refuses such URLs, but the audit records them).
        return re.sub(r"(://)[^/?#@]*@", r"\1**********@", value)
    return value


def _cut(value: str | None, limit: int = FIELD_CHARS) -> str | None:
    return value if value is None or len(value) <= limit else value[:limit - 1] + "…"


class RemoteStore:
    def __init__(self, path: Path) -> None:
        private_sqlite(path)  # 0600 with its -wal and -shm, whatever the umask: who ran what
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10)
        self._db.execute("PRAGMA journal_mode=WAL")
        # Not FULL: losing the last few audit rows or nonces to a power cut is accepted, an fsync
        # per refused command (a flood of garbage) is not.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._last_prune = 0.0
        #: The current minute of refusals: when it began, rows written, the rest by code.
        self._minute_start = 0.0
        self._minute_rows = 0
        self._suppressed: collections.Counter[str] = collections.Counter()

    def close(self) -> None:
        with self._lock:
            self._write_summary()
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
        """Record a command from an enrolled operator (signed, fresh), run or refused."""
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

    def refusal(self, *, request_id: str | None, operator: str | None, command: str | None, code: str,
                message: str) -> dict[str, Any] | None:
        """Record a command refused before its sender was established; None when this minute's
        rows are used up and it was only counted (in the minute's summary row)."""
        now = time.time()
        entry = {"at": now, "request_id": _cut(request_id), "operator": _cut(operator),
                 "command": _cut(command), "result": "error", "code": code,
                 "message": _cut(message, MESSAGE_CHARS)}
        with self._lock:
            if now - self._minute_start >= 60:
                self._write_summary()
                self._minute_start, self._minute_rows = now, 0
            if self._minute_rows >= REFUSALS_PER_MINUTE:
                self._suppressed[code] += 1
                return None
            self._minute_rows += 1
            self._db.execute(
                "INSERT INTO refusals (at, request_id, operator, command, code, message) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (now, entry["request_id"], entry["operator"], entry["command"], code, entry["message"]))
            self._trim_refusals()
        return entry

    def flush_refusals(self, force: bool = False) -> dict[str, Any] | None:
        """Write the summary of a minute that is over (or, with ``force``, of this one so far);
        the summary written, if any. Called on each turn of the MQTT loop: cheap when idle."""
        with self._lock:
            if not self._suppressed or (not force and time.time() - self._minute_start < 60):
                return None
            return self._write_summary()

    def _write_summary(self) -> dict[str, Any] | None:
        if not self._suppressed:
            return None
        count = sum(self._suppressed.values())
        by_code = ", ".join(f"{code} {n}" for code, n in self._suppressed.most_common())
        entry = {"at": self._minute_start, "request_id": None, "operator": None, "command": None,
                 "result": "error", "code": "refusals_not_recorded", "count": count,
                 "message": f"{count} more refused commands in this minute, not recorded one by one "
                            f"({by_code})"}
        self._db.execute("INSERT INTO refusals (at, code, message, count) VALUES (?, ?, ?, ?)",
                         (entry["at"], entry["code"], entry["message"], count))
        self._trim_refusals()
        self._suppressed.clear()
        return entry

    def _trim_refusals(self) -> None:
        self._db.execute("DELETE FROM refusals WHERE seq <= (SELECT max(seq) FROM refusals) - ?",
                         (MAX_REFUSAL_ROWS,))

    def recent_audit(self, limit: int = 50) -> list[dict[str, Any]]:
        """The newest entries of both tables, newest first; refusals carry ``"refused": true``
        and no arguments."""
        with self._lock:
            commands = self._db.execute(
                "SELECT at, request_id, operator, command, args, result, code, message FROM audit "
                "ORDER BY seq DESC LIMIT ?", (limit,)).fetchall()
            refused = self._db.execute(
                "SELECT at, request_id, operator, command, code, message, count FROM refusals "
                "ORDER BY seq DESC LIMIT ?", (limit,)).fetchall()
        keys = ("at", "request_id", "operator", "command", "args", "result", "code", "message")
        out = [dict(zip(keys, row, strict=True)) for row in commands]
        for entry in out:
            entry["args"] = json.loads(entry["args"])
        for at, request_id, operator, command, code, message, count in refused:
            out.append({"at": at, "request_id": request_id, "operator": operator, "command": command,
                        "result": "error", "code": code, "message": message, "count": count,
                        "refused": True})
        out.sort(key=lambda e: e["at"], reverse=True)
        return out[:limit]
