"""Several link handlers on one MQTT connection, in priority order.

The daemon chains command replies, then telemetry and events, then captures: each loop
turn serves them in that order, so a reply never waits behind a backlog of captures.
"""

from __future__ import annotations

import logging

import paho.mqtt.client as mqtt

from agent.guard import log_and_continue
from agent.transport.mqtt_link import BrokerLimits, LinkHandler, MqttLink

log = logging.getLogger(__name__)


class HandlerChain:
    def __init__(self, *handlers: LinkHandler) -> None:
        self.handlers = handlers

    def on_connected(self, link: MqttLink, limits: BrokerLimits) -> None:
        for h in self.handlers:
            self._safe(h.on_connected, link, limits)

    def on_disconnected(self, link: MqttLink) -> None:
        for h in self.handlers:
            self._safe(h.on_disconnected, link)

    def on_message(self, link: MqttLink, message: mqtt.MQTTMessage) -> None:
        for h in self.handlers:
            self._safe(h.on_message, link, message)

    def on_puback(self, link: MqttLink, mid: int) -> None:
        for h in self.handlers:
            self._safe(h.on_puback, link, mid)

    def on_stopping(self, link: MqttLink) -> None:
        for h in self.handlers:
            self._safe(h.on_stopping, link)

    def tick(self, link: MqttLink) -> bool:
        busy = False
        for h in self.handlers:
            # One handler's bug must not starve the others (captures keep flowing).
            with log_and_continue(log, "error in %s; continuing", type(h).__name__):
                busy |= bool(h.tick(link))
        return busy

    @staticmethod
    def _safe(fn, *args) -> None:  # type: ignore[no-untyped-def]
        with log_and_continue(log, "error in %s; continuing", getattr(fn, "__qualname__", fn)):
            fn(*args)
