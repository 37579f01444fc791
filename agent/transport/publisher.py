"""Feeds captures from the durable queue to the broker and deletes them on acknowledgement.

The queue is the source of truth; paho only ever holds a small window of in-flight
captures. In ``receipt`` mode a capture stays in flight until the central side's receipt
for its id arrives; in ``puback`` mode until the broker's PUBACK. After a reconnect
everything unacknowledged is offered again from the oldest, so delivery is at-least-once
and the receiver de-duplicates by capture id.

Acknowledgements are written in batches (agent/transport/ack_batch.py): an item whose receipt
(or PUBACK) arrived leaves the window at once, and its deletion waits a few milliseconds for
others, so they cost one transaction (one fsync) together with the send attempts counted
since the last one.

A receipt counts only when the central service signed it and it names a capture in flight,
the exact bytes sent and this send's nonce (agent/transport/receipt_gate.py); a forged,
replayed or stray one deletes nothing and is reported as a security event.

A capture larger than the broker's Maximum Packet Size or ``uplink.chunk_bytes`` goes in
chunks: a manifest, the receiver's chunk status (which chunks it already holds), then only
the missing chunks. Which chunk goes when is the transfer's state machine
(agent/transport/chunk_sender.py); up to ``uplink.chunk_window`` transfers run at once
(agent/transport/transfers.py), the oldest first. The publisher sends for them, at most
``uplink.inflight_bytes`` unacknowledged at a time and a few per loop turn, so command
replies and telemetry (served first on every turn, agent/transport/handler_chain.py) never
wait behind a large image. Every capture byte passes the uplink gate
(agent/transport/uplink.py: bandwidth cap, daily budget, upload windows).

All methods run on the MQTT link's thread (agent/transport/mqtt_link.py).
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from agent.transport.ack_batch import AckBatch
from agent.transport.chunk_sender import ChunkTransfer
from agent.transport.chunking import ChunkStatus, ManifestSigner, chunk_size_for, manifest_size
from agent.transport.config import MqttConfig, UplinkConfig
from agent.transport.durable_queue import DurableQueue, QueuedItem, QueueError
from agent.transport.mqtt_link import BrokerLimits, MqttLink
from agent.transport.protocol import SEND_OVERHEAD, ProtocolError, Topics, frame_send, status_payload
from agent.transport.receipt_gate import ReceiptGate, Sent
from agent.transport.receipts import RefusalReason
from agent.transport.transfers import Transfers
from agent.transport.uplink import EventSink, Uplink

log = logging.getLogger(__name__)

#: Bytes a PUBLISH adds around topic and payload (fixed header, lengths, id, properties).
PUBLISH_OVERHEAD = 16
#: Registration manifests travel with the captures: one subscription, one ordered stream.
KIND_TOPIC = {"capture": "captures", "registration": "captures"}
#: Chunk bytes published per loop turn at most: the turn stays short (a few ms on a Pi) so
#: replies and telemetry, served first on each turn, are never delayed by a large transfer.
CHUNK_BYTES_PER_TURN = 256 * 1024


@dataclass
class _InFlight:
    seq: int
    mid: int
    sent_at: float


@dataclass
class PublisherCounters:
    published: int = 0
    acknowledged: int = 0
    rejected: int = 0
    republished: int = 0
    #: Chunked transfers started (a resumed transfer after a reconnect counts again).
    transfers: int = 0
    manifests_sent: int = 0
    chunks_sent: int = 0
    #: Chunks the receiver reported corrupted (hash mismatch) and that were sent again.
    chunks_rerequested: int = 0
    #: Security events: receipts refused (forged, unknown key, not in flight, wrong hash,
    #: replayed, malformed); nothing was deleted for them. By reason as well.
    receipts_refused: int = 0
    receipts_refused_by_reason: dict[str, int] = field(default_factory=dict)


class Publisher:
    def __init__(self, queue: DurableQueue, config: MqttConfig, topics: Topics,
                 status_fields: dict[str, Any], *, uplink: UplinkConfig, state_dir: Path,
                 receipt_keys: Mapping[str, Ed25519PublicKey], signer: ManifestSigner,
                 on_event: EventSink | None = None) -> None:
        """``uplink``: chunking and cellular limits; ``state_dir``: the kiosk's state folder
        (kiosk.state_dir), where the daily budget is kept; ``receipt_keys``: the central
        receipt-signing keys trusted (key id -> key, security.receipt_keys); ``signer``: the
        kiosk's key (the Sealer), for chunk manifests; ``on_event``: EventBus.emit, for
        "quota_reached" and "receipt_refused"."""
        self.queue = queue
        self.config = config
        self.uplink_config = uplink
        self.uplink = Uplink.from_config(uplink, state_dir, on_event)
        self._transfers = Transfers(uplink.chunk_window)
        self._statuses: list[ChunkStatus] = []
        self.topics = topics
        self.status_fields = status_fields
        self.counters = PublisherCounters()
        self._signer = signer
        self.receipts = ReceiptGate(receipt_keys, topics.kiosk_id, self._count_refusal, on_event)
        #: Items in flight since this process sent them, until settled: what their receipts
        #: must name. Kept across reconnects (the receipt of a send before one still counts);
        #: a restart or a retry after rejection starts a new flight with a new nonce.
        self._sent: dict[str, Sent] = {}
        self._window = config.inflight_window
        self._max_packet = 0
        self._inflight: OrderedDict[str, _InFlight] = OrderedDict()
        self._mid_to_id: dict[int, str] = {}
        self._cursor = 0  # highest seq offered on this connection
        self._rewind = False
        #: Acknowledged, refused and sent items whose record in the queue waits for a batch.
        self._acks = AckBatch()
        #: queue.version when the queue last had nothing more to offer: no query until it moves.
        self._idle_version = -1
        self._offline_mid: int | None = None
        self._last_warning = ""
        self._last_warning_at = 0.0
        self._offline_acked = False

    # --- link events --------------------------------------------------------------------

    def on_connected(self, link: MqttLink, limits: BrokerLimits) -> None:
        self._window = max(1, min(self.config.inflight_window, limits.receive_maximum))
        self._max_packet = limits.maximum_packet_size
        # Offer everything unacknowledged again, from the oldest: receipts sent while we
        # were away are gone with the old session.
        self._inflight.clear()
        self._mid_to_id.clear()
        self._cursor, self._idle_version = 0, -1
        # A chunked transfer starts again from its manifest; the receiver's status says
        # which chunks it already holds (see ChunkTransfer).
        self._transfers.clear()
        self._statuses.clear()
        if self.config.ack_mode == "receipt":
            link.subscribe(self.topics.receipts, qos=1)
            link.subscribe(self.topics.chunk_status, qos=1)
        link.publish(self.topics.status, status_payload("online", **self.status_fields),
                     qos=1, retain=True)

    def on_disconnected(self, link: MqttLink) -> None:
        log.info("broker connection lost; %d captures in flight will be offered again",
                 len(self._inflight))

    def on_message(self, link: MqttLink, message: mqtt.MQTTMessage) -> None:
        if message.topic not in (self.topics.chunk_status, self.topics.receipts):
            return
        if message.retain:
            # A receiver never retains these. A retained one was left by someone else, and the
            # broker would hand it over at every connect: a crash at start stays a crash loop.
            self._warn_once(f"ignoring a retained message on {message.topic} (receivers never retain)")
            return
        if message.topic == self.topics.chunk_status:
            self._take_status(message.payload)
            return
        for receipt in self.receipts.check(message.payload, self._sent):
            if receipt.settled:
                self._acknowledged(receipt.id)
            else:
                self._acks.refused.append(receipt)

    def _take_status(self, payload: bytes) -> None:
        """Keep a chunk status about a transfer in progress; read nothing of any other."""
        if not self._transfers:
            return
        try:
            status = self._transfers.status(payload)
        except ProtocolError as exc:
            self._warn_once(f"ignoring a malformed chunk status: {exc}")
            return
        if status is not None:
            self._statuses.append(status)

    def _count_refusal(self, reason: RefusalReason) -> None:
        self.counters.receipts_refused += 1
        by_reason = self.counters.receipts_refused_by_reason
        by_reason[reason] = by_reason.get(reason, 0) + 1

    def on_puback(self, link: MqttLink, mid: int) -> None:
        if mid == self._offline_mid:
            self._offline_acked = True
            return
        transfer = self._transfers.acknowledged(mid, time.monotonic())
        if transfer is not None:
            if transfer.settled_by_broker:
                self._acknowledged(transfer.id)
            return
        item_id = self._mid_to_id.pop(mid, None)
        if item_id is not None and self.config.ack_mode == "puback":
            self._acknowledged(item_id)

    def _acknowledged(self, item_id: str) -> None:
        """Out of the window now (the next capture may go); deleted with the batch."""
        self._acks.acknowledged(item_id)
        self._landed(item_id)

    def on_stopping(self, link: MqttLink) -> None:
        self._settle(force=True)
        self.uplink.persist()
        self._offline_mid = link.publish(
            self.topics.status, status_payload("offline", **self.status_fields), qos=1, retain=True
        )
        if not link.flush(3.0, lambda: self._offline_acked):
            log.warning("offline status not confirmed by the broker; its last will covers it")

    # --- work ---------------------------------------------------------------------------

    def tick(self, link: MqttLink) -> bool:
        if self._rewind:
            self._rewind, self._cursor, self._idle_version = False, 0, -1
        busy = self._settle()
        self._apply_statuses()
        busy |= self._fill_window(link)
        busy |= self._pump_chunks(link)
        self._resend_overdue(link)
        self.queue.erase_if_due()
        if self._acks.settling:
            link.wake_at(self._acks.settle_by)
        if self.uplink.throttled:
            link.wake_at(self.uplink.ready_at)  # the next bytes the cap lets through
        return busy

    def _settle(self, force: bool = False) -> bool:
        if not self._acks.due(force):
            return False
        try:
            deleted, refused = self._acks.commit(self.queue)
        except QueueError as exc:
            # Kept for the next turn: nothing is lost, the receiver de-duplicates.
            self._warn_once(f"cannot record receipts yet: {exc}")
            return False
        self.counters.acknowledged += deleted
        for receipt in refused:
            self._landed(receipt.id)
            self.queue.reject(receipt.id, f"rejected by {receipt.receiver}: {receipt.reason}")
            self.counters.rejected += 1
            log.error("capture %s rejected by the central side (%s): %s; kept in the queue as "
                      "'rejected' for support", receipt.id, receipt.receiver, receipt.reason)
        return True

    def _landed(self, item_id: str) -> None:
        """The item's flight is over: acknowledged, or rejected and set aside."""
        self._inflight.pop(item_id, None)
        self._transfers.end(item_id)
        sent = self._sent.pop(item_id, None)
        if sent is not None:
            self.receipts.settled(item_id, sent)

    def _flight(self, item: QueuedItem) -> Sent:
        """This item's hash and nonce while in flight (made when it is first sent)."""
        sent = self._sent.get(item.id)
        if sent is None:
            sent = self._sent[item.id] = Sent(hashlib.sha256(item.payload).hexdigest(), secrets.token_hex(16))
        return sent

    def _fill_window(self, link: MqttLink) -> bool:
        room = self._window - len(self._inflight)
        if room <= 0:
            return False
        version = self.queue.version
        if version == self._idle_version:
            return False  # nothing joined the queue since it had nothing more to offer
        batch = self.queue.next_batch(self._cursor, room)
        if not batch:
            self._idle_version = version
            return False
        sent: list[int] = []
        for item in batch:
            # After a rewind the batch may hold captures already in flight, or acknowledged
            # and not yet deleted: not twice.
            if item.id not in self._inflight and item.id not in self._acks:
                outcome = self._offer(link, item)
                if outcome == "wait":
                    # Held by the uplink or behind the chunked transfer in progress: the
                    # cursor stays before it, so it is offered first next time, in order.
                    break
                if outcome == "sent":
                    sent.append(item.seq)
            self._cursor = item.seq
        if not sent:
            return False
        self.counters.published += len(sent)
        self._acks.count_attempts(sent)
        return True

    def _warn_once(self, message: str) -> None:
        """A warning per distinct problem and minute, not one per loop turn."""
        now = time.monotonic()
        if message != self._last_warning or now - self._last_warning_at > 60:
            log.warning("%s", message)
            self._last_warning, self._last_warning_at = message, now

    def _topic(self, item: QueuedItem) -> str:
        return f"{self.topics.prefix}/{self.topics.kiosk_id}/{KIND_TOPIC.get(item.kind, item.kind)}"

    def _offer(self, link: MqttLink, item: QueuedItem) -> str:
        """Send one item whole or start its chunked transfer: "sent", "wait" or "rejected"."""
        try:
            chunk_size = self._chunk_size(item)
        except ValueError as exc:
            # Fail loudly and keep the capture for support; the broker's limit is far too small.
            log.error("capture %s (%d bytes) cannot be sent: %s; kept in the queue as 'rejected'",
                      item.id, len(item.payload), exc)
            self.queue.reject(item.id, str(exc))
            self.counters.rejected += 1
            return "rejected"
        if chunk_size is not None:
            return self._start_transfer(link, item, chunk_size)
        wire = frame_send(item.payload, self._flight(item).nonce)
        if not self.uplink.try_send(len(wire) + len(self._topic(item)) + PUBLISH_OVERHEAD):
            return "wait"
        self._send(link, item, wire)
        return "sent"

    def _chunk_size(self, item: QueuedItem) -> int | None:
        """Bytes per chunk for this item, None when it goes whole; ValueError when the broker's
        limit cannot carry it even in chunks."""
        chunk_size = chunk_size_for(self._max_packet, self.topics.chunks, self.uplink_config.chunk_bytes,
                                    len(item.payload) + SEND_OVERHEAD, PUBLISH_OVERHEAD)
        if chunk_size is not None and manifest_size(len(item.payload), chunk_size) > self._max_packet:
            raise ValueError(f"its chunk manifest would exceed the broker's maximum packet size of "
                             f"{self._max_packet:,} bytes")
        return chunk_size

    def _send(self, link: MqttLink, item: QueuedItem, wire: bytes) -> None:
        """Publish ``wire`` (the item in its transmission frame) and count it in flight."""
        mid = link.publish(self._topic(item), wire, qos=1)
        self._mid_to_id[mid] = item.id
        self._inflight[item.id] = _InFlight(item.seq, mid, time.monotonic())

    def _resend_overdue(self, link: MqttLink) -> None:
        if self.config.ack_mode != "receipt" or not self._inflight:
            return
        self._transfer_overdue(link)
        now = time.monotonic()
        oldest_id, oldest = next(iter(self._inflight.items()))
        if now - oldest.sent_at < self.config.receipt_timeout_s:
            return
        if oldest_id in self._transfers:
            # Its clock is the transfer's progress (_transfer_overdue), not its first send.
            self._inflight.move_to_end(oldest_id)
            oldest.sent_at = now
            return
        item = self.queue.get(oldest_id)
        if item is None:  # acknowledged meanwhile
            del self._inflight[oldest_id]
            return
        wire = frame_send(item.payload, self._flight(item).nonce)
        if not self.uplink.try_send(len(wire) + len(self._topic(item)) + PUBLISH_OVERHEAD):
            return  # held by the cap, the budget or a closed window: the resend waits too
        del self._inflight[oldest_id]
        log.info("no receipt for capture %s after %.0f s; sending it again",
                 oldest_id, self.config.receipt_timeout_s)
        self._send(link, item, wire)
        self._acks.count_attempts([item.seq])
        self.counters.republished += 1

    # --- chunked transfers: the publisher sends, ChunkTransfer decides -------------------

    def _start_transfer(self, link: MqttLink, item: QueuedItem, chunk_size: int) -> str:
        if self._transfers.full:
            return "wait"  # uplink.chunk_window transfers at a time: one payload each in memory
        transfer = ChunkTransfer.of(item, self.topics.kiosk_id, chunk_size,
                                    expects_status=self.config.ack_mode == "receipt",
                                    nonce=self._flight(item).nonce)
        if not self._send_manifest(link, transfer):
            return "wait"
        self._transfers.add(transfer)
        self._inflight[item.id] = _InFlight(item.seq, -1, time.monotonic())
        self.counters.transfers += 1
        log.info("capture %s (%d bytes) goes in %d chunks of up to %d bytes", item.id,
                 transfer.manifest.size, transfer.manifest.count, chunk_size)
        return "sent"

    def _send_manifest(self, link: MqttLink, transfer: ChunkTransfer) -> bool:
        payload = transfer.manifest.encode(self._signer)
        if not self.uplink.try_send(len(payload) + len(self.topics.chunks) + PUBLISH_OVERHEAD):
            return False
        link.publish(self.topics.chunks, payload, qos=1)
        self.counters.manifests_sent += 1
        transfer.announced(time.monotonic())
        return True

    def _apply_statuses(self) -> None:
        statuses, self._statuses = self._statuses, []
        for status in statuses:
            transfer = self._transfers.answering(status)
            if transfer is None:
                continue  # for a transfer already finished or superseded
            self.counters.chunks_rerequested += transfer.on_status(status)

    def _pump_chunks(self, link: MqttLink) -> bool:
        """Chunks of the transfers in progress, the oldest's first, within one turn's bytes
        and the bytes in flight that all of them share."""
        budget = CHUNK_BYTES_PER_TURN
        sent = 0
        for transfer in self._transfers:
            while budget > 0 and (chunk := transfer.next_chunk()) is not None:
                payload = chunk.encode()
                room = self._transfers.room(transfer, self.uplink_config.inflight_bytes)
                if not transfer.has_room(len(payload), room):
                    break
                if not self.uplink.try_send(len(payload) + len(self.topics.chunks) + PUBLISH_OVERHEAD):
                    return sent > 0  # the cap, budget or window holds every transfer alike
                mid = link.publish(self.topics.chunks, payload, qos=1)
                transfer.chunk_sent(mid, len(payload), time.monotonic())
                self.counters.chunks_sent += 1
                budget -= len(payload)
                sent += 1
        return sent > 0

    def _transfer_overdue(self, link: MqttLink) -> None:
        """Everything sent and no receipt for a while (or no status after the manifest):
        ask again with the manifest; the status names what is missing."""
        for transfer in self._transfers:
            if not transfer.overdue(time.monotonic(), self.config.receipt_timeout_s):
                continue
            if transfer.reannounce:
                log.info("capture %s: a receiver has no manifest for it; sending the manifest again",
                         transfer.id)
            else:
                log.info("capture %s: no %s after %.0f s; sending its manifest again", transfer.id,
                         "chunk status" if transfer.awaiting_status else "receipt",
                         self.config.receipt_timeout_s)
            if self._send_manifest(link, transfer):
                self.counters.republished += 1

    def rewind(self) -> None:
        """Offer the queue again from its oldest item (items put back by queue.retry).

        Any thread may call it; the link's thread applies it at its next turn."""
        self._rewind = True

    @property
    def inflight(self) -> int:
        return len(self._inflight)
