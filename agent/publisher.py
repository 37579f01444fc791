"""Feeds captures from the durable queue to the broker and deletes them on acknowledgement.

The queue is the source of truth; paho only ever holds a small window of in-flight
captures. In ``receipt`` mode a capture stays in flight until the central side's receipt
for its id arrives; in ``puback`` mode until the broker's PUBACK. After a reconnect
everything unacknowledged is offered again from the oldest, so delivery is at-least-once
and the receiver de-duplicates by capture id.

All methods run on the MQTT link's thread (agent/mqtt_link.py).
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt

from agent.config import MqttConfig
from agent.durable_queue import DurableQueue, QueuedItem, QueueError
from agent.mqtt_link import BrokerLimits, MqttLink
from agent.protocol import ProtocolError, Receipt, Topics, status_payload

log = logging.getLogger(__name__)

#: Bytes a PUBLISH adds around topic and payload (fixed header, lengths, id, properties).
PUBLISH_OVERHEAD = 16
#: Registration manifests travel with the captures: one subscription, one ordered stream.
KIND_TOPIC = {"capture": "captures", "registration": "captures"}


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


class Publisher:
    def __init__(self, queue: DurableQueue, config: MqttConfig, topics: Topics,
                 status_fields: dict[str, Any]) -> None:
        self.queue = queue
        self.config = config
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
        if self.config.ack_mode == "receipt":
            link.subscribe(self.topics.receipts, qos=1)
        link.publish(self.topics.status, status_payload("online", **self.status_fields),
                     qos=1, retain=True)

    def on_disconnected(self, link: MqttLink) -> None:
        log.info("broker connection lost; %d captures in flight will be offered again",
                 len(self._inflight))

    def on_message(self, link: MqttLink, message: mqtt.MQTTMessage) -> None:
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
        item_id = self._mid_to_id.pop(mid, None)
        if item_id is not None and self.config.ack_mode == "puback":
            self._settled.append(item_id)

    def on_stopping(self, link: MqttLink) -> None:
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
        busy |= self._fill_window(link)
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
        self.counters.acknowledged += deleted
        refused, self._refused = self._refused, []
        for receipt in refused:
            self._inflight.pop(receipt.id, None)
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
        # After a rewind the batch may hold captures already in flight: not twice.
        sent = [item.seq for item in batch if item.id not in self._inflight and self._send(link, item)]
        self._cursor = batch[-1].seq
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

    def _send(self, link: MqttLink, item: QueuedItem) -> bool:
        topic = f"{self.topics.prefix}/{self.topics.kiosk_id}/{KIND_TOPIC.get(item.kind, item.kind)}"
        size = len(item.payload) + len(topic) + PUBLISH_OVERHEAD
        if size > self._max_packet:
            # Fail loudly and keep the capture: chunked transfer will send it later.
            reason = (f"{size:,} bytes exceeds the broker's maximum packet size of "
                      f"{self._max_packet:,} bytes")
            log.error("capture %s cannot be sent: %s; kept in the queue as 'rejected'",
                      item.id, reason)
            self.queue.reject(item.id, reason)
            self.counters.rejected += 1
            return False
        mid = link.publish(topic, item.payload, qos=1)
        self._mid_to_id[mid] = item.id
        self._inflight[item.id] = _InFlight(item.seq, mid, time.monotonic())
        return True

    def _resend_overdue(self, link: MqttLink) -> None:
        if self.config.ack_mode != "receipt" or not self._inflight:
            return
        now = time.monotonic()
        oldest_id, oldest = next(iter(self._inflight.items()))
        if now - oldest.sent_at < self.config.receipt_timeout_s:
            return
        item = self.queue.get(oldest_id)
        del self._inflight[oldest_id]
        if item is None:  # acknowledged meanwhile
            return
        log.info("no receipt for capture %s after %.0f s; sending it again",
                 oldest_id, self.config.receipt_timeout_s)
        if self._send(link, item):
            self.queue.mark_sent([item.seq])
            self.counters.republished += 1

    def rewind(self) -> None:
        """Offer the queue again from its oldest item (items put back by queue.retry).

        Any thread may call it; the link's thread applies it at its next turn."""
        self._rewind = True

    @property
    def inflight(self) -> int:
        return len(self._inflight)
