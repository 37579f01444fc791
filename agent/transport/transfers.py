"""The chunked transfers in progress, kiosk side: up to ``uplink.chunk_window`` at once.

One transfer at a time left the link idle for a round trip at each end of every large capture
(its manifest's chunk status, then its receipt): on a 3G link the drain of 1 MB captures ran at
about half the link's rate (docs/performance.md, "What holds the drain back now"). With a
window, the next capture's manifest and chunks go while the first one's receipt is on its way.
Each transfer keeps its own state machine (agent/transport/chunk_sender.py); what they share is
the bytes in flight (``uplink.inflight_bytes`` for all of them together), and the order: the
oldest sends first in each turn, so a backlog still drains in queue order as far as the link
allows. Memory: one capture's payload per transfer.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator

from agent.transport.chunk_sender import ChunkTransfer
from agent.transport.chunking import ChunkStatus
from agent.transport.protocol import ProtocolError


class Transfers:
    """Oldest first; at most ``window``."""

    def __init__(self, window: int) -> None:
        self.window = max(1, window)
        self._by_id: OrderedDict[str, ChunkTransfer] = OrderedDict()

    def __iter__(self) -> Iterator[ChunkTransfer]:
        return iter(list(self._by_id.values()))  # a transfer may end while the caller iterates

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._by_id

    def __len__(self) -> int:
        return len(self._by_id)

    @property
    def full(self) -> bool:
        return len(self._by_id) >= self.window

    def add(self, transfer: ChunkTransfer) -> None:
        self._by_id[transfer.id] = transfer

    def end(self, item_id: str) -> None:
        self._by_id.pop(item_id, None)

    def clear(self) -> None:
        self._by_id.clear()

    @property
    def inflight_bytes(self) -> int:
        return sum(t.inflight_bytes for t in self._by_id.values())

    def room(self, transfer: ChunkTransfer, limit: int) -> int:
        """``limit`` less what the other transfers have in flight: this one's share now."""
        return limit - (self.inflight_bytes - transfer.inflight_bytes)

    def status(self, payload: bytes) -> ChunkStatus | None:
        """The chunk status if it is about one of these transfers, None if about none of them.

        Each transfer reads it against its own manifest. A transfer refuses a status larger than
        any about it can be before reading its id, so that refusal counts only if no other
        transfer takes the status. ProtocolError: malformed and about a transfer here, or
        refused by every one of them."""
        error: ProtocolError | None = None
        for transfer in self._by_id.values():
            try:
                status = ChunkStatus.decode_for(transfer.manifest, payload)
            except ProtocolError as exc:
                if exc.item_id == transfer.id:
                    raise  # about this transfer, and malformed
                error = error or exc
                continue
            if status is not None:
                return status
        if error is not None:
            raise error
        return None

    def answering(self, status: ChunkStatus) -> ChunkTransfer | None:
        return next((t for t in self._by_id.values() if t.answers(status)), None)

    def acknowledged(self, mid: int, now: float) -> ChunkTransfer | None:
        """The transfer whose chunk message ``mid`` was, told of its PUBACK; None if none's."""
        return next((t for t in self._by_id.values() if t.acknowledged(mid, now)), None)
