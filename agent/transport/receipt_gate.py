"""What a receipt must prove before a kiosk deletes (or sets aside) anything.

The receipts topic is only as closed as the broker's ACLs, and anyone who can read a kiosk's
traffic sees its capture ids in the clear headers. So a receipt counts only when:

1. it is signed by a central receipt-signing key this kiosk trusts (security.receipt_keys),
   addressed to this kiosk (agent/transport/receipts.py);
2. its item is in flight: sent by this process and not yet settled;
3. it names the SHA-256 of the sealed envelope the kiosk sent, so it is about these bytes;
4. it echoes the nonce of this flight of the item, so a receipt for an earlier send (before
   a restart, before a rejected capture was retried) does not count for this one.

Anything else is refused: logged at WARNING with the reason, counted, and emitted as a
``receipt_refused`` event, and the capture stays. A receipt that passes 1 and matches an
item settled a moment ago is a late duplicate (the receiver answers every copy it gets),
not an attack: it is dropped quietly. A retained receipt never reaches the gate: receivers
never retain one, and the publisher drops it.

Runs on the MQTT link's thread, like the publisher that owns it.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from agent.transport.receipts import Receipt, ReceiptError, RefusalReason, verify_receipts
from agent.transport.uplink import EventSink

log = logging.getLogger(__name__)

#: Refusals logged (and emitted as events) per minute at most; the rest are counted and
#: summed up once the minute is over, so a flood of forgeries cannot flood the journal.
REPORTS_PER_MINUTE = 20
#: Items settled lately whose late duplicate receipts are not refusals.
RECENT_SETTLED = 1024


@dataclass(frozen=True)
class Sent:
    """What the kiosk sent for one item in flight: a receipt must name both."""

    sha256: str
    nonce: str


class ReceiptGate:
    def __init__(self, trusted: Mapping[str, Ed25519PublicKey], kiosk_id: str,
                 count: Callable[[RefusalReason], None], on_event: EventSink | None = None) -> None:
        """``trusted``: key id -> central receipt-signing public key; ``count``: called once per
        refused receipt (the publisher's counters); ``on_event``: EventBus.emit."""
        self.trusted = dict(trusted)
        self.kiosk_id = kiosk_id
        self._count = count
        self._on_event = on_event
        self._recent: OrderedDict[str, Sent] = OrderedDict()
        self._window_start = 0.0
        self._reported = 0
        self._suppressed = 0

    def check(self, payload: bytes, in_flight: Mapping[str, Sent]) -> list[Receipt]:
        """The receipts in ``payload`` the kiosk may act on; every other one is refused."""
        try:
            receipts = verify_receipts(payload, self.trusted, self.kiosk_id)
        except ReceiptError as exc:
            self._refuse(exc.reason, str(exc), exc.item_id)
            return []
        accepted = []
        for receipt in receipts:
            sent = in_flight.get(receipt.id)
            if sent is None and self._recent.get(receipt.id) == Sent(receipt.sha256, receipt.nonce):
                log.debug("late duplicate receipt for %s (already settled)", receipt.id)
                continue
            problem = self._problem(receipt, sent)
            if problem is None:
                accepted.append(receipt)
            else:
                self._refuse(*problem, receipt.id)
        return accepted

    def settled(self, item_id: str, sent: Sent) -> None:
        """``item_id`` left the queue (or was set aside): its late duplicates are harmless."""
        self._recent[item_id] = sent
        self._recent.move_to_end(item_id)
        while len(self._recent) > RECENT_SETTLED:
            self._recent.popitem(last=False)

    @staticmethod
    def _problem(receipt: Receipt, sent: Sent | None) -> tuple[RefusalReason, str] | None:
        """Why this verified receipt must not count, or None."""
        if sent is None:
            return "not_in_flight", f"receipt ({receipt.status}) for {receipt.id}, which is not in flight"
        if receipt.sha256 != sent.sha256:
            return "hash_mismatch", (f"receipt ({receipt.status}) for {receipt.id} names content "
                                     f"{receipt.sha256[:16]}…, the kiosk sent {sent.sha256[:16]}…")
        if receipt.nonce != sent.nonce:
            return "stale_nonce", (f"receipt ({receipt.status}) for {receipt.id} answers another send of it "
                                   "(replayed, or from before a restart or retry)")
        return None

    def _refuse(self, reason: RefusalReason, detail: str, item_id: str | None) -> None:
        self._count(reason)
        now = time.monotonic()
        if now - self._window_start >= 60.0:
            if self._suppressed:
                log.warning("%d more receipts refused in the last minute (not logged one by one)",
                            self._suppressed)
                self._emit(reason="suppressed", detail=f"{self._suppressed} more refused", id=None)
            self._window_start, self._reported, self._suppressed = now, 0, 0
        if self._reported >= REPORTS_PER_MINUTE:
            self._suppressed += 1
            return
        self._reported += 1
        log.warning("refused a receipt (%s): %s; nothing deleted", reason, detail)
        self._emit(reason=reason, detail=detail, id=item_id)

    def _emit(self, **fields: object) -> None:
        if self._on_event is not None:
            self._on_event("receipt_refused", **fields)
