"""What the central side says of each registration, learnt by the kiosk and shown to the app.

Every part of a registration can have its receipt while the registration is still not whole
on the central side (a part lost there, a transaction that cannot be built). So the receiver
sends a signed *registration status* (agent/transport/receipts.py) on
``<prefix>/<kiosk_id>/registration-status``: complete, incomplete (with the missing parts),
failed (reason code, attempts, next retry), cancelled or unknown. This link handler:

* subscribes to it, and on every connect and then every ``query_interval_s`` asks
  (``…/registration-query``) about the closed registrations it has no final word on, closed
  at least ``query_after_s`` ago: a status sent while the kiosk was offline is not lost;
* keeps a status only when a central receipt key it trusts signed it for this kiosk, it is
  about one of this kiosk's registrations, and its ``seq`` is above the last one kept.
  Anything else (forged, unknown key, other kiosk, unknown registration, replayed, stale,
  ``unknown`` after a final word, retained, malformed) changes nothing: counted by reason,
  logged at WARNING (at most 20 a minute);
* emits the event ``registration_failed`` when a registration becomes failed.

What is kept (agent/registration/store.py, table ``central``) holds nothing personal, and a
status never deletes anything: erasure follows receipts only (agent/registration/erasure.py).
The local API shows it as the session's ``central`` object (and at
``GET /v1/sessions/{id}/central``, also once the session is erased), telemetry as counts.

Runs on the MQTT link's thread.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from agent.registration.store import CENTRAL_FINAL, SessionStore
from agent.transport.mqtt_link import BrokerLimits, MqttLink
from agent.transport.protocol import MAX_QUERY_IDS, Topics, registration_query
from agent.transport.receipts import ReceiptError, RegistrationStatus, verify_registration_status
from agent.transport.uplink import EventSink

log = logging.getLogger(__name__)

#: How often the kiosk asks about registrations without a final word, and how long after
#: closing one it starts to (its parts are usually still on their way before that).
QUERY_INTERVAL_S = 300.0
QUERY_AFTER_S = 60.0
#: Refusals logged one by one per minute at most; the rest are counted.
REPORTS_PER_MINUTE = 20


@dataclass
class CentralStatusCounters:
    accepted: int = 0
    refused: int = 0
    refused_by_reason: dict[str, int] = field(default_factory=dict)
    queries: int = 0


class CentralStatus:
    def __init__(self, store: SessionStore, topics: Topics, trusted: Mapping[str, Ed25519PublicKey],
                 on_event: EventSink | None = None, *, query_interval_s: float = QUERY_INTERVAL_S,
                 query_after_s: float = QUERY_AFTER_S) -> None:
        """``trusted``: the central receipt keys (security.receipt_keys), which sign statuses
        too; ``on_event``: EventBus.emit."""
        self.store = store
        self.topics = topics
        self.trusted = dict(trusted)
        self.on_event = on_event
        self.query_interval_s = query_interval_s
        self.query_after_s = query_after_s
        self.counters = CentralStatusCounters()
        self._next_query = 0.0
        self._window_start = 0.0
        self._reported = 0

    # --- link handler -------------------------------------------------------------------

    def on_connected(self, link: MqttLink, limits: BrokerLimits) -> None:
        if not self.trusted:
            return  # no receipt key (mqtt.ack_mode = "puback"): nothing could be verified
        link.subscribe(self.topics.registration_status, qos=1)
        self._next_query = 0.0  # ask at once: what was said while we were away is gone

    def on_disconnected(self, link: MqttLink) -> None:
        pass

    def on_puback(self, link: MqttLink, mid: int) -> None:
        pass

    def on_stopping(self, link: MqttLink) -> None:
        pass

    def on_message(self, link: MqttLink, message: mqtt.MQTTMessage) -> None:
        if message.topic == self.topics.registration_status:
            self.take(message.payload, retained=bool(message.retain))

    def tick(self, link: MqttLink) -> bool:
        now = time.monotonic()
        if not self.trusted or now < self._next_query or not link.subscribed:
            return False  # asked before the SUBACK, the answers could pass us by
        self._next_query = now + self.query_interval_s
        ids = self.store.central_due(time.time() - self.query_after_s, MAX_QUERY_IDS)
        if ids:
            link.publish(self.topics.registration_query, registration_query(ids), qos=1)
            self.counters.queries += 1
        return False

    # --- statuses -----------------------------------------------------------------------

    def take(self, payload: bytes, retained: bool = False) -> str:
        """Keep a status if it proves itself; "accepted" or the reason it was refused."""
        if retained:
            # Receivers never retain one: the broker would hand anyone's to us at every connect.
            return self._refuse("retained", "a retained registration status")
        try:
            status = verify_registration_status(payload, self.trusted, self.topics.kiosk_id)
        except ReceiptError as exc:
            return self._refuse(exc.reason, str(exc))
        if status.state == "unknown" and self.store.central(status.id)["state"] in CENTRAL_FINAL:
            # A receiver says unknown of files it no longer has (archived, another store), and
            # answers anyone's query: a final word is not undone by that.
            return self._refuse("regressed", f"status unknown (seq {status.seq}) for registration "
                                f"{status.id}, which the central side said was final")
        outcome, previous = self.store.record_central(status.id, status.state, status.seq, _detail(status))
        if outcome != "accepted":
            return self._refuse(outcome, f"status {status.state} (seq {status.seq}) for registration "
                                f"{status.id}")
        self.counters.accepted += 1
        log.info("registration %s: the central side says %s", status.id, status.state)
        if status.state == "failed" and previous != "failed" and self.on_event is not None:
            reason = status.reason
            self.on_event("registration_failed", id=status.id, code=reason.code if reason else None,
                          message=reason.message if reason else None,
                          attempts=reason.attempts if reason else None,
                          retry_at=reason.retry_at if reason else None)
        return outcome

    def view(self, registration_id: str) -> dict[str, Any] | None:
        """{state, missing, reason, updated_at} of a registration of this kiosk's, or None."""
        return self.store.central(registration_id) if self.store.central_known(registration_id) else None

    def summary(self) -> dict[str, Any]:
        """For telemetry: closed registrations by central state, and the refusals."""
        c = self.counters
        return {**self.store.central_counts(), "statuses_accepted": c.accepted,
                "statuses_refused": c.refused, "statuses_refused_by_reason": dict(c.refused_by_reason)}

    def _refuse(self, reason: str, detail: str) -> str:
        self.counters.refused += 1
        by_reason = self.counters.refused_by_reason
        by_reason[reason] = by_reason.get(reason, 0) + 1
        now = time.monotonic()
        if now - self._window_start >= 60.0:
            self._window_start, self._reported = now, 0
        if self._reported < REPORTS_PER_MINUTE:
            self._reported += 1
            log.warning("refused a registration status (%s): %s; nothing changed", reason, detail)
        return reason


def _detail(status: RegistrationStatus) -> dict[str, Any]:
    """What the kiosk keeps of a status: nothing personal (plan items, positions, ids, codes)."""
    return {"missing": [{"item": m.item, "position": m.position, "capture_id": m.id} for m in status.missing],
            "reason": vars(status.reason) if status.reason else None}
