"""A holder of stolen kiosk keys and a plain broker client, for the receiver storage attacks.

Kiosk A is the test kiosk of tests/support/config.py ("kiosk-t1"); kiosk B is enrolled
beside it with a key of its own. Envelopes are sealed with the real kiosk keys
(agent/security/sealing.py) around whatever ids the attacker likes, and published by a
plain paho client; receipts and chunk statuses are collected as they come back. ``rig()``
runs a real Receiver on the test broker beside that client (tests/security/test_receiver_*.py).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent.capture.ids import uuid7
from agent.capture.record import CaptureRecord, utc_now_iso
from agent.security.keys import (
    create_signing_key,
    enrol,
    load_encryption_public,
    load_signing_key,
    public_path,
)
from agent.security.sealing import Sealer
from agent.transport.chunking import Manifest, make_manifest
from agent.transport.protocol import encode_capture, unpack_frame
from devtools.broker import MosquittoBroker
from drivers import Modality
from drivers.base import CaptureRequest
from drivers.sim_finger import SimFingerConfig, SimFingerDriver
from receiver.service import Receiver
from tests.support.config import agent_config, keys_for, receiver_config
from tests.support.waiting import wait_until

KIOSK_A, KIOSK_B = "kiosk-t1", "kiosk-b"
PREFIX = "kiosk"


def sealers(tmp_path: Path) -> dict[str, Sealer]:
    """Sealers with kiosk A's and kiosk B's real keys, both enrolled at the central side."""
    keys = keys_for(tmp_path, KIOSK_A)
    central = load_encryption_public(public_path(keys.central_key))
    key_b = tmp_path / "keys-b" / "kiosk.key"
    if not key_b.exists():
        key_b.parent.mkdir(parents=True)
        create_signing_key(key_b)
        enrol(KIOSK_B, public_path(key_b), keys.kiosks_dir)
    return {KIOSK_A: Sealer(load_signing_key(keys.kiosk_key), central),
            KIOSK_B: Sealer(load_signing_key(key_b), central)}


def record(kiosk_id: str, item_id: str | None = None, image: bytes | None = None, seq: int = 1,
           **fields: Any) -> CaptureRecord:
    """A capture record; its image is random bytes unless given (the receiver only hashes it)."""
    image = os.urandom(2000) if image is None else image
    base = CaptureRecord(
        id=item_id or uuid7(), kiosk_id=kiosk_id, site="site", operator_id="op-1", device_id="finger",
        driver="sim-finger", device_serial="SIM-1", modality=Modality.FINGER, position=1,
        captured_at=utc_now_iso(), image_format="png", width=320, height=400, ppi=500,
        image_sha256=hashlib.sha256(image).hexdigest(), quality=50, image=image, seq=seq)
    return dataclasses.replace(base, **fields)


def sealed_capture(sealer: Sealer, rec: CaptureRecord, *, header_kiosk: str | None = None,
                   kind: str = "capture") -> bytes:
    return sealer.seal(item_id=rec.id, kiosk_id=header_kiosk or rec.kiosk_id, seq=rec.seq, kind=kind,
                       inner=encode_capture(rec))


def sealed_manifest(sealer: Sealer, kiosk_id: str, manifest: dict[str, Any], seq: int = 1) -> bytes:
    body = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    return sealer.seal(item_id=manifest["id"], kiosk_id=kiosk_id, seq=seq, kind="registration", inner=body)


def registration_manifest(kiosk_id: str, registration_id: str, captures: list[CaptureRecord],
                          **fields: Any) -> dict[str, Any]:
    entries = [{"id": c.id, "item": f"finger-{c.position}", "modality": "finger", "position": c.position,
                "fingers": [c.position], "quality": c.quality, "force_captured": False, "attempts": 1}
               for c in captures]
    return {"v": 1, "type": "registration", "id": registration_id, "state": "completed",
            "kiosk_id": kiosk_id, "site": "site", "operator_id": "op-1", "applicant_ref": "APP-1",
            "plan": "ten-flat", "created_at": utc_now_iso(), "closed_at": utc_now_iso(), "reason": None,
            "captures": entries, "exceptions": [], **fields}


def receipts_in(payload: bytes) -> list[dict[str, Any]]:
    """The receipts a message carries: a JSON receipt, or a signed frame of them ("KAR")."""
    if payload[:3] == b"KAR":
        header, _signature = unpack_frame(payload, b"KAR", "receipts", 1 << 20)
        return list(json.loads(header)["receipts"])
    return [json.loads(payload)]


class Wire:
    """A plain MQTT client on the test broker: publishes anything, collects answers."""

    def __init__(self, port: int) -> None:
        self.receipts: list[tuple[str, dict[str, Any]]] = []  # (kiosk id, receipt)
        self.receipt_frames = 0  # messages on receipts topics (each may hold many receipts)
        self.statuses: list[tuple[str, dict[str, Any]]] = []  # (kiosk id, chunk status)
        self._lock = threading.Lock()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.max_inflight_messages_set(200)
        self.client.on_message = self._on_message
        acked: set[int] = set()
        self.client.on_subscribe = lambda client, userdata, mid, *rest: acked.add(mid)
        self.client.connect("127.0.0.1", port)
        mids = {self.client.subscribe(f"{PREFIX}/+/{leaf}", qos=1)[1]
                for leaf in ("receipts", "chunk-status")}
        self.client.loop_start()
        # Answers published before the broker has our subscriptions would pass us by.
        wait_until(lambda: mids <= acked, what="the test client's subscriptions acknowledged")

    def _on_message(self, client, userdata, message) -> None:  # type: ignore[no-untyped-def]
        kiosk_id, leaf = message.topic.split("/")[1:3]
        with self._lock:
            if leaf == "receipts":
                self.receipts += [(kiosk_id, r) for r in receipts_in(bytes(message.payload))]
                self.receipt_frames += 1
            else:
                self.statuses.append((kiosk_id, json.loads(message.payload)))

    def publish(self, kiosk_id: str, leaf: str, payload: bytes) -> None:
        self.client.publish(f"{PREFIX}/{kiosk_id}/{leaf}", payload, qos=1).wait_for_publish(10)

    def receipt(self, item_id: str, timeout_s: float = 15.0) -> dict[str, Any]:
        """The first receipt naming item_id (waits for it)."""
        wait_until(lambda: self.receipts_for(item_id), timeout_s=timeout_s, what=f"a receipt for {item_id!r}")
        return self.receipts_for(item_id)[0]

    def receipts_for(self, item_id: str) -> list[dict[str, Any]]:
        with self._lock:
            return [r for _, r in self.receipts if r.get("id") == item_id]

    def settle(self, sealer: Sealer) -> None:
        """Send a genuine capture from kiosk A and wait for its receipt: the receiver handles one
        topic's messages in order, so everything published before it has been handled."""
        sentinel = record(KIOSK_A)
        self.publish(KIOSK_A, "captures", sealed_capture(sealer, sentinel))
        assert self.receipt(sentinel.id)["status"] == "stored"

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def files_under(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


class Rig:
    """A running receiver, the attacker's broker client and both kiosks' sealers."""

    def __init__(self, tmp_path: Path, broker: MosquittoBroker, out: Path | None = None,
                 **receiver_settings: Any) -> None:
        self.tmp_path, self.out = tmp_path, out or tmp_path / "out"
        self.sealers = sealers(tmp_path)
        config = receiver_config(self.out, agent_config(tmp_path, broker.port))
        # model_copy, not validation: the settings reach the receiver even where an older
        # ReceiverConfig does not know them (so these tests can be run against old code).
        settings_ = config.receiver.model_copy(update=receiver_settings)
        self.config = config.model_copy(update={"receiver": settings_})
        self.wire = Wire(broker.port)
        self.receiver = self.start()

    def start(self) -> Receiver:
        receiver = Receiver(self.config)
        receiver.start()
        # Subscribed, not only connected: a capture published before the receiver's SUBACK
        # may never reach it, and the test would wait for a receipt in vain.
        wait_until(lambda: receiver.link.subscribed, what="receiver subscribed")
        self.receiver = receiver
        return receiver

    def settle(self) -> None:
        self.wire.settle(self.sealers[KIOSK_A])

    def send(self, kiosk_id: str, payload: bytes, leaf: str = "captures") -> None:
        self.wire.publish(kiosk_id, leaf, payload)

    def close(self) -> None:
        self.receiver.stop()
        self.wire.close()


@contextmanager
def rig(tmp_path: Path, broker: MosquittoBroker, out: Path | None = None,
        **receiver_settings: Any) -> Iterator[Rig]:
    r = Rig(tmp_path, broker, out, **receiver_settings)
    try:
        yield r
    finally:
        r.close()


def security_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [rec.getMessage() for rec in caplog.records
            if rec.levelno == logging.WARNING and "security event" in rec.getMessage()]


def manifest_for(kiosk_id: str, payload: bytes, chunk_size: int, seq: int = 1) -> Manifest:
    item_id = uuid7()
    return make_manifest(item_id, kiosk_id, seq, "capture", payload, chunk_size)


def finger_captures(kiosk_id: str, positions: list[int]) -> list[Any]:
    driver = SimFingerDriver("finger", SimFingerConfig(seed=5))
    driver.open()
    out = []
    for seq, position in enumerate(positions, start=1):
        image = driver.capture(CaptureRequest(position=position))
        out.append(record(kiosk_id, image=image.image, position=position, width=image.width,
                          height=image.height, ppi=image.ppi, seq=seq))
    return out
