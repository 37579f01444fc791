"""The reference receiver: the central side's end of the protocol.

It subscribes to every kiosk's captures (through an MQTT 5 shared subscription, so several
receivers split a fleet's load), verifies each envelope, files it in a CaptureStore and only
then publishes the receipt that lets the kiosk delete its copy. A capture seen twice is
stored once and receipted again. It is the executable contract for the matching service.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

import paho.mqtt.client as mqtt

from agent.config import ReceiverServiceConfig
from agent.mqtt_link import BrokerLimits, MqttLink
from agent.protocol import ProtocolError, Receipt, Topics, decode_capture
from agent.receiver_store import CaptureStore

log = logging.getLogger(__name__)


@dataclass
class ReceiverCounters:
    stored: int = 0
    duplicates: int = 0
    rejected: int = 0
    unreadable: int = 0


class Receiver:
    def __init__(self, config: ReceiverServiceConfig) -> None:
        rc = config.receiver
        self.config = config
        self.store = CaptureStore(rc.output_dir)
        self.topics = Topics(config.mqtt.topic_prefix, rc.kiosk_filter)
        self.counters = ReceiverCounters()
        self._lock = threading.Lock()  # counters are read by other threads (demo, tests)
        self.link = MqttLink(config.mqtt, self, client_id=config.client_id(), name=f"receiver-{rc.name}")

    def start(self) -> None:
        self.link.start()

    def stop(self) -> None:
        self.link.stop()

    @property
    def subscription(self) -> str:
        topic = self.topics.captures
        if self.link.v5:
            return f"$share/{self.config.receiver.share_group}/{topic}"
        return topic

    # --- link handler -------------------------------------------------------------------

    def on_connected(self, link: MqttLink, limits: BrokerLimits) -> None:
        link.subscribe(self.subscription, qos=1)
        log.info("receiver %s subscribed to %s, storing under %s", self.config.receiver.name,
                 self.subscription, self.store.root)

    def on_disconnected(self, link: MqttLink) -> None:
        pass  # nothing to reset: every message is handled to the end when it arrives

    def on_puback(self, link: MqttLink, mid: int) -> None:
        pass  # receipts are fire-and-forget at QoS 1; a lost one is replaced on redelivery

    def on_stopping(self, link: MqttLink) -> None:
        pass

    def tick(self, link: MqttLink) -> bool:
        return False

    def on_message(self, link: MqttLink, message: mqtt.MQTTMessage) -> None:
        try:
            kiosk_id = self.topics.kiosk_of(message.topic)
        except ProtocolError as exc:
            log.error("message on unexpected topic: %s", exc)
            return
        receipt = self._handle(kiosk_id, message.payload)
        if receipt is not None:
            reply_to = Topics(self.topics.prefix, kiosk_id).receipts
            link.publish(reply_to, receipt.encode(), qos=1)

    def _handle(self, kiosk_id: str, payload: bytes) -> Receipt | None:
        name = self.config.receiver.name
        try:
            record = decode_capture(payload)
            if record.kiosk_id != kiosk_id:
                raise ProtocolError(f"kiosk id {record.kiosk_id!r} in the header does not match "
                                    f"the topic's {kiosk_id!r}", record.id)
        except ProtocolError as exc:
            if exc.item_id is None:
                with self._lock:
                    self.counters.unreadable += 1
                log.error("unreadable capture from kiosk %s (no receipt possible): %s", kiosk_id, exc)
                return None
            with self._lock:
                self.counters.rejected += 1
            log.error("rejected capture %s from kiosk %s: %s", exc.item_id, kiosk_id, exc)
            return Receipt(exc.item_id, "rejected", name, str(exc))
        outcome = self.store.store(record)
        with self._lock:
            if outcome == "stored":
                self.counters.stored += 1
            else:
                self.counters.duplicates += 1
        log.debug("capture %s from %s: %s", record.id, kiosk_id, outcome)
        return Receipt(record.id, outcome, name)
