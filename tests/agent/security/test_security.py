"""Captures protected at rest and in transit, against real mosquitto brokers."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent.daemon import Agent
from devtools.broker import MosquittoBroker
from receiver.service import Receiver
from tests.support.certs import CA
from tests.support.config import agent_config, receiver_config
from tests.support.waiting import wait_until

# Signatures that must never appear outside the sealed ciphertext (long enough that random
# ciphertext cannot contain them by chance).
MAGICS = {
    "PNG": b"\x89PNG\r\n\x1a\n",
    "JPEG/JFIF": b"\xff\xd8\xff\xe0\x00\x10JFIF",
    "WSQ": b"\xff\xa0\xff\xa8",
    "inner envelope": b"KAE\x01",
}


class Sniffer:
    """A wildcard subscriber: everything a broker operator could read."""

    def __init__(self, port: int) -> None:
        self.payloads: list[bytes] = []
        self._lock = threading.Lock()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.subscribe("#", qos=1)
        self.client.loop_start()

    def _on_message(self, client, userdata, message) -> None:  # type: ignore[no-untyped-def]
        with self._lock:
            self.payloads.append(bytes(message.payload))

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def find_leaks(blobs: dict[str, bytes], secrets: dict[str, bytes]) -> list[str]:
    return [f"{what} in {where}" for where, data in blobs.items() for what, s in secrets.items() if s in data]


def test_nothing_readable_on_disk_or_on_the_wire(tmp_path: Path, broker: MosquittoBroker) -> None:
    config = agent_config(tmp_path, broker.port, capture={"max_captures": 6},
                          kiosk={"id": "kiosk-t1", "site": "secret-site", "operator_id": "officer-4711"},
                          devices={"finger": {"driver": "sim-finger", "seed": 3},
                                   "camera": {"driver": "sim-camera", "seed": 3}},
                          queue={"erase_interval_s": 0})
    sniffer = Sniffer(broker.port)
    out = tmp_path / "out"
    agent = Agent(config)
    agent.start()  # no receiver yet: everything stays queued, on disk
    try:
        wait_until(lambda: agent.capture.captured >= 6 and len(sniffer.payloads) >= 7,  # type: ignore[union-attr]
                   what="captures queued and published")
        db_files = {p.name: p.read_bytes() for p in tmp_path.glob("queue.db*")}
        receiver = Receiver(receiver_config(out, config))
        receiver.start()
        try:
            wait_until(lambda: agent.queue.totals()[0] == 0, what="all acknowledged")  # type: ignore[union-attr]
        finally:
            receiver.stop()
    finally:
        agent.stop()
        sniffer.close()
    images = [p.read_bytes() for p in out.glob("kiosk-t1/*") if p.suffix != ".json"]
    assert len(images) == 6
    secrets = dict(MAGICS, operator=b"officer-4711", site=b"secret-site")
    for i, image in enumerate(images):
        secrets[f"image {i} bytes"] = image[len(image) // 2:len(image) // 2 + 64]
    wire = {f"message {i}": p for i, p in enumerate(sniffer.payloads)}
    assert sum(len(b) for b in db_files.values()) > 6 * 20_000, "the queue really held the captures"
    assert find_leaks(db_files, secrets) == []
    leaks = find_leaks(wire, secrets)
    # The retained status names the site on purpose (presence); nothing else may leak.
    assert [leak for leak in leaks if not leak.startswith("site")] == []
    # The store at the central side does have the images: the check above can find them.
    assert find_leaks({"store": b"".join(images)}, {"PNG": MAGICS["PNG"]}) == ["PNG in store"]


def test_acknowledged_captures_are_erased_from_db_and_wal(tmp_path: Path, broker: MosquittoBroker) -> None:
    config = agent_config(tmp_path, broker.port, capture={"max_captures": 5}, queue={"erase_interval_s": 0})
    agent = Agent(config)
    agent.start()
    try:
        wait_until(lambda: agent.capture.captured >= 5, what="captures queued")  # type: ignore[union-attr]
        items = agent.queue.next_batch(0, 10)  # type: ignore[union-attr]
        # Erased by crypto-shredding (agent/transport/durable_queue.py): each payload is stored
        # under a key of its own, and that key is what must be gone. The sealed bytes
        # themselves never reach the disk.
        sealed = {f"item {i.id}": i.payload[-200:-100] for i in items}
        assert not find_leaks({p.name: p.read_bytes() for p in tmp_path.glob("queue.db*")}, sealed)
        db = sqlite3.connect(tmp_path / "queue.db")
        ciphertexts = {f"key of item {i}": key for i, key in db.execute("SELECT id, key FROM items")}
        db.close()
        assert len(ciphertexts) == 5
        assert find_leaks({p.name: p.read_bytes() for p in tmp_path.glob("queue.db*")}, ciphertexts)
        receiver = Receiver(receiver_config(tmp_path / "out", config))
        receiver.start()
        try:
            wait_until(lambda: agent.queue.totals()[0] == 0, what="all acknowledged")  # type: ignore[union-attr]
            wait_until(lambda: not find_leaks({p.name: p.read_bytes() for p in tmp_path.glob("queue.db*")},
                                              ciphertexts), timeout_s=10, what="ciphertext erased")
        finally:
            receiver.stop()
    finally:
        agent.stop()


# --- TLS ---------------------------------------------------------------------------------


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Path]:
    ca = CA(tmp_path, "ca")
    other = CA(tmp_path, "other-ca")
    server, server_key = ca.issue("broker", server=True)
    client, client_key = ca.issue("kiosk-t1")
    expired, expired_key = ca.issue("kiosk-old", expired=True)
    return {"ca": ca.path, "other_ca": other.path, "server": server, "server_key": server_key,
            "client": client, "client_key": client_key, "expired": expired, "expired_key": expired_key}


@pytest.fixture
def tls_broker(pki: dict[str, Path]):  # type: ignore[no-untyped-def]
    broker = MosquittoBroker(tls={"cafile": str(pki["ca"]), "certfile": str(pki["server"]),
                                  "keyfile": str(pki["server_key"])})
    broker.start()
    yield broker
    broker.close()


def tls_section(pki: dict[str, Path], ca: str = "ca", cert: str | None = "client") -> dict[str, object]:
    section: dict[str, object] = {"enabled": True, "ca_file": str(pki[ca])}
    if cert:
        section |= {"cert_file": str(pki[cert]), "key_file": str(pki[f"{cert}_key"])}
    return section


def test_tls_with_client_certificate_delivers(tmp_path: Path, pki: dict[str, Path],
                                              tls_broker: MosquittoBroker) -> None:
    config = agent_config(tmp_path, tls_broker.port, capture={"max_captures": 4},
                          mqtt={"tls": tls_section(pki)})
    receiver = Receiver(receiver_config(tmp_path / "out", config))
    agent = Agent(config)
    receiver.start()
    agent.start()
    try:
        wait_until(lambda: agent.capture.captured >= 4 and agent.queue.totals()[0] == 0,  # type: ignore[union-attr]
                   what="delivered over TLS")
    finally:
        agent.stop()
        receiver.stop()
    assert receiver.counters.stored == 4


@pytest.mark.parametrize("case, ca, cert, message", [
    ("wrong CA", "other_ca", "client", "TLS handshake with broker"),
    ("expired certificate", "ca", "expired", "expired on"),
    ("no client certificate", "ca", None, "check that mqtt.tls.cert_file is set"),
])
def test_tls_failures_are_clear_and_lose_nothing(
        tmp_path: Path, pki: dict[str, Path], tls_broker: MosquittoBroker, caplog: pytest.LogCaptureFixture,
        case: str, ca: str, cert: str | None, message: str) -> None:
    config = agent_config(tmp_path, tls_broker.port, capture={"max_captures": 3},
                          mqtt={"tls": tls_section(pki, ca, cert)})
    agent = Agent(config)
    agent.start()
    try:
        wait_until(lambda: agent.capture.captured >= 3, what="captures taken while TLS fails")  # type: ignore[union-attr]
        wait_until(lambda: any(message in r.getMessage() for r in caplog.records), timeout_s=10,
                   what=f"a clear error for {case}")
        assert agent.link is not None and not agent.link.connected
        assert agent.link.connects == 0, "never connected, and never without TLS"
    finally:
        agent.stop()
    db = sqlite3.connect(tmp_path / "queue.db")
    assert db.execute("SELECT count(*) FROM items").fetchone()[0] == 3, "captures stay queued"
    db.close()


def test_receiver_rejects_forged_envelopes_without_receipts(tmp_path: Path, broker: MosquittoBroker) -> None:
    """On the wire: tampered, truncated and re-signed envelopes are reported, not stored, not
    acknowledged; the genuine capture still goes through."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from agent.security.keys import load_encryption_public
    from agent.security.sealing import Sealer

    config = agent_config(tmp_path, broker.port, capture={"max_captures": 1})
    agent = Agent(config)
    agent.start()
    try:
        wait_until(lambda: agent.capture.captured >= 1, what="one capture queued")  # type: ignore[union-attr]
        (item,) = agent.queue.next_batch(0, 1)  # type: ignore[union-attr]
    finally:
        agent.stop()
    genuine = item.payload
    tampered = bytearray(genuine)
    tampered[-50] ^= 0x01
    forger = Sealer(Ed25519PrivateKey.generate(), load_encryption_public(config.security.central_public_key))
    resigned = forger.seal(item_id="forged-1", kiosk_id="kiosk-t1", seq=99, kind="capture", inner=b"KAE")
    forgeries = [bytes(tampered), genuine[:len(genuine) // 2], resigned, b"KAE\x01 plaintext"]

    receipts: list[bytes] = []
    watcher = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    watcher.on_message = lambda c, u, m: receipts.append(bytes(m.payload))
    watcher.connect("127.0.0.1", broker.port)
    watcher.subscribe("kiosk/kiosk-t1/receipts", qos=1)
    watcher.loop_start()
    out = tmp_path / "out"
    receiver = Receiver(receiver_config(out, config))
    receiver.start()
    try:
        wait_until(lambda: receiver.link.subscribed, what="receiver subscribed")
        for payload in [*forgeries, genuine]:
            watcher.publish("kiosk/kiosk-t1/captures", payload, qos=1).wait_for_publish(5)
        wait_until(lambda: receiver.counters.stored == 1 and receiver.counters.unauthenticated == 4,
                   what="forgeries counted, the genuine capture stored")
        wait_until(lambda: len(receipts) >= 1, what="the genuine capture's receipt")
    finally:
        receiver.stop()
        watcher.loop_stop()
        watcher.disconnect()
    assert len(receipts) == 1 and item.id.encode() in receipts[0]
    assert [p.stem for p in out.glob("*/*.json")] == [item.id]
