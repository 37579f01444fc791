"""A kiosk the central side has no key for learns so: the receiver's unsigned hint becomes a
warning in the log and a field in telemetry, and never changes anything on the kiosk."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from agent.daemon import Agent
from agent.transport.central_hints import MAX_HINT_BYTES, CentralHints
from agent.transport.events import EventBus
from agent.transport.protocol import Topics
from devtools.broker import MosquittoBroker
from receiver.service import Receiver
from tests.support.config import agent_config, receiver_config
from tests.support.waiting import wait_until


def test_an_unenrolled_kiosk_is_told_and_keeps_its_captures(
        tmp_path: Path, broker: MosquittoBroker, caplog: pytest.LogCaptureFixture) -> None:
    config = agent_config(tmp_path, broker.port, capture={"max_captures": 2})
    (tmp_path / "keys" / "kiosks" / "kiosk-t1.pub").unlink()  # never enrolled centrally
    receiver = Receiver(receiver_config(tmp_path / "out", config))
    agent = Agent(config)
    caplog.set_level(logging.INFO)
    receiver.start()
    agent.start()
    try:
        assert agent.telemetry is not None and agent.telemetry.hints is not None
        hints = agent.telemetry.hints
        wait_until(lambda: hints.state() is not None, timeout_s=30, what="the central side's hint")
        state = hints.state()
        assert state is not None and state["hint"] == "not_enrolled" and state["receiver"] == "r1"
        assert state["signed"] is False
        assert agent.queue is not None and agent.capture is not None
        wait_until(lambda: agent.capture.captured == 2, what="both captures taken")  # type: ignore[union-attr]
        assert agent.queue.totals()[0] == 2  # nothing deleted
        assert any("has no enrolled key for this kiosk" in r.getMessage() and "keys enrol --kiosk-id kiosk-t1"
                   in r.getMessage() for r in caplog.records)
    finally:
        agent.stop()
        receiver.stop()
    assert receiver.counters.stored == 0


def _message(topic: str, payload: bytes, retain: bool = False) -> mqtt.MQTTMessage:
    message = mqtt.MQTTMessage(topic=topic.encode())
    message.payload, message.retain = payload, retain
    return message


def test_hints_are_words_only_and_clear_on_a_receipt(caplog: pytest.LogCaptureFixture) -> None:
    acked = [0]
    events = EventBus()
    hints = CentralHints(Topics("kiosk", "k1"), events, lambda: acked[0])
    topic = "kiosk/k1/hints"
    hostile = [
        _message("kiosk/k2/hints", b'{"hint": "not_enrolled"}'),  # another kiosk's
        _message(topic, b'{"hint": "delete_everything"}'),  # not a hint a kiosk knows
        _message(topic, b'{"hint": "not_enrolled"}', retain=True),  # a receiver never retains
        _message(topic, b"\xff\xfe not json"),
        _message(topic, b'["not_enrolled"]'),
        _message(topic, json.dumps({"hint": "not_enrolled", "pad": "x" * MAX_HINT_BYTES}).encode()),
    ]
    for message in hostile:
        hints.on_message(None, message)  # type: ignore[arg-type]
    assert hints.state() is None and events.take() == []
    caplog.set_level(logging.WARNING)
    for _ in range(3):  # a kiosk resending every receipt timeout: said once
        hints.on_message(None, _message(topic, b'{"hint": "not_enrolled", "receiver": "r\\n1"}'))  # type: ignore[arg-type]
    state = hints.state()
    assert state is not None and state["receiver"] == "?"  # a control character: not shown as sent
    assert len([r for r in caplog.records if "no enrolled key" in r.getMessage()]) == 1
    assert [e["event"] for e in events.take()] == ["central_hint"]
    hints.tick(None)  # type: ignore[arg-type]
    assert hints.state() is not None  # no receipt yet
    acked[0] = 1
    hints.tick(None)  # type: ignore[arg-type]
    assert hints.state() is None


def test_a_hint_after_every_receipt_is_no_log_or_event_flood(caplog: pytest.LogCaptureFixture) -> None:
    """Anyone on the broker can send a hint right after each receipt: the receipt cleared the
    repeat limit, so each one was a WARNING, an INFO and a ``central_hint`` event (measured:
    2000 lines and 1000 events for 1000 receipts). Now a hint is said once per REPEAT_S
    whatever the receipts do; telemetry still shows the latest."""
    acked = [0]
    events = EventBus()
    hints = CentralHints(Topics("kiosk", "k1"), events, lambda: acked[0])
    caplog.set_level(logging.INFO, logger="agent.transport.central_hints")
    for _ in range(100):
        hints.on_message(None, _message("kiosk/k1/hints", b'{"hint": "not_enrolled", "receiver": "r1"}'))  # type: ignore[arg-type]
        assert hints.state() is not None
        acked[0] += 1
        hints.tick(None)  # type: ignore[arg-type]
        assert hints.state() is None
    # Its own lines only: whether the event bus's INFO line is captured too depends on the
    # root logger's level, which earlier tests in the same process may have set.
    said = [r.getMessage() for r in caplog.records if r.name == "agent.transport.central_hints"]
    assert len(said) <= 2, said
    assert [e["event"] for e in events.take()] == ["central_hint"]
