"""The reference receiver: the central side's end of the protocol.

It subscribes to every kiosk's captures (through an MQTT 5 shared subscription, so several
receivers split a fleet's load), verifies each envelope, files it in a CaptureStore and only
then publishes the receipt that lets the kiosk delete its copy. A capture seen twice is
stored once and receipted again. It is the executable contract for the matching service.

Captures too large for one message arrive in chunks on ``<prefix>/<kiosk>/chunks``: the
receiver answers each manifest with the chunks it already holds (``chunk-status``), keeps
verified chunks on disk (ChunkAssembly), and hands the reassembled, verified envelope to
the same path as a single-message capture, receipt included.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

import paho.mqtt.client as mqtt

from agent.config import ConfigError
from agent.guard import log_and_continue
from agent.security.keys import KeyFileError, load_decryption_key, load_kiosk_keys
from agent.security.sealing import Opener, SealError
from agent.transport.chunking import CHUNK_MAGIC, MANIFEST_MAGIC, Chunk, ChunkStatus, Manifest, chunk_ok
from agent.transport.mqtt_link import BrokerLimits, MqttLink
from agent.transport.protocol import ProtocolError, Receipt, Topics, decode_capture
from receiver.assembly import RegistrationAssembler, parse_manifest
from receiver.config import ReceiverServiceConfig
from receiver.store import CaptureStore, ChunkAssembly

log = logging.getLogger(__name__)


@dataclass
class ReceiverCounters:
    stored: int = 0
    duplicates: int = 0
    rejected: int = 0
    unreadable: int = 0
    #: Envelopes whose signature did not verify (forged, tampered, unknown kiosk): no receipt.
    unauthenticated: int = 0
    #: Chunked transfers: manifests seen, chunks stored, chunks that failed their hash
    #: (re-requested, never stored), chunks received twice, items reassembled.
    manifests: int = 0
    chunks_received: int = 0
    chunks_corrupt: int = 0
    chunks_duplicate: int = 0
    reassembled: int = 0

#: An unknown kiosk makes the receiver re-read the enrolled keys, at most this often.
KEY_RELOAD_INTERVAL_S = 10.0


class Receiver:
    def __init__(self, config: ReceiverServiceConfig) -> None:
        rc = config.receiver
        self.config = config
        self.store = CaptureStore(rc.output_dir)
        self.chunks = ChunkAssembly(rc.output_dir)
        self.chunks.sweep()
        self._unknown_answered: dict[tuple[str, str], float] = {}
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

    @property
    def chunk_subscription(self) -> str:
        topic = self.topics.chunks
        if self.link.v5:
            return f"$share/{self.config.receiver.share_group}/{topic}"
        return topic

    def on_connected(self, link: MqttLink, limits: BrokerLimits) -> None:
        link.subscribe(self.subscription, qos=1)
        link.subscribe(self.chunk_subscription, qos=1)
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
        if message.topic.rsplit("/", 1)[-1] == "chunks":
            self._on_chunks(link, kiosk_id, message.payload)
            return
        receipt = self._handle(kiosk_id, message.payload)
        if receipt is not None:
            reply_to = Topics(self.topics.prefix, kiosk_id).receipts
            link.publish(reply_to, receipt.encode(), qos=1)

    # --- chunked transfers ----------------------------------------------------------------

    def _on_chunks(self, link: MqttLink, kiosk_id: str, payload: bytes) -> None:
        try:
            if payload[:3] == MANIFEST_MAGIC:
                self._on_manifest(link, kiosk_id, payload)
            elif payload[:3] == CHUNK_MAGIC:
                self._on_chunk(link, kiosk_id, Chunk.decode(payload))
            else:
                raise ProtocolError("neither a chunk manifest nor a chunk (bad magic)")
        except ProtocolError as exc:
            # Unreadable: nothing is stored and nothing answered (as for a bad envelope).
            with self._lock:
                self.counters.unreadable += 1
            log.error("ignored a message on kiosk %s's chunks topic: %s", kiosk_id, exc)

    def _send_status(self, link: MqttLink, kiosk_id: str, status: ChunkStatus) -> None:
        link.publish(Topics(self.topics.prefix, kiosk_id).chunk_status, status.encode(), qos=1)

    def _status(self, kiosk_id: str, manifest: Manifest, bad: set[int] | None = None) -> ChunkStatus:
        return ChunkStatus(manifest.id, manifest.sha256, "partial", manifest.count,
                           frozenset(self.chunks.held(kiosk_id, manifest)), frozenset(bad or ()),
                           self.config.receiver.name)

    def _on_manifest(self, link: MqttLink, kiosk_id: str, payload: bytes) -> None:
        manifest = Manifest.decode(payload)
        if manifest.kiosk_id != kiosk_id:
            raise ProtocolError(f"manifest for kiosk {manifest.kiosk_id!r} sent on {kiosk_id!r}'s topic")
        with self._lock:
            self.counters.manifests += 1
        done = self.chunks.done_receipt(kiosk_id, manifest.id, manifest.sha256)
        if done is not None:
            # Stored already; the kiosk missed the receipt: both again, no chunk needed.
            self._send_status(link, kiosk_id, ChunkStatus(manifest.id, manifest.sha256, "complete",
                                                          manifest.count, receiver=self.config.receiver.name))
            link.publish(Topics(self.topics.prefix, kiosk_id).receipts, done, qos=1)
            return
        self.chunks.begin(kiosk_id, manifest, payload)
        if len(self.chunks.held(kiosk_id, manifest)) == manifest.count:
            self._complete(link, kiosk_id, manifest)  # every chunk came before a restart
            return
        self._send_status(link, kiosk_id, self._status(kiosk_id, manifest))

    def _on_chunk(self, link: MqttLink, kiosk_id: str, chunk: Chunk) -> None:
        if chunk.kiosk_id != kiosk_id:
            raise ProtocolError(f"chunk for kiosk {chunk.kiosk_id!r} sent on {kiosk_id!r}'s topic")
        manifest = self.chunks.manifest(kiosk_id, chunk.id, chunk.sha256)
        if manifest is None:
            if self.chunks.done_receipt(kiosk_id, chunk.id, chunk.sha256) is not None:
                with self._lock:
                    self.counters.chunks_duplicate += 1
                return
            # No manifest (never seen, or swept): ask for it, once per transfer and second.
            key, now = (kiosk_id, chunk.id), time.monotonic()
            if now - self._unknown_answered.get(key, -10.0) >= 1.0:
                self._unknown_answered = {k: t for k, t in self._unknown_answered.items() if now - t < 60}
                self._unknown_answered[key] = now
                self._send_status(link, kiosk_id, ChunkStatus(
                    chunk.id, chunk.sha256, "unknown", chunk.count, receiver=self.config.receiver.name))
            return
        if not chunk_ok(manifest, chunk):
            # Never stored as good: the kiosk sends it again at once.
            with self._lock:
                self.counters.chunks_corrupt += 1
            log.warning("chunk %d of %s from kiosk %s failed its SHA-256; asking for it again",
                        chunk.index, chunk.id, kiosk_id)
            self._send_status(link, kiosk_id, self._status(kiosk_id, manifest, {chunk.index}))
            return
        held = self.chunks.held(kiosk_id, manifest)
        if chunk.index in held:
            with self._lock:
                self.counters.chunks_duplicate += 1
            return
        self.chunks.put(kiosk_id, manifest, chunk)
        with self._lock:
            self.counters.chunks_received += 1
        if len(held) + 1 == manifest.count:
            self._complete(link, kiosk_id, manifest)

    def _complete(self, link: MqttLink, kiosk_id: str, manifest: Manifest) -> None:
        payload, bad = self.chunks.assemble(kiosk_id, manifest)
        if payload is None and not bad:
            log.error("transfer %s from kiosk %s: its chunks match their digests but not the manifest's "
                      "total SHA-256; discarded (a faulty or forged manifest)", manifest.id, kiosk_id)
            return
        if payload is None:
            with self._lock:
                self.counters.chunks_corrupt += len(bad)
            log.error("transfer %s from kiosk %s: chunk(s) %s damaged on disk; asking for them again",
                      manifest.id, kiosk_id, sorted(bad))
            self._send_status(link, kiosk_id, self._status(kiosk_id, manifest, bad))
            return
        receipt = self._handle(kiosk_id, payload)
        if receipt is None or receipt.id != manifest.id:
            # Not authentic, or not the item its manifest named: keep nothing, answer nothing.
            log.error("transfer %s from kiosk %s: the reassembled envelope was not accepted; discarded",
                      manifest.id, kiosk_id)
            self.chunks.discard(kiosk_id, manifest)
            return
        encoded = receipt.encode()
        self.chunks.finish(kiosk_id, manifest, encoded)
        with self._lock:
            self.counters.reassembled += 1
        log.info("capture %s from %s reassembled from %d chunks: %s", manifest.id, kiosk_id,
                 manifest.count, receipt.status)
        link.publish(Topics(self.topics.prefix, kiosk_id).receipts, encoded, qos=1)

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
        with log_and_continue(log, "registration bookkeeping failed for %s; it is retried when the "
                                   "next part of that registration arrives", item_id):
            step()

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
