"""docs/deployment.md's mosquitto settings and kiosk ACL, as written there, in a real mosquitto:
the documented kiosk.conf (its listener and file paths pointed at this test's own) with the
documented kiosk.acl loads, and the ACL stops a kiosk publishing under another kiosk's id or
reading another kiosk's receipts while its own go through. The benchmarks' and fleet tests'
broker (bench/common.py BenchBroker) runs with the documented queue limits."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from bench.common import BenchBroker
from devtools.broker import MosquittoBroker
from tests.support.certs import CA
from tests.support.paths import ROOT
from tests.support.waiting import wait_until

DEPLOYMENT = ROOT / "docs" / "deployment.md"
KIOSK_A, KIOSK_B, RECEIVER = "kiosk-a", "kiosk-b", "receiver-1"


def doc_block(first_line: str) -> list[str]:
    """The fenced block of docs/deployment.md whose first line is ``first_line`` (unindented)."""
    lines = DEPLOYMENT.read_text().splitlines()
    for i, line in enumerate(lines):
        if line.strip() == "```" and i + 1 < len(lines) and lines[i + 1].strip() == first_line:
            end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == "```")
            indent = len(line) - len(line.lstrip())
            return [text[indent:] for text in lines[i + 1:end]]
    raise AssertionError(f"docs/deployment.md has no code block starting {first_line!r}")


def documented_settings() -> list[str]:
    """The documented kiosk.conf's settings, each "name value" with its comment cut off."""
    settings = []
    for line in doc_block("# /etc/mosquitto/conf.d/kiosk.conf"):
        line = re.sub(r"\s+#.*$", "", line).strip()
        if line and not line.startswith("#"):
            settings.append(" ".join(line.split()))
    return settings


class Client:
    """A paho MQTT 5 client with a certificate whose CN is ``name`` (its MQTT username)."""

    def __init__(self, ca: CA, name: str, port: int) -> None:
        cert, key = ca.issue(name)
        self.name = name
        self.got: list[tuple[str, bytes]] = []
        self.acks: dict[int, int] = {}  # mid -> PUBACK reason code
        self._lock = threading.Lock()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=name, protocol=mqtt.MQTTv5)
        self.client.tls_set(ca_certs=str(ca.path), certfile=str(cert), keyfile=str(key))
        self.client.on_message = self._on_message
        self.client.on_publish = self._on_publish
        subacks: dict[int, list[int]] = {}
        self._subacks = subacks
        self.client.on_subscribe = lambda c, u, mid, codes, props: subacks.__setitem__(
            mid, [code.value for code in codes])
        connected = threading.Event()
        self.client.on_connect = lambda *args: connected.set()
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert connected.wait(10), f"{name} did not connect"

    def _on_message(self, client, userdata, message) -> None:  # type: ignore[no-untyped-def]
        with self._lock:
            self.got.append((message.topic, bytes(message.payload)))

    def _on_publish(self, client, userdata, mid, reason, properties) -> None:  # type: ignore[no-untyped-def]
        with self._lock:
            self.acks[mid] = reason.value

    def subscribe(self, topic: str) -> list[int]:
        """The SUBACK's reason codes (0x87: not authorised)."""
        mid = self.client.subscribe(topic, qos=1)[1]
        wait_until(lambda: mid in self._subacks, what=f"{self.name}'s SUBACK for {topic}")
        return self._subacks[mid]

    def publish(self, topic: str, payload: bytes) -> int:
        """The PUBACK's reason code (0: delivered to the broker, 0x87: not authorised)."""
        mid = self.client.publish(topic, payload, qos=1).mid
        wait_until(lambda: mid in self.acks, what=f"{self.name}'s PUBACK for {topic}")
        return self.acks[mid]

    def payloads(self, topic: str) -> list[bytes]:
        with self._lock:
            return [p for t, p in self.got if t == topic]

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def documented_broker(tmp_path: Path) -> Iterator[tuple[MosquittoBroker, CA]]:
    """mosquitto with the documented kiosk.conf and kiosk.acl, word for word but for the
    listener's port and the file paths."""
    ca = CA(tmp_path, "ca")
    cert, key = ca.issue("broker", server=True)
    broker = MosquittoBroker(tls={"cafile": str(ca.path), "certfile": str(cert), "keyfile": str(key)})
    folder = broker._conf.parent  # readable by mosquitto's own user (MosquittoBroker's tls copies)
    acl = folder / "kiosk.acl"
    acl.write_text("\n".join(doc_block("# kiosk.acl: every kiosk, by the CN of its certificate")) + "\n")
    acl.chmod(0o644)
    (folder / "persistence").mkdir(mode=0o777)
    (folder / "persistence").chmod(0o777)  # mosquitto started as root writes as its own user
    paths = {"/etc/mosquitto/ca.pem": folder / "cafile.pem",
             "/etc/mosquitto/server.pem": folder / "certfile.pem",
             "/etc/mosquitto/server.key": folder / "keyfile.pem", "/etc/mosquitto/kiosk.acl": acl,
             "/var/lib/mosquitto/": f"{folder / 'persistence'}/"}
    lines = []
    for line in doc_block("# /etc/mosquitto/conf.d/kiosk.conf"):
        if line.startswith("listener "):
            line = f"listener {broker.port} 127.0.0.1"
        for documented, ours in paths.items():
            line = line.replace(documented, str(ours))
        lines.append(line)
    lines += ["log_dest stderr", "log_type error", "log_type warning"]
    broker._conf.write_text("\n".join(lines) + "\n")
    try:
        broker.start()
        yield broker, ca
    finally:
        broker.close()


def test_the_documented_acl_keeps_each_kiosk_to_its_own_topics(
        documented_broker: tuple[MosquittoBroker, CA]) -> None:
    broker, ca = documented_broker
    clients = {name: Client(ca, name, broker.port) for name in (RECEIVER, KIOSK_A, KIOSK_B)}
    try:
        receiver, a, b = clients[RECEIVER], clients[KIOSK_A], clients[KIOSK_B]
        assert receiver.subscribe("kiosk/+/captures") == [1]
        assert a.subscribe(f"kiosk/{KIOSK_A}/receipts") == [1]
        # Another kiosk's receipts: refused at SUBSCRIBE, or (should mosquitto grant it) never
        # delivered: both checked below.
        a.subscribe(f"kiosk/{KIOSK_B}/receipts")
        assert b.subscribe(f"kiosk/{KIOSK_B}/receipts") == [1]

        # A kiosk posing as another: not authorised, and nothing reaches the receivers.
        assert a.publish(f"kiosk/{KIOSK_B}/captures", b"forged") == 0x87
        assert a.publish(f"kiosk/{KIOSK_B}/status", b"forged") == 0x87
        # Its own captures go through; the receivers then answer each kiosk on its own topic.
        assert a.publish(f"kiosk/{KIOSK_A}/captures", b"genuine") == 0
        wait_until(lambda: receiver.payloads(f"kiosk/{KIOSK_A}/captures"), what="kiosk A's own capture")
        assert receiver.publish(f"kiosk/{KIOSK_B}/receipts", b"for-b") == 0
        assert receiver.publish(f"kiosk/{KIOSK_A}/receipts", b"for-a") == 0
        wait_until(lambda: a.payloads(f"kiosk/{KIOSK_A}/receipts")
                   and b.payloads(f"kiosk/{KIOSK_B}/receipts"), what="each kiosk's own receipts")
        # A receiver may only read captures, never write them: no forgery through it either.
        assert receiver.publish(f"kiosk/{KIOSK_B}/captures", b"via-receiver") == 0x87
        # Everything above was published before kiosk A's own message round trip finished:
        # mosquitto delivers in order, so nothing forged is still on its way.
        assert a.publish(f"kiosk/{KIOSK_A}/captures", b"last") == 0
        wait_until(lambda: b"last" in receiver.payloads(f"kiosk/{KIOSK_A}/captures"), what="the last capture")
        assert receiver.payloads(f"kiosk/{KIOSK_B}/captures") == []
        assert receiver.payloads(f"kiosk/{KIOSK_B}/status") == []
        assert a.payloads(f"kiosk/{KIOSK_B}/receipts") == [], "kiosk A read kiosk B's receipts"
    finally:
        for client in clients.values():
            client.close()


def test_the_benchmarks_broker_runs_the_documented_queue_limits() -> None:
    """The benches and fleet scenarios measure the broker a deployment runs: bounded queues."""
    documented = documented_settings()
    for line in BenchBroker.config_lines:
        assert line in documented, f"BenchBroker sets {line!r}, docs/deployment.md does not"
    names = {line.split()[0] for line in BenchBroker.config_lines}
    assert {"max_queued_messages", "max_queued_bytes"} <= names
    assert "max_queued_messages 0" not in documented, "the documented broker must bound its queues"
