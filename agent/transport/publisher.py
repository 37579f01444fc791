"""Feeds captures from the durable queue to the broker and deletes them on acknowledgement.

The queue is the source of truth; paho only ever holds a small window of in-flight
captures. In ``receipt`` mode a capture stays in flight until the central side's receipt
for its id arrives; in ``puback`` mode until the broker's PUBACK. After a reconnect
everything unacknowledged is offered again from the oldest, so delivery is at-least-once
and the receiver de-duplicates by capture id.

A capture larger than the broker's Maximum Packet Size or ``uplink.chunk_bytes`` goes in
chunks (agent/transport/chunking.py): a manifest, the receiver's chunk status (which chunks it already
holds), then only the missing chunks, at most ``uplink.inflight_bytes`` unacknowledged at a
time and a few per loop turn, so command replies and telemetry (served first on every turn,
agent/transport/handler_chain.py) never wait behind a large image. Every capture byte passes the
uplink gate (agent/transport/uplink.py: bandwidth cap, daily budget, upload windows).

All methods run on the MQTT link's thread (agent/transport/mqtt_link.py).
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from agent.config import MqttConfig, UplinkConfig
from agent.transport.chunking import (
    ChunkStatus,
    Manifest,
    chunk_of,
    chunk_size_for,
    make_manifest,
    manifest_size,
)
from agent.transport.durable_queue import DurableQueue, QueuedItem, QueueError
from agent.transport.mqtt_link import BrokerLimits, MqttLink
from agent.transport.protocol import ProtocolError, Receipt, Topics, status_payload
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


@dataclass
class _Transfer:
    """One capture on its way in chunks.

    Progress lives in memory only, on purpose: the receiver's chunks on disk are the truth.
    After every (re)connect or agent restart the manifest goes out again and the receiver's
    chunk status says what it holds, so nothing is sent twice that arrived, and nothing the
    broker acknowledged but lost is taken for delivered. Keeping it in the queue database
    would cost an fsync per chunk and still need that exchange.
    """

    item: QueuedItem
    manifest: Manifest
    #: Chunk indexes still to send, in order.
    pending: list[int] = field(default_factory=list)
    #: PUBLISH message id -> (chunk index, bytes) for chunks the broker has not acknowledged.
    inflight: dict[int, tuple[int, int]] = field(default_factory=dict)
    inflight_bytes: int = 0
    #: The manifest is out and the receiver's chunk status not yet in: send nothing.
    awaiting_status: bool = True
    last_progress: float = 0.0
    sent: int = 0

    @property
    def id(self) -> str:
        return self.item.id


class Publisher:
    def __init__(self, queue: DurableQueue, config: MqttConfig, topics: Topics,
                 status_fields: dict[str, Any], *, uplink: UplinkConfig | None = None,
                 state_dir: Path | None = None, on_event: EventSink | None = None) -> None:
        """``uplink``: chunking and cellular limits (default: chunk above 128 KiB, no limits);
        ``state_dir``: where the daily budget is kept; ``on_event``: EventBus.emit, for
        "quota_reached"."""
        self.queue = queue
        self.config = config
        self.uplink_config = uplink or UplinkConfig()
        self.uplink = Uplink.from_config(self.uplink_config, state_dir, on_event)
        self._transfer: _Transfer | None = None
        self._statuses: list[ChunkStatus] = []
        self.topics = topics
        self.status_fields = status_fields
        self.counters = PublisherCounters()
        self._window = config.inflight_window
        self._max_packet = 0
        self._inflight: OrderedDict[str, _InFlight] = OrderedDict()
        self._mid_to_id: dict[int, str] = {}
        self._cursor = 0  # highest seq offered on this connection
        self._rewind = False
        self._settled: list[str] = []
        self._refused: list[Receipt] = []
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
        self._cursor = 0
        # A chunked transfer starts again from its manifest; the receiver's status says
        # which chunks it already holds (see _Transfer).
        self._transfer = None
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
        if message.topic == self.topics.chunk_status:
            try:
                self._statuses.append(ChunkStatus.decode(message.payload))
            except ProtocolError as exc:
                log.warning("ignoring a malformed chunk status on %s: %s", message.topic, exc)
            return
        if message.topic != self.topics.receipts:
            return
        try:
            receipt = Receipt.decode(message.payload)
        except ProtocolError as exc:
            log.warning("ignoring a malformed receipt on %s: %s", message.topic, exc)
            return
        if receipt.settled:
            self._settled.append(receipt.id)
        else:
            self._refused.append(receipt)

    def on_puback(self, link: MqttLink, mid: int) -> None:
        if mid == self._offline_mid:
            self._offline_acked = True
            return
        transfer = self._transfer
        if transfer is not None and mid in transfer.inflight:
            _, size = transfer.inflight.pop(mid)
            transfer.inflight_bytes -= size
            transfer.last_progress = time.monotonic()
            if (self.config.ack_mode == "puback" and not transfer.pending and not transfer.inflight
                    and not transfer.awaiting_status):
                self._settled.append(transfer.id)  # puback mode: the broker has every chunk
            return
        item_id = self._mid_to_id.pop(mid, None)
        if item_id is not None and self.config.ack_mode == "puback":
            self._settled.append(item_id)

    def on_stopping(self, link: MqttLink) -> None:
        self.uplink.persist()
        self._offline_mid = link.publish(
            self.topics.status, status_payload("offline", **self.status_fields), qos=1, retain=True
        )
        if not link.flush(3.0, lambda: self._offline_acked):
            log.warning("offline status not confirmed by the broker; its last will covers it")

    # --- work ---------------------------------------------------------------------------

    def tick(self, link: MqttLink) -> bool:
        if self._rewind:
            self._rewind, self._cursor = False, 0
        busy = self._settle()
        self._apply_statuses(link)
        busy |= self._fill_window(link)
        busy |= self._pump_chunks(link)
        self._resend_overdue(link)
        self.queue.erase_if_due()
        return busy

    def _settle(self) -> bool:
        if not (self._settled or self._refused):
            return False
        settled, self._settled = self._settled, []
        try:
            deleted = self.queue.ack(settled)
        except QueueError as exc:
            # Keep them for the next turn: nothing is lost, the receiver de-duplicates.
            self._settled = settled + self._settled
            self._warn_once(f"cannot record receipts yet: {exc}")
            return False
        for item_id in settled:
            self._inflight.pop(item_id, None)
            self._end_transfer(item_id)
        self.counters.acknowledged += deleted
        refused, self._refused = self._refused, []
        for receipt in refused:
            self._inflight.pop(receipt.id, None)
            self._end_transfer(receipt.id)
            self.queue.reject(receipt.id, f"rejected by {receipt.receiver}: {receipt.reason}")
            self.counters.rejected += 1
            log.error("capture %s rejected by the central side (%s): %s; kept in the queue as "
                      "'rejected' for support", receipt.id, receipt.receiver, receipt.reason)
        return True

    def _fill_window(self, link: MqttLink) -> bool:
        room = self._window - len(self._inflight)
        if room <= 0:
            return False
        batch = self.queue.next_batch(self._cursor, room)
        if not batch:
            return False
        sent: list[int] = []
        for item in batch:
            # After a rewind the batch may hold captures already in flight: not twice.
            if item.id not in self._inflight:
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
        try:
            self.queue.mark_sent(sent)
        except QueueError as exc:  # only statistics are lost; the captures are on their way
            self._warn_once(f"cannot count send attempts: {exc}")
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
            chunk_size = chunk_size_for(self._max_packet, self.topics.chunks, self.uplink_config.chunk_bytes,
                                        len(item.payload), PUBLISH_OVERHEAD)
            if chunk_size is not None and manifest_size(len(item.payload), chunk_size) > self._max_packet:
                raise ValueError(f"its chunk manifest would exceed the broker's maximum packet size of "
                                 f"{self._max_packet:,} bytes")
        except ValueError as exc:
            # Fail loudly and keep the capture for support; the broker's limit is far too small.
            log.error("capture %s (%d bytes) cannot be sent: %s; kept in the queue as 'rejected'",
                      item.id, len(item.payload), exc)
            self.queue.reject(item.id, str(exc))
            self.counters.rejected += 1
            return "rejected"
        if chunk_size is not None:
            if self._transfer is not None:
                return "wait"  # one chunked transfer at a time: bounded memory, simple resume
            manifest = make_manifest(item.id, self.topics.kiosk_id, item.seq, item.kind, item.payload,
                                     chunk_size)
            transfer = _Transfer(item, manifest)
            if not self._send_manifest(link, transfer):
                return "wait"
            self._transfer = transfer
            self._inflight[item.id] = _InFlight(item.seq, -1, time.monotonic())
            self.counters.transfers += 1
            log.info("capture %s (%d bytes) goes in %d chunks of up to %d bytes", item.id,
                     manifest.size, manifest.count, chunk_size)
            return "sent"
        if not self.uplink.try_send(len(item.payload) + len(self._topic(item)) + PUBLISH_OVERHEAD):
            return "wait"
        return "sent" if self._send(link, item) else "rejected"

    def _send(self, link: MqttLink, item: QueuedItem) -> bool:
        mid = link.publish(self._topic(item), item.payload, qos=1)
        self._mid_to_id[mid] = item.id
        self._inflight[item.id] = _InFlight(item.seq, mid, time.monotonic())
        return True

    def _resend_overdue(self, link: MqttLink) -> None:
        if self.config.ack_mode != "receipt" or not self._inflight:
            return
        self._transfer_overdue(link)
        now = time.monotonic()
        oldest_id, oldest = next(iter(self._inflight.items()))
        if now - oldest.sent_at < self.config.receipt_timeout_s:
            return
        if self._transfer is not None and oldest_id == self._transfer.id:
            # Its clock is the transfer's progress (_transfer_overdue), not its first send.
            self._inflight.move_to_end(oldest_id)
            oldest.sent_at = now
            return
        item = self.queue.get(oldest_id)
        if item is None:  # acknowledged meanwhile
            del self._inflight[oldest_id]
            return
        if not self.uplink.try_send(len(item.payload) + len(self._topic(item)) + PUBLISH_OVERHEAD):
            return  # held by the cap, the budget or a closed window: the resend waits too
        del self._inflight[oldest_id]
        log.info("no receipt for capture %s after %.0f s; sending it again",
                 oldest_id, self.config.receipt_timeout_s)
        if self._send(link, item):
            self.queue.mark_sent([item.seq])
            self.counters.republished += 1

    # --- chunked transfers ------------------------------------------------------------------

    def _send_manifest(self, link: MqttLink, transfer: _Transfer) -> bool:
        payload = transfer.manifest.encode()
        if not self.uplink.try_send(len(payload) + len(self.topics.chunks) + PUBLISH_OVERHEAD):
            return False
        link.publish(self.topics.chunks, payload, qos=1)
        self.counters.manifests_sent += 1
        transfer.pending = []
        # Under puback mode no receiver answers: send every chunk straight away.
        transfer.awaiting_status = self.config.ack_mode == "receipt"
        if not transfer.awaiting_status:
            transfer.pending = list(range(transfer.manifest.count))
        transfer.last_progress = time.monotonic()
        return True

    def _end_transfer(self, item_id: str) -> None:
        if self._transfer is not None and self._transfer.id == item_id:
            self._transfer = None

    def _apply_statuses(self, link: MqttLink) -> None:
        statuses, self._statuses = self._statuses, []
        for status in statuses:
            transfer = self._transfer
            if transfer is None or (status.id, status.sha256) != (transfer.id, transfer.manifest.sha256):
                continue  # for a transfer already finished or superseded
            transfer.last_progress = time.monotonic()
            in_flight = {index for index, _ in transfer.inflight.values()}
            if status.state == "unknown":
                # The receiver has no manifest for chunks we sent (it lost its state or
                # another receiver holds it): announce the transfer again.
                self._send_manifest(link, transfer)
            elif status.state == "complete":
                transfer.pending, transfer.awaiting_status = [], False  # the receipt follows
            elif transfer.awaiting_status:
                missing = set(range(transfer.manifest.count)) - status.have - in_flight
                transfer.pending = sorted(missing | (status.bad - in_flight))
                transfer.awaiting_status = False
                log.info("capture %s: the receiver holds %d of %d chunks; sending %d", transfer.id,
                         len(status.have), transfer.manifest.count, len(transfer.pending))
            if status.bad:
                # A chunk that failed its hash is sent again at once, never taken as delivered.
                again = sorted(status.bad - in_flight - set(transfer.pending))
                transfer.pending = again + transfer.pending
                self.counters.chunks_rerequested += len(status.bad)
                log.warning("capture %s: the receiver found chunk(s) %s corrupted; sending them again",
                            transfer.id, sorted(status.bad))

    def _pump_chunks(self, link: MqttLink) -> bool:
        transfer = self._transfer
        if transfer is None or transfer.awaiting_status or not transfer.pending:
            return False
        limit = self.uplink_config.inflight_bytes
        budget = CHUNK_BYTES_PER_TURN
        sent = 0
        while transfer.pending and budget > 0:
            chunk = chunk_of(transfer.manifest, transfer.item.payload, transfer.pending[0])
            payload = chunk.encode()
            # Always let one chunk go when none is in flight, whatever its size.
            if transfer.inflight and transfer.inflight_bytes + len(payload) > limit:
                break
            if not self.uplink.try_send(len(payload) + len(self.topics.chunks) + PUBLISH_OVERHEAD):
                break
            mid = link.publish(self.topics.chunks, payload, qos=1)
            transfer.pending.pop(0)
            transfer.inflight[mid] = (chunk.index, len(payload))
            transfer.inflight_bytes += len(payload)
            transfer.sent += 1
            self.counters.chunks_sent += 1
            budget -= len(payload)
            sent += 1
        if sent:
            transfer.last_progress = time.monotonic()
        return sent > 0

    def _transfer_overdue(self, link: MqttLink) -> None:
        """Everything sent and no receipt for a while (or no status after the manifest):
        ask again with the manifest; the status names what is missing."""
        transfer = self._transfer
        if transfer is None or transfer.pending or transfer.inflight:
            return
        if time.monotonic() - transfer.last_progress < self.config.receipt_timeout_s:
            return
        log.info("capture %s: no %s after %.0f s; sending its manifest again", transfer.id,
                 "chunk status" if transfer.awaiting_status else "receipt", self.config.receipt_timeout_s)
        if self._send_manifest(link, transfer):
            self.counters.republished += 1

    def rewind(self) -> None:
        """Offer the queue again from its oldest item (items put back by queue.retry).

        Any thread may call it; the link's thread applies it at its next turn."""
        self._rewind = True

    @property
    def inflight(self) -> int:
        return len(self._inflight)
