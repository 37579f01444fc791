"""What the registration app follows while a session runs, kept in memory only: each
session's events (long polling), a small preview of each item's latest attempt, and the
results of recent captures. None of it is needed after a restart: the session's state is in
agent/registration/store.py and the images are in the durable queue.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import cv2
import numpy as np

from drivers import CapturedImage

PREVIEW_MAX_PX = 480
#: Bounds on what is held in memory: events per session, previews, capture results.
MAX_EVENTS = 500
MAX_PREVIEWS = 64
MAX_RESULTS = 256


class SessionFeed:
    """Shared by the request threads; one condition guards all of it."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._events: dict[str, list[dict[str, Any]]] = {}
        self._previews: dict[tuple[str, str], tuple[bytes, str]] = {}
        self._results: dict[str, dict[str, Any]] = {}

    def event(self, session_id: str, kind: str, **fields: Any) -> None:
        with self._cond:
            events = self._events.setdefault(session_id, [])
            events.append({"seq": len(events) + 1, "event": kind, "at": time.time(), **fields})
            del events[:-MAX_EVENTS]
            self._cond.notify_all()

    def events(self, session_id: str, after: int = 0, wait_s: float = 0.0) -> list[dict[str, Any]]:
        """Events after ``after``; waits up to ``wait_s`` for one (long polling)."""
        deadline = time.monotonic() + wait_s
        with self._cond:
            while True:
                found = [e for e in self._events.get(session_id, []) if e["seq"] > after]
                left = deadline - time.monotonic()
                if found or left <= 0:
                    return found
                self._cond.wait(left)

    def keep_preview(self, session_id: str, item_key: str, image: CapturedImage) -> None:
        """A small JPEG copy of the latest attempt, for the operator's screen."""
        decoded = cv2.imdecode(np.frombuffer(image.image, np.uint8), cv2.IMREAD_UNCHANGED)
        if decoded is None:
            return
        scale = PREVIEW_MAX_PX / max(decoded.shape[:2])
        if scale < 1:
            decoded = cv2.resize(decoded, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        ok, data = cv2.imencode(".jpg", decoded, [cv2.IMWRITE_JPEG_QUALITY, 80])
        if ok:
            with self._cond:
                _bounded_put(self._previews, (session_id, item_key), (data.tobytes(), "image/jpeg"),
                             MAX_PREVIEWS)

    def preview(self, session_id: str, item_key: str) -> tuple[bytes, str] | None:
        with self._cond:
            return self._previews.get((session_id, item_key))

    def drop_previews(self, session_id: str) -> None:
        """Forget a session's previews: once it ends, nobody may see that applicant's images again."""
        with self._cond:
            for key in [k for k in self._previews if k[0] == session_id]:
                del self._previews[key]

    def keep_result(self, capture_id: str, result: dict[str, Any]) -> None:
        with self._cond:
            _bounded_put(self._results, capture_id, result, MAX_RESULTS)

    def result(self, capture_id: str) -> dict[str, Any] | None:
        with self._cond:
            return self._results.get(capture_id)


def _bounded_put(table: dict[Any, Any], key: Any, value: Any, limit: int) -> None:
    """Insert, dropping the oldest entries beyond ``limit``."""
    table[key] = value
    while len(table) > limit:
        table.pop(next(iter(table)))
