"""Warnings that a flood of hostile messages cannot turn into a flood of log lines."""

from __future__ import annotations

import logging
import time

#: At most one warning a second per (kiosk, kind); the others are counted in the next one.
INTERVAL_S = 1.0
#: Beyond this many (kiosk, kind) pairs, old ones are forgotten (kiosk ids on a topic are free).
MAX_KEYS = 1000


class LimitedWarnings:
    def __init__(self, log: logging.Logger) -> None:
        self.log = log
        self._last: dict[tuple[str, str], tuple[float, int]] = {}

    def warn(self, kiosk_id: str, kind: str, message: str, *args: object) -> None:
        now = time.monotonic()
        last, quiet = self._last.get((kiosk_id, kind), (-INTERVAL_S, 0))
        if now - last < INTERVAL_S:
            self._last[(kiosk_id, kind)] = (last, quiet + 1)
            return
        if len(self._last) >= MAX_KEYS:
            self._last = {k: v for k, v in self._last.items() if now - v[0] < 60 * INTERVAL_S}
        self._last[(kiosk_id, kind)] = (now, 0)
        if quiet:
            self.log.warning(message + " (and %d more like it since the last warning)", *args, quiet)
        else:
            self.log.warning(message, *args)
