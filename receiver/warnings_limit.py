"""Limits a flood of hostile messages cannot get past: log lines (LimitedWarnings) and answers
published back to a kiosk (OncePerInterval per transfer, PerSecondBudget per kiosk)."""

from __future__ import annotations

import logging
import time
from collections import OrderedDict

#: At most one line a second per (kiosk, kind); the others are counted in the next one.
INTERVAL_S = 1.0
#: At most this many lines a second of one kind across all kiosks: kiosk ids on a topic are
#: free, so a flood under a fresh id per message must not get a line per message.
KIND_LINES_PER_S = 5
#: Beyond this many (kiosk, kind) pairs, the ones logged longest ago are forgotten.
MAX_KEYS = 1000


class LimitedWarnings:
    def __init__(self, log: logging.Logger) -> None:
        self.log = log
        # (kiosk, kind) -> [last line at, lines left out since]; oldest line first, so that
        # forgetting is O(1) instead of a rebuild of the whole dict per new kiosk id.
        self._last: OrderedDict[tuple[str, str], list[float]] = OrderedDict()
        # kind -> [window start, lines in the window, lines left out]; kinds are fixed in code.
        self._kinds: dict[str, list[float]] = {}

    def warn(self, kiosk_id: str, kind: str, message: str, *args: object,
             level: int = logging.WARNING) -> None:
        now = time.monotonic()
        key = (kiosk_id, kind)
        entry = self._last.get(key)
        if entry is not None and now - entry[0] < INTERVAL_S:
            entry[1] += 1
            return
        window = self._kinds.setdefault(kind, [now, 0, 0])
        if now - window[0] >= INTERVAL_S:
            window[0], window[1] = now, 0
        if window[1] >= KIND_LINES_PER_S:
            window[2] += 1
            return
        quiet = int((entry[1] if entry is not None else 0) + window[2])
        window[1] += 1
        window[2] = 0
        self._last.pop(key, None)
        self._last[key] = [now, 0]
        while len(self._last) > MAX_KEYS:
            self._last.popitem(last=False)
        if quiet:
            self.log.log(level, message + " (and %d more left out since the last line)", *args, quiet)
        else:
            self.log.log(level, message, *args)


class OncePerInterval:
    """Says yes to a key at most once per ``interval_s``, remembering at most ``max_keys``.

    Keys enter in time order and leave from the front once they expire, so each call costs
    O(1) amortised however many keys a flood brings (a fresh transfer id per chunk)."""

    def __init__(self, interval_s: float, max_keys: int) -> None:
        self.interval_s = interval_s
        self.max_keys = max_keys
        self._at: OrderedDict[object, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._at)

    def allow(self, key: object) -> bool:
        now = time.monotonic()
        while self._at:
            oldest, at = next(iter(self._at.items()))
            if now - at < self.interval_s:
                break
            del self._at[oldest]
        if key in self._at:
            return False
        self._at[key] = now
        if len(self._at) > self.max_keys:
            # All recent: forgetting the oldest at worst lets it be answered once more.
            self._at.popitem(last=False)
        return True


class PerSecondBudget:
    """At most ``limit`` yeses a second per key (an enrolled kiosk: few keys)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._windows: dict[object, list[float]] = {}

    def allow(self, key: object) -> bool:
        now = time.monotonic()
        window = self._windows.setdefault(key, [now, 0])
        if now - window[0] >= 1.0:
            window[0], window[1] = now, 0
        if window[1] >= self.limit:
            return False
        window[1] += 1
        return True
