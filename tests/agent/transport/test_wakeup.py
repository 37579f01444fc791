"""The MQTT thread sleeps instead of polling, and wakes at once for a committed capture; the
receipts of a few milliseconds are deleted in one transaction with the send attempts.

Against a real mosquitto (the ``broker`` fixture) and a real queue file."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from agent.daemon import Agent
from agent.transport import mqtt_link
from agent.transport.config import MqttConfig
from agent.transport.durable_queue import DurableQueue
from agent.transport.mqtt_link import BrokerLimits, MqttLink
from tests.support.config import agent_config
from tests.support.waiting import wait_until


class Counting:
    """A handler that counts its turns and remembers when each began."""

    def __init__(self) -> None:
        self.turns: list[float] = []

    def on_connected(self, link: MqttLink, limits: BrokerLimits) -> None: ...
    def on_disconnected(self, link: MqttLink) -> None: ...
    def on_message(self, link: MqttLink, message: mqtt.MQTTMessage) -> None: ...
    def on_puback(self, link: MqttLink, mid: int) -> None: ...
    def on_stopping(self, link: MqttLink) -> None: ...

    def tick(self, link: MqttLink) -> bool:
        self.turns.append(time.monotonic())
        return False


def test_an_idle_link_sleeps_and_wakes_at_once(broker) -> None:  # type: ignore[no-untyped-def]
    handler = Counting()
    link = MqttLink(MqttConfig(allow_plaintext=True, host="127.0.0.1", port=broker.port), handler,
                    client_id="wake-test", name="wake", idle_wait_s=mqtt_link.KIOSK_IDLE_WAIT_S)
    link.start()
    try:
        wait_until(lambda: link.connected, 10, what="connected")
        time.sleep(0.3)
        before = len(handler.turns)
        time.sleep(2.0)
        idle_turns = len(handler.turns) - before
        # At most one turn per KIOSK_IDLE_WAIT_S (0.5 s) plus keepalive traffic: not a 50 ms poll (40).
        assert idle_turns <= 2.0 / mqtt_link.KIOSK_IDLE_WAIT_S + 2, idle_turns
        delays = []
        for _ in range(20):
            time.sleep(0.05)
            count, asked = len(handler.turns), time.monotonic()
            link.wake()
            wait_until(lambda c=count: len(handler.turns) > c, 2, what="a turn after wake()")
            delays.append(handler.turns[count] - asked)
        delays.sort()
        # The median wake-up takes well under a millisecond here; 20 ms leaves room for a loaded machine.
        assert delays[len(delays) // 2] < 0.02, delays
    finally:
        link.stop()
    link.wake()  # after stop: harmless


def test_a_committed_capture_is_sent_at_once(tmp_path: Path, broker,  # type: ignore[no-untyped-def]
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Capture to PUBACK in puback mode: milliseconds, not up to the idle wait (made 5 s here,
    so that a capture waiting for the next idle turn could not pass for a woken one)."""
    import agent.daemon

    monkeypatch.setattr(agent.daemon, "KIOSK_IDLE_WAIT_S", 5.0)
    config = agent_config(tmp_path, broker.port, capture={"mode": "on-demand"},
                          mqtt={"ack_mode": "puback"})
    agent = Agent(config)
    agent.start()
    try:
        assert agent.link is not None and agent.queue is not None and agent.capture is not None
        assert agent.link.idle_wait_s == 5.0
        wait_until(lambda: agent.link.connected, 10, what="connected")
        time.sleep(0.5)  # the link is asleep now
        took = []
        for _ in range(3):
            agent.capture.capture("finger").result(30)
            committed = time.monotonic()
            wait_until(lambda: agent.queue.totals()[0] == 0, 10, interval_s=0.001, what="acknowledged")
            took.append(time.monotonic() - committed)
            time.sleep(0.3)  # asleep again
        took.sort()
        # Send, PUBACK and the delete's fsync: tens of milliseconds even on a loaded machine.
        assert took[1] < 1.0, took
    finally:
        agent.stop()


def test_receipts_of_a_few_milliseconds_share_one_transaction(
        tmp_path: Path, broker, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """A backlog of 200 drained in puback mode: acknowledgements and attempt counts in far
    fewer transactions than captures, and no transaction of attempt counts of its own."""
    path = tmp_path / "queue.db"
    queue = DurableQueue(path, max_bytes=1 << 30, min_free_bytes=0)
    for i in range(200):
        queue.put(f"b{i:03d}", "capture", lambda seq: b"p" * 20_000)
    queue.close()
    calls = {"ack": 0, "mark_sent": 0}
    lock = threading.Lock()
    for name in calls:
        real = getattr(DurableQueue, name)

        def spy(self, *args, _real=real, _name=name, **kwargs):  # type: ignore[no-untyped-def]
            with lock:
                calls[_name] += 1
            return _real(self, *args, **kwargs)

        monkeypatch.setattr(DurableQueue, name, spy)
    config = agent_config(tmp_path, broker.port, capture={"mode": "on-demand"},
                          mqtt={"ack_mode": "puback"}, queue={"path": str(path), "min_free_bytes": 0})
    agent = Agent(config)
    agent.start()
    try:
        wait_until(lambda: agent.queue.totals()[0] == 0, 30, what="the backlog drained")  # type: ignore[union-attr]
    finally:
        agent.stop()
    assert calls["mark_sent"] == 0, "attempts are counted with the acknowledgements"
    assert 0 < calls["ack"] <= 200 // 4, calls
