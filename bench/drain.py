"""Backlog drain: captures/s until a backlog is delivered, the agent against raw paho-mqtt.

The backlog is the commit benchmark's queue: N captures of 100 KB committed through the real
capture path (CaptureService, sealing, DurableQueue.put) while no broker existed. Each agent
run gets its own copy and runs as deployed, ``python -m agent run`` in its own process (idle
simulated finger scanner and camera, on-demand capture, default window and timeouts). It is
started while the broker is down: a BrokerGate on the broker's port holds its connection
while mosquitto and the consumer start and subscribe; then the gate drops the connection,
the agent reconnects (after its jittered backoff, at most mqtt.reconnect_min_s = 0.1 s) and
drains. The clock runs from that moment until its queue is empty (the running totals,
polled every 10 ms) and, in puback mode, the raw subscriber has every capture.

Raw: in this process, a plain paho client (MQTT 5, library defaults: 20 messages in flight,
``loop_start``) connects, publishes the same N sealed payloads (read into memory first) at
QoS 1 to the same topic on the same broker, and waits for every PUBACK; a plain paho
subscriber in its own process (bench/raw_peer.py) consumes them at QoS 1. The clock runs
from ``connect`` until the last PUBACK and the last message at the subscriber. It runs
twice before and once after the agent; the fastest run is the baseline.

The agent runs twice: in ``puback`` mode to the same raw subscriber (the kiosk side's own
cost, the same work as the raw client plus the queue), and in ``receipt`` mode with a
reference receiver process (decrypt, verify, store with fsync, receipt), which is how kiosks
run and gives the headline ratio. Its peak RSS (VmHWM) is read while it waits at the gate
with its backlog and again when the queue is empty.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import (
    KIOSK_ID,
    SIM_DEVICES,
    TOPIC_PREFIX,
    BenchBroker,
    BenchError,
    Sizes,
    Workspace,
    copy_queue,
    queued_payloads,
    ratio,
)
from bench.procs import (
    AgentProcess,
    BrokerGate,
    CpuMeter,
    RawPeer,
    ReceiverProcess,
    child_pids,
    connect,
    disconnect,
    new_client,
    status_kb,
    wait_queue_empty,
    wait_receivers,
)
from devtools.broker import free_port

CAPTURES_TOPIC = f"{TOPIC_PREFIX}/{KIOSK_ID}/captures"


@dataclass
class DrainRun:
    count: int
    seconds: float
    cpu_s: dict[str, float] = field(default_factory=dict)
    rss_kb: dict[str, int] = field(default_factory=dict)

    @property
    def per_s(self) -> float:
        return self.count / self.seconds

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"per_s": round(self.per_s, 1), "seconds": round(self.seconds, 3)}
        if self.cpu_s:
            out["cpu_s"] = self.cpu_s
        return out


def timeout_for(count: int) -> float:
    return 60 + count / 20  # far beyond any rate seen; only a stuck run reaches it


def raw_drain(port: int, payloads: list[bytes], peer: RawPeer) -> DrainRun:
    count = len(payloads)
    already = peer.count
    acked = threading.Event()
    acks = 0

    def on_publish(client: object, userdata: object, mid: int, rc: object, props: object) -> None:
        nonlocal acks  # only paho's network thread writes it
        acks += 1
        if acks == count:
            acked.set()

    client = new_client("raw-publisher")
    client.on_publish = on_publish
    started = time.monotonic()
    connect(client, port)
    try:
        for payload in payloads:
            client.publish(CAPTURES_TOPIC, payload, qos=1)
        if not acked.wait(timeout_for(count)):
            raise BenchError(f"raw publisher: {acks} of {count} PUBACKs")
        all_acked = time.monotonic()
        last_received = peer.wait_count(already + count, timeout_for(count))
    finally:
        disconnect(client)
    return DrainRun(count, max(all_acked, last_received) - started)


class GatedAgent:
    """The agent process, started while its broker is down and held at a BrokerGate with its
    backlog; ``drain`` lets it through once the broker and the consumer are up."""

    def __init__(self, ws: Workspace, port: int, backlog: Path, ack_mode: str) -> None:
        self.work = ws.fresh_dir(f"drain-{ack_mode}")
        self.queue = self.work / "queue.db"
        copy_queue(backlog, self.queue)
        config = ws.write_toml(self.work / "agent.toml", ws.agent_settings(
            port=port, queue_path=self.queue, ack_mode=ack_mode, devices=SIM_DEVICES))
        self.gate = BrokerGate(port)
        self.agent = AgentProcess(config, self.work)
        self.rss_kb: dict[str, int] = {}

    def __enter__(self) -> GatedAgent:
        try:
            self.agent.start()
            self.agent.wait_ready()
            self.gate.hold_client()
            # Idle with its backlog, before the first capture goes out: the memory baseline.
            self.rss_kb["hwm_ready"] = status_kb(self.agent.pid, "VmHWM")
            self.rss_kb["rss_ready"] = status_kb(self.agent.pid, "VmRSS")
            self.gate.release_port()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.agent.kill()
        self.gate.close()
        shutil.rmtree(self.work)

    def drain(self, count: int, watch: dict[str, int], peer: RawPeer | None = None) -> DrainRun:
        """Open the gate, wait until the queue is empty, stop the agent. ``watch``: processes
        whose CPU time is recorded too; ``peer``: a raw subscriber that must see every capture."""
        already = peer.count if peer else 0
        self.gate.open()
        started = time.monotonic()
        meter = CpuMeter({"agent": self.agent.pid, **watch})
        emptied = wait_queue_empty(self.queue, timeout_for(count))
        cpu = meter.stop()
        self.rss_kb["hwm_end"] = status_kb(self.agent.pid, "VmHWM")
        problems = self.agent.problems()
        self.agent.stop()
        if problems:
            raise BenchError("the agent logged errors while draining:\n" + "\n".join(problems[:20]))
        ended = emptied
        if peer is not None:
            ended = max(ended, peer.wait_count(already + count, timeout_for(count)))
        return DrainRun(count, ended - started, cpu, dict(self.rss_kb))


@contextmanager
def raw_subscriber(ws: Workspace, port: int) -> Iterator[RawPeer]:
    with RawPeer(ws, port, f"$share/raw/{TOPIC_PREFIX}/+/captures", "raw-consumer") as peer:
        peer.start()
        peer.wait_ready()
        yield peer
        peer.stop()


@contextmanager
def receiver(ws: Workspace, port: int, output_dir: Path) -> Iterator[ReceiverProcess]:
    with ReceiverProcess(ws, port, output_dir, "r1") as process:
        process.start()
        wait_receivers(ws, port, {"r1"})
        yield process
        process.stop()


def mosquitto_pid() -> int:
    (pid,) = child_pids("mosquitto")
    return pid


def stored(output_dir: Path) -> int:
    return sum(1 for _ in (output_dir / KIOSK_ID).glob("*.json"))


def run(ws: Workspace, sizes: Sizes, backlog: Path) -> dict[str, Any]:
    payloads = queued_payloads(backlog)
    count = len(payloads)
    port = free_port()
    # A raw run takes well under a second: three of them, the fastest is the baseline.
    with BenchBroker(port), raw_subscriber(ws, port) as peer:
        raw_runs = [raw_drain(port, payloads, peer) for _ in range(2)]
    with GatedAgent(ws, port, backlog, "puback") as gated:
        with BenchBroker(port), raw_subscriber(ws, port) as peer:
            puback = gated.drain(count, {"raw_subscriber": peer.pid, "mosquitto": mosquitto_pid()}, peer)
            raw_runs.append(raw_drain(port, payloads, peer))
    del payloads
    received = ws.fresh_dir("drain-received")
    with GatedAgent(ws, port, backlog, "receipt") as gated:
        with BenchBroker(port), receiver(ws, port, received) as process:
            receipt = gated.drain(count, {"receiver": process.pid, "mosquitto": mosquitto_pid()})
    if stored(received) != count:
        raise BenchError(f"the receiver stored {stored(received)} of {count} captures")
    shutil.rmtree(received)
    raw = max(raw_runs, key=lambda r: r.per_s)
    rss = receipt.rss_kb
    return {
        "drain_ratio_vs_paho": ratio(receipt.per_s, raw.per_s),
        "rss_growth_during_drain": round((rss["hwm_end"] - rss["hwm_ready"]) / rss["hwm_ready"], 3),
        "drain": {
            "count": count,
            "fill": "real capture path: CaptureService + Sealer + DurableQueue.put (commit benchmark)",
            "agent_receipt": receipt.summary(),
            "agent_puback": puback.summary(),
            "raw_paho": raw.summary(),
            "raw_runs_per_s": [round(r.per_s, 1) for r in raw_runs],
            "puback_ratio_vs_paho": ratio(puback.per_s, raw.per_s),
            "rss_mb": {"at_ready": round(rss["rss_ready"] / 1024, 1),
                       "peak_at_ready": round(rss["hwm_ready"] / 1024, 1),
                       "peak_after_drain": round(rss["hwm_end"] / 1024, 1)},
        },
    }
