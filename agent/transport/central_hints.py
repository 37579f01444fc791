"""What the central side says about this kiosk's set-up, when it cannot answer with a receipt.

A receiver that gets an envelope from a kiosk it has no enrolled key for cannot verify it,
so it sends no receipt (a forger must not make a kiosk set a capture aside). Without more,
the kiosk would only see "no receipt after 60 s", again and again. So the receiver publishes
a hint on ``<prefix>/<kiosk_id>/hints`` (docs/protocol.md, "Hints"), and this handler turns
it into a warning in the log and a ``central_hint`` field in telemetry.

A hint is unsigned, so anyone on the broker can send one: it therefore changes nothing
here. It never deletes, moves or resends a capture, nor changes a setting; it is words in
the log and telemetry, cleared by the next verified receipt.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt

from agent.transport.events import EventBus
from agent.transport.mqtt_link import BrokerLimits, MqttLink
from agent.transport.protocol import Topics

log = logging.getLogger(__name__)

#: The hints a kiosk understands, and what a person should do about each.
HINTS = {
    "not_enrolled": "the central receiver {receiver} has no enrolled key for this kiosk: enrol it "
                    "(here: `kiosk-agent keys show`; there: `kiosk-agent keys enrol --kiosk-id {kiosk} "
                    "FILE`); captures wait in the queue meanwhile",
}
#: A hint is at most this large; anything larger is not one.
MAX_HINT_BYTES = 1024
#: The same hint is logged (and emitted as an event) at most this often.
REPEAT_S = 600.0


class CentralHints:
    """A link handler: listens for hints, reports them, forgets them on the next receipt."""

    def __init__(self, topics: Topics, events: EventBus, acknowledged: Callable[[], int]) -> None:
        self.topic = f"{topics.prefix}/{topics.kiosk_id}/hints"
        self.kiosk_id = topics.kiosk_id
        self.events = events
        self._acknowledged = acknowledged
        self._acked_at_hint = 0
        self._latest: dict[str, Any] | None = None
        self._reported: dict[str, float] = {}
        self._latest_said = False  # the latest hint was logged: its clearing is logged too

    def state(self) -> dict[str, Any] | None:
        """For telemetry: the latest hint not yet cleared by a receipt, or None."""
        return dict(self._latest) if self._latest else None

    def on_connected(self, link: MqttLink, limits: BrokerLimits) -> None:
        link.subscribe(self.topic, qos=0)

    def on_message(self, link: MqttLink, message: mqtt.MQTTMessage) -> None:
        if message.topic != self.topic or message.retain or len(message.payload) > MAX_HINT_BYTES:
            return
        try:
            body = json.loads(message.payload)
        except (UnicodeDecodeError, json.JSONDecodeError):
            return
        hint = body.get("hint") if isinstance(body, dict) else None
        if hint not in HINTS:
            return
        receiver = body.get("receiver")
        receiver = receiver[:64] if isinstance(receiver, str) and receiver.isprintable() else "?"
        self._latest = {"hint": hint, "receiver": receiver, "at": time.time(), "signed": False}
        self._acked_at_hint = self._acknowledged()
        now = time.monotonic()
        # Not reset by receipts: anyone can send a hint after each one (a line and an event
        # per receipt); telemetry shows the latest all the same.
        if now - self._reported.get(hint, -REPEAT_S) >= REPEAT_S:
            self._reported[hint] = now
            self._latest_said = True
            log.warning("%s (an unsigned hint from the central side: it changes nothing here)",
                        HINTS[hint].format(receiver=repr(receiver), kiosk=self.kiosk_id))
            self.events.emit("central_hint", hint=hint, receiver=receiver)

    def tick(self, link: MqttLink) -> bool:
        # A verified receipt since the hint: the central side can read us now.
        if self._latest is not None and self._acknowledged() > self._acked_at_hint:
            if self._latest_said:
                log.info("receipts arrive again; the central side's hint %r no longer applies",
                         self._latest["hint"])
            self._latest, self._latest_said = None, False
        return False

    def on_disconnected(self, link: MqttLink) -> None: ...
    def on_puback(self, link: MqttLink, mid: int) -> None: ...
    def on_stopping(self, link: MqttLink) -> None: ...
