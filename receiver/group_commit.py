"""Group commit: one transaction for what arrives within a few milliseconds, and the receipts
for it only once that transaction is durable.

A receipt lets a kiosk delete its copy, so it may leave only after the capture it names is
durable. With a batched store (receiver/storage/postgres.py) ``stage`` files a capture in
the open batch (written in one round trip just before the commit, when its outcome, and so
its receipt, is decided: ``Later``) and this class holds back the receipt; the batch is committed when it
is ``receiver.group_commit_ms`` old, holds ``group_commit_max`` messages or
``group_commit_max_bytes`` bytes, and before anything else records a capture as finished
(a chunked transfer's done record). Then, and only then, the held receipts go out, in
arrival order. A failed commit sends none of them: the kiosks send again after their
receipt timeout and the resends come back ``duplicate`` for whatever did reach the disk.

Everything runs on the receiver's MQTT thread (agent/transport/mqtt_link.py): messages are
gathered in ``on_message`` and the batch is committed there when full, or from ``tick``
when its time is up; the loop polls without waiting while a batch is open. With a store
that is not batched (files) every receipt goes out at once, as before.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from agent.transport.receipts import Receipt
from receiver.storage.base import Store, StoreUnavailable

log = logging.getLogger(__name__)


class Later:
    """A capture's receipt, decided when the batched store writes its batch (just before the
    commit): until then the store has not said whether it is new, a duplicate or a conflict."""

    receipt: Receipt | None = None

    def decide(self, receipt: Receipt) -> None:
        self.receipt = receipt


@dataclass(frozen=True)
class GroupCommitLimits:
    window_s: float
    max_count: int
    max_bytes: int


class GroupCommit:
    def __init__(self, store: Store, limits: GroupCommitLimits,
                 after_sends: Callable[[], None] = lambda: None) -> None:
        self.store = store
        self.limits = limits
        #: Runs once the sends of a batch (or a lone send) are done: the receiver gathers a
        #: batch's receipts there into one signed frame per kiosk.
        self.after_sends = after_sends
        self._held: list[Callable[[], None]] = []
        self._bytes = 0
        self._opened_at = 0.0
        #: Batches committed, and batches whose receipts were dropped (commit failed).
        self.commits = 0
        self.failures = 0

    @property
    def pending(self) -> int:
        return len(self._held)

    def after_commit(self, size: int, send: Callable[[], None]) -> None:
        """Run ``send`` (a receipt's publish) once what was just stored is durable."""
        if not self.store.batched:
            send()
            self.after_sends()
            return
        if not self._held:
            self._opened_at = time.monotonic()
        self._held.append(send)
        self._bytes += size
        if len(self._held) >= self.limits.max_count or self._bytes >= self.limits.max_bytes:
            self.commit()

    def due(self) -> bool:
        return bool(self._held) and time.monotonic() - self._opened_at >= self.limits.window_s

    def commit(self) -> bool:
        """Commit the open batch, then send its receipts; False (nothing sent) if it failed."""
        held, self._held, self._bytes = self._held, [], 0
        if not self.store.batched:
            return True
        try:
            self.store.commit()
        except StoreUnavailable as exc:
            self.failures += 1
            log.error("%d receipt(s) withheld, the kiosks will send again: %s", len(held), exc)
            return False
        if held:
            self.commits += 1
        for send in held:
            send()
        self.after_sends()
        return True
