"""Events worth telling support about (device added or removed, quota reached, queue
quarantined, certificate expiring, commands run), published on <prefix>/<kiosk_id>/events.

Any thread emits; the MQTT link's thread publishes (agent/transport/telemetry.py). Events wait in a
bounded buffer while the kiosk is offline; when it overflows, the oldest go and the next
published event says how many were lost (``dropped_before``), so none vanish silently.
Every event is also logged, so the journal has them all.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from typing import Any

log = logging.getLogger(__name__)

MAX_PENDING = 1000


class EventBus:
    def __init__(self, max_pending: int = MAX_PENDING) -> None:
        self._lock = threading.Lock()
        self._pending: collections.deque[dict[str, Any]] = collections.deque()
        self._max = max_pending
        self._dropped = 0

    def emit(self, kind: str, **fields: Any) -> None:
        event = {"event": kind, "at": time.time(), **fields}
        log.info("event %s %s", kind, {k: v for k, v in fields.items()})
        with self._lock:
            if len(self._pending) >= self._max:
                self._pending.popleft()
                self._dropped += 1
            self._pending.append(event)

    def take(self, limit: int = 100) -> list[dict[str, Any]]:
        with self._lock:
            batch = [self._pending.popleft() for _ in range(min(limit, len(self._pending)))]
            if batch and self._dropped:
                batch[0]["dropped_before"] = self._dropped
                self._dropped = 0
        return batch

    def put_back(self, events: list[dict[str, Any]]) -> None:
        """Events that could not be published go back to the front, in order."""
        with self._lock:
            self._pending.extendleft(reversed(events))
            while len(self._pending) > self._max:
                self._pending.pop()
                self._dropped += 1
