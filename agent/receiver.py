"""The reference receiver: the central side's end of the protocol.

It subscribes to every kiosk's captures (through an MQTT 5 shared subscription, so several
receivers split a fleet's load), verifies each envelope, files it in a CaptureStore and only
then publishes the receipt that lets the kiosk delete its copy. A capture seen twice is
stored once and receipted again. It is the executable contract for the matching service.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

import paho.mqtt.client as mqtt

from agent.config import ConfigError, ReceiverServiceConfig
from agent.keys import KeyFileError, load_decryption_key, load_kiosk_keys
from agent.mqtt_link import BrokerLimits, MqttLink
from agent.protocol import ProtocolError, Receipt, Topics, decode_capture
from agent.receiver_store import CaptureStore
from agent.registration_assembly import RegistrationAssembler, parse_manifest
from agent.sealing import Opener, SealError

log = logging.getLogger(__name__)


@dataclass
class ReceiverCounters:
    stored: int = 0
    duplicates: int = 0
    rejected: int = 0
    unreadable: int = 0
    #: Envelopes whose signature did not verify (forged, tampered, unknown kiosk): no receipt.
    unauthenticated: int = 0

#: An unknown kiosk makes the receiver re-read the enrolled keys, at most this often.
KEY_RELOAD_INTERVAL_S = 10.0


class Receiver:
    def __init__(self, config: ReceiverServiceConfig) -> None:
        rc = config.receiver
        self.config = config
        self.store = CaptureStore(rc.output_dir)
        from agent.formats.ansi_nist import TransactionOptions

        self.registrations = RegistrationAssembler(self.store, TransactionOptions.from_config(config.formats))
        self.topics = Topics(config.mqtt.topic_prefix, rc.kiosk_filter)
        self.counters = ReceiverCounters()
        try:
            self.opener = Opener(load_decryption_key(rc.central_private_key),
                                 load_kiosk_keys(rc.kiosk_keys_dir))
        except KeyFileError as exc:
            raise ConfigError("receiver", [str(exc)]) from None
        self._keys_loaded_at = time.monotonic()
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
            header, inner = self._open(payload)
            if header.kiosk_id != kiosk_id:
                raise SealError(f"sealed for kiosk {header.kiosk_id!r} but sent on {kiosk_id!r}'s topic",
                                header.id, header.kiosk_id)
        except SealError as exc:
            # Not provably from the kiosk: report it, store nothing, and send no receipt, so a
            # forger cannot make a kiosk set its genuine capture aside.
            with self._lock:
                self.counters.unauthenticated += 1
            log.error("rejected an envelope on kiosk %s's topic (id %s): %s", kiosk_id,
                      exc.item_id or "unreadable", exc)
            return None
        if header.kind == "registration":
            return self._handle_manifest(kiosk_id, header.id, inner)
        try:
            record = decode_capture(inner)
            if (record.id, record.kiosk_id, record.seq) != (header.id, header.kiosk_id, header.seq):
                raise ProtocolError("the signed capture does not match its envelope's routing header",
                                    header.id)
        except ProtocolError as exc:
            # Authentic but unusable: tell the kiosk, which keeps it aside for support.
            with self._lock:
                self.counters.rejected += 1
            log.error("rejected capture %s from kiosk %s: %s", header.id, kiosk_id, exc)
            return Receipt(header.id, "rejected", name, str(exc))
        outcome = self.store.store(record)
        with self._lock:
            if outcome == "stored":
                self.counters.stored += 1
            else:
                self.counters.duplicates += 1
        log.debug("capture %s from %s: %s", record.id, kiosk_id, outcome)
        self._assemble(lambda: self.registrations.on_capture(record), record.id)
        return Receipt(record.id, outcome, name)

    def _handle_manifest(self, kiosk_id: str, item_id: str, inner: bytes) -> Receipt:
        name = self.config.receiver.name
        try:
            manifest = parse_manifest(inner, item_id, kiosk_id)
        except ProtocolError as exc:
            with self._lock:
                self.counters.rejected += 1
            log.error("rejected registration manifest %s from kiosk %s: %s", item_id, kiosk_id, exc)
            return Receipt(item_id, "rejected", name, str(exc))
        outcome = self.registrations.store_manifest(kiosk_id, manifest)
        self._assemble(lambda: self.registrations.try_complete(kiosk_id, item_id), item_id)
        return Receipt(item_id, outcome, name)

    def _assemble(self, step, item_id: str) -> None:  # type: ignore[no-untyped-def]
        # Assembling a registration must never cost a capture its receipt.
        try:
            step()
        except Exception:
            log.exception("registration bookkeeping failed for %s; it is retried when the next part "
                          "of that registration arrives", item_id)

    def _open(self, payload: bytes):  # type: ignore[no-untyped-def]
        try:
            return self.opener.open(payload)
        except SealError as exc:
            if "not enrolled" not in str(exc) or not self._reload_kiosk_keys():
                raise
        return self.opener.open(payload)

    def _reload_kiosk_keys(self) -> bool:
        """Pick up kiosks enrolled since start; rate-limited against floods of unknown ids."""
        if time.monotonic() - self._keys_loaded_at < KEY_RELOAD_INTERVAL_S:
            return False
        self._keys_loaded_at = time.monotonic()
        try:
            self.opener.kiosk_keys = load_kiosk_keys(self.config.receiver.kiosk_keys_dir)
        except KeyFileError as exc:
            log.error("cannot reload enrolled kiosk keys: %s", exc)
            return False
        return True
