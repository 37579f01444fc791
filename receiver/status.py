"""Where each registration stands on the central side, told to its kiosk and kept for operators.

A registration is complete only when its transaction is written. Until then a kiosk whose
parts all got receipts would otherwise believe it done: so the receiver says, in a status
signed with the receipt-signing key (agent/transport/receipts.py, ``registration-status``),
which state each registration is in:

* ``complete`` (the files written, with their SHA-256), ``cancelled``;
* ``incomplete``: the manifest is here and parts are missing (which, by item and position),
  said once the registration has waited ``receiver.incomplete_after_s`` (parts in flight are
  not news);
* ``failed``: every part is here and building the transaction failed: a fixed reason code
  and text (never the error's own text, which may quote a name), the attempts so far and
  when the next one is due (receiver/retries.py retries it; none for ``bad-data`` and
  ``encoding``, which the same bytes would fail again);
* ``unknown``: no manifest. Never sent in answer to a query (receiver/query_budget.py):
  an id with neither a manifest nor a status here gets no answer, so junk queries cost no
  signature; nothing is written for it either.

Each status is published QoS 1 on ``<prefix>/<kiosk>/registration-status`` when the state
changes, and again whenever the kiosk asks (``…/registration-query``, on its connect and
then periodically: a kiosk that was offline learns it then). The latest is kept with the
registration's records for operators: ``<id>.status.json`` beside it with the file store
(``kiosk-agent receiver status``), the ``status`` column of ``registrations`` with
PostgreSQL (docs/central-store.md).

Which registrations have waited too long is remembered in memory with the file store; with
PostgreSQL any receiver finds them in ``registrations`` (``FOR UPDATE SKIP LOCKED``, so two
receivers never report the same one), so none is forgotten when the receiver that took its
manifest stops.

``seq`` orders a registration's statuses: microseconds of the receiver's clock, above the
last issued by this receiver and above the one kept (by whichever receiver of a share group
spoke last), so a kiosk can refuse a replayed or stale one.

Runs on the receiver's MQTT thread.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from agent.capture.ids import is_item_id
from agent.remote.output import printable
from agent.transport.protocol import Topics, parse_registration_query
from agent.transport.receipts import (
    FailureReason,
    MissingPart,
    ReceiptError,
    ReceiptSigner,
    RegistrationStatus,
)
from receiver.assembly import RegistrationAssembler
from receiver.paths import UnsafeName

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (kiosk id, registration id)
Publish = Callable[..., int]  # MqttLink.publish

#: Why building a registration failed, by kind of error; the text is fixed so that nothing of
#: the registration's data (an applicant's name in an encoding error) leaves in a status.
REASONS = {
    "storage": "the central store could not read or write a file of this registration",
    "encoding": "a text field cannot be written in the transaction's character encoding",
    "bad-data": "a stored part or the manifest cannot be read into a transaction",
    "internal": "the receiver failed building the transaction (see its log)",
}
#: Registrations waiting for parts remembered at most (oldest forgotten; a query still answers).
MAX_WAITING = 100_000
#: Shared records: "incomplete" reports looked up at most this many at a time, and at most
#: this often (the loop turns hundreds of times a second while captures flow).
INCOMPLETE_PER_TICK = 64
INCOMPLETE_LOOKUP_S = 1.0


def reason_code(exc: BaseException) -> str:
    if isinstance(exc, OSError):
        return "storage"
    if isinstance(exc, UnicodeError):
        return "encoding"
    if isinstance(exc, (KeyError, ValueError, TypeError, IndexError)):
        return "bad-data"
    return "internal"


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class StatusReporter:
    def __init__(self, assembler: RegistrationAssembler, signer: ReceiptSigner, prefix: str,
                 incomplete_after_s: float) -> None:
        self.assembler = assembler
        self.signer = signer
        self.prefix = prefix
        self.incomplete_after_s = incomplete_after_s
        #: Set by the receiver once its link exists: MqttLink.publish.
        self.publish: Publish | None = None
        self.sent = 0
        self._waiting: OrderedDict[Key, float] = OrderedDict()
        self._last_seq = 0
        self._next_lookup = 0.0

    # --- what the finisher tells us -----------------------------------------------------

    def assembled(self, kiosk_id: str, registration_id: str) -> None:
        """An assembly attempt ended without error: complete, cancelled, or still waiting."""
        key = (kiosk_id, registration_id)
        state = self.assembler.status(kiosk_id, registration_id)
        if state == "waiting":
            if self.assembler.records.shared:
                return  # the records know since when: tick() finds it there
            if key not in self._waiting:
                self._waiting[key] = time.monotonic()
                while len(self._waiting) > MAX_WAITING:
                    self._waiting.popitem(last=False)
            return
        self._waiting.pop(key, None)
        if state in ("complete", "cancelled"):
            self.report(kiosk_id, self.current(kiosk_id, registration_id))

    def failed(self, kiosk_id: str, registration_id: str, exc: BaseException, attempts: int,
               retry_in_s: float | None) -> str:
        """Assembly raised ``exc``; the reason code reported (``retry_in_s`` None: no retry)."""
        self._waiting.pop((kiosk_id, registration_id), None)
        code = reason_code(exc)
        retry_at = None if retry_in_s is None else _iso(datetime.now(UTC) + timedelta(seconds=retry_in_s))
        reason = FailureReason(code, f"{REASONS[code]} ({type(exc).__name__})", attempts, retry_at)
        self.report(kiosk_id, RegistrationStatus(registration_id, "failed", 0, reason=reason))
        return code

    def tick(self, deadline: float = float("inf")) -> None:
        """Registrations that have waited for parts too long: said to be incomplete, once;
        until ``deadline`` (time.monotonic()), the rest on a later turn."""
        if self.assembler.records.shared:
            now = time.monotonic()
            if now < self._next_lookup:
                return
            self._next_lookup = now + min(INCOMPLETE_LOOKUP_S, self.incomplete_after_s)
            for key in self.assembler.records.due_incomplete(self.incomplete_after_s, INCOMPLETE_PER_TICK):
                if time.monotonic() >= deadline:
                    break
                status = self.current(*key)
                if status.state == "incomplete":
                    self.report(key[0], status)
            return
        if not self._waiting:
            return
        now = time.monotonic()
        while self._waiting and time.monotonic() < deadline:
            key, since = next(iter(self._waiting.items()))
            if now - since < self.incomplete_after_s:
                break
            del self._waiting[key]
            status = self.current(*key)
            if status.state == "incomplete":
                self.report(key[0], status)

    def answer(self, kiosk_id: str, query: bytes,
               budget: Callable[[str], bool] = lambda kiosk_id: True) -> tuple[int, bool]:
        """A kiosk's query (enrolled kiosk): each registration it names that has a manifest or
        a status on record here gets its status, freshly signed, while ``budget(kiosk_id)``
        allows (receiver/query_budget.py). Ids with nothing on record, or that are not item
        ids, cost no signature and get no answer: a query is anyone's to send, and 64 unknown
        ids were 64 signatures (~30 ms) for a 2.5 KB message. (The kiosk learns nothing from
        ``unknown``: it is what it holds until a receiver says more.) (statuses answered,
        whether the budget cut the query short). ProtocolError for a query that cannot be read."""
        answered = 0
        ids = parse_registration_query(query)
        self.assembler.folder(kiosk_id)  # UnsafeName (a ProtocolError) for a name no store may use
        checked = [rid for rid in ids if is_item_id(rid)]
        known = self.assembler.records.on_record(kiosk_id, checked) if checked else set()  # one look-up
        for registration_id in checked:
            if registration_id not in known:
                continue
            try:
                status = self.current(kiosk_id, registration_id)  # every path checked again
            except UnsafeName:
                continue
            if not budget(kiosk_id):
                return answered, True
            self.report(kiosk_id, status, always=True)
            answered += 1
        return answered, False


    # --- the state on disk --------------------------------------------------------------

    def current(self, kiosk_id: str, registration_id: str) -> RegistrationStatus:
        """The registration's state as the files say (seq 0: not issued yet)."""
        state = self.assembler.status(kiosk_id, registration_id)
        kept = self._kept(kiosk_id, registration_id)
        if state == "complete":
            files = kept.files if kept and kept.state == "complete" else None
            return RegistrationStatus(registration_id, "complete", 0,
                                      files=files or self._files(kiosk_id, registration_id))
        if state == "failed":
            reason = kept.reason if kept and kept.state == "failed" else None
            return RegistrationStatus(registration_id, "failed", 0,
                                      reason=reason or FailureReason("internal", REASONS["internal"]))
        if state == "waiting":
            return RegistrationStatus(registration_id, "incomplete", 0,
                                      missing=self._missing(kiosk_id, registration_id))
        return RegistrationStatus(registration_id, state, 0)  # cancelled, unknown

    def _missing(self, kiosk_id: str, registration_id: str) -> tuple[MissingPart, ...]:
        found = self.assembler.records.get(kiosk_id, registration_id)
        if found is None:
            return ()
        manifest = found[0]
        present = self.assembler.records.present(kiosk_id, [e["id"] for e in manifest["captures"]],
                                                 registration_id)
        missing = []
        for entry in manifest["captures"]:  # checked ids, at most 64 (receiver/assembly.py)
            if entry["id"] not in present:
                item, position = entry.get("item"), entry.get("position")
                # Escaped: a manifest stored before items were checked on arrival
                # (receiver/manifest_rules.py) may name one with terminal escapes or bidi
                # overrides, and this text reaches the kiosk's operator and `receiver status`.
                missing.append(MissingPart(
                    printable(item)[:32] if isinstance(item, str) and item else "unknown",
                    position if isinstance(position, int) and 0 <= position <= 15 else 0, entry["id"]))
        return tuple(missing)

    def _files(self, kiosk_id: str, registration_id: str) -> tuple[dict[str, Any], ...]:
        return self.assembler.records.files(kiosk_id, registration_id)

    def _kept(self, kiosk_id: str, registration_id: str) -> RegistrationStatus | None:
        document = self.assembler.records.kept_status(kiosk_id, registration_id)
        if document is None:
            return None
        try:
            return RegistrationStatus.from_document(document)
        except (ValueError, ReceiptError):
            return None

    # --- telling the kiosk ----------------------------------------------------------------

    def report(self, kiosk_id: str, status: RegistrationStatus, always: bool = False) -> None:
        """Issue ``status`` (a fresh seq), keep it beside the registration and publish it;
        unless it says what the kept one says and ``always`` is not set."""
        kept = self._kept(kiosk_id, status.id)
        same = kept is not None and _same(kept, status)
        if same and not always:
            return
        seq = max(self._last_seq + 1, time.time_ns() // 1000, (kept.seq + 1) if kept else 0)
        self._last_seq = seq
        issued = RegistrationStatus(status.id, status.state, seq, status.missing, status.reason, status.files)
        if status.state != "unknown" and not same:
            # Nothing is written for a registration the receiver knows nothing of (queries
            # are anyone's to send): only states a kiosk's own parts brought about.
            record = {**issued.document(), "kiosk_id": kiosk_id, "updated_at": _iso(datetime.now(UTC))}
            try:
                self.assembler.records.keep_status(kiosk_id, status.id, record)
            except OSError as exc:
                # The kiosk is told all the same (a full disk is what it must hear of).
                log.error("cannot keep the status of registration %s: %s", status.id, exc)
        if self.publish is not None:
            self.publish(Topics(self.prefix, kiosk_id).registration_status,
                         self.signer.sign_status(kiosk_id, issued), qos=1)
            self.sent += 1
        log.info("registration %s from kiosk %s: %s%s", status.id, kiosk_id, status.state,
                 f" ({status.reason.code}, attempt {status.reason.attempts})" if status.reason else
                 f" ({len(status.missing)} parts missing)" if status.missing else "")


def _same(a: RegistrationStatus, b: RegistrationStatus) -> bool:
    # A failure's retry time changes with every attempt: the attempt count is what is news.
    return a.document() | {"seq": 0} == b.document() | {"seq": 0}

