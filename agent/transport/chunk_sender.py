"""One capture's chunked transfer, kiosk side: a state machine (docs/protocol.md, "Chunked transfer").

Pure: no broker, no uplink gate, no clock of its own (callers pass ``now``). The publisher
(agent/transport/publisher.py) drives it: it sends what ``next_chunk`` names through the
gate, reports each chunk sent, each PUBACK and each chunk status of the receiver, and sends
the manifest again when ``overdue`` asks for it. Phases:

* ``announced``: the manifest is out; nothing more goes until the receiver says which chunks
  it holds, so a receiver that is down costs no chunk bytes.
* ``sending``: chunks the receiver lacks go in order; one it found corrupted goes first.
* ``draining``: everything is sent; the broker has not acknowledged all of it yet.
* ``handed-over``: the broker has every chunk the receiver lacked. The receipt ends the
  transfer (the publisher's part); with no receiver to answer (``puback`` mode) this is the
  end. No progress here (or while ``announced``) for a while: the manifest goes again.

Chunk statuses are unsigned (anyone allowed on the broker can forge one), so they only ever
say what to send; progress, and the end of the transfer, come from PUBACKs and the signed
receipt (``on_status``).
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
    #: Sends and PUBACKs only: a chunk status is unsigned, so it never counts as progress.
    last_progress: float = 0.0
    announced_at: float = 0.0
    #: Since the last announcement: chunks queued because a status said the receiver lacks
    #: them, and chunks sent again because one said they came corrupted. Each goes once
    #: per announcement on a status's word, so forged statuses cannot multiply the bytes sent.
    requested: set[int] = field(default_factory=set)
    resent_bad: set[int] = field(default_factory=set)
    #: A status said ``unknown``: the manifest goes again, at most one timeout after the last.
    reannounce: bool = False

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
        self.last_progress = self.announced_at = now
        self.requested.clear()
        self.resent_bad.clear()
        self.reannounce = False

    def answers(self, status: ChunkStatus) -> bool:
        """The status is about this transfer (not one finished or superseded)."""
        manifest = self.manifest
        return (status.id, status.sha256, status.count) == (manifest.id, manifest.sha256, manifest.count)

    def on_status(self, status: ChunkStatus) -> int:
        """Take a chunk status that ``answers`` this transfer; the number of chunks it had
        sent again as corrupted.

        A status is unsigned, and anyone who may publish on the kiosk's topics reads the id and
        hash in the manifest's clear header. So a status is never progress (only sends and
        PUBACKs are: ``overdue`` fires whatever statuses say), ``complete`` settles nothing
        (the signed receipt does), ``unknown`` brings the manifest forward to at most one per
        timeout, and each chunk goes at most once per announcement on a status's word that
        the receiver lacks it and once that it came corrupted. Statuses that come after the
        first one for an announcement can still add chunks, so a forged "have everything"
        that beats the receiver's answer does not hold the transfer back.
        """
        if status.state == "unknown":
            # The receiver has no manifest for chunks we sent (it lost its state or another
            # receiver holds it). While the manifest's answer is awaited the manifest is out.
            self.reannounce = self.reannounce or not self.awaiting_status
            return 0
        if status.state == "complete":
            log.debug("capture %s: a receiver says it is stored; waiting for the receipt", self.id)
            return 0
        in_flight = {index for index, _ in self.inflight.values()}
        queued = set(self.pending)
        count = self.manifest.count
        if len(self.requested) < count:
            missing = [i for i in range(count) if i not in status.have and i not in self.requested]
            self.requested.update(missing)
            self.pending += [i for i in missing if i not in in_flight and i not in queued]
            queued.update(self.pending)
        if self.awaiting_status:
            self.awaiting_status = False
            log.info("capture %s: the receiver holds %d of %d chunks; sending %d", self.id,
                     len(status.have), count, len(self.pending))
        # A chunk that failed its hash goes again first, never taken as delivered; one still
        # in flight may be the good copy.
        again = [i for i in status.bad if i not in self.resent_bad and i not in in_flight and i not in queued]
        if again:
            self.resent_bad.update(again)
            self.pending = again + self.pending
            log.warning("capture %s: the receiver found chunk(s) %s corrupted; sending them again",
                        self.id, again)
        return len(again)

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
        missing). Also when a status said ``unknown`` and the last manifest is ``timeout_s``
        old: a forged ``unknown`` then costs at most one manifest and status per timeout."""
        if self.reannounce and now - self.announced_at >= timeout_s:
            return True
        return not self.pending and not self.inflight and now - self.last_progress >= timeout_s
