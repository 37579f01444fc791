"""The whole path against a real mosquitto: agent, broker, reference receiver."""

from __future__ import annotations

import hashlib
import json
import signal
import sqlite3
import threading
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent.config import AgentConfig
from agent.daemon import Agent
from cli.main import main
from devtools.broker import MosquittoBroker, free_port
from receiver.service import Receiver
from tests.support.config import agent_config, receiver_config
from tests.support.processes import queue_ids, queued_while_running, spawn_agent, stored_ids, write_config
from tests.support.waiting import wait_until


class Running:
    """An in-process agent and receiver, stopped on exit."""

    def __init__(self, config: AgentConfig, out_dir: Path) -> None:
        self.receiver = Receiver(receiver_config(out_dir, config))
        self.agent = Agent(config)

    def __enter__(self) -> Running:
        self.receiver.start()
        self.agent.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.agent.stop()
        self.receiver.stop()

    def drained(self, count: int) -> bool:
        assert self.agent.capture and self.agent.queue
        return self.agent.capture.captured >= count and self.agent.queue.totals()[0] == 0


def test_demo_command_end_to_end(broker: MosquittoBroker, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["demo", "--count", "12", "--json", "--broker", f"127.0.0.1:{broker.port}"])
    summary = json.loads(capsys.readouterr().out)
    assert code == 0
    assert summary["captured"] == summary["acknowledged"] == summary["stored_by_receiver"] == 12
    assert summary["lost"] == 0 and summary["complete"] is True
    assert summary["seconds"] > 0 and "duplicates_seen_by_receiver" in summary


def test_demo_with_embedded_broker(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["demo", "--count", "6", "--json", "--embedded-broker"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    summary = json.loads(captured.out)
    assert summary["protocol"] == "3.1.1" and summary["broker"].startswith("embedded")
    assert summary["acknowledged"] == 6 and summary["lost"] == 0
    assert "broker: embedded" in captured.err


def test_images_arrive_intact(tmp_path: Path, broker: MosquittoBroker) -> None:
    config = agent_config(tmp_path, broker.port, capture={"max_captures": 4},
                          devices={"finger": {"driver": "sim-finger", "seed": 3},
                                   "camera": {"driver": "sim-camera", "seed": 3}})
    out = tmp_path / "out"
    with Running(config, out) as run:
        wait_until(lambda: run.drained(4), what="4 captures acknowledged")
    metas = [json.loads(p.read_text()) for p in out.glob("kiosk-t1/*.json")]
    assert {m["modality"] for m in metas} == {"finger", "face"}
    for meta in metas:
        image = out / "kiosk-t1" / f"{meta['id']}.{'png' if meta['image_format'] == 'png' else 'jpg'}"
        assert hashlib.sha256(image.read_bytes()).hexdigest() == meta["image_sha256"]
        assert meta["kiosk_id"] == "kiosk-t1" and meta["site"] == "test-site"
    assert sorted(m["seq"] for m in metas) == [1, 2, 3, 4]


def test_broker_outage_loses_nothing(tmp_path: Path, broker: MosquittoBroker) -> None:
    total = 60
    config = agent_config(tmp_path, broker.port, capture={"max_captures": total, "rate_per_s": 20})
    out = tmp_path / "out"
    with Running(config, out) as run:
        wait_until(lambda: len(stored_ids(out)) >= 10, what="first captures stored")
        broker.stop()
        before = run.agent.capture.captured  # type: ignore[union-attr]
        wait_until(lambda: run.agent.capture.captured >= before + 20,  # type: ignore[union-attr]
                   what="captures taken while the broker is down")
        assert run.agent.queue.totals()[0] >= 20  # type: ignore[union-attr]
        broker.start()
        wait_until(lambda: run.drained(total), timeout_s=60, what="backlog drained after the outage")
    assert len(stored_ids(out)) == total
    assert run.receiver.counters.stored == total


def test_puback_mode_deletes_without_receipts(tmp_path: Path, broker: MosquittoBroker) -> None:
    config = agent_config(tmp_path, broker.port, mqtt={"ack_mode": "puback"}, capture={"max_captures": 5})
    agent = Agent(config)  # no receiver at all: the broker's PUBACK is the acknowledgement
    agent.start()
    try:
        wait_until(lambda: agent.capture.captured >= 5 and agent.queue.totals()[0] == 0,  # type: ignore[union-attr]
                   what="captures deleted on PUBACK")
    finally:
        agent.stop()


def test_capture_too_large_for_broker_goes_in_chunks(tmp_path: Path) -> None:
    # Issue 9: what used to be set aside as 'rejected' now travels in chunks (details and
    # faults: tests/reliability/test_chunked_transfer.py).
    small = MosquittoBroker(max_packet_size=20_000)  # smaller than a fingerprint PNG
    small.start()
    try:
        config = agent_config(tmp_path, small.port, capture={"max_captures": 2})
        with Running(config, tmp_path / "out") as run:
            wait_until(lambda: run.drained(2), what="oversized captures delivered in chunks")
    finally:
        small.close()
    assert len(stored_ids(tmp_path / "out")) == 2 and run.receiver.counters.reassembled == 2
    assert run.agent.publisher.counters.rejected == 0  # type: ignore[union-attr]


def test_two_receivers_share_the_load(tmp_path: Path, broker: MosquittoBroker) -> None:
    total = 40
    config = agent_config(tmp_path, broker.port, capture={"max_captures": total})
    out1, out2 = tmp_path / "r1", tmp_path / "r2"
    r1 = Receiver(receiver_config(out1, config, "r1"))
    r2 = Receiver(receiver_config(out2, config, "r2"))
    r1.start()
    r2.start()
    agent = Agent(config)
    try:
        wait_until(lambda: r1.link.subscribed and r2.link.subscribed, what="receivers subscribed")
        agent.start()
        wait_until(lambda: agent.capture.captured >= total and agent.queue.totals()[0] == 0,  # type: ignore[union-attr]
                   what="all captures acknowledged")
    finally:
        agent.stop()
        r1.stop()
        r2.stop()
    ids1, ids2 = stored_ids(out1), stored_ids(out2)
    assert ids1 and ids2, "both receivers must take part"
    assert not ids1 & ids2, "each capture stored once"
    assert len(ids1 | ids2) == total


# --- the agent as a separate process --------------------------------------------------


class StatusWatcher:
    """Collects retained status messages of one kiosk from a plain paho client."""

    def __init__(self, port: int, topic: str) -> None:
        self.states: list[str] = []
        self._lock = threading.Lock()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.subscribe(topic, qos=1)
        self.client.loop_start()

    def _on_message(self, client, userdata, message) -> None:  # type: ignore[no-untyped-def]
        with self._lock:
            self.states.append(json.loads(message.payload)["state"])

    def last(self) -> str | None:
        with self._lock:
            return self.states[-1] if self.states else None

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def test_sigkill_mid_stream_loses_no_committed_capture(tmp_path: Path, broker: MosquittoBroker) -> None:
    config_path = write_config(tmp_path, broker.port, max_captures=200)
    out = tmp_path / "out"
    from agent.config import load_config

    receiver = Receiver(receiver_config(out, load_config(config_path, {})))
    receiver.start()
    watcher = StatusWatcher(broker.port, "kiosk/kiosk-p1/status")
    log_path = tmp_path / "agent.log"
    proc = spawn_agent(config_path, log_path)
    try:
        wait_until(lambda: len(stored_ids(out)) >= 15, what="captures flowing")
        wait_until(lambda: watcher.last() == "online", what="online status")
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        left = queue_ids(tmp_path / "queue.db")  # committed but not yet acknowledged
        before = stored_ids(out)
        # The last will: the broker marks the kiosk offline (keepalive 5 s x 1.5).
        wait_until(lambda: watcher.last() == "offline", timeout_s=20, what="last will")

        # Restart without new captures: the backlog must drain completely.
        config_path = write_config(tmp_path, broker.port, max_captures=0, rate_per_s=0)
        config_path.write_text(config_path.read_text().replace('mode = "continuous"', 'mode = "on-demand"'))
        proc = spawn_agent(config_path, log_path)
        wait_until(lambda: queued_while_running(tmp_path / "queue.db") == 0, timeout_s=60,
                   what="backlog drained after restart")
        assert left <= stored_ids(out), "every committed capture arrives"
        assert before <= stored_ids(out)
        wait_until(lambda: watcher.last() == "online", what="online again")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        wait_until(lambda: watcher.last() == "offline", timeout_s=5, what="clean offline status")
        db = sqlite3.connect(tmp_path / "queue.db")
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        db.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        watcher.close()
        receiver.stop()
    assert "Traceback" not in log_path.read_text()


def test_sigterm_stops_cleanly_and_keeps_backlog(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there: the agent queues and retries
    config_path = write_config(tmp_path, port, max_captures=5)
    log_path = tmp_path / "agent.log"
    proc = spawn_agent(config_path, log_path)
    try:
        wait_until(lambda: queued_while_running(tmp_path / "queue.db") == 5,
                   what="5 captures queued while offline")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert len(queue_ids(tmp_path / "queue.db")) == 5
    text = log_path.read_text()
    assert "5 captures remain queued" in text and "cannot reach broker" in text


def test_demo_waits_for_a_broker_that_is_down(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    late = MosquittoBroker()
    starter = threading.Timer(2.0, late.start)
    starter.start()
    try:
        code = main(["demo", "--count", "4", "--json", "--broker", f"127.0.0.1:{late.port}"])
    finally:
        starter.join()
        late.close()
    out = capsys.readouterr()
    assert code == 0 and json.loads(out.out)["acknowledged"] == 4
    assert "waiting for it if it is down" in out.err
