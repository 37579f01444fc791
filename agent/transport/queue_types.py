"""What the durable queue hands out: an item to send, and the figures telemetry reports.

Plain values, apart from agent/transport/durable_queue.py so that readers of the queue (the
publisher, telemetry, ``queue stats`` beside a running agent) can name them without the
queue's SQLite and crypto machinery.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class QueuedItem:
    seq: int
    id: str
    kind: str
    payload: bytes = field(repr=False)
    attempts: int
    created: float


@dataclass(frozen=True)
class QueueStats:
    pending: int
    pending_bytes: int
    oldest_age_s: float | None
    by_state: dict[str, int]
    max_bytes: int
    disk_free_bytes: int

    def as_dict(self) -> dict[str, object]:
        return {
            "pending": self.pending,
            "pending_bytes": self.pending_bytes,
            "oldest_age_s": self.oldest_age_s,
            "by_state": self.by_state,
            "max_bytes": self.max_bytes,
            "disk_free_bytes": self.disk_free_bytes,
        }
