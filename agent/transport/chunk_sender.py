"""One capture's chunked transfer, kiosk side: a state machine (docs/protocol.md, "Chunked transfer").

Pure: no broker, no uplink gate, no clock of its own (callers pass ``now``). The publisher
(agent/transport/publisher.py) drives it: it sends what ``next_chunk`` names through the
gate, reports each chunk sent, each PUBACK and each chunk status of the receiver, and sends
the manifest again when ``on_status`` or ``overdue`` ask for it. Phases:

* ``announced``: the manifest is out; nothing more goes until the receiver says which chunks
  it holds, so a receiver that is down costs no chunk bytes.
* ``sending``: chunks the receiver lacks go in order; one it found corrupted goes first.
* ``draining``: everything is sent; the broker has not acknowledged all of it yet.
* ``handed-over``: the broker has every chunk the receiver lacked. The receipt ends the
  transfer (the publisher's part); with no receiver to answer (``puback`` mode) this is the
  end. No progress here (or while ``announced``) for a while: the manifest goes again.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Literal

from agent.transport.chunking import Chunk, ChunkStatus, Manifest, chunk_of, make_manifest
from agent.transport.durable_queue import QueuedItem

log = logging.getLogger(__name__)

Phase = Literal["announced", "sending", "draining", "handed-over"]


@dataclass
class ChunkTransfer:
    """One capture on its way in chunks.

    Progress lives in memory only, on purpose: the receiver's chunks on disk are the truth.
    After every (re)connect or agent restart the manifest goes out again and the receiver's
    chunk status says what it holds, so nothing is sent twice that arrived, and nothing the
    broker acknowledged but lost is taken for delivered. Keeping it in the queue database
    would cost an fsync per chunk and still need that exchange.
    """

    item: QueuedItem
    manifest: Manifest
    #: A receiver answers each manifest with its chunk status (``receipt`` mode); under
    #: ``puback`` mode nobody answers, so every chunk goes straight after the manifest.
    expects_status: bool = True
    #: Chunk indexes still to send, in order.
    pending: list[int] = field(default_factory=list)
    #: PUBLISH message id -> (chunk index, bytes) for chunks the broker has not acknowledged.
    inflight: dict[int, tuple[int, int]] = field(default_factory=dict)
    inflight_bytes: int = 0
    #: The manifest is out and the receiver's chunk status not yet in: send nothing.
    awaiting_status: bool = True
    last_progress: float = 0.0

    @classmethod
    def of(cls, item: QueuedItem, kiosk_id: str, chunk_size: int, *, expects_status: bool,
           nonce: str = "") -> ChunkTransfer:
        """``nonce``: the publisher's for this item in flight; the manifest carries it (signed)
        and the receipt must echo it."""
        manifest = make_manifest(item.id, kiosk_id, item.seq, item.kind, item.payload, chunk_size, nonce)
        return cls(item, manifest, expects_status)

    @property
    def id(self) -> str:
        return self.item.id

    @property
    def phase(self) -> Phase:
        if self.awaiting_status:
            return "announced"
        if self.pending:
            return "sending"
        return "draining" if self.inflight else "handed-over"

    # --- what the publisher reports -----------------------------------------------------

    def announced(self, now: float) -> None:
        """The manifest has just gone out, first or again. Chunks still in flight stay
        counted: their PUBACKs may yet come."""
        self.awaiting_status = self.expects_status
        self.pending = [] if self.expects_status else list(range(self.manifest.count))
        self.last_progress = now

    def answers(self, status: ChunkStatus) -> bool:
        """The status is about this transfer (not one finished or superseded)."""
        return (status.id, status.sha256) == (self.id, self.manifest.sha256)

    def on_status(self, status: ChunkStatus, now: float) -> bool:
        """Take a chunk status that ``answers`` this transfer; True: send the manifest again."""
        self.last_progress = now
        if status.state == "unknown":
            # The receiver has no manifest for chunks we sent (it lost its state or another
            # receiver holds it): announce the transfer again.
            return True
        in_flight = {index for index, _ in self.inflight.values()}
        if status.state == "complete":
            self.pending, self.awaiting_status = [], False  # the receipt follows
        elif self.awaiting_status:
            missing = set(range(self.manifest.count)) - status.have - in_flight
            self.pending = sorted(missing | (status.bad - in_flight))
            self.awaiting_status = False
            log.info("capture %s: the receiver holds %d of %d chunks; sending %d", self.id,
                     len(status.have), self.manifest.count, len(self.pending))
        if status.bad:
            # A chunk that failed its hash is sent again at once, never taken as delivered.
            again = sorted(status.bad - in_flight - set(self.pending))
            self.pending = again + self.pending
            log.warning("capture %s: the receiver found chunk(s) %s corrupted; sending them again",
                        self.id, sorted(status.bad))
        return False

    def chunk_sent(self, mid: int, size: int, now: float) -> None:
        """The chunk ``next_chunk`` named went out as message ``mid`` of ``size`` bytes."""
        index = self.pending.pop(0)
        self.inflight[mid] = (index, size)
        self.inflight_bytes += size
        self.last_progress = now

    def acknowledged(self, mid: int, now: float) -> bool:
        """A PUBACK; False when ``mid`` is not one of this transfer's chunks."""
        entry = self.inflight.pop(mid, None)
        if entry is None:
            return False
        self.inflight_bytes -= entry[1]
        self.last_progress = now
        return True

    # --- what to do next ----------------------------------------------------------------

    def next_chunk(self) -> Chunk | None:
        """The chunk to send now; None while the status is awaited or nothing is left."""
        if self.awaiting_status or not self.pending:
            return None
        return chunk_of(self.manifest, self.item.payload, self.pending[0])

    def has_room(self, size: int, limit: int) -> bool:
        """A chunk of ``size`` bytes keeps the bytes in flight within ``limit``; one chunk
        always may when none is in flight, whatever its size."""
        return not self.inflight or self.inflight_bytes + size <= limit

    @property
    def settled_by_broker(self) -> bool:
        """Done without a receipt: no receiver answers (``puback`` mode) and the broker has
        acknowledged every chunk."""
        return not self.expects_status and self.phase == "handed-over"

    def overdue(self, now: float, timeout_s: float) -> bool:
        """Nothing left to send or acknowledge and no progress for ``timeout_s``: the chunk
        status or the receipt is late, so the manifest goes again (its status names what is
        missing)."""
        return not self.pending and not self.inflight and now - self.last_progress >= timeout_s
