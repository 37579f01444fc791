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


def test_the_kiosk_announces_a_maximum_packet_size() -> None:
    from agent.daemon import KIOSK_MAX_INCOMING_BYTES
    from agent.transport.receipts import MAX_HEADER_BYTES
    plain = link()._connect_properties()
    assert plain is not None and not hasattr(plain, "MaximumPacketSize"), "only where asked"
    props = MqttLink(MqttConfig(allow_plaintext=True), Idle(), client_id="c", name="n",
                     max_incoming_bytes=KIOSK_MAX_INCOMING_BYTES)._connect_properties()
    assert props is not None and props.MaximumPacketSize == KIOSK_MAX_INCOMING_BYTES
    assert KIOSK_MAX_INCOMING_BYTES > MAX_HEADER_BYTES + 64 * 1024, "a full receipt batch must fit"


def test_a_broker_drops_what_is_larger_than_announced(broker) -> None:  # type: ignore[no-untyped-def]
    """Red team: a 200 MB publish on the kiosk's status topic was read whole (~400 MB peak)
    before the 16 KiB check refused it. With Maximum Packet Size announced, mosquitto never
    sends it; the link stays up and the next small message arrives."""
    import threading

    from tests.support.waiting import wait_until

    got: list[int] = []
    subscribed = threading.Event()

    class Reader(Idle):
        def on_connected(self, link: MqttLink, limits: BrokerLimits) -> None:
            link.subscribe("probe/in", qos=1)
            subscribed.set()

        def on_message(self, link: MqttLink, message: mqtt.MQTTMessage) -> None:
            got.append(len(message.payload))

    config = MqttConfig(allow_plaintext=True, host="127.0.0.1", port=broker.port)
    reader = MqttLink(config, Reader(), client_id="max-packet-reader", name="reader",
                      max_incoming_bytes=64 * 1024)
    reader.start()
    try:
        wait_until(lambda: subscribed.is_set() and reader.subscribed, 10, what="subscribed")
        sender = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        sender.connect("127.0.0.1", broker.port)
        sender.loop_start()
        try:
            sender.publish("probe/in", b"x" * (1024 * 1024), qos=1).wait_for_publish(10)
            sender.publish("probe/in", b"small", qos=1).wait_for_publish(10)
        finally:
            sender.loop_stop()
            sender.disconnect()
        wait_until(lambda: got, 10, what="the small message")
        assert got == [5], got
        assert reader.connected
    finally:
        reader.stop()
