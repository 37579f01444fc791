"""A registration's central status, from the receiver to the kiosk, against a plain broker client.

Real parts: a mosquitto broker, the reference receiver (tests/support/hostile.py's rig, with
registrations sealed by the real kiosk key), and the kiosk's own components: its session
store (SQLite) and the status handler (agent/registration/central_status.py) on an MqttLink.
Each test fails if its promise breaks:

* a registration whose assembly fails is reported ``failed`` with a reason code on every
  attempt (the receiver retries by itself), an event says so once, and it becomes
  ``complete`` (naming the files written) once the fault clears;
* a registration missing a part is reported ``incomplete``, naming the part by item and
  position, after ``receiver.incomplete_after_s``;
* a kiosk that was offline when the word went out learns it by asking on its next connect;
* forged, tampered, other-kiosk, unknown-registration, replayed, stale and retained
  statuses change nothing, and each is counted by its reason.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.capture.ids import uuid7
from agent.registration.central_status import CentralStatus
from agent.registration.store import SessionStore
from agent.security.keys import load_receipt_keys, load_receipt_signing_key
from agent.transport.mqtt_link import MqttLink
from agent.transport.protocol import Topics, pack_frame
from agent.transport.receipts import (
    CONTEXT,
    MAGIC,
    FailureReason,
    ReceiptSigner,
    RegistrationStatus,
)
from cli.main import main
from devtools.broker import MosquittoBroker
from tests.support.config import agent_config, keys_for
from tests.support.hostile import (
    KIOSK_A,
    KIOSK_B,
    PREFIX,
    Rig,
    finger_captures,
    registration_manifest,
    rig,
    sealed_capture,
    sealed_manifest,
)
from tests.support.waiting import wait_until


class Kiosk:
    """The kiosk's side of it: its session store and the status handler on its own link."""

    def __init__(self, tmp_path: Path, broker: MosquittoBroker) -> None:
        config = agent_config(tmp_path, broker.port)
        self.store = SessionStore(tmp_path / "kiosk" / "registrations.db")
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.central = CentralStatus(self.store, Topics(PREFIX, KIOSK_A),
                                     load_receipt_keys(config.security.receipt_keys),
                                     lambda kind, **fields: self.events.append((kind, fields)),
                                     query_interval_s=3600, query_after_s=0)
        self.link = MqttLink(config.mqtt, self.central, client_id="kiosk-t1-status", name="kiosk-status")

    def start(self) -> None:
        self.link.start()
        wait_until(lambda: self.link.subscribed, what="the kiosk subscribed")

    def session(self) -> str:
        """A closed registration of this kiosk's (its id is the registration's id)."""
        session_id = uuid7()
        self.store.create(session_id, "Łukasz-0042", "op-1", "ten-flat", False, ["finger-1"])
        self.store.set_state(session_id, "completed")
        return session_id

    def state(self, session_id: str) -> dict[str, Any]:
        return self.store.central(session_id)

    def close(self) -> None:
        self.link.stop()
        self.store.close()


@pytest.fixture
def kiosk(tmp_path: Path, broker: MosquittoBroker) -> Iterator[Kiosk]:
    k = Kiosk(tmp_path, broker)
    try:
        yield k
    finally:
        k.close()


def send_registration(r: Rig, registration_id: str, positions: list[int],
                      send: list[int] | None = None) -> None:
    """Kiosk A's captures at ``send`` (default: all of ``positions``), then a manifest listing all."""
    captures = [dataclasses.replace(c, registration={"id": registration_id, "item": f"finger-{c.position}"})
                for c in finger_captures(KIOSK_A, positions)]
    for capture in captures:
        if send is None or capture.position in send:
            r.send(KIOSK_A, sealed_capture(r.sealers[KIOSK_A], capture))
    manifest = registration_manifest(KIOSK_A, registration_id, captures)
    r.send(KIOSK_A, sealed_manifest(r.sealers[KIOSK_A], KIOSK_A, manifest, seq=len(captures) + 1))
    assert r.wire.receipt(registration_id)["status"] == "stored"


def operator_view(tmp_path: Path, out: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, Any]:
    """`kiosk-agent receiver status --json` on the receiver's folder: (exit code, its JSON)."""
    config = tmp_path / "receiver-status.toml"
    config.write_text(f'[mqtt]\nallow_plaintext = true\n[receiver]\noutput_dir = "{out}"\n')
    capsys.readouterr()
    code = main(["receiver", "status", "--config", str(config), "--json"])
    return code, json.loads(capsys.readouterr().out)


def test_a_failed_assembly_is_reported_on_each_attempt_and_then_complete(
        tmp_path: Path, broker: MosquittoBroker, kiosk: Kiosk, capsys: pytest.CaptureFixture[str]) -> None:
    kiosk.start()
    sid = kiosk.session()
    assert kiosk.state(sid)["state"] == "unknown"
    with rig(tmp_path, broker, assembly_retry_s=0.3, assembly_retry_max_s=0.6) as r:
        folder = r.out / KIOSK_A / "registrations"
        folder.mkdir(parents=True)
        (folder / f"{sid}.an2").mkdir()  # a real fault, even for root: the transaction cannot be written
        send_registration(r, sid, [1, 2])
        wait_until(lambda: kiosk.state(sid)["state"] == "failed", what="failed, on the kiosk")
        wait_until(lambda: kiosk.state(sid)["reason"]["attempts"] >= 3, what="each retry reported")
        failed = kiosk.state(sid)
        on_disk = json.loads((folder / f"{sid}.status.json").read_text())
        operator_failed = operator_view(tmp_path, r.out, capsys)
        (folder / f"{sid}.an2").rmdir()
        wait_until(lambda: kiosk.state(sid)["state"] == "complete", timeout_s=10,
                   what="complete, on the kiosk")
        written = json.loads((folder / f"{sid}.status.json").read_text())
        operator_complete = operator_view(tmp_path, r.out, capsys)
    reason = failed["reason"]
    assert reason["code"] == "storage" and "IsADirectoryError" in reason["message"] and reason["retry_at"]
    assert "Łukasz" not in json.dumps(failed), "nothing of the applicant in a status"
    assert on_disk["state"] == "failed" and on_disk["kiosk_id"] == KIOSK_A
    assert operator_failed[0] == 1 and operator_failed[1]["counts"] == {"failed": 1}
    (listed,) = operator_failed[1]["registrations"]
    assert listed["id"] == sid and listed["reason"]["code"] == "storage" and listed["reason"]["attempts"] >= 1
    assert operator_complete == (0, {"output_dir": str(r.out), "counts": {"complete": 1},
                                     "registrations": []})
    assert [kind for kind, _ in kiosk.events] == ["registration_failed"], "one event when it became failed"
    assert kiosk.events[0][1]["id"] == sid and kiosk.events[0][1]["code"] == "storage"
    assert kiosk.state(sid)["reason"] is None and kiosk.state(sid)["missing"] == []
    an2 = (folder / f"{sid}.an2").read_bytes()
    an2_entry = {"name": f"{sid}.an2", "sha256": hashlib.sha256(an2).hexdigest(), "bytes": len(an2)}
    assert written["state"] == "complete" and an2_entry in written["files"]
    assert {f["name"] for f in written["files"]} == {f"{sid}.an2", f"{sid}.fir"}
    assert kiosk.central.counters.refused == 0
    assert kiosk.store.central_counts()["complete"] == 1


def test_an_incomplete_registration_names_the_missing_parts(tmp_path: Path, broker: MosquittoBroker,
                                                            kiosk: Kiosk) -> None:
    kiosk.start()
    sid = kiosk.session()
    with rig(tmp_path, broker, incomplete_after_s=0.5) as r:
        send_registration(r, sid, [1, 2, 3], send=[1, 3])
        wait_until(lambda: kiosk.state(sid)["state"] == "incomplete", what="incomplete, on the kiosk")
    (missing,) = kiosk.state(sid)["missing"]
    assert missing["item"] == "finger-2" and missing["position"] == 2
    assert kiosk.store.central_counts()["incomplete"] == 1


def test_a_kiosk_offline_when_it_was_said_learns_it_on_connect(tmp_path: Path, broker: MosquittoBroker,
                                                               kiosk: Kiosk) -> None:
    sid = kiosk.session()
    with rig(tmp_path, broker) as r:
        send_registration(r, sid, [1])  # complete while the kiosk is not connected: that word is gone
        wait_until(lambda: (r.out / KIOSK_A / "registrations" / f"{sid}.complete.json").exists(),
                   what="complete on the receiver")
        kiosk.start()  # asks on connect
        wait_until(lambda: kiosk.state(sid)["state"] == "complete", what="learnt by asking")
        # A query is unsigned: asking for ids that are no registration writes nothing there.
        r.send(KIOSK_A, json.dumps({"v": 1, "type": "registration-query", "ids": [uuid7(), "../x"]}).encode(),
               "registration-query")
        r.settle()
    assert kiosk.central.counters.queries == 1
    kept = sorted(p.name for p in (r.out / KIOSK_A / "registrations").glob("*.status.json"))
    assert kept == [f"{sid}.status.json"], "nothing written for the ids a query named"


# --- hostile statuses ---------------------------------------------------------------------


def genuine(tmp_path: Path) -> ReceiptSigner:
    return ReceiptSigner(load_receipt_signing_key(keys_for(tmp_path, KIOSK_A).receipt_key))


#: Above the receiver's own seqs (microseconds of its clock) for the next hour, so that none
#: the receiver issues meanwhile would make the forged ones "stale" for the wrong reason.
BASE_SEQ = time.time_ns() // 1000 + 3600 * 10**6


def status(sid: str, state: str, seq: int) -> RegistrationStatus:
    reason = FailureReason("storage", "forged", 1) if state == "failed" else None
    return RegistrationStatus(sid, state, BASE_SEQ + seq, reason=reason)


def test_hostile_statuses_change_nothing_and_each_is_counted(tmp_path: Path, broker: MosquittoBroker,
                                                            kiosk: Kiosk) -> None:
    sid = kiosk.session()
    signer = genuine(tmp_path)
    topic = Topics(PREFIX, KIOSK_A).registration_status
    with rig(tmp_path, broker) as r:
        # Left retained by a broker client before the kiosk connects: handed to it at connect.
        r.wire.client.publish(topic, signer.sign_status(KIOSK_A, status(sid, "failed", 50)), qos=1,
                              retain=True).wait_for_publish(5)
        kiosk.start()
        wait_until(lambda: kiosk.central.counters.refused == 1, what="the retained one refused")
        # The kiosk asks on connect; the receiver has no manifest of it, so it does not answer
        # (no signature for an id with nothing on record) and the kiosk still holds "unknown".
        wait_until(lambda: kiosk.central.counters.queries == 1, what="the kiosk's query at connect")
        r.settle()
        assert kiosk.state(sid)["state"] == "unknown" and kiosk.central.counters.accepted == 0
        genuine_frame = signer.sign_status(KIOSK_A, status(sid, "complete", 100))
        r.send(KIOSK_A, genuine_frame, "registration-status")
        wait_until(lambda: kiosk.state(sid)["state"] == "complete", what="the genuine one kept")
        kept = kiosk.state(sid)
        forger = ReceiptSigner(Ed25519PrivateKey.generate())
        header_end = len(genuine_frame) - 64
        other_session = uuid7()
        hostile = {
            "unknown_key": forger.sign_status(KIOSK_A, status(sid, "failed", 200)),
            # The genuine frame with its state changed: the signature no longer covers it.
            "bad_signature": genuine_frame[:header_end].replace(b'"complete"', b'"failed"  ')
            + genuine_frame[header_end:],
            "wrong_kiosk": signer.sign_status(KIOSK_B, status(sid, "failed", 300)),
            "unknown_registration": signer.sign_status(KIOSK_A, status(other_session, "failed", 400)),
            "replayed": genuine_frame,
            "stale": signer.sign_status(KIOSK_A, status(sid, "failed", 99)),
            "malformed": b"KAR\x01\x00\x00\x00\x05{}",
        }
        # A status signed under the receipts' context: one signature must not pass for the other.
        header = genuine_frame[8:header_end].replace(b'"state":"complete"', b'"state":"failed"')
        hostile_context = pack_frame(MAGIC, header, load_receipt_signing_key(
            keys_for(tmp_path, KIOSK_A).receipt_key).sign(CONTEXT + header))
        for payload in [*hostile.values(), hostile_context]:
            r.send(KIOSK_A, payload, "registration-status")
        wait_until(lambda: kiosk.central.counters.refused == 2 + len(hostile), what="every one refused")
    by_reason = kiosk.central.counters.refused_by_reason
    assert by_reason == {"retained": 1, "unknown_key": 1, "bad_signature": 2, "wrong_kiosk": 1,
                         "unknown_registration": 1, "replayed": 1, "stale": 1, "malformed": 1}
    assert kiosk.state(sid) == kept and kept["state"] == "complete"
    assert kiosk.state(other_session)["state"] == "unknown" and kiosk.events == []
    assert kiosk.central.counters.accepted == 1, "the genuine status only"
