"""Chunked transfers on the receiver's side: manifests, chunks, chunk statuses, reassembly.

Captures too large for one message arrive in chunks on ``<prefix>/<kiosk>/chunks``: the
receiver answers each manifest with the chunks it already holds (``chunk-status``), keeps
verified chunks (receiver/chunks.py, or the database's tables), and hands the reassembled
envelope to the same path as a single-message capture, receipt included. A manifest counts
only when the kiosk's enrolled key signed it.

A mixin of receiver/service.py's Receiver, whose state it shares (counters, lock, store,
receipts, rate limits): the transfer protocol is a part of the receiver that can be read on
its own, and the receiver's module stays a readable size. It imports nothing from the
service, so the layering is one way.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from agent.transport.chunking import CHUNK_MAGIC, MANIFEST_MAGIC, Chunk, ChunkStatus, Manifest
from agent.transport.mqtt_link import MqttLink
from agent.transport.protocol import ProtocolError, Topics
from receiver.chunks import OverQuota, Transfer
from receiver.paths import UnsafeName
from receiver.storage import StoreUnavailable
from receiver.warnings_limit import OncePerInterval, PerSecondBudget

if TYPE_CHECKING:
    from agent.security.sealing import Opener
    from agent.transport.receipts import Receipt
    from receiver.config import ReceiverServiceConfig
    from receiver.counters import ReceiverCounters
    from receiver.group_commit import GroupCommit
    from receiver.receipting import Receipts
    from receiver.warnings_limit import LimitedWarnings

# The receiver's logger, as before the split: operators filter and alert on its name.
log = logging.getLogger("receiver.service")

#: A chunk status answers a bad chunk, or a chunk of an unknown transfer, at most this often
#: per transfer: each answer is a message to the kiosk, and a status of a large transfer costs
#: O(chunks held) to build, so anyone on the broker could make every cheap message dear.
STATUS_INTERVAL_S = 1.0
#: At most this many "unknown" answers a second per kiosk (fresh transfer ids are free; a
#: genuine kiosk runs one transfer at a time) and this many transfers remembered.
UNKNOWN_PER_KIOSK_PER_S = 10
STATUS_GATE_KEYS = 4096


class ChunkIntake:
    """The chunked-transfer half of the Receiver's message handling (mixed into it)."""

    if TYPE_CHECKING:
        # The Receiver's, shared with its other message handling.
        config: ReceiverServiceConfig
        topics: Topics
        chunks: Any
        counters: ReceiverCounters
        receipts: Receipts
        opener: Opener
        batch: GroupCommit
        warnings: LimitedWarnings
        _lock: threading.Lock

        def _enrolled(self, kiosk_id: str) -> bool: ...
        def _count(self, counter: str) -> None: ...
        def _security_event(self, kiosk_id: str, kind: str, reason: str) -> None: ...
        def ingest(self, kiosk_id: str, payload: bytes) -> Receipt | None: ...

    def _init_chunk_intake(self) -> None:
        self._unknown_answered = OncePerInterval(STATUS_INTERVAL_S, STATUS_GATE_KEYS)
        self._unknown_budget = PerSecondBudget(UNKNOWN_PER_KIOSK_PER_S)
        self._bad_answered = OncePerInterval(STATUS_INTERVAL_S, STATUS_GATE_KEYS)

    def _on_chunks(self, link: MqttLink, kiosk_id: str, payload: bytes) -> None:
        if not self._enrolled(kiosk_id):
            # Before anything is written: a name on the broker is not an enrolled kiosk.
            self._security_event(kiosk_id, "not-enrolled", "chunks for a kiosk that is not enrolled; "
                                 "nothing stored")
            self.receipts.hint(link, kiosk_id, "not_enrolled", self.config.receiver.name)
            return
        try:
            if payload[:3] == MANIFEST_MAGIC:
                self._on_manifest(link, kiosk_id, payload)
            elif payload[:3] == CHUNK_MAGIC:
                self._on_chunk(link, kiosk_id, Chunk.decode(payload))
            else:
                raise ProtocolError("neither a chunk manifest nor a chunk (bad magic)")
        except UnsafeName as exc:
            self._security_event(kiosk_id, "unsafe-name", f"chunked transfer refused: {exc}")
        except StoreUnavailable as exc:
            self.warnings.warn("", "store-unavailable", "chunked capture not stored, no receipt: %s", exc,
                               level=logging.ERROR)
        except OverQuota as exc:
            # No status: the kiosk sends nothing more and asks again after its receipt timeout.
            self._count("over_quota")
            self.warnings.warn(kiosk_id, "over-quota", "chunks refused, nothing stored: %s", exc)
        except ProtocolError as exc:
            # Unreadable: nothing is stored and nothing answered (as for a bad envelope).
            self._count("unreadable")
            self.warnings.warn(kiosk_id, "unreadable-chunk", "ignored a message on kiosk %s's chunks "
                               "topic: %s", kiosk_id, exc, level=logging.ERROR)

    def _send_status(self, link: MqttLink, kiosk_id: str, status: ChunkStatus) -> None:
        link.publish(Topics(self.topics.prefix, kiosk_id).chunk_status, status.encode(), qos=1)

    def _status(self, transfer: Transfer, bad: set[int] | None = None) -> ChunkStatus:
        return ChunkStatus(transfer.id, transfer.sha256, "partial", transfer.count,
                           transfer.indexes(), frozenset(bad or ()), self.config.receiver.name)

    def _on_manifest(self, link: MqttLink, kiosk_id: str, payload: bytes) -> None:
        manifest = Manifest.decode(payload)
        if manifest.kiosk_id != kiosk_id:
            raise ProtocolError(f"manifest for kiosk {manifest.kiosk_id!r} sent on {kiosk_id!r}'s topic")
        key = self.opener.kiosk_keys.get(kiosk_id)  # enrolled: _on_chunks checked
        if key is None or not manifest.signed_by(key):
            # Nothing written, nothing answered: a forged first manifest must not fix which
            # digests the genuine chunks are held to.
            self._security_event(kiosk_id, "unsigned-manifest", f"chunk manifest for {manifest.id!r} "
                                 "not signed by the kiosk's enrolled key; nothing stored")
            return
        with self._lock:
            self.counters.manifests += 1
        self.receipts.announced(kiosk_id, manifest)
        done = self.chunks.done_receipt(kiosk_id, manifest.id, manifest.sha256)
        if done is not None:
            # Stored already; the kiosk missed the receipt: both again, no chunk needed, the
            # receipt signed anew for this send.
            self._send_status(link, kiosk_id, ChunkStatus(manifest.id, manifest.sha256, "complete",
                                                          manifest.count, receiver=self.config.receiver.name))
            self.receipts.send_again(link, kiosk_id, manifest, done)
            return
        transfer = self.chunks.begin(kiosk_id, manifest, payload)
        if transfer.held == transfer.count:
            self._complete(link, kiosk_id, transfer)  # every chunk came before a restart
            return
        self._send_status(link, kiosk_id, self._status(transfer))

    def _on_chunk(self, link: MqttLink, kiosk_id: str, chunk: Chunk) -> None:
        if chunk.kiosk_id != kiosk_id:
            raise ProtocolError(f"chunk for kiosk {chunk.kiosk_id!r} sent on {kiosk_id!r}'s topic")
        transfer = self.chunks.lookup(kiosk_id, chunk.id, chunk.sha256)
        if transfer is None:
            if self.chunks.done_receipt(kiosk_id, chunk.id, chunk.sha256) is not None:
                with self._lock:
                    self.counters.chunks_duplicate += 1
                return
            # No manifest (never seen, or swept): ask for it, once per transfer and second, and
            # only so often per kiosk. Unanswered, a genuine kiosk sends its manifest again after
            # its receipt timeout anyway.
            if (self._unknown_answered.allow((kiosk_id, chunk.id, chunk.sha256))
                    and self._unknown_budget.allow(kiosk_id)):
                self._send_status(link, kiosk_id, ChunkStatus(
                    chunk.id, chunk.sha256, "unknown", chunk.count, receiver=self.config.receiver.name))
            return
        if not transfer.accepts(chunk):
            # Never stored as good. Asked for again at once, but once a second per transfer at
            # most: the bad chunks left unanswered are missing from the next status's "have"
            # (or the kiosk's next manifest's answer) and are sent again from there.
            self._count("chunks_corrupt")
            self.warnings.warn(kiosk_id, "bad-chunk", "chunk %d of %s from kiosk %s failed its SHA-256; "
                               "asking for it again", chunk.index, chunk.id, kiosk_id)
            if self._bad_answered.allow(transfer.folder):
                self._send_status(link, kiosk_id, self._status(transfer, {chunk.index}))
            return
        outcome = self.chunks.put(transfer, chunk)
        if outcome == "duplicate":
            self._count("chunks_duplicate")
        if outcome != "stored":
            return  # or "gone": finished elsewhere or swept; the kiosk's next manifest settles it
        with self._lock:
            self.counters.chunks_received += 1
        if transfer.held == transfer.count:
            self._complete(link, kiosk_id, transfer)

    def _complete(self, link: MqttLink, kiosk_id: str, transfer: Transfer) -> None:
        path, bad = self.chunks.assemble(transfer)
        if path is None and not bad:
            log.error("transfer %s from kiosk %s: its chunks match their digests but not the manifest's "
                      "total SHA-256; discarded (a faulty or forged manifest)", transfer.id, kiosk_id)
            return
        if path is None:
            with self._lock:
                self.counters.chunks_corrupt += len(bad)
            log.error("transfer %s from kiosk %s: chunk(s) %s damaged on disk; asking for them again",
                      transfer.id, kiosk_id, sorted(bad))
            self._send_status(link, kiosk_id, self._status(transfer, bad))
            return
        receipt = self.ingest(kiosk_id, path.read_bytes())  # decided now, durable at the commit
        if receipt is None or receipt.id != transfer.id:
            # Not authentic, or not the item its manifest named: keep nothing, answer nothing.
            log.error("transfer %s from kiosk %s: the reassembled envelope was not accepted; discarded",
                      transfer.id, kiosk_id)
            self.chunks.discard(transfer)
            return
        receipt = replace(receipt, sha256=transfer.sha256, nonce=self.receipts.nonce_of(transfer))
        if not self.batch.commit():
            return  # not durable: no done record; the kiosk's next manifest completes it again
        self.chunks.finish(transfer, receipt.record())
        with self._lock:
            self.counters.reassembled += 1
        log.info("capture %s from %s reassembled from %d chunks: %s", transfer.id, kiosk_id,
                 transfer.count, receipt.status)
        self.receipts.send(link, kiosk_id, receipt)
