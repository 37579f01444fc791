"""The reference receiver: the central side's end of the protocol.

It subscribes to every kiosk's captures (through an MQTT 5 shared subscription, so several
receivers split a fleet's load), verifies each envelope, files it in the configured store
(receiver/storage/: files, or PostgreSQL with group commit) and only once that is durable
(receiver/group_commit.py) publishes the receipt that lets the kiosk delete its copy. A
capture seen twice is stored once and receipted again. It is the executable contract for
the matching service.

Captures too large for one message arrive in chunks on ``<prefix>/<kiosk>/chunks``
(receiver/chunk_intake.py): the receiver answers each manifest with the chunks it already
holds, and hands the reassembled, verified envelope to the same path as a single-message
capture, receipt included. Every receipt is signed with the central receipt-signing key and
names the bytes received and the kiosk's send (receiver/receipting.py).

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
from agent.security.sealing import Opener, SealError, VersionRefused
from agent.transport.mqtt_link import BrokerLimits, MqttLink
from agent.transport.protocol import ProtocolError, Topics, decode_capture, open_send
from agent.transport.receipts import Receipt
from receiver.assembly import HostileManifest, RegistrationAssembler, parse_manifest
from receiver.chunk_intake import ChunkIntake
from receiver.config import ReceiverServiceConfig
from receiver.counters import ReceiverCounters
from receiver.group_commit import GroupCommit, GroupCommitLimits, Later
from receiver.paths import UnsafeName, check_item_id
from receiver.query_budget import QueryBudget
from receiver.receipting import Receipts
from receiver.retries import RegistrationFinisher
from receiver.status import StatusReporter
from receiver.storage import StoreUnavailable, chunk_assembly, open_store
from receiver.storage.base import Outcome
from receiver.warnings_limit import LimitedWarnings

log = logging.getLogger(__name__)


#: An unknown kiosk makes the receiver re-read the enrolled keys, at most this often.
KEY_RELOAD_INTERVAL_S = 10.0
#: Stale chunk state is swept at start and then this often.
SWEEP_INTERVAL_S = 3600.0


class Receiver(ChunkIntake):
    def __init__(self, config: ReceiverServiceConfig) -> None:
        rc = config.receiver
        self.config = config
        self.store = open_store(rc.store, rc.output_dir, rc.name)
        limits = GroupCommitLimits(rc.group_commit_ms / 1000, rc.group_commit_max, rc.group_commit_max_bytes)
        self.batch = GroupCommit(self.store, limits, self._send_receipts)
        #: Receipts of the batch being released: (link, kiosk id, receipt).
        self._outgoing: list[tuple[MqttLink, str, Receipt]] = []
        # Files under output_dir, or the database's tables (receiver/storage/pg_chunks.py).
        self.chunks = chunk_assembly(self.store, rc.chunk_quota_bytes)
        self.chunks.sweep()
        self.chunks.rebuild()
        self._swept_at = time.monotonic()
        self._init_chunk_intake()  # the chunk statuses' rate limits
        # Every line a message from the broker can cause goes through here: one line per junk
        # message let any broker client flood the log.
        self.warnings = LimitedWarnings(log)
        from agent.formats.ansi_nist import TransactionOptions

        self.registrations = RegistrationAssembler(self.store, TransactionOptions.from_config(config.formats))
        self.topics = Topics(config.mqtt.topic_prefix, rc.kiosk_filter)
        self.counters = ReceiverCounters()
        try:
            self.opener = Opener(load_decryption_key(rc.central_private_key),
                                 load_kiosk_keys(rc.kiosk_keys_dir), accept_v1=rc.accept_envelope_v1)
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
            answer = self._handle(kiosk_id, sealed)
        except StoreUnavailable as exc:
            self.warnings.warn("", "store-unavailable", "capture not stored, no receipt: %s", exc,
                               level=logging.ERROR)
            return
        if answer is not None:
            # Names the bytes received and the kiosk's send: only that send's capture goes.
            digest = hashlib.sha256(sealed).hexdigest()
            self.batch.after_commit(len(sealed), lambda: self._release(link, kiosk_id, answer, digest, nonce))

    def _release(self, link: MqttLink, kiosk_id: str, answer: Receipt | Later, digest: str,
                 nonce: str) -> None:
        """A durable capture's receipt joins its batch's outgoing ones (sent by _send_receipts)."""
        receipt = answer.receipt if isinstance(answer, Later) else answer
        if receipt is None:  # not decided although its batch committed: a bug, never a receipt
            log.error("no outcome for a committed capture from %s; the kiosk will send it again", kiosk_id)
            return
        self._outgoing.append((link, kiosk_id, replace(receipt, sha256=digest, nonce=nonce)))

    def _send_receipts(self) -> None:
        """The released batch's receipts: one signed frame per kiosk, in arrival order within
        it (one signature and one publish for a kiosk's whole batch; its ack is one transaction)."""
        outgoing, self._outgoing = self._outgoing, []
        by_kiosk: dict[str, tuple[MqttLink, list[Receipt]]] = {}
        for link, kiosk_id, receipt in outgoing:
            by_kiosk.setdefault(kiosk_id, (link, []))[1].append(receipt)
        for kiosk_id, (link, receipts) in by_kiosk.items():
            self.receipts.send_many(link, kiosk_id, receipts)

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

    def ingest(self, kiosk_id: str, sealed: bytes) -> Receipt | None:
        """A sealed envelope that came other than over MQTT (a drive from a van:
        receiver/media_import.py), through exactly a message's checks, store and
        de-duplication: its receipt (id and status; the caller names the bytes and the
        send), or None when it cannot be authenticated. With a batched store it is durable
        only once ``batch.commit()`` has returned True."""
        answer = self._handle(kiosk_id, sealed)
        if isinstance(answer, Later):
            self.store.flush()  # decided now, durable at the commit
            return answer.receipt
        return answer

    def _handle(self, kiosk_id: str, payload: bytes) -> Receipt | Later | None:
        name = self.config.receiver.name
        try:
            header, inner = self._open(payload)
            if header.kiosk_id != kiosk_id:
                raise SealError(f"sealed for kiosk {header.kiosk_id!r} but sent on {kiosk_id!r}'s topic",
                                header.id, header.kiosk_id)
        except VersionRefused as exc:
            # An old kiosk (or an old item in an updated kiosk's queue): no receipt, so the
            # kiosk keeps it; turning accept_envelope_v1 back on lets it through.
            self._count("envelopes_v1_refused")
            self.warnings.warn(kiosk_id, "v1-refused", "refused envelope %s on kiosk %s's topic: %s",
                               exc.item_id or "unreadable", kiosk_id, exc)
            return None
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
        if header.version == 1:
            self._count("envelopes_v1")
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
            answer = Later()
            self.store.stage(signer, record, lambda outcome: answer.decide(
                self._stored(signer, record.id, registration_id, outcome)))
        except UnsafeName as exc:
            return self._refuse(signer, record.id, str(exc))
        return answer.receipt or answer

    def _stored(self, signer: str, capture_id: str, registration_id: str | None, outcome: Outcome) -> Receipt:
        """The receipt for a capture the store decided on (at once, or when its batch is written)."""
        if outcome == "conflict":
            return self._refuse(signer, capture_id, "a capture with other content is stored under this id",
                                "conflict")
        with self._lock:
            if outcome == "stored":
                self.counters.stored += 1
            else:
                self.counters.duplicates += 1
        log.debug("capture %s from %s: %s", capture_id, signer, outcome)
        if registration_id is not None:
            self.finisher.part_arrived(signer, registration_id, outcome)
        return Receipt(capture_id, outcome, self.config.receiver.name)

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
