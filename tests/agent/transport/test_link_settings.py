"""What the MQTT link asks of paho and of the broker: one setting, one meaning.

``mqtt.inflight_window`` bounds the captures in flight (the publisher's window); paho's own
in-flight limit adds a fixed allowance for control traffic; the Receive Maximum the link
advertises is ``mqtt.receive_maximum``, whatever the window."""

from __future__ import annotations

import paho.mqtt.client as mqtt

from agent.transport.config import MqttConfig
from agent.transport.mqtt_link import CONTROL_INFLIGHT_ALLOWANCE, BrokerLimits, MqttLink


class Idle:
    def on_connected(self, link: MqttLink, limits: BrokerLimits) -> None: ...
    def on_disconnected(self, link: MqttLink) -> None: ...
    def on_message(self, link: MqttLink, message: mqtt.MQTTMessage) -> None: ...
    def on_puback(self, link: MqttLink, mid: int) -> None: ...
    def tick(self, link: MqttLink) -> bool:
        return False
    def on_stopping(self, link: MqttLink) -> None: ...


def link(**mqtt_settings: object) -> MqttLink:
    config = MqttConfig(allow_plaintext=True, **mqtt_settings)  # type: ignore[arg-type]
    return MqttLink(config, Idle(), client_id="settings-test", name="settings")


def test_receive_maximum_is_its_own_setting() -> None:
    assert MqttConfig(allow_plaintext=True).receive_maximum == 16, \
        "today's effective value with the default window"
    for window in (1, 4, 16, 200):
        props = link(inflight_window=window)._connect_properties()
        assert props is not None and props.ReceiveMaximum == 16
    props = link(inflight_window=4, receive_maximum=64)._connect_properties()
    assert props is not None and props.ReceiveMaximum == 64
    assert link(protocol="3.1.1")._connect_properties() is None, "MQTT 3.1.1 has no Receive Maximum"


def test_paho_holds_the_capture_window_plus_room_for_control_traffic() -> None:
    for window in (1, 16, 200):
        client = link(inflight_window=window, receive_maximum=1)._client
        assert client.max_inflight_messages == window + CONTROL_INFLIGHT_ALLOWANCE
