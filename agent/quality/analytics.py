"""Quality analytics: how the kiosk's captures score, day by day, so thresholds are set from data.

Every judged attempt of a registration item and every kept item (agent/registration/taking.py,
keeping.py) and every finger recorded as an exception (service.py) adds to daily aggregates in
a small SQLite file in the kiosk's state folder, ``quality-stats.db``:

- ``outcomes`` per (UTC day, operator pseudonym, modality): attempts judged and passed, items
  kept, force-captured and passed, attempts per item, exceptions by code, and scores in fixed
  buckets 0-9, 10-19, ..., 90-100 (of every judged attempt, and of the kept ones);
- ``checks`` per (day, operator pseudonym, modality, check): how often the check was judged,
  failed or could not be measured, the sum, sum of squares, minimum and maximum of its value,
  and, for checks whose scale is known (``CHECK_RANGES``, agent/quality/check_ranges.py), its
  values in ten fixed buckets.

Everything is a count, a sum, a minimum or a maximum in fixed buckets, so aggregates merge by
adding (and min/max): across days, operators and kiosks, centrally. Days are UTC days, so that
kiosks in different time zones merge into the same days. Buckets older than
``quality.analytics.keep_days`` are deleted once a day, which bounds the file.

**Nothing about the applicant** is recorded: no reference, no image, no capture id, no time
finer than the day. **Operators** are personal data on this project (their ids are sealed at
rest in the session store and kept out of the journal), so they appear here only as a
pseudonym, ``op-`` and 10 hex digits of HMAC-SHA256 of the operator id under a random key
that never leaves this file. The same operator has the same pseudonym on this kiosk for as long
as the file lives, and an unrelated one on every other kiosk; telemetry carries pseudonyms
only. Locally, ``kiosk-agent quality stats --operator ID`` computes an id's pseudonym with
the key and shows that operator in clear. Someone with the file (and so the key) can test a
guessed id; that is the same reach as the kiosk's own session store, which holds ids sealed
under a key beside it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import math
import re
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from agent.quality.check_ranges import CHECK_RANGES
from agent.quality.config import QualityAnalyticsConfig
from agent.quality.report import QualityReport
from agent.security.private_files import private_sqlite

log = logging.getLogger(__name__)

FILE_NAME = "quality-stats.db"
SCHEMA_VERSION = 1
#: Scores (0..100) in ten buckets: 0-9, 10-19, ..., 80-89, 90-100.
SCORE_BUCKETS = 10
#: Attempts per kept item: 1, 2, 3, 4, 5 or more.
ATTEMPT_BUCKETS = 5
MODALITIES = ("finger", "face", "iris")
#: A check name as the assessors write them; anything else (a plug-in's odd name) is "other",
#: so the table cannot grow without bound.
_CHECK_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_EXCEPTION_CODE = re.compile(r"^[A-Z]{2}$")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS outcomes (
    day TEXT NOT NULL, operator TEXT NOT NULL, modality TEXT NOT NULL,
    judged INTEGER NOT NULL DEFAULT 0, judged_passed INTEGER NOT NULL DEFAULT 0,
    judged_score_sum REAL NOT NULL DEFAULT 0, judged_scores TEXT NOT NULL,
    items INTEGER NOT NULL DEFAULT 0, items_passed INTEGER NOT NULL DEFAULT 0,
    force_captured INTEGER NOT NULL DEFAULT 0, attempts INTEGER NOT NULL DEFAULT 0,
    attempts_hist TEXT NOT NULL, item_score_sum REAL NOT NULL DEFAULT 0, item_scores TEXT NOT NULL,
    exceptions INTEGER NOT NULL DEFAULT 0, exception_codes TEXT NOT NULL DEFAULT '{}',
    fingers INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (day, operator, modality)
);
CREATE TABLE IF NOT EXISTS checks (
    day TEXT NOT NULL, operator TEXT NOT NULL, modality TEXT NOT NULL, name TEXT NOT NULL,
    n INTEGER NOT NULL DEFAULT 0, failed INTEGER NOT NULL DEFAULT 0,
    unmeasured INTEGER NOT NULL DEFAULT 0, total REAL NOT NULL DEFAULT 0,
    total_sq REAL NOT NULL DEFAULT 0, low REAL, high REAL, hist TEXT,
    PRIMARY KEY (day, operator, modality, name)
);
"""


def score_bucket(score: float) -> int:
    return min(SCORE_BUCKETS - 1, max(0, int(score // 10)))


def value_bucket(value: float, low: float, high: float) -> int:
    return min(SCORE_BUCKETS - 1, max(0, int((value - low) / (high - low) * SCORE_BUCKETS)))


def bucket_labels(low: float = 0, high: float = 100) -> list[str]:
    step = (high - low) / SCORE_BUCKETS
    return [f"{low + i * step:g}-{low + (i + 1) * step:g}" for i in range(SCORE_BUCKETS)]


def utc_day(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).date().isoformat()


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _modality(value: str) -> str:
    return value if value in MODALITIES else "other"


def _add(counts: list[int], index: int) -> list[int]:
    counts[index] += 1
    return counts


class QualityAnalytics:
    """Daily quality aggregates in ``path``; safe to call from several request threads.

    Recording never fails a capture: a database error is logged (once until it recovers) and
    the figure is lost, the capture is not.
    """

    def __init__(self, path: Path, keep_days: int = 90, *, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self.keep_days = keep_days
        self.clock = clock
        self._lock = threading.Lock()
        self._pruned_day = ""
        self._failing = False
        private_sqlite(path)  # 0600: pseudonyms and their key are the kiosk's alone
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)
        self._db.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
        self._db.execute("INSERT OR IGNORE INTO meta VALUES ('operator_key', ?)", (secrets.token_bytes(32),))
        self._key = bytes(self._db.execute("SELECT value FROM meta WHERE key = 'operator_key'").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def pseudonym(self, operator_id: str) -> str:
        return pseudonym(self._key, operator_id)

    # --- recording -------------------------------------------------------------------------

    def record_attempt(self, operator_id: str, modality: str, report: QualityReport) -> None:
        """One judged attempt: its score and every check of its report."""
        def write(db: sqlite3.Connection, day: str, op: str, mod: str) -> None:
            row = _outcome(db, day, op, mod)
            db.execute(
                "UPDATE outcomes SET judged = judged + 1, judged_passed = judged_passed + ?, "
                "judged_score_sum = judged_score_sum + ?, judged_scores = ? "
                "WHERE day = ? AND operator = ? AND modality = ?",
                (int(report.passed), float(report.score),
                 json.dumps(_add(row["judged_scores"], score_bucket(report.score))), day, op, mod))
            for check in report.checks:
                _record_check(db, day, op, mod, check.name, check.value, check.passed)
        self._write(operator_id, modality, write)

    def record_item(self, operator_id: str, modality: str, score: float, attempts: int,
                    force_captured: bool, fingers: int = 0) -> None:
        """One kept item: its score, the attempts it took (all of them), whether forced, and the
        fingers on it (a slap's, less its exceptions), against which exceptions are a rate."""
        def write(db: sqlite3.Connection, day: str, op: str, mod: str) -> None:
            row = _outcome(db, day, op, mod)
            db.execute(
                "UPDATE outcomes SET items = items + 1, items_passed = items_passed + ?, "
                "force_captured = force_captured + ?, attempts = attempts + ?, attempts_hist = ?, "
                "item_score_sum = item_score_sum + ?, item_scores = ?, fingers = fingers + ? "
                "WHERE day = ? AND operator = ? AND modality = ?",
                (int(not force_captured), int(force_captured), max(1, attempts),
                 json.dumps(_add(row["attempts_hist"], min(ATTEMPT_BUCKETS, max(1, attempts)) - 1)),
                 float(score), json.dumps(_add(row["item_scores"], score_bucket(score))), max(0, fingers),
                 day, op, mod))
        self._write(operator_id, modality, write)

    def record_exception(self, operator_id: str, code: str) -> None:
        """One finger recorded as an exception (amputated, unable to print)."""
        code = code if _EXCEPTION_CODE.match(code) else "other"

        def write(db: sqlite3.Connection, day: str, op: str, mod: str) -> None:
            row = _outcome(db, day, op, mod)
            codes = row["exception_codes"]
            codes[code] = codes.get(code, 0) + 1
            db.execute("UPDATE outcomes SET exceptions = exceptions + 1, exception_codes = ? "
                       "WHERE day = ? AND operator = ? AND modality = ?",
                       (json.dumps(codes, sort_keys=True), day, op, mod))
        self._write(operator_id, "finger", write)

    def _write(self, operator_id: str, modality: str,
               write: Callable[[sqlite3.Connection, str, str, str], None]) -> None:
        now = self.clock()
        day = utc_day(now)
        try:
            with self._lock:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    write(self._db, day, self.pseudonym(operator_id), _modality(modality))
                    if day != self._pruned_day:
                        _prune(self._db, day, self.keep_days)
                    self._db.execute("COMMIT")
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._pruned_day = day
            if self._failing:
                self._failing = False
                log.info("quality analytics: recording again in %s", self.path)
        except sqlite3.Error as exc:
            if not self._failing:
                self._failing = True
                log.warning("quality analytics: cannot record in %s (%s); captures are not affected, "
                            "the figures are incomplete until it recovers", self.path, exc)

    # --- reading ---------------------------------------------------------------------------

    def read(self, since: str, until: str | None = None) -> Aggregates:
        with self._lock:
            return read_aggregates(self._db, since, until)

    def telemetry(self, days: int) -> dict[str, Any] | None:
        """The last ``days`` UTC days (today included) for telemetry: outcomes per operator
        pseudonym and modality, checks per modality summed over operators. None: ``days`` is 0."""
        if days <= 0:
            return None
        today = date.fromisoformat(utc_day(self.clock()))
        since = (today - timedelta(days=days - 1)).isoformat()
        aggregates = self.read(since)
        return {
            "v": 1, "since": since, "score_buckets": bucket_labels(),
            "outcomes": [o.as_dict() for o in aggregates.outcomes],
            "checks": [c.as_dict() for c in merge_checks(aggregates.checks, ("day", "modality", "name"))],
        }


def open_analytics(config: QualityAnalyticsConfig, state_dir: Path) -> QualityAnalytics | None:
    """The kiosk's analytics in ``state_dir``, or None when ``quality.analytics.enabled`` is off."""
    return QualityAnalytics(state_dir / FILE_NAME, config.keep_days) if config.enabled else None


def telemetry_aggregates(runtime: Any) -> dict[str, Any] | None:
    """The running kiosk's aggregates for telemetry (agent/transport/telemetry.py), None when
    analytics are off or the components are (re)starting. ``runtime``: agent.runtime.Runtime."""
    service = runtime.registration_service()
    analytics = getattr(service, "analytics", None)
    if analytics is None:
        return None
    return analytics.telemetry(runtime.config.quality.analytics.telemetry_days)


def latest_day(aggregates: dict[str, Any]) -> dict[str, Any]:
    """``aggregates`` (``QualityAnalytics.telemetry``) cut to the latest day that has figures.

    Telemetry is retained, so each message replaces the last for a collector that subscribes
    later: every message carries at least this (today's totals so far, or yesterday's final
    ones before today's first capture), and the whole window only when it changed."""
    days = [row["day"] for row in (*aggregates["outcomes"], *aggregates["checks"])]
    if not days:
        return aggregates
    day = max(days)
    return {**aggregates, "since": day, "outcomes": [o for o in aggregates["outcomes"] if o["day"] == day],
            "checks": [c for c in aggregates["checks"] if c["day"] == day]}


def pseudonym(key: bytes, operator_id: str) -> str:
    return "op-" + hmac.new(key, operator_id.encode("utf-8"), hashlib.sha256).hexdigest()[:10]


def open_readonly(path: Path) -> tuple[sqlite3.Connection, bytes]:
    """The analytics file for reading (``kiosk-agent quality stats``): never created or written."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    row = db.execute("SELECT value FROM meta WHERE key = 'operator_key'").fetchone()
    if row is None:
        db.close()
        raise sqlite3.DatabaseError(f"{path} has no operator key: not a quality statistics file")
    return db, bytes(row[0])


def _outcome(db: sqlite3.Connection, day: str, op: str, mod: str) -> dict[str, Any]:
    empty = json.dumps([0] * SCORE_BUCKETS)
    db.execute("INSERT OR IGNORE INTO outcomes (day, operator, modality, judged_scores, attempts_hist, "
               "item_scores) VALUES (?, ?, ?, ?, ?, ?)",
               (day, op, mod, empty, json.dumps([0] * ATTEMPT_BUCKETS), empty))
    row = db.execute("SELECT judged_scores, attempts_hist, item_scores, exception_codes FROM outcomes "
                     "WHERE day = ? AND operator = ? AND modality = ?", (day, op, mod)).fetchone()
    return {k: json.loads(v) for k, v in zip(("judged_scores", "attempts_hist", "item_scores",
                                                "exception_codes"), row, strict=True)}


def _record_check(db: sqlite3.Connection, day: str, op: str, mod: str, name: str, value: Any,
                  passed: bool) -> None:
    name = name if isinstance(name, str) and _CHECK_NAME.match(name) else "other"
    number = _number(value)
    scale = CHECK_RANGES.get(name)
    row = db.execute("SELECT hist FROM checks WHERE day = ? AND operator = ? AND modality = ? AND name = ?",
                     (day, op, mod, name)).fetchone()
    hist = None
    if scale is not None:
        hist = json.loads(row[0]) if row is not None and row[0] else [0] * SCORE_BUCKETS
        if number is not None:
            hist[value_bucket(number, *scale)] += 1
    measured = number is not None
    db.execute(
        "INSERT INTO checks VALUES (?, ?, ?, ?, 1, ?, ?, ?, ?, ?, ?, ?) "
        "ON CONFLICT (day, operator, modality, name) DO UPDATE SET n = n + 1, "
        "failed = failed + excluded.failed, unmeasured = unmeasured + excluded.unmeasured, "
        "total = total + excluded.total, total_sq = total_sq + excluded.total_sq, "
        "low = min(coalesce(low, excluded.low), coalesce(excluded.low, low)), "
        "high = max(coalesce(high, excluded.high), coalesce(excluded.high, high)), hist = excluded.hist",
        (day, op, mod, name, int(not passed), int(not measured), number or 0.0, (number or 0.0) ** 2,
         number, number, json.dumps(hist) if hist is not None else None))


def _prune(db: sqlite3.Connection, today: str, keep_days: int) -> None:
    oldest = (date.fromisoformat(today) - timedelta(days=keep_days - 1)).isoformat()
    db.execute("DELETE FROM outcomes WHERE day < ?", (oldest,))
    db.execute("DELETE FROM checks WHERE day < ?", (oldest,))


# --- aggregates, as read back and merged ---------------------------------------------------


@dataclass
class Outcome:
    day: str
    operator: str
    modality: str
    judged: int = 0
    judged_passed: int = 0
    judged_score_sum: float = 0.0
    judged_scores: list[int] = field(default_factory=lambda: [0] * SCORE_BUCKETS)
    items: int = 0
    items_passed: int = 0
    force_captured: int = 0
    attempts: int = 0
    attempts_hist: list[int] = field(default_factory=lambda: [0] * ATTEMPT_BUCKETS)
    item_score_sum: float = 0.0
    item_scores: list[int] = field(default_factory=lambda: [0] * SCORE_BUCKETS)
    exceptions: int = 0
    exception_codes: dict[str, int] = field(default_factory=dict)
    #: Fingers captured in the kept items: exceptions / (fingers + exceptions) is the rate.
    fingers: int = 0

    def merge(self, other: Outcome) -> None:
        for name in ("judged", "judged_passed", "judged_score_sum", "items", "items_passed",
                     "force_captured", "attempts", "item_score_sum", "exceptions", "fingers"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for name in ("judged_scores", "attempts_hist", "item_scores"):
            mine, theirs = getattr(self, name), getattr(other, name)
            setattr(self, name, [a + b for a, b in zip(mine, theirs, strict=True)])
        for code, n in other.exception_codes.items():
            self.exception_codes[code] = self.exception_codes.get(code, 0) + n

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class CheckStats:
    day: str
    operator: str
    modality: str
    name: str
    n: int = 0
    failed: int = 0
    unmeasured: int = 0
    total: float = 0.0
    total_sq: float = 0.0
    low: float | None = None
    high: float | None = None
    hist: list[int] | None = None

    def merge(self, other: CheckStats) -> None:
        for name in ("n", "failed", "unmeasured", "total", "total_sq"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.low = min((v for v in (self.low, other.low) if v is not None), default=None)
        self.high = max((v for v in (self.high, other.high) if v is not None), default=None)
        if other.hist is not None:
            self.hist = [a + b for a, b in zip(self.hist or [0] * SCORE_BUCKETS, other.hist, strict=True)]

    def mean(self) -> float | None:
        measured = self.n - self.unmeasured
        return self.total / measured if measured else None

    def as_dict(self) -> dict[str, Any]:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


@dataclass
class Aggregates:
    outcomes: list[Outcome]
    checks: list[CheckStats]


def read_aggregates(db: sqlite3.Connection, since: str, until: str | None = None) -> Aggregates:
    until = until or "9999-12-31"
    outcomes = []
    for row in db.execute("SELECT day, operator, modality, judged, judged_passed, judged_score_sum, "
                          "judged_scores, items, items_passed, force_captured, attempts, attempts_hist, "
                          "item_score_sum, item_scores, exceptions, exception_codes, fingers FROM outcomes "
                          "WHERE day >= ? AND day <= ? ORDER BY day, operator, modality", (since, until)):
        values = list(row)
        for i in (6, 11, 13, 15):
            values[i] = json.loads(values[i])
        outcomes.append(Outcome(*values))
    checks = []
    for row in db.execute("SELECT day, operator, modality, name, n, failed, unmeasured, total, total_sq, "
                          "low, high, hist FROM checks WHERE day >= ? AND day <= ? "
                          "ORDER BY day, operator, modality, name", (since, until)):
        values = list(row)
        values[11] = json.loads(values[11]) if values[11] else None
        checks.append(CheckStats(*values))
    return Aggregates(outcomes, checks)


def merge_outcomes(rows: Iterable[Outcome], keys: tuple[str, ...]) -> list[Outcome]:
    """Rows summed over everything but ``keys`` (e.g. ("modality",): per modality, all days
    and operators); the dropped keys read "*"."""
    merged: dict[tuple[str, ...], Outcome] = {}
    for row in rows:
        key = tuple(getattr(row, k) for k in keys)
        if key not in merged:
            merged[key] = Outcome(**{f: (getattr(row, f) if f in keys else "*")
                                     for f in ("day", "operator", "modality")})
        merged[key].merge(row)
    return [merged[k] for k in sorted(merged)]


def merge_checks(rows: Iterable[CheckStats], keys: tuple[str, ...]) -> list[CheckStats]:
    merged: dict[tuple[str, ...], CheckStats] = {}
    for row in rows:
        key = tuple(getattr(row, k) for k in keys)
        if key not in merged:
            merged[key] = CheckStats(**{f: (getattr(row, f) if f in keys else "*")
                                        for f in ("day", "operator", "modality", "name")})
        merged[key].merge(row)
    return [merged[k] for k in sorted(merged)]
