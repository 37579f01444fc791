"""Fleet: many simulated kiosks through one mosquitto to two reference receivers that share one
subscription group (``$share/receivers/kiosk/+/captures``), as the central side runs them.

Each simulated kiosk is a plain paho client in this process (loop_start, MQTT 5, library
defaults) with its own enrolled Ed25519 key; its captures (100 KB images) are sealed before
the clock starts, exactly as CaptureService seals them. All kiosks publish all their
captures at QoS 1 at once and listen for receipts; the clock stops at the last receipt.
captures/s = captures / that time; lost = captures the broker acknowledged (PUBACK) that
no receiver stored (no JSON file in the receivers' shared output folder).

Raw: the same clients publish the same payloads to two plain paho subscriber processes in
one shared group (bench/raw_peer.py); the clock stops when every PUBACK is in and the
subscribers have every message.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from agent.security.keys import load_receipt_keys
from agent.transport.receipts import verify_receipts
from bench.common import (
    TOPIC_PREFIX,
    BenchBroker,
    BenchError,
    ImagePool,
    Sizes,
    Workspace,
    ratio,
    seal_capture,
)
from bench.procs import RawPeer, ReceiverProcess, connect, disconnect, new_client, subscribe, wait_receivers

RAW_PREFIX = "rawfleet"
RECEIVERS = ("r1", "r2")


@dataclass
class Kiosk:
    id: str
    captures: list[tuple[str, bytes]]
    client: mqtt.Client | None = None
    #: mid -> capture id of this round's publishes, and the mids the broker acknowledged.
    sent: dict[int, str] = field(default_factory=dict)
    acked: set[int] = field(default_factory=set)


class Fleet:
    """The simulated kiosks' clients and what comes back to them (from paho's threads)."""

    def __init__(self, kiosks: list[Kiosk], trusted: dict[str, Any]) -> None:
        self.kiosks = kiosks
        #: The central receipt-signing keys: receipts are verified as a kiosk verifies them.
        self.trusted = trusted
        self.total = sum(len(k.captures) for k in kiosks)
        self._cond = threading.Condition()
        self.pubacks = 0
        self.receipts: dict[str, str] = {}  # capture id -> status
        self.last_receipt = 0.0

    def connect(self, port: int) -> None:
        for kiosk in self.kiosks:
            client = new_client(f"bench-{kiosk.id}")
            client.on_publish = self._on_publish_for(kiosk)
            client.on_message = self._on_receipt
            connect(client, port)
            kiosk.client = client
            subscribe(client, f"{TOPIC_PREFIX}/{kiosk.id}/receipts")

    def close(self) -> None:
        for kiosk in self.kiosks:
            if kiosk.client is not None:
                disconnect(kiosk.client)
                kiosk.client = None

    def _on_publish_for(self, kiosk: Kiosk):  # type: ignore[no-untyped-def]
        def on_publish(client: mqtt.Client, userdata: object, mid: int, rc: object, props: object) -> None:
            # Only the mid is recorded here: paho calls this holding a lock that publish() needs.
            with self._cond:
                kiosk.acked.add(mid)
                self.pubacks += 1
                self._cond.notify_all()
        return on_publish

    def _on_receipt(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        receipts = verify_receipts(bytes(message.payload), self.trusted, message.topic.split("/")[1])
        with self._cond:
            for receipt in receipts:
                self.receipts.setdefault(receipt.id, receipt.status)
            self.last_receipt = time.monotonic()
            self._cond.notify_all()

    def publish_all(self, prefix: str) -> float:
        """Every kiosk publishes all its captures; returns the start time."""
        with self._cond:
            self.pubacks = 0
            self.receipts.clear()
            for kiosk in self.kiosks:
                kiosk.sent.clear()
                kiosk.acked.clear()
        started = time.monotonic()
        for kiosk in self.kiosks:
            assert kiosk.client is not None
            for capture_id, payload in kiosk.captures:
                info = kiosk.client.publish(f"{prefix}/{kiosk.id}/captures", payload, qos=1)
                kiosk.sent[info.mid] = capture_id
        return started

    def wait(self, condition_name: str, timeout_s: float) -> None:
        checks = {"pubacks": lambda: self.pubacks >= self.total,
                  "receipts": lambda: len(self.receipts) >= self.total}
        with self._cond:
            if not self._cond.wait_for(checks[condition_name], timeout_s):
                raise BenchError(f"fleet: {self.pubacks} PUBACKs and {len(self.receipts)} receipts of "
                                 f"{self.total} after {timeout_s:.0f} s")

    def published_ids(self) -> set[str]:
        with self._cond:
            return {k.sent[mid] for k in self.kiosks for mid in k.acked if mid in k.sent}


def build_fleet(ws: Workspace, sizes: Sizes) -> list[Kiosk]:
    """Kiosks enrolled with the receivers (before they start) and their sealed captures."""
    pool = ImagePool()
    kiosks = []
    for i in range(sizes.fleet_kiosks):
        kiosk_id = f"fleet-{i:03d}"
        sealer = ws.enrol_new_kiosk(kiosk_id)
        captures = [seal_capture(sealer, kiosk_id, seq, pool.next())
                    for seq in range(1, sizes.fleet_captures_per_kiosk + 1)]
        kiosks.append(Kiosk(kiosk_id, captures))
    return kiosks


def timeout_for(count: int) -> float:
    return 60 + count / 20


def raw_round(fleet: Fleet, peers: list[RawPeer]) -> float:
    """captures/s of the raw round."""
    already = sum(p.count for p in peers)
    started = fleet.publish_all(RAW_PREFIX)
    fleet.wait("pubacks", timeout_for(fleet.total))
    acked = time.monotonic()
    deadline = acked + timeout_for(fleet.total)
    while sum(p.count for p in peers) < already + fleet.total:
        if time.monotonic() > deadline:
            raise BenchError(f"raw fleet: the subscribers have {sum(p.count for p in peers) - already} "
                             f"of {fleet.total} messages")
        time.sleep(0.01)
    return fleet.total / (max(acked, *(p.last for p in peers)) - started)


def stored_ids(output_dir: Path) -> set[str]:
    return {p.stem for p in output_dir.glob("fleet-*/*.json")}


def run(ws: Workspace, sizes: Sizes) -> dict[str, Any]:
    fleet = Fleet(build_fleet(ws, sizes), load_receipt_keys([ws.keys.receipt_public]))
    received = ws.fresh_dir("fleet-received")
    with BenchBroker() as broker:
        receivers = [ReceiverProcess(ws, broker.port, received, name) for name in RECEIVERS]
        peers = [RawPeer(ws, broker.port, f"$share/raw/{RAW_PREFIX}/+/captures", f"fleet-raw-{i}")
                 for i in range(2)]
        try:
            for process in (*receivers, *peers):
                process.start()
            for peer in peers:
                peer.wait_ready()
            wait_receivers(ws, broker.port, set(RECEIVERS))
            fleet.connect(broker.port)
            raw_per_s = raw_round(fleet, peers)
            started = fleet.publish_all(TOPIC_PREFIX)
            fleet.wait("receipts", timeout_for(fleet.total))
            per_s = fleet.total / (fleet.last_receipt - started)
            published = fleet.published_ids()
            fleet.close()
            for process in (*receivers, *peers):
                process.stop()
        finally:
            fleet.close()
            for process in (*receivers, *peers):
                process.kill()
    stored = stored_ids(received)
    statuses = list(fleet.receipts.values())
    return {
        "fleet_captures_per_s": round(per_s, 1),
        "fleet_lost": len(published - stored),
        "fleet": {
            "kiosks": sizes.fleet_kiosks,
            "captures": fleet.total,
            "receivers": len(RECEIVERS),
            "published": len(published),
            "stored": len(stored),
            "duplicate_receipts": statuses.count("duplicate"),
            "rejected_receipts": statuses.count("rejected"),
            "raw_paho_per_s": round(raw_per_s, 1),
            "ratio_vs_paho": ratio(per_s, raw_per_s),
        },
    }
