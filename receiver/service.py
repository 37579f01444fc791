"""The reference receiver: the central side's end of the protocol.

It subscribes to every kiosk's captures (through an MQTT 5 shared subscription, so several
receivers split a fleet's load), verifies each envelope, files it in the configured store
(receiver/storage/: files, or PostgreSQL with group commit) and only once that is durable
(receiver/group_commit.py) publishes the receipt that lets the kiosk delete its copy. A
capture seen twice is stored once and receipted again. It is the executable contract for
the matching service.

Captures too large for one message arrive in chunks on ``<prefix>/<kiosk>/chunks``: the
receiver answers each manifest with the chunks it already holds (``chunk-status``), keeps
verified chunks on disk (ChunkAssembly), and hands the reassembled, verified envelope to
the same path as a single-message capture, receipt included. A manifest is accepted only
when the kiosk's enrolled key signed it. Every receipt is signed with the central
receipt-signing key and names the bytes received and the kiosk's send (receiver/receipting.py).

Storage is the receiver's to defend: a capture is filed under the kiosk whose enrolled key
verified it, every id passes receiver/paths.py before it names a file, nothing stored is
overwritten, and what is refused for those reasons is answered ``rejected`` and counted
and logged as a security event. Chunks are kept only for enrolled kiosks and within a
per-kiosk quota. A registration manifest assembly could not build is refused on arrival
(receiver/manifest_rules.py), and so is one over the kiosk's cap (receiver/unfinished.py); a
failed assembly is retried from the loop (``tick``) within a time budget. Where each
registration stands goes back to its kiosk, signed (receiver/status.py), also on its query.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from dataclasses import replace

import paho.mqtt.client as mqtt

from agent.config import ConfigError
from agent.security.keys import KeyFileError, load_decryption_key, load_kiosk_keys, load_receipt_signing_key
from agent.security.sealing import Opener, SealError
from agent.transport.chunking import CHUNK_MAGIC, MANIFEST_MAGIC, Chunk, ChunkStatus, Manifest
from agent.transport.mqtt_link import BrokerLimits, MqttLink
from agent.transport.protocol import ProtocolError, Topics, decode_capture, open_send
from agent.transport.receipts import Receipt
from receiver.assembly import HostileManifest, RegistrationAssembler, parse_manifest
from receiver.chunks import ChunkAssembly, OverQuota, Transfer
from receiver.config import ReceiverServiceConfig
from receiver.counters import ReceiverCounters
from receiver.group_commit import GroupCommit, GroupCommitLimits
from receiver.paths import UnsafeName, check_item_id
from receiver.query_budget import QueryBudget
from receiver.receipting import Receipts
from receiver.retries import RegistrationFinisher
from receiver.status import StatusReporter
from receiver.storage import StoreUnavailable, open_store
from receiver.warnings_limit import LimitedWarnings, OncePerInterval, PerSecondBudget

log = logging.getLogger(__name__)


#: An unknown kiosk makes the receiver re-read the enrolled keys, at most this often.
KEY_RELOAD_INTERVAL_S = 10.0
#: Stale chunk state is swept at start and then this often.
SWEEP_INTERVAL_S = 3600.0
#: A chunk status answers a bad chunk, or a chunk of an unknown transfer, at most this often
#: per transfer: each answer is a message to the kiosk, and a status of a large transfer costs
#: O(chunks held) to build, so anyone on the broker could make every cheap message dear.
STATUS_INTERVAL_S = 1.0
#: At most this many "unknown" answers a second per kiosk (fresh transfer ids are free; a
#: genuine kiosk runs one transfer at a time) and this many transfers remembered.
UNKNOWN_PER_KIOSK_PER_S = 10
STATUS_GATE_KEYS = 4096


class Receiver:
    def __init__(self, config: ReceiverServiceConfig) -> None:
        rc = config.receiver
        self.config = config
        self.store = open_store(rc.store, rc.output_dir, rc.name)
        self.batch = GroupCommit(self.store, GroupCommitLimits(rc.group_commit_ms / 1000, rc.group_commit_max,
                                                               rc.group_commit_max_bytes))
        self.chunks = ChunkAssembly(rc.output_dir, rc.chunk_quota_bytes)
        self.chunks.sweep()
        self.chunks.rebuild()
        self._swept_at = time.monotonic()
        self._unknown_answered = OncePerInterval(STATUS_INTERVAL_S, STATUS_GATE_KEYS)
        self._unknown_budget = PerSecondBudget(UNKNOWN_PER_KIOSK_PER_S)
        self._bad_answered = OncePerInterval(STATUS_INTERVAL_S, STATUS_GATE_KEYS)
        # Every line a message from the broker can cause goes through here: one line per junk
        # message let any broker client flood the log.
        self.warnings = LimitedWarnings(log)
        from agent.formats.ansi_nist import TransactionOptions

        self.registrations = RegistrationAssembler(self.store, TransactionOptions.from_config(config.formats))
        self.topics = Topics(config.mqtt.topic_prefix, rc.kiosk_filter)
        self.counters = ReceiverCounters()
        try:
            self.opener = Opener(load_decryption_key(rc.central_private_key),
                                 load_kiosk_keys(rc.kiosk_keys_dir))
            self.receipts = Receipts(load_receipt_signing_key(rc.receipt_key), config.mqtt.topic_prefix)
        except KeyFileError as exc:
            raise ConfigError("receiver", [str(exc)]) from None
        self._keys_loaded_at = time.monotonic()
        self._lock = threading.Lock()  # counters are read by other threads (demo, tests)
        self.reporter = StatusReporter(self.registrations, self.receipts.signer, self.topics.prefix,
                                       rc.incomplete_after_s)
        self._query_budget = QueryBudget(rc.query_answers_per_s)
        self.finisher = RegistrationFinisher(self.registrations, rc.assembly_retry_s, rc.assembly_retry_max_s,
                                             self._count, self.reporter, rc.max_unfinished_registrations,
                                             rc.assembly_tick_budget_ms / 1000)
        # A committed batch releases up to group_commit_max receipts at once: a smaller paho
        # in-flight window would trickle them out at one broker round trip per window.
        mqtt_config = config.mqtt.model_copy(update={"inflight_window": min(1000, max(
            config.mqtt.inflight_window, rc.group_commit_max if self.store.batched else 0))})
        self.link = MqttLink(mqtt_config, self, client_id=config.client_id(), name=f"receiver-{rc.name}")
        self.reporter.publish = self.link.publish

    def start(self) -> None:
        self.link.start()

    def stop(self) -> None:
        self.link.stop()
        self.store.close()  # an open batch was never receipted: rolled back, sent again

    def shared(self, topic: str) -> str:
        """``topic`` as this receiver subscribes to it: shared with its group under MQTT 5."""
        return f"$share/{self.config.receiver.share_group}/{topic}" if self.link.v5 else topic

    # --- link handler -------------------------------------------------------------------

    def on_connected(self, link: MqttLink, limits: BrokerLimits) -> None:
        for topic in (self.topics.captures, self.topics.chunks, self.topics.registration_query):
            link.subscribe(self.shared(topic), qos=1)
        log.info("receiver %s subscribed to %s, storing under %s", self.config.receiver.name,
                 self.shared(self.topics.captures), self.store.root)

    # Nothing to reset on a disconnect (every message is handled to the end when it arrives);
    # receipts are fire-and-forget at QoS 1 (a lost one is replaced on redelivery).
    def on_disconnected(self, link: MqttLink) -> None: ...
    def on_puback(self, link: MqttLink, mid: int) -> None: ...
    def on_stopping(self, link: MqttLink) -> None: ...

    def tick(self, link: MqttLink) -> bool:
        self.finisher.tick()
        if time.monotonic() - self._swept_at >= SWEEP_INTERVAL_S:
            self._swept_at = time.monotonic()
            self.chunks.sweep()
        if self.batch.due() or not self.batch.pending:
            self.batch.commit()  # with nothing held: what a retry or a query left open
        return self.batch.pending > 0  # the loop polls without waiting while a batch is open

    def on_message(self, link: MqttLink, message: mqtt.MQTTMessage) -> None:
        try:
            kiosk_id = self.topics.kiosk_of(message.topic)
        except ProtocolError as exc:
            self.warnings.warn("", "unexpected-topic", "message on unexpected topic: %s", exc,
                               level=logging.ERROR)
            return
        leaf = message.topic.rsplit("/", 1)[-1]
        if leaf == "chunks":
            self._on_chunks(link, kiosk_id, message.payload)
            return
        if leaf == "registration-query":
            self._on_query(kiosk_id, message.payload)
            return
        try:
            nonce, sealed = open_send(message.payload)
        except ProtocolError as exc:
            self._count("unreadable")
            self.warnings.warn(kiosk_id, "unreadable", "ignored a message on kiosk %s's captures topic: %s",
                               kiosk_id, exc, level=logging.ERROR)
            return
        try:
            receipt = self._handle(kiosk_id, sealed)
        except StoreUnavailable as exc:
            self.warnings.warn("", "store-unavailable", "capture not stored, no receipt: %s", exc,
                               level=logging.ERROR)
            return
        if receipt is not None:
            # Names the bytes received and the kiosk's send: only that send's capture goes.
            receipt = replace(receipt, sha256=hashlib.sha256(sealed).hexdigest(), nonce=nonce)
            self.batch.after_commit(len(sealed), lambda: self.receipts.send(link, kiosk_id, receipt))

    def _on_query(self, kiosk_id: str, payload: bytes) -> None:
        # Unsigned (anyone may ask): answered for enrolled kiosks, ids on record only, within
        # a budget of signatures (receiver/query_budget.py).
        if not self._enrolled(kiosk_id):
            return
        try:
            if self.reporter.answer(kiosk_id, payload, self._query_budget.take)[1]:
                self._count("queries_dropped")
        except ProtocolError as exc:
            self._count("unreadable")
            self.warnings.warn(kiosk_id, "unreadable-query", "ignored a registration query for kiosk %s: %s",
                               kiosk_id, exc)

    # --- chunked transfers ----------------------------------------------------------------

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
        receipt = self._handle(kiosk_id, path.read_bytes())
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
            self._count("unauthenticated")
            self.warnings.warn(kiosk_id, "unauthenticated", "rejected an envelope on kiosk %s's topic "
                               "(id %s): %s", kiosk_id, exc.item_id or "unreadable", exc, level=logging.ERROR)
            if not self._enrolled(kiosk_id):  # something the kiosk's owner can fix: say so
                self.receipts.hint(self.link, kiosk_id, "not_enrolled", name)
            return None
        # From here the envelope is authentic: header.kiosk_id is the name its verifying key
        # is enrolled under, and that (never a field the sender chose) names the folder.
        signer = header.kiosk_id
        try:
            check_item_id(header.id)
        except UnsafeName as exc:
            return self._refuse(signer, header.id, str(exc))
        if header.kind == "registration":
            return self._handle_manifest(signer, header.id, inner)
        try:
            if header.kind != "capture":
                raise ProtocolError(f"kind {header.kind!r} is not a capture or a registration", header.id)
            record = decode_capture(inner)
            if (record.id, record.kiosk_id, record.seq) != (header.id, header.kiosk_id, header.seq):
                raise ProtocolError("the signed capture does not match its envelope's routing header",
                                    header.id)
        except ProtocolError as exc:
            # Authentic but unusable: tell the kiosk, which keeps it aside for support.
            self._count("rejected")
            # Limited too: anyone on the broker can replay a signed capture that was rejected.
            self.warnings.warn(kiosk_id, "rejected", "rejected capture %s from kiosk %s: %s", header.id,
                               kiosk_id, exc, level=logging.ERROR)
            return Receipt(header.id, "rejected", name, str(exc))
        try:
            registration_id = self.registrations.registration_of(record)
            outcome = self.store.store(signer, record)
        except UnsafeName as exc:
            return self._refuse(signer, record.id, str(exc))
        if outcome == "conflict":
            return self._refuse(signer, record.id, "a capture with other content is stored under this id",
                                "conflict")
        with self._lock:
            if outcome == "stored":
                self.counters.stored += 1
            else:
                self.counters.duplicates += 1
        log.debug("capture %s from %s: %s", record.id, signer, outcome)
        if registration_id is not None:
            self.finisher.part_arrived(signer, registration_id, outcome)
        return Receipt(record.id, outcome, name)

    def _handle_manifest(self, kiosk_id: str, item_id: str, inner: bytes) -> Receipt:
        name = self.config.receiver.name
        try:
            manifest = parse_manifest(inner, item_id, kiosk_id)
            refusal = self.finisher.refusal(kiosk_id, manifest)  # over the kiosk's cap, foreign parts
            if refusal is not None:
                if refusal[0] == "too-many-unfinished":
                    self._count("manifests_over_cap")
                return self._refuse(kiosk_id, item_id, refusal[1], refusal[0])
            outcome = self.registrations.store_manifest(kiosk_id, manifest)
        except UnsafeName as exc:
            return self._refuse(kiosk_id, item_id, str(exc))
        except HostileManifest as exc:
            return self._refuse(kiosk_id, item_id, str(exc), "hostile-manifest")
        except ProtocolError as exc:
            self._count("rejected")
            self.warnings.warn(kiosk_id, "rejected", "rejected registration manifest %s from kiosk %s: %s",
                               item_id, kiosk_id, exc, level=logging.ERROR)
            return Receipt(item_id, "rejected", name, str(exc))
        if outcome == "conflict":
            return self._refuse(kiosk_id, item_id, "a registration manifest with other content is stored "
                                "under this id", "conflict")
        self.finisher.part_arrived(kiosk_id, item_id, outcome)
        return Receipt(item_id, outcome, name)

    # --- security events ---------------------------------------------------------------------

    def _refuse(self, kiosk_id: str, item_id: str, reason: str, kind: str = "unsafe-name") -> Receipt:
        """An authentic envelope refused for what it would do to storage: ``rejected``, so
        the kiosk neither deletes it as delivered nor sends it again."""
        self._security_event(kiosk_id, kind, f"refused {item_id!r}: {reason}")
        return Receipt(item_id, "rejected", self.config.receiver.name, reason)

    def _count(self, counter: str) -> None:
        with self._lock:
            setattr(self.counters, counter, getattr(self.counters, counter) + 1)

    def _security_event(self, kiosk_id: str, kind: str, reason: str) -> None:
        self._count("security_events")
        self.store.security_event(kiosk_id, kind, reason)
        self.warnings.warn(kiosk_id, kind, "security event: kiosk %s: %s", kiosk_id, reason)

    def _enrolled(self, kiosk_id: str) -> bool:
        return kiosk_id in self.opener.kiosk_keys or (self._reload_kiosk_keys()
                                                      and kiosk_id in self.opener.kiosk_keys)

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
