"""Chunked, resumable transfers and the cellular uplink gate, against real mosquitto brokers.

Captures larger than the broker's Maximum Packet Size (or uplink.chunk_bytes) travel in
chunks; cuts (proxy reset, broker killed, receiver restarted) resume with only the missing
chunks; a chunk corrupted on the way is asked for again; the bandwidth cap, daily budget
and upload windows hold captures back and let them go again. Every test checks that what
the receiver stored is byte-identical to what the kiosk captured: lost = 0.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent.config import AgentConfig
from agent.daemon import Agent
from agent.security.keys import load_decryption_key, load_kiosk_keys
from agent.security.sealing import Opener
from agent.transport.chunking import CHUNK_MAGIC, Chunk
from agent.transport.mqtt_link import MqttLink
from agent.transport.protocol import decode_capture
from agent.transport.publisher import CHUNK_BYTES_PER_TURN, PUBLISH_OVERHEAD, Publisher
from agent.transport.telemetry import snapshot
from devtools.broker import MosquittoBroker
from receiver.service import Receiver
from tests.reliability.proxy import FaultyProxy
from tests.support.config import agent_config, receiver_config
from tests.support.processes import stored_ids
from tests.support.waiting import wait_until

BIG_FINGER = {"driver": "sim-finger", "seed": 3, "width": 800, "height": 800}  # ~430 KB PNG


def big_config(tmp_path: Path, port: int, captures: int, uplink: dict[str, Any],
               **sections: Any) -> AgentConfig:
    return agent_config(tmp_path, port, capture={"max_captures": captures, "finger_positions": [1, 2, 3]},
                        mqtt={"keepalive_s": 5, "receipt_timeout_s": 2.0}, uplink=uplink,
                        devices={"finger": BIG_FINGER}, **sections)


def expected_images(agent: Agent) -> dict[str, bytes]:
    """The images inside the kiosk's sealed, queued captures, opened with the central key."""
    keys = agent.config.security.kiosk_key.parent
    opener = Opener(load_decryption_key(keys / "central.key"), load_kiosk_keys(keys / "kiosks"))
    out = {}
    for item in agent.queue.next_batch(0, 1000):  # type: ignore[union-attr]
        out[item.id] = decode_capture(opener.open(item.payload)[1]).image
    return out


def assert_identical(out: Path, images: dict[str, bytes]) -> None:
    assert stored_ids(out) == set(images), "every capture stored, nothing else"
    for item_id, image in images.items():
        assert (out / "kiosk-t1" / f"{item_id}.png").read_bytes() == image, f"{item_id} differs"


def drained(agent: Agent, count: int) -> bool:
    return agent.capture.captured >= count and agent.queue.totals()[0] == 0  # type: ignore[union-attr]


def parts_held(out: Path) -> int:
    return len(list((out / ".chunks" / "kiosk-t1").glob("*/*.part")))


class PublishSpy:
    """Wraps MqttLink.publish for the agent's link: records (time, topic, size); may corrupt."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, corrupt_index: int | None = None) -> None:
        self.records: list[tuple[float, str, int]] = []
        self.corrupted = 0
        self.turns: list[int] = []
        real = MqttLink.publish
        spy = self

        def publish(link: MqttLink, topic: str, payload: bytes, **kw: Any) -> int:
            if link.name == "agent":
                spy.records.append((time.monotonic(), topic, len(payload) + len(topic) + PUBLISH_OVERHEAD))
                if (corrupt_index is not None and not spy.corrupted and topic.endswith("/chunks")
                        and payload[:3] == CHUNK_MAGIC and Chunk.decode(payload).index == corrupt_index):
                    # One bit flipped on the way, as a faulty modem or middlebox might.
                    payload = payload[:-1] + bytes([payload[-1] ^ 0x01])
                    spy.corrupted += 1
            return real(link, topic, payload, **kw)

        real_tick = Publisher.tick

        def tick(publisher: Publisher, link: MqttLink) -> bool:
            before = publisher.counters.chunks_sent
            busy = real_tick(publisher, link)
            if publisher.counters.chunks_sent > before:
                spy.turns.append(publisher.counters.chunks_sent - before)
            return busy

        monkeypatch.setattr(MqttLink, "publish", publish)
        monkeypatch.setattr(Publisher, "tick", tick)

    def capture_bytes(self) -> list[tuple[float, int]]:
        return [(t, n) for t, topic, n in self.records if topic.endswith(("/chunks", "/captures"))]


class Watcher:
    """A plain MQTT client collecting a kiosk's telemetry and status (never held back)."""

    def __init__(self, port: int, *topics: str) -> None:
        self.messages: list[tuple[str, dict[str, Any]]] = []
        self._lock = threading.Lock()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        for topic in topics:
            self.client.subscribe(topic, qos=1)
        self.client.loop_start()

    def _on_message(self, client, userdata, message) -> None:  # type: ignore[no-untyped-def]
        with self._lock:
            self.messages.append((message.topic, json.loads(message.payload)))

    def on(self, leaf: str) -> list[dict[str, Any]]:
        with self._lock:
            return [m for t, m in self.messages if t.endswith("/" + leaf)]

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


# --- chunked transfer ------------------------------------------------------------------


def test_capture_larger_than_the_broker_limit_arrives_in_chunks(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    small = MosquittoBroker(max_packet_size=20_000)  # far smaller than one capture (~430 KB)
    small.start()
    spy = PublishSpy(monkeypatch)
    config = big_config(tmp_path, small.port, 3, {"chunk_bytes": 0})  # chunk only as the broker requires
    out = tmp_path / "out"
    agent = Agent(config)
    receiver = Receiver(receiver_config(out, config))
    try:
        agent.start()  # the receiver is not there yet: manifests go unanswered, nothing else is sent
        wait_until(lambda: agent.capture.captured >= 3, what="3 captures queued")  # type: ignore[union-attr]
        images = expected_images(agent)
        assert agent.publisher.counters.chunks_sent == 0  # type: ignore[union-attr]
        receiver.start()
        wait_until(lambda: drained(agent, 3), timeout_s=60, what="chunked captures acknowledged")
    finally:
        agent.stop()
        receiver.stop()
        small.close()
    assert_identical(out, images)
    sizes = [len(p) for p in images.values()]
    counters, rc = agent.publisher.counters, receiver.counters  # type: ignore[union-attr]
    assert counters.rejected == 0 and rc.reassembled == 3 and rc.chunks_corrupt == 0
    # Each chunk crossed the link exactly once: the kiosk waited for the receiver's status.
    assert counters.chunks_sent == rc.chunks_received
    assert counters.chunks_sent >= 3 * (min(sizes) // 20_000)
    # No PUBLISH above the broker's limit (mosquitto would have cut the connection).
    assert max(n for _, _, n in spy.records) <= 20_000 and agent.link.connects == 1  # type: ignore[union-attr]
    # Short loop turns: replies and telemetry are served between them.
    per_turn_limit = CHUNK_BYTES_PER_TURN // (20_000 - 600) + 1
    assert spy.turns and max(spy.turns) <= per_turn_limit and len(spy.turns) >= 6
    print(f"chunked: 3 captures of {min(sizes):,}-{max(sizes):,} bytes through a 20,000-byte broker limit in "
          f"{counters.chunks_sent} chunks ({max(spy.turns)} at most per loop turn), byte-identical, lost 0")


@pytest.mark.parametrize("fault", ["proxy-reset", "broker-killed", "receiver-restarted"])
def test_interrupted_transfer_resends_only_missing_chunks(tmp_path: Path, broker: MosquittoBroker,
                                                          fault: str) -> None:
    proxy = FaultyProxy(broker.port) if fault == "proxy-reset" else None
    uplink = {"chunk_bytes": 8192, "max_bytes_per_s": 100_000, "inflight_bytes": 65536}
    config = big_config(tmp_path, proxy.port if proxy else broker.port, 1, uplink)
    out = tmp_path / "out"
    receiver = Receiver(receiver_config(out, config))
    receiver.start()
    agent = Agent(config)
    try:
        wait_until(lambda: receiver.link.subscribed, what="receiver subscribed")
        agent.start()
        wait_until(lambda: agent.capture.captured >= 1, what="the capture queued")  # type: ignore[union-attr]
        images = expected_images(agent)
        total = -(-len(next(iter(agent.queue.next_batch(0, 1))).payload) // 8192)  # type: ignore[union-attr]
        publisher = agent.publisher
        assert publisher is not None
        wait_until(lambda: parts_held(out) >= total * 0.4, timeout_s=30, what="40 % of the chunks received")
        if fault == "receiver-restarted":
            receiver.stop()  # its chunks are on disk; what the kiosk sends meanwhile is lost
            wait_until(lambda: publisher.counters.chunks_sent >= total, what="first pass finished")
            held, sent_before = parts_held(out), publisher.counters.chunks_sent
            receiver = Receiver(receiver_config(out, config))
            receiver.start()
        else:
            sent_before, held = publisher.counters.chunks_sent, parts_held(out)
            if proxy is not None:
                proxy.drop()  # connections reset mid-transfer
                wait_until(lambda: agent.link.connects >= 2, what="reconnect")  # type: ignore[union-attr]
            else:
                broker.kill()
                time.sleep(2.0)
                broker.start()
        wait_until(lambda: drained(agent, 1), timeout_s=60, what="transfer finished after the fault")
    finally:
        agent.stop()
        receiver.stop()
        if proxy is not None:
            proxy.close()
    assert_identical(out, images)
    after = publisher.counters.chunks_sent - sent_before
    slack = 65536 // 8192 + 1  # at most the in-flight window was on its way at the cut
    assert after < total, "only missing chunks go again"
    if fault == "receiver-restarted":
        assert after == total - held, "exactly the chunks the restarted receiver did not have"
    else:
        assert after <= total - held + slack
    assert not list((out / ".chunks" / "kiosk-t1").glob("*/*.part")), "reassembly state cleaned up"
    print(f"{fault}: 1 capture, {total} chunks, {held} held by the receiver at the fault, {after} sent "
          f"after it, {publisher.counters.manifests_sent} manifests, lost 0")


def test_corrupted_chunk_is_detected_and_sent_again(tmp_path: Path, broker: MosquittoBroker,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    spy = PublishSpy(monkeypatch, corrupt_index=3)
    config = big_config(tmp_path, broker.port, 1, {"chunk_bytes": 16384})
    out = tmp_path / "out"
    receiver = Receiver(receiver_config(out, config))
    receiver.start()
    agent = Agent(config)
    try:
        wait_until(lambda: receiver.link.subscribed, what="receiver subscribed")
        agent.start()
        wait_until(lambda: agent.capture.captured >= 1, what="the capture queued")  # type: ignore[union-attr]
        images = expected_images(agent)
        wait_until(lambda: drained(agent, 1), timeout_s=60, what="capture acknowledged")
    finally:
        agent.stop()
        receiver.stop()
    assert spy.corrupted == 1
    assert receiver.counters.chunks_corrupt == 1
    assert agent.publisher.counters.chunks_rerequested == 1  # type: ignore[union-attr]
    total = receiver.counters.chunks_received
    assert agent.publisher.counters.chunks_sent == total + 1  # type: ignore[union-attr]
    assert_identical(out, images)
    print(f"corrupted chunk: 1 of {total} flipped in transit, detected, sent again; byte-identical, lost 0")


# --- the uplink gate -------------------------------------------------------------------


def test_bandwidth_cap_holds_the_measured_rate(tmp_path: Path, broker: MosquittoBroker,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    cap = 60_000
    spy = PublishSpy(monkeypatch)
    config = agent_config(tmp_path, broker.port, capture={"max_captures": 4},
                          uplink={"chunk_bytes": 4096, "max_bytes_per_s": cap})
    out = tmp_path / "out"
    receiver = Receiver(receiver_config(out, config))
    receiver.start()
    agent = Agent(config)
    try:
        agent.start()
        wait_until(lambda: drained(agent, 4), timeout_s=60, what="captures sent under the cap")
        state = snapshot(agent)
    finally:
        agent.stop()
        receiver.stop()
    sends = spy.capture_bytes()
    elapsed = sends[-1][0] - sends[0][0]
    rate = sum(n for _, n in sends[1:]) / elapsed
    assert 0.8 * cap <= rate <= 1.2 * cap, f"measured {rate:,.0f} B/s for a cap of {cap:,}"
    assert len(stored_ids(out)) == 4
    assert state["uplink"]["max_bytes_per_s"] == cap and state["uplink"]["sent_bytes"] >= 4 * 80_000
    print(f"bandwidth cap {cap:,} B/s: measured {rate:,.0f} B/s over {elapsed:.1f} s "
          f"({sum(n for _, n in sends):,} bytes, {len(sends)} messages), 4 captures, lost 0")


def test_daily_budget_holds_captures_until_the_next_day(tmp_path: Path, broker: MosquittoBroker,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "agent.transport.events")
    # ~86 KB per capture, one message each: the budget covers one capture a day.
    config = agent_config(tmp_path, broker.port, capture={"max_captures": 3},
                          uplink={"daily_budget_bytes": 150_000})
    out = tmp_path / "out"
    receiver = Receiver(receiver_config(out, config))
    receiver.start()
    agent = Agent(config)
    try:
        agent.start()
        publisher = agent.publisher
        assert publisher is not None
        wait_until(lambda: len(stored_ids(out)) == 1 and agent.capture.captured >= 3,  # type: ignore[union-attr]
                   what="the first capture sent, the others queued")
        time.sleep(1.0)
        assert len(stored_ids(out)) == 1 and agent.queue.totals()[0] == 2  # type: ignore[union-attr]
        state = snapshot(agent)["uplink"]
        assert state["held"] == "daily budget reached" and state["budget_total_bytes"] == 150_000
        assert 80_000 < state["budget_used_bytes"] <= 150_000
        for day in (1, 2):
            # Local midnight passes (the gate's clock is injectable).
            publisher.uplink.clock = lambda d=day: datetime.now() + timedelta(days=d)
            wait_until(lambda d=day: len(stored_ids(out)) == 1 + d, what=f"day {day}'s capture sent")
        time.sleep(0.5)
        assert drained(agent, 3)
    finally:
        agent.stop()
        receiver.stop()
    quota_events = [r for r in caplog.records if r.getMessage().startswith("event quota_reached")]
    assert len(quota_events) == 2, "one event on day 0 and one on day 1; day 2 had budget left"
    saved = json.loads((tmp_path / "uplink-state.json").read_text())
    assert saved["day"] == (datetime.now() + timedelta(days=2)).date().isoformat()
    assert 80_000 < saved["used"] <= 150_000
    print("daily budget 150,000 B: 3 captures over 3 (simulated) days, 1 a day, "
          "2 quota_reached events, lost 0")


def _hhmm(t: datetime) -> str:
    return t.strftime("%H:%M")


def test_upload_windows_open_and_close(tmp_path: Path, broker: MosquittoBroker) -> None:
    now = datetime.now()
    window = f"{_hhmm(now + timedelta(hours=2))}-{_hhmm(now + timedelta(hours=3))}"  # closed now
    config = agent_config(tmp_path, broker.port, capture={"max_captures": 4},
                          uplink={"windows": [window], "max_bytes_per_s": 80_000},
                          telemetry={"interval_s": 0.5})
    out = tmp_path / "out"
    receiver = Receiver(receiver_config(out, config))
    receiver.start()
    watcher = Watcher(broker.port, "kiosk/kiosk-t1/telemetry", "kiosk/kiosk-t1/status")
    agent = Agent(config)
    try:
        agent.start()
        publisher = agent.publisher
        assert publisher is not None
        wait_until(lambda: agent.capture.captured >= 4, what="4 captures queued")  # type: ignore[union-attr]
        time.sleep(1.5)
        assert stored_ids(out) == set(), "nothing sent outside the window"
        # ... but status and telemetry are never held back, and telemetry says why captures wait.
        wait_until(lambda: any(m["state"] == "online" for m in watcher.on("status")), what="online status")
        wait_until(lambda: any(m.get("uplink", {}).get("window_open") is False
                               for m in watcher.on("telemetry")), what="telemetry showing the closed window")
        closed = [m for m in watcher.on("telemetry") if m["uplink"]["window_open"] is False][-1]
        assert closed["uplink"]["held"] == "window closed" and closed["backlog_drain_estimate_s"] > 3600

        publisher.uplink.clock = lambda: datetime.now() + timedelta(hours=2, minutes=30)  # inside
        wait_until(lambda: len(stored_ids(out)) >= 1, what="the window opened")
        publisher.uplink.clock = datetime.now  # closed again
        time.sleep(1.5)  # what was already on its way arrives
        held_back = len(stored_ids(out))
        time.sleep(1.0)
        assert len(stored_ids(out)) == held_back < 4, "the closed window holds the rest"

        publisher.uplink.clock = lambda: datetime.now() + timedelta(hours=2, minutes=30)
        wait_until(lambda: drained(agent, 4), timeout_s=30, what="the rest sent in the next window")
    finally:
        agent.stop()
        receiver.stop()
        watcher.close()
    assert len(stored_ids(out)) == 4
    print(f"upload window {window}: 0 sent while closed, {held_back} before it closed again, "
          "4 after it reopened; telemetry and status flowed throughout; lost 0")
