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

Raw, persisting (``drain_ratio_vs_persisting``): the same paho client, and for each PUBACK
(handed from paho's callback to a thread of its own) a sqlite3 DELETE of that capture's row,
one transaction each, in WAL mode with synchronous=FULL and secure_delete ON: the least a
client that keeps its backlog durably and erases what was delivered must do. The N rows (the
same sealed bytes) are inserted and checkpointed beforehand, untimed; the payloads are read
into memory first. The clock runs from ``connect`` until the last row is deleted and the subscriber has every
message. Twice, before and after the agent; the fastest counts. The target compares the
agent in ``puback`` mode (the same work: publish, PUBACK, durable erasure) with it.

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

Chunked (detail, ``drain.chunked``): CHUNKED_COUNT captures of 1 MB (sealed the way the
capture path seals them) drained in ``receipt`` mode with ``uplink.chunk_bytes`` = 128 KiB,
so each goes as a signed manifest, the receiver's chunk status and eight chunks. A wildcard
subscriber on the kiosk's topics adds up the MQTT messages each way (topic and payload, plus
PUBLISH_OVERHEAD each): bytes on the wire per capture, against the capture's own size.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import shutil
import sqlite3
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.transport.durable_queue import DurableQueue
from agent.transport.publisher import PUBLISH_OVERHEAD
from bench.common import (
    KIOSK_ID,
    SIM_DEVICES,
    TOPIC_PREFIX,
    BenchBroker,
    BenchError,
    Sizes,
    Workspace,
    copy_queue,
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

#: The chunked run: 1 MB captures in 128 KiB chunks.
CHUNKED_COUNT = 12
CHUNKED_IMAGE_BYTES = 1024 * 1024
CHUNKED_CHUNK_BYTES = 128 * 1024

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


def sealed_payloads(backlog: Path) -> list[bytes]:
    """The sealed payloads of a queue, in order, as the agent sends them (through the queue's
    own reading, on a copy: the rows on disk are wrapped under each item's key)."""
    scratch = backlog.with_name("read-copy.db")
    copy_queue(backlog, scratch)
    queue = DurableQueue(scratch, max_bytes=1 << 40, min_free_bytes=0)
    try:
        out, cursor = [], 0
        while batch := queue.next_batch(cursor, 500):
            out += [item.payload for item in batch]
            cursor = batch[-1].seq
        return out
    finally:
        queue.close()
        for suffix in ("", "-wal", "-shm", ".reserve"):
            Path(f"{scratch}{suffix}").unlink(missing_ok=True)


def persisting_drain(port: int, payloads: list[bytes], peer: RawPeer, work: Path) -> DrainRun:
    """paho QoS 1, and per PUBACK one durable, zeroing DELETE of that row (see the docstring)."""
    path = work / "persisting.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("PRAGMA secure_delete=ON")
    db.execute("CREATE TABLE backlog (seq INTEGER PRIMARY KEY, payload BLOB NOT NULL)")
    db.execute("BEGIN")
    db.executemany("INSERT INTO backlog VALUES (?, ?)", enumerate(payloads, 1))
    db.execute("COMMIT")
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    os.sync()  # its inserts written back before the clock starts, as the agent's backlog copy is
    count, already = len(payloads), peer.count
    rows = [row for (row,) in db.execute("SELECT seq FROM backlog ORDER BY seq")]
    by_mid: dict[int, int] = {}
    lock = threading.Lock()  # only around the dict: paho calls on_publish holding its own locks
    pubacks: queue.SimpleQueue[int | None] = queue.SimpleQueue()
    done = threading.Event()

    def on_publish(client: object, userdata: object, mid: int, rc: object, props: object) -> None:
        pubacks.put(mid)

    def deleter() -> None:
        """One DELETE transaction per PUBACK, in its own thread (paho's keeps reading)."""
        deleted = 0
        while deleted < count and (mid := pubacks.get()) is not None:
            while True:
                with lock:
                    row = by_mid.pop(mid, None)
                if row is not None:
                    break
                time.sleep(0.0001)  # the PUBACK beat publish() returning its mid
            db.execute("DELETE FROM backlog WHERE seq = ?", (row,))
            deleted += 1
        if deleted == count:
            done.set()

    client = new_client("raw-persisting-publisher")
    client.on_publish = on_publish
    worker = threading.Thread(target=deleter, name="raw-persisting-deleter")
    try:
        started = time.monotonic()
        connect(client, port)
        worker.start()
        try:
            for row, payload in zip(rows, payloads, strict=True):
                mid = client.publish(CAPTURES_TOPIC, payload, qos=1).mid
                with lock:
                    by_mid[mid] = row
            if not done.wait(timeout_for(count)):
                raise BenchError("raw persisting publisher: not every row deleted in time")
            all_deleted = time.monotonic()
            last_received = peer.wait_count(already + count, timeout_for(count))
        finally:
            pubacks.put(None)
            worker.join()
            disconnect(client)
        if db.execute("SELECT count(*) FROM backlog").fetchone()[0]:
            raise BenchError("raw persisting publisher: rows left after every PUBACK")
    finally:
        db.close()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
    return DrainRun(count, max(all_deleted, last_received) - started)


class GatedAgent:
    """The agent process, started while its broker is down and held at a BrokerGate with its
    backlog; ``drain`` lets it through once the broker and the consumer are up."""

    def __init__(self, ws: Workspace, port: int, backlog: Path, ack_mode: str,
                 uplink: dict[str, Any] | None = None, name: str = "") -> None:
        self.work = ws.fresh_dir(f"drain-{name or ack_mode}")
        self.queue = self.work / "queue.db"
        copy_queue(backlog, self.queue)
        os.sync()  # the copy written back before the clock starts, as the raw side's inserts are
        settings = ws.agent_settings(port=port, queue_path=self.queue, ack_mode=ack_mode, devices=SIM_DEVICES)
        if uplink:
            settings["uplink"] = uplink
        config = ws.write_toml(self.work / "agent.toml", settings)
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

    def drain(self, count: int, watch: dict[str, int], peer: RawPeer | None = None,
              timeout_s: float | None = None) -> DrainRun:
        """Open the gate, wait until the queue is empty, stop the agent. ``watch``: processes
        whose CPU time is recorded too; ``peer``: a raw subscriber that must see every capture."""
        already = peer.count if peer else 0
        self.gate.open()
        started = time.monotonic()
        meter = CpuMeter({"agent": self.agent.pid, **watch})
        emptied = wait_queue_empty(self.queue, timeout_s or timeout_for(count))
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


class WireCounter:
    """A wildcard subscriber on one kiosk's topics: MQTT bytes each way, by topic leaf."""

    UP = ("captures", "chunks")

    def __init__(self, port: int) -> None:
        self.bytes: dict[str, int] = {}
        self.messages: dict[str, int] = {}
        self._lock = threading.Lock()
        self.client = new_client("bench-wire-counter")
        self.client.on_message = self._on_message
        connect(self.client, port)
        self.client.subscribe(f"{TOPIC_PREFIX}/{KIOSK_ID}/#", qos=0)

    def _on_message(self, client: object, userdata: object, message: Any) -> None:
        leaf = message.topic.rsplit("/", 1)[-1]
        with self._lock:
            size = len(message.payload) + len(message.topic) + PUBLISH_OVERHEAD
            self.bytes[leaf] = self.bytes.get(leaf, 0) + size
            self.messages[leaf] = self.messages.get(leaf, 0) + 1

    def close(self) -> None:
        disconnect(self.client)

    def summary(self, count: int, capture_bytes: int) -> dict[str, Any]:
        with self._lock:
            up = sum(n for leaf, n in self.bytes.items() if leaf in self.UP)
            down = sum(n for leaf, n in self.bytes.items() if leaf not in self.UP and leaf != "status")
            return {"up_bytes_per_capture": round(up / count), "down_bytes_per_capture": round(down / count),
                    "up_overhead_pct": round(100 * (up / count - capture_bytes) / capture_bytes, 2),
                    "messages_per_capture": {k: round(v / count, 2)
                                             for k, v in sorted(self.messages.items())},
                    "bytes_by_topic": dict(sorted(self.bytes.items()))}


def chunked_backlog(ws: Workspace, count: int) -> tuple[Path, int]:
    """``count`` 1 MB captures sealed as the capture path seals them, in a queue of their own."""
    from bench.common import seal_capture

    path = ws.fresh_dir("chunked-backlog") / "queue.db"
    queue = DurableQueue(path, max_bytes=1 << 40, min_free_bytes=0)
    sealer, size = ws.sealer(), 0
    try:
        for _ in range(count):
            image = os.urandom(CHUNKED_IMAGE_BYTES)
            # The envelope names its id and seq, which the queue row must share: sealed first
            # with the seq the queue gives next (one thread, so it is that one).
            item_id, payload = seal_capture(sealer, KIOSK_ID, queue._next_seq, image)
            queue.put(item_id, "capture", lambda seq, payload=payload: payload)
            size = len(payload)
    finally:
        queue.close()
    return path, size


def chunked_drain(ws: Workspace, count: int = CHUNKED_COUNT) -> dict[str, Any]:
    backlog, size = chunked_backlog(ws, count)
    port = free_port()
    received = ws.fresh_dir("drain-chunked-received")
    uplink = {"chunk_bytes": CHUNKED_CHUNK_BYTES}
    with GatedAgent(ws, port, backlog, "receipt", uplink=uplink, name="chunked") as gated:
        with BenchBroker(port), receiver(ws, port, received) as process:
            counter = WireCounter(port)
            try:
                run = gated.drain(count, {"receiver": process.pid}, timeout_s=60 + 10 * count)
                time.sleep(0.2)  # the last receipt reaches the counter as it reaches the agent
            finally:
                counter.close()
    if stored(received) != count:
        raise BenchError(f"chunked: the receiver stored {stored(received)} of {count} captures")
    shutil.rmtree(received)
    shutil.rmtree(backlog.parent)
    return {"count": count, "sealed_bytes": size, "chunk_bytes": CHUNKED_CHUNK_BYTES,
            "per_s": round(run.per_s, 1), "mb_per_s": round(run.per_s * size / 1e6, 1),
            **counter.summary(count, size)}


def run(ws: Workspace, sizes: Sizes, backlog: Path) -> dict[str, Any]:
    payloads = sealed_payloads(backlog)
    count = len(payloads)
    port = free_port()
    persisting_dir = ws.fresh_dir("drain-persisting")
    # A raw run takes well under a second: three of them, the fastest is the baseline.
    with BenchBroker(port), raw_subscriber(ws, port) as peer:
        raw_runs = [raw_drain(port, payloads, peer) for _ in range(2)]
        persisting_runs = [persisting_drain(port, payloads, peer, persisting_dir)]
    with GatedAgent(ws, port, backlog, "puback") as gated:
        with BenchBroker(port), raw_subscriber(ws, port) as peer:
            puback = gated.drain(count, {"raw_subscriber": peer.pid, "mosquitto": mosquitto_pid()}, peer)
            raw_runs.append(raw_drain(port, payloads, peer))
            persisting_runs.append(persisting_drain(port, payloads, peer, persisting_dir))
    del payloads
    received = ws.fresh_dir("drain-received")
    with GatedAgent(ws, port, backlog, "receipt") as gated:
        with BenchBroker(port), receiver(ws, port, received) as process:
            receipt = gated.drain(count, {"receiver": process.pid, "mosquitto": mosquitto_pid()})
    if stored(received) != count:
        raise BenchError(f"the receiver stored {stored(received)} of {count} captures")
    shutil.rmtree(received)
    raw = max(raw_runs, key=lambda r: r.per_s)
    persisting = max(persisting_runs, key=lambda r: r.per_s)
    rss = receipt.rss_kb
    chunked = chunked_drain(ws)
    return {
        "drain_ratio_vs_paho": ratio(receipt.per_s, raw.per_s),
        "drain_ratio_vs_persisting": ratio(puback.per_s, persisting.per_s),
        "rss_growth_during_drain": round((rss["hwm_end"] - rss["hwm_ready"]) / rss["hwm_ready"], 3),
        "drain": {
            "count": count,
            "fill": "real capture path: CaptureService + Sealer + DurableQueue.put (commit benchmark)",
            "agent_receipt": receipt.summary(),
            "agent_puback": puback.summary(),
            "raw_paho": raw.summary(),
            "raw_runs_per_s": [round(r.per_s, 1) for r in raw_runs],
            "puback_ratio_vs_paho": ratio(puback.per_s, raw.per_s),
            "raw_persisting": persisting.summary(),
            "raw_persisting_runs_per_s": [round(r.per_s, 1) for r in persisting_runs],
            "chunked": chunked,
            "rss_mb": {"at_ready": round(rss["rss_ready"] / 1024, 1),
                       "peak_at_ready": round(rss["hwm_ready"] / 1024, 1),
                       "peak_after_drain": round(rss["hwm_end"] / 1024, 1)},
        },
    }


def main(argv: list[str] | None = None) -> int:
    """The commit step (it makes the backlog) and this one, alone: for work on the queue."""
    from bench import commit
    from bench.common import FULL, QUICK

    parser = argparse.ArgumentParser(prog="python -m bench.drain", description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="full sizes instead of the quick ones")
    parser.add_argument("--backlog", type=int, help="captures in the backlog (default: the size's)")
    args = parser.parse_args(argv)
    sizes = FULL if args.full else QUICK
    if args.backlog:
        from dataclasses import replace
        sizes = replace(sizes, backlog=args.backlog)
    with Workspace() as ws:
        figures, backlog = commit.run(ws, sizes)
        figures.update(run(ws, sizes, backlog))
    json.dump(figures, sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
