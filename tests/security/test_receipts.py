"""What makes a kiosk delete, and what makes the receiver hold data, against a plain MQTT client.

Real parts throughout: a mosquitto broker, an in-process agent (agent.daemon.Agent) with its
SQLite queue, the reference receiver, and an attacker that is nothing but a paho client
reading the kiosk's traffic (ids and nonces are in the clear) and publishing on its topics.
Each test fails if its hole reopens:

* receipts that are unsigned, signed with a key the kiosk does not trust, signed for other
  bytes, for another kiosk or for an item not in flight delete nothing, and each is counted,
  logged and reported as an event; a genuine receiver still drains the queue;
* a genuine receipt replayed for a capture sent again (after the first copy was deleted, or
  after a rejected capture was retried) neither deletes it nor pushes it aside;
* a forged chunk manifest announced before the genuine one does not lock the genuine
  capture out: nothing is written for it, and the genuine transfer completes;
* `keys init --central` makes the receipt-signing pair whose public half a kiosk trusts.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.enums import CallbackAPIVersion

from agent.capture.ids import uuid7
from agent.config import ConfigError
from agent.daemon import Agent
from agent.security.keys import (
    load_encryption_public,
    load_receipt_keys,
    load_receipt_signing_key,
    load_signing_key,
)
from agent.security.sealing import Sealer, read_header
from agent.transport.chunking import Manifest
from agent.transport.protocol import open_send
from agent.transport.receipts import Receipt, ReceiptSigner, verify_receipts
from cli.main import main
from devtools.broker import MosquittoBroker
from receiver.service import Receiver
from tests.support.config import agent_config, keys_for, receiver_config, to_toml
from tests.support.processes import stored_ids
from tests.support.waiting import wait_until

KIOSK = "kiosk-t1"


class Attacker:
    """A plain MQTT client on the kiosk's topics: what anyone allowed on the broker can do."""

    def __init__(self, port: int) -> None:
        self._lock = threading.Lock()
        self.sends: list[tuple[str, str, bytes]] = []  # (item id, nonce, sealed envelope)
        self.receipts: list[bytes] = []
        self.events: list[dict[str, Any]] = []
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        for leaf in ("captures", "receipts", "events"):
            self.client.subscribe(f"kiosk/{KIOSK}/{leaf}", qos=1)
        self.client.loop_start()

    def _on_message(self, client, userdata, message) -> None:  # type: ignore[no-untyped-def]
        payload, leaf = bytes(message.payload), message.topic.rsplit("/", 1)[-1]
        with self._lock:
            if leaf == "captures":
                nonce, sealed = open_send(payload)
                self.sends.append((read_header(sealed).id, nonce, sealed))  # the id is in clear
            elif leaf == "receipts":
                self.receipts.append(payload)
            else:
                self.events.append(json.loads(payload))

    def sends_of(self, item_id: str) -> list[tuple[str, bytes]]:
        with self._lock:
            return [(nonce, sealed) for i, nonce, sealed in self.sends if i == item_id]

    def seen(self) -> list[str]:
        with self._lock:
            return list(dict.fromkeys(i for i, _, _ in self.sends))

    def refusals(self) -> list[str]:
        with self._lock:
            return [e["reason"] for e in self.events if e.get("event") == "receipt_refused"]

    def publish(self, leaf: str, payload: bytes) -> None:
        self.client.publish(f"kiosk/{KIOSK}/{leaf}", payload, qos=1).wait_for_publish(5)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def central_signer(tmp_path: Path) -> ReceiptSigner:
    """The genuine central receipt-signing key (what a real receiver signs with)."""
    return ReceiptSigner(load_receipt_signing_key(keys_for(tmp_path, KIOSK).receipt_key))


def kiosk_sealer(tmp_path: Path) -> Sealer:
    keys = keys_for(tmp_path, KIOSK)
    return Sealer(load_signing_key(keys.kiosk_key), load_encryption_public(keys.central_public))


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def refused(agent: Agent) -> int:
    return agent.publisher.counters.receipts_refused  # type: ignore[union-attr]


def test_forged_receipts_delete_nothing_and_each_is_counted(tmp_path: Path, broker: MosquittoBroker,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "agent.transport.receipt_gate")
    # Two captures in flight, two waiting behind them; no receiver yet (the kiosk sends the
    # two again every few seconds, with the same nonce: the same flight).
    config = agent_config(tmp_path, broker.port, capture={"max_captures": 4},
                          mqtt={"inflight_window": 2, "receipt_timeout_s": 3.0})
    agent, attacker = Agent(config), Attacker(broker.port)
    genuine = central_signer(tmp_path)
    impostor = ReceiptSigner(Ed25519PrivateKey.generate())
    claims_trusted_kid = ReceiptSigner(Ed25519PrivateKey.generate())
    claims_trusted_kid.key_id = genuine.key_id
    out = tmp_path / "out"
    receiver = Receiver(receiver_config(out, config))
    try:
        agent.start()
        queue, publisher = agent.queue, agent.publisher
        assert queue is not None and publisher is not None
        wait_until(lambda: agent.capture.captured >= 4 and len(attacker.seen()) == 2,  # type: ignore[union-attr]
                   what="4 captures queued, 2 of them on the wire")
        first, second = attacker.seen()
        (nonce1, sealed1), (nonce2, sealed2) = attacker.sends_of(first)[0], attacker.sends_of(second)[0]
        waiting = next(i for i in queue.next_batch(0, 10) if i.id not in (first, second))

        forgeries = [
            # The original attack: ids read from the clear headers, a plain JSON receipt.
            json.dumps({"v": 1, "id": first, "status": "stored"}).encode(),
            json.dumps({"v": 1, "id": second, "status": "rejected", "reason": "forged"}).encode(),
            impostor.sign(KIOSK, [Receipt(first, "stored", "evil", sha256=sha(sealed1), nonce=nonce1)]),
            claims_trusted_kid.sign(KIOSK, [Receipt(first, "stored", "evil", sha256=sha(sealed1),
                                                    nonce=nonce1)]),
            # Signed by the central key, but about other bytes / another kiosk / an item not in
            # flight / another send of the item: none of these may count either.
            genuine.sign(KIOSK, [Receipt(first, "stored", "r", sha256=sha(b"other"), nonce=nonce1)]),
            genuine.sign("kiosk-t2", [Receipt(second, "stored", "r", sha256=sha(sealed2), nonce=nonce2)]),
            genuine.sign(KIOSK, [Receipt(waiting.id, "stored", "r", sha256=sha(waiting.payload))]),
            genuine.sign(KIOSK, [Receipt(second, "rejected", "r", "x", sha256=sha(sealed2), nonce="0" * 32)]),
        ]
        for payload in forgeries:
            attacker.publish("receipts", payload)
        wait_until(lambda: refused(agent) == len(forgeries), what="every forged receipt refused")
        wait_until(lambda: len(attacker.refusals()) == len(forgeries), what="a receipt_refused event each")

        stats = queue.stats()
        assert stats.pending == 4 and stats.by_state["rejected"] == 0, "nothing deleted, nothing set aside"
        assert publisher.counters.acknowledged == 0 and publisher.counters.rejected == 0
        by_reason = {"malformed": 2, "unknown_key": 1, "bad_signature": 1, "hash_mismatch": 1,
                     "wrong_kiosk": 1, "not_in_flight": 1, "stale_nonce": 1}
        assert publisher.counters.receipts_refused_by_reason == by_reason
        assert sorted(attacker.refusals()) == sorted(r for r, n in by_reason.items() for _ in range(n))
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        for reason in by_reason:
            assert any(f"refused a receipt ({reason})" in w for w in warnings), reason

        # The genuine central side still empties the queue.
        receiver.start()
        wait_until(lambda: queue.totals()[0] == 0, timeout_s=30, what="queue drained by the genuine receiver")
        assert publisher.counters.acknowledged == 4 and len(stored_ids(out)) == 4
        assert refused(agent) == len(forgeries), "genuine receipts are never refused"
    finally:
        agent.stop()
        receiver.stop()
        attacker.close()


def test_a_replayed_receipt_for_a_capture_sent_again_deletes_nothing(tmp_path: Path,
                                                                     broker: MosquittoBroker) -> None:
    config = agent_config(tmp_path, broker.port, capture={"max_captures": 1}, mqtt={"receipt_timeout_s": 2.0})
    out = tmp_path / "out"
    agent, attacker = Agent(config), Attacker(broker.port)
    receiver = Receiver(receiver_config(out, config))
    receiver.start()
    try:
        agent.start()
        queue = agent.queue
        assert queue is not None
        wait_until(lambda: agent.publisher.counters.acknowledged == 1 and attacker.receipts,  # type: ignore[union-attr]
                   what="the capture stored and its receipt seen")
        [item_id] = attacker.seen()
        nonce1, sealed = attacker.sends_of(item_id)[0]
        genuine_receipt = attacker.receipts[0]
        receiver.stop()
        # The same capture, the same bytes, in the queue again (a queue restored from a copy,
        # say): the kiosk sends it again, with a new nonce.
        queue.put(item_id, "capture", lambda seq: sealed)
        wait_until(lambda: len(attacker.sends_of(item_id)) >= 2, what="the capture sent again")
        assert attacker.sends_of(item_id)[-1][0] != nonce1
        attacker.publish("receipts", genuine_receipt)  # replayed: the receiver has not seen this send
        wait_until(lambda: refused(agent) == 1, what="the replay refused")
        assert agent.publisher.counters.receipts_refused_by_reason == {"stale_nonce": 1}  # type: ignore[union-attr]
        assert queue.get(item_id) is not None and agent.publisher.counters.acknowledged == 1  # type: ignore[union-attr]

        receiver = Receiver(receiver_config(out, config))  # a genuine answer to the new send
        receiver.start()
        wait_until(lambda: queue.totals()[0] == 0, what="deleted on the genuine duplicate receipt")
    finally:
        agent.stop()
        receiver.stop()
        attacker.close()


def test_a_replayed_rejection_does_not_push_a_retried_capture_aside(tmp_path: Path,
                                                                    broker: MosquittoBroker) -> None:
    config = agent_config(tmp_path, broker.port, capture={"mode": "on-demand"},
                          mqtt={"receipt_timeout_s": 2.0})
    out = tmp_path / "out"
    agent, attacker = Agent(config), Attacker(broker.port)
    receiver = Receiver(receiver_config(out, config))
    receiver.start()
    try:
        agent.start()
        queue, publisher = agent.queue, agent.publisher
        assert queue is not None and publisher is not None
        # Authentic but unusable: the receiver answers a signed `rejected`.
        item_id = uuid7()
        sealer = kiosk_sealer(tmp_path)
        queue.put(item_id, "capture", lambda seq: sealer.seal(item_id=item_id, kiosk_id=KIOSK, seq=seq,
                                                             kind="capture", inner=b"not a capture envelope"))
        wait_until(lambda: queue.stats().by_state["rejected"] == 1 and attacker.receipts,
                   what="the capture rejected by the receiver")
        rejection = attacker.receipts[0]
        receiver.stop()
        # Support retries it (after a fix centrally); the old rejection is replayed at it.
        assert queue.retry_rejected() == 1
        publisher.rewind()
        wait_until(lambda: len(attacker.sends_of(item_id)) >= 2, what="the capture sent again")
        attacker.publish("receipts", rejection)
        wait_until(lambda: refused(agent) == 1, what="the replayed rejection refused")
        assert publisher.counters.receipts_refused_by_reason == {"stale_nonce": 1}
        assert queue.stats().by_state["rejected"] == 0 and publisher.counters.rejected == 1
    finally:
        agent.stop()
        receiver.stop()
        attacker.close()


def test_a_forged_chunk_manifest_does_not_lock_out_the_genuine_one(tmp_path: Path,
                                                                   broker: MosquittoBroker) -> None:
    now = datetime.now()
    closed = f"{(now + timedelta(hours=2)):%H:%M}-{(now + timedelta(hours=3)):%H:%M}"
    config = agent_config(tmp_path, broker.port, capture={"max_captures": 1},
                          uplink={"chunk_bytes": 8192, "windows": [closed]})
    out = tmp_path / "out"
    agent, attacker = Agent(config), Attacker(broker.port)
    receiver = Receiver(receiver_config(out, config))
    receiver.start()
    try:
        wait_until(lambda: receiver.link.subscribed, what="receiver subscribed")
        agent.start()
        queue, publisher = agent.queue, agent.publisher
        assert queue is not None and publisher is not None
        wait_until(lambda: queue.totals()[0] == 1, what="the capture queued (its upload window closed)")
        [item] = queue.next_batch(0, 1)
        # The attacker announces the transfer first: same id and whole hash, digests no genuine
        # chunk matches, signed with a key of its own (a kiosk key it made, not the enrolled one).
        count = -(-len(item.payload) // 8192)
        forged = Manifest(item.id, KIOSK, item.seq, item.kind, len(item.payload), sha(item.payload), 8192,
                          tuple(os.urandom(32) for _ in range(count)), nonce="ab" * 16)
        central = load_encryption_public(keys_for(tmp_path, KIOSK).central_public)
        thief = Sealer(Ed25519PrivateKey.generate(), central)
        events_before = receiver.counters.security_events
        attacker.publish("chunks", forged.encode(thief))
        wait_until(lambda: receiver.counters.security_events > events_before,
                   what="the forged manifest refused")
        assert receiver.counters.manifests == 0
        assert not list((out / ".chunks").glob(f"*/{item.id}-*")), "nothing written for it"

        publisher.uplink.clock = lambda: datetime.now() + timedelta(hours=2, minutes=30)  # window opens
        wait_until(lambda: queue.totals()[0] == 0, timeout_s=30, what="the genuine transfer completed")
        assert stored_ids(out) == {item.id} and receiver.counters.reassembled == 1
        assert receiver.counters.chunks_corrupt == 0
    finally:
        agent.stop()
        receiver.stop()
        attacker.close()


def test_keys_init_central_makes_the_receipt_key_a_kiosk_then_trusts(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    central = tmp_path / "receiver.toml"
    central.write_text(to_toml({"mqtt": {"allow_plaintext": True},
                                "receiver": {"central_private_key": str(tmp_path / "c" / "central.key"),
                                             "kiosk_keys_dir": str(tmp_path / "kiosks")}}))
    assert main(["keys", "init", "--central", "--config", str(central), "--json"]) == 0
    created = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [c["key"] for c in created] == ["central", "receipt-signing"]
    receipt_key = tmp_path / "c" / "receipt-signing.key"
    assert created[1]["private_key_file"] == str(receipt_key) and receipt_key.stat().st_mode & 0o777 == 0o600
    # What a kiosk lists in security.receipt_keys verifies what a receiver signs with the private half.
    trusted = load_receipt_keys([Path(created[1]["public_key_file"])])
    signer = ReceiptSigner(load_receipt_signing_key(receipt_key))
    frame = signer.sign(KIOSK, [Receipt("a", "stored", sha256="0" * 64)])
    assert [r.id for r in verify_receipts(frame, trusted, KIOSK)] == ["a"]
    # Both exist: nothing is overwritten. One missing (a receiver set up before receipts were
    # signed): only that one is made.
    assert main(["keys", "init", "--central", "--config", str(central)]) == 1
    before = (tmp_path / "c" / "central.key").read_bytes()
    receipt_key.unlink()
    assert main(["keys", "init", "--central", "--config", str(central)]) == 0
    assert receipt_key.exists() and (tmp_path / "c" / "central.key").read_bytes() == before
    capsys.readouterr()
    assert main(["keys", "show", "--central", "--config", str(central), "--json"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2


def test_a_kiosk_that_could_verify_no_receipt_does_not_start(tmp_path: Path, broker: MosquittoBroker) -> None:
    missing = agent_config(tmp_path, broker.port, security={"receipt_keys": [str(tmp_path / "absent.pub")]})
    agent = Agent(missing)
    try:
        with pytest.raises(ConfigError, match="security.receipt_keys: .*absent.pub not found"):
            agent.start()
    finally:
        agent.stop()
    # With nothing to verify (receipts unused) it needs none.
    puback = agent_config(tmp_path, broker.port, security={"receipt_keys": []}, mqtt={"ack_mode": "puback"},
                          capture={"max_captures": 1})
    agent = Agent(puback)
    try:
        agent.start()
        wait_until(lambda: agent.publisher.counters.acknowledged == 1, what="deleted on PUBACK")  # type: ignore[union-attr]
    finally:
        agent.stop()
