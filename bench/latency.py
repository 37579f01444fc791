"""End-to-end latency: capture request to receipt, at a modest rate (no backlog builds up).

Agent: an Agent in this process (on-demand, default settings) on a loopback mosquitto, a
reference receiver in its own process. Captures are requested one at a time at a fixed rate
through the real capture path (CaptureService with the fixed-image device, sharing the
agent's queue and sealer); the clock runs from the request until the receipt for that id
reaches an observer subscribed to the kiosk's receipts topic (the agent gets the same
message from the broker at the same moment).

Raw: a plain paho client publishes 100 KB payloads at QoS 1 at the same rate to a raw peer
process that answers each one at QoS 1 (bench/raw_peer.py --echo); the clock runs from
``publish`` to the answer's arrival.
"""

from __future__ import annotations

import struct
import threading
import time
from typing import Any

import paho.mqtt.client as mqtt

from agent.daemon import Agent
from agent.security.keys import load_receipt_keys
from agent.transport.receipts import verify_receipts
from bench.common import (
    IMAGE_BYTES,
    KIOSK_ID,
    TOPIC_PREFIX,
    BenchBroker,
    BenchError,
    ImagePool,
    Sizes,
    Workspace,
    capture_service,
    ms,
    percentile,
    ratio,
)
from bench.procs import RawPeer, ReceiverProcess, connect, disconnect, new_client, subscribe, wait_receivers

RAW_PREFIX = "raw"


class Arrivals:
    """Arrival times of answers by key, filled from paho's thread."""

    def __init__(self) -> None:
        self.times: dict[Any, float] = {}
        self._cond = threading.Condition()

    def add(self, key: Any) -> None:
        now = time.monotonic()
        with self._cond:
            self.times.setdefault(key, now)
            self._cond.notify_all()

    def wait_for(self, keys: set[Any], timeout_s: float) -> None:
        with self._cond:
            if not self._cond.wait_for(lambda: keys <= self.times.keys(), timeout_s):
                missing = len(keys - self.times.keys())
                raise BenchError(f"{missing} of {len(keys)} answers missing after {timeout_s:.0f} s")


class Pacer:
    """Sleeps so that successive calls happen at a fixed rate."""

    def __init__(self, rate_per_s: float) -> None:
        self.interval = 1.0 / rate_per_s
        self.next_at = time.monotonic()

    def wait(self) -> None:
        delay = self.next_at - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        self.next_at += self.interval


def agent_latencies(ws: Workspace, port: int, sizes: Sizes) -> tuple[list[float], list[float]]:
    """(capture to receipt, capture to commit) in seconds, one of each per capture."""
    config = ws.agent_config(port=port, queue_path=ws.fresh_dir("e2e") / "queue.db")
    receipts = Arrivals()
    observer = new_client("bench-receipt-observer")
    trusted = load_receipt_keys([ws.keys.receipt_public])
    # Receipts are signed frames: verified here as the kiosk verifies them (same cost).
    observer.on_message = lambda c, u, m: [receipts.add(r.id) for r in verify_receipts(bytes(m.payload),
                                                                                       trusted, KIOSK_ID)]
    connect(observer, port)
    agent = Agent(config)
    try:
        subscribe(observer, f"{TOPIC_PREFIX}/{KIOSK_ID}/receipts")
        agent.start()
        _wait_connected(agent)
        assert agent.queue is not None and agent.capture is not None
        requested: dict[str, float] = {}
        committed: list[float] = []
        pacer = Pacer(sizes.e2e_rate_per_s)
        with capture_service(config, agent.queue, agent.capture.sealer, ImagePool()) as service:
            for i in range(sizes.e2e_count):
                pacer.wait()
                t = time.monotonic()
                outcome = service.capture("bench", position=1 + i % 10).result(timeout=30)
                committed.append(time.monotonic() - t)
                requested[outcome.id] = t
            receipts.wait_for(set(requested), 60)
    finally:
        agent.stop()
        disconnect(observer)
    return [receipts.times[i] - t for i, t in requested.items()], committed


def _wait_connected(agent: Agent, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not (agent.link and agent.link.connected):
        if time.monotonic() > deadline:
            raise BenchError(f"the agent did not connect within {timeout_s:.0f} s")
        time.sleep(0.01)


def raw_latencies(port: int, sizes: Sizes) -> list[float]:
    answers = Arrivals()
    client = new_client("raw-e2e")

    def on_message(c: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        answers.add(struct.unpack(">Q", message.payload)[0])

    client.on_message = on_message
    connect(client, port)
    try:
        subscribe(client, f"{RAW_PREFIX}/{KIOSK_ID}/receipts")
        pool = ImagePool()
        sent: dict[int, float] = {}
        pacer = Pacer(sizes.e2e_rate_per_s)
        for i in range(sizes.e2e_count):
            payload = struct.pack(">Q", i) + pool.next()[8:]
            pacer.wait()
            sent[i] = time.monotonic()
            client.publish(f"{RAW_PREFIX}/{KIOSK_ID}/captures", payload, qos=1)
        answers.wait_for(set(sent), 60)
    finally:
        disconnect(client)
    return [answers.times[i] - t for i, t in sent.items()]


def run(ws: Workspace, sizes: Sizes) -> dict[str, Any]:
    with BenchBroker() as broker:
        with RawPeer(ws, broker.port, f"$share/raw/{RAW_PREFIX}/+/captures", "raw-echo", echo=True) as peer:
            peer.start()
            peer.wait_ready()
            raw = raw_latencies(broker.port, sizes)
            peer.stop()
        with ReceiverProcess(ws, broker.port, ws.fresh_dir("e2e-received"), "r1") as receiver:
            receiver.start()
            wait_receivers(ws, broker.port, {"r1"})
            e2e, commit = agent_latencies(ws, broker.port, sizes)
            receiver.stop()
    p50, p99 = percentile(e2e, 50), percentile(e2e, 99)
    raw_p50 = percentile(raw, 50)
    return {
        "e2e_p50_ms": ms(p50),
        "e2e_p99_ms": ms(p99),
        "e2e": {
            "count": sizes.e2e_count,
            "rate_per_s": sizes.e2e_rate_per_s,
            "image_bytes": IMAGE_BYTES,
            "agent_max_ms": ms(max(e2e)),
            "agent_commit_p50_ms": ms(percentile(commit, 50)),
            "agent_commit_max_ms": ms(max(commit)),
            "raw_paho_p50_ms": ms(raw_p50),
            "raw_paho_p99_ms": ms(percentile(raw, 99)),
            "p50_ratio_vs_paho": ratio(p50, raw_p50),
        },
    }
