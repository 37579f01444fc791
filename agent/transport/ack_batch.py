"""Acknowledgements gathered for one queue transaction (agent/transport/publisher.py).

An item whose receipt (or PUBACK) arrived leaves the publisher's window at once; its deletion
waits up to ``ACK_GATHER_S`` for others, so the receipts of a few milliseconds cost one
transaction (one fsync), which also counts the send attempts made since the last one. Kept
apart from the publisher because it is the one part that writes to the queue on the
acknowledgement side, with its own timing rules; the publisher decides what to do with the
result (counters, refused receipts, warnings).

Until committed an item stays in the queue and here, never offered again; a power cut in
between only means it is sent once more (the receiver de-duplicates).
"""

from __future__ import annotations

import time

from agent.transport.durable_queue import DurableQueue
from agent.transport.receipts import Receipt

#: How long an acknowledged item waits for others before their deletion is committed together.
ACK_GATHER_S = 0.005
#: Send attempts are counted with the next acknowledgements; without any for this long (the
#: central side silent), they are written on their own.
ATTEMPTS_FLUSH_S = 5.0


class AckBatch:
    """Acknowledged items, refused receipts and send attempts not yet written to the queue."""

    def __init__(self) -> None:
        #: Acknowledged (out of the window), deletion not yet committed; in arrival order.
        self.settling: dict[str, None] = {}
        self.settle_by = float("inf")
        #: Seqs sent whose attempt is not yet counted in the queue, and since when.
        self.attempts: list[int] = []
        self.attempts_since = 0.0
        #: Receipts that reject a capture, applied after the next commit.
        self.refused: list[Receipt] = []

    def __contains__(self, item_id: str) -> bool:
        return item_id in self.settling

    def acknowledged(self, item_id: str) -> None:
        if not self.settling:
            self.settle_by = time.monotonic() + ACK_GATHER_S
        self.settling[item_id] = None

    def count_attempts(self, seqs: list[int]) -> None:
        """Counted in the queue with the next acknowledgements (statistics only)."""
        if not self.attempts:
            self.attempts_since = time.monotonic()
        self.attempts += seqs

    def due(self, force: bool = False) -> bool:
        """Whether to commit now: forced, a refused receipt waiting, or the gathering over."""
        now = time.monotonic()
        if self.attempts and now - self.attempts_since > ATTEMPTS_FLUSH_S:
            force = True  # no receipts to carry them: count the attempts on their own
        return bool(self.refused or force or (self.settling and now >= self.settle_by))

    def commit(self, queue: DurableQueue) -> tuple[int, list[Receipt]]:
        """Delete the acknowledged items and count the attempts in one transaction; return
        how many were deleted and the refused receipts to apply. On QueueError everything is
        kept for the next turn: nothing is lost, the receiver de-duplicates."""
        settled, attempts = list(self.settling), self.attempts
        deleted = queue.ack(settled, sent=attempts)
        for item_id in settled:
            del self.settling[item_id]
        self.attempts = []
        refused, self.refused = self.refused, []
        return deleted, refused
