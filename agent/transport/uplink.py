"""Cellular awareness: a bandwidth cap, a daily data budget and upload windows.

Only captures (whole or in chunks) pass through this gate. Commands, replies, status,
telemetry and events are small and never held back: a support engineer must reach a van
whose budget is spent.

- Bandwidth cap (``uplink.max_bytes_per_s``): a token bucket. A message larger than the
  bucket may still go when the bucket is full and leaves it in debt, so the long-run rate
  holds whatever the message sizes.
- Daily budget (``uplink.daily_budget_bytes``): bytes of capture data per local day, kept
  in the kiosk's state folder (written atomically at most once a second, and at stop) so a
  restart does not hand out a fresh budget. A crash may lose the last second's count: at
  most one second of traffic at the cap goes uncounted.
- Upload windows (``uplink.windows``, agent/transport/windows.py): "HH:MM-HH:MM" local-time
  ranges, which may wrap midnight ("22:00-06:00"); none: always open.

The clock is injectable (``clock``: local wall time, ``monotonic``: for the bucket) so
tests can move to the next day or into a window.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from agent.guard import log_and_continue
from agent.transport.config import UplinkConfig
from agent.transport.windows import parse_windows, seconds_until_open, seconds_until_tomorrow, window_open

log = logging.getLogger(__name__)

#: The bucket holds this many seconds of the cap: short bursts, an accurate long-run rate.
BURST_S = 0.25
#: Budget state is written at most this often (and when the budget is reached, and at stop).
PERSIST_INTERVAL_S = 1.0
#: The day's budget, in the kiosk's state folder (kiosk.state_dir).
STATE_FILE = "uplink-state.json"

EventSink = Callable[..., None]


class Uplink:
    """The gate captures pass on their way to the broker; used on the MQTT link's thread
    (telemetry reads ``state()`` from it too: plain reads of numbers, no lock needed)."""

    def __init__(self, *, max_bytes_per_s: int = 0, daily_budget_bytes: int = 0,
                 windows: list[str] | None = None, state_path: Path | None = None,
                 on_event: EventSink | None = None,
                 clock: Callable[[], datetime] = datetime.now,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.rate = max_bytes_per_s
        self.budget = daily_budget_bytes
        self.windows = parse_windows(list(windows or []))
        self.state_path = state_path
        self.on_event = on_event
        self.clock = clock
        self.monotonic = monotonic
        self.capacity = max(1.0, self.rate * BURST_S)
        self._tokens = self.capacity
        self._refilled_at = monotonic()
        self.day = ""
        self.used = 0
        self.sent_bytes = 0  # since start, for tests and telemetry
        self.throttled = False
        self.held: str | None = None  # why captures wait right now, for telemetry
        #: When held by the cap: the monotonic time the bytes asked for may go. The MQTT loop
        #: sleeps until then (it does not poll), so the cap is met, not undershot.
        self.ready_at = 0.0
        self._announced_day = ""
        self._dirty = False
        self._persisted_at = 0.0
        # ``used`` is also charged from the remote worker thread (update downloads).
        self._lock = threading.Lock()
        self._load()

    @classmethod
    def from_config(cls, config: UplinkConfig, state_dir: Path, on_event: EventSink | None = None) -> Uplink:
        """The gate ``config`` describes, keeping its daily budget in ``state_dir``."""
        return cls(max_bytes_per_s=config.max_bytes_per_s, daily_budget_bytes=config.daily_budget_bytes,
                   windows=config.windows, on_event=on_event, state_path=state_dir / STATE_FILE)

    # --- the gate -------------------------------------------------------------------------

    def try_send(self, nbytes: int) -> bool:
        """True (and the bytes counted) when ``nbytes`` of capture data may go now."""
        now = self.clock()
        if not window_open(self.windows, now):
            self.held, self.throttled = "window closed", False
            return False
        self._roll_day(now)
        if self.budget and self.used + nbytes > self.budget:
            self.held, self.throttled = "daily budget reached", False
            self._announce_quota(now)
            return False
        if self.rate:
            self._refill()
            if self._tokens < min(nbytes, self.capacity):
                self.held, self.throttled = "bandwidth cap", True
                self.ready_at = self._refilled_at + (min(nbytes, self.capacity) - self._tokens) / self.rate
                return False
            self._tokens -= nbytes
        self.held, self.throttled = None, False
        with self._lock:
            self.used += nbytes
        self.sent_bytes += nbytes
        self._dirty = True
        if self.budget and self.used >= self.budget:
            self.persist()  # spent: a restart must not find budget left today
        else:
            self._persist_if_due()
        return True

    def charge(self, nbytes: int) -> bool:
        """Count ``nbytes`` downloaded outside the capture path (an update bundle) against
        today's budget; False, with nothing counted, when they would exceed it. Windows and
        the cap do not apply: an operator chose to send it now."""
        with self._lock:
            self._roll_day(self.clock())
            if self.budget and self.used + nbytes > self.budget:
                return False
            self.used += nbytes
            self._dirty = True
        self._persist_if_due()
        return True

    def remaining(self) -> int | None:
        """Bytes left in today's budget; None when there is no budget."""
        if not self.budget:
            return None
        with self._lock:
            self._roll_day(self.clock())
            return max(0, self.budget - self.used)

    def _refill(self) -> None:
        now = self.monotonic()
        self._tokens = min(self.capacity, self._tokens + (now - self._refilled_at) * self.rate)
        self._refilled_at = now

    def _roll_day(self, now: datetime) -> None:
        day = now.date().isoformat()
        if day != self.day:
            if self.day and self.used:
                log.info("uplink: new day %s; %d bytes of captures were sent on %s", day, self.used, self.day)
            self.day, self.used, self._dirty = day, 0, True

    def _announce_quota(self, now: datetime) -> None:
        if self._announced_day == self.day:
            return
        self._announced_day = self.day
        self.persist()
        resume = now + timedelta(seconds=seconds_until_tomorrow(now))
        log.warning("uplink: daily data budget of %d bytes reached (%d used); captures wait in the queue "
                    "until %s local time", self.budget, self.used, resume.strftime("%Y-%m-%d %H:%M"))
        if self.on_event is not None:
            # An event is advice; it must never stop the link.
            with log_and_continue(log, "cannot emit the quota_reached event"):
                self.on_event("quota_reached", budget_bytes=self.budget, used_bytes=self.used,
                              day=self.day, resumes_at=resume.isoformat(timespec="minutes"))

    # --- persistence ------------------------------------------------------------------------

    def _load(self) -> None:
        self._roll_day(self.clock())
        if self.state_path is None or not self.budget:
            return
        try:
            state = json.loads(self.state_path.read_text())
            if state.get("day") == self.day:
                self.used = int(state["used"])
        except FileNotFoundError:
            pass
        except (OSError, ValueError, KeyError, TypeError) as exc:
            # Never a reason not to start; the budget restarts from 0 for today (logged).
            log.warning("uplink: cannot read %s (%s); counting today's budget from 0", self.state_path, exc)

    def _persist_if_due(self) -> None:
        if self.monotonic() - self._persisted_at >= PERSIST_INTERVAL_S:
            self.persist()

    def persist(self) -> None:
        """Write {day, used} atomically (temporary file, fsync, rename)."""
        if self.state_path is None or not self.budget or not self._dirty:
            return
        self._persisted_at = self.monotonic()
        data = json.dumps({"day": self.day, "used": self.used}).encode()
        try:
            self.state_path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.state_path.parent, prefix=".uplink-")
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, self.state_path)
            except BaseException:
                if os.path.exists(tmp):
                    os.unlink(tmp)
                raise
            self._dirty = False
        except OSError as exc:
            log.warning("uplink: cannot save the day's budget to %s: %s", self.state_path, exc)

    # --- reporting --------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        now = self.clock()
        return {
            "window_open": window_open(self.windows, now),
            "windows": [str(w) for w in self.windows],
            "budget_used_bytes": self.used if self.day == now.date().isoformat() else 0,
            "budget_total_bytes": self.budget or None,
            "max_bytes_per_s": self.rate or None,
            "throttled": self.throttled,
            "held": self.held,
            "sent_bytes": self.sent_bytes,
        }

    def drain_estimate_s(self, pending_bytes: int, pending_items: int,
                         items_per_s: float | None) -> float | None:
        """Seconds until a backlog is sent, given the observed rate and these limits.

        Transmit time at the lower of the observed rate and the cap; plus the wait for the
        next window when closed; plus whole days when today's budget cannot cover it.
        Windows are not modelled beyond the next opening: an estimate, not a schedule.
        """
        if not pending_items:
            return None
        times = []
        if items_per_s:
            times.append(pending_items / items_per_s)
        if self.rate:
            times.append(pending_bytes / self.rate)
        if not times:
            return None
        now = self.clock()
        seconds = max(times) + seconds_until_open(self.windows, now)
        if self.budget:
            today = self.used if self.day == now.date().isoformat() else 0
            beyond = pending_bytes - max(0, self.budget - today)
            if beyond > 0:
                days = math.ceil(beyond / self.budget)
                seconds += seconds_until_tomorrow(now) + (days - 1) * 86400
        return round(seconds, 1)
