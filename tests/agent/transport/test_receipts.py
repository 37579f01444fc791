"""The receipt format (agent/transport/receipts.py) and the kiosk's gate (receipt_gate.py), without a broker.

The attacks end to end, with a real agent, receiver and mosquitto, are in tests/security/test_receipts.py."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.security.keys import key_id
from agent.transport.receipt_gate import REPORTS_PER_MINUTE, ReceiptGate, Sent
from agent.transport.receipts import (
    FailureReason,
    MissingPart,
    Receipt,
    ReceiptError,
    ReceiptSigner,
    RegistrationStatus,
    verify_receipts,
    verify_registration_status,
)

CENTRAL = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
NEXT_CENTRAL = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
TRUSTED = {key_id(CENTRAL.public_key()): CENTRAL.public_key()}
ID = "0190f0aa-0000-7000-8000-000000000001"
SHA = "ab" * 32
NONCE = "0123456789abcdef0123456789abcdef"
AT = datetime(2026, 11, 28, 12, 0, 0, 123000, tzinfo=UTC)


def stored(item_id: str = ID, **kw: Any) -> Receipt:
    fields = {"id": item_id, "status": "stored", "receiver": "r1", "sha256": SHA, "nonce": NONCE, **kw}
    return Receipt(**fields)


def test_golden_bytes() -> None:
    frame = ReceiptSigner(CENTRAL).sign("van-07", [stored()], issued_at=AT)
    header = (b'{"issued_at":"2026-11-28T12:00:00.123Z","kid":"' + key_id(CENTRAL.public_key()).encode()
              + b'","kiosk_id":"van-07","receipts":[{"id":"' + ID.encode() + b'","nonce":"' + NONCE.encode()
              + b'","receiver":"r1","sha256":"' + SHA.encode() + b'","status":"stored"}],"type":"receipts"}')
    signature = CENTRAL.sign(b"kiosk-agent receipts v1\x00" + header)
    assert frame == b"KAR\x01" + len(header).to_bytes(4, "big") + header + signature
    assert verify_receipts(frame, TRUSTED, "van-07") == [stored()]


def test_a_batch_and_a_file_of_frames_verify_and_keep_their_order() -> None:
    signer = ReceiptSigner(CENTRAL)
    batch = [stored(f"id-{i}") for i in range(50)] + [stored("id-x", status="rejected", reason="bad header")]
    one = signer.sign("van-07", batch)
    assert verify_receipts(one, TRUSTED, "van-07") == batch
    # Removable media: frames back to back in one file, read in one call.
    file_bytes = one + signer.sign("van-07", [stored("id-y", status="duplicate")])
    got = verify_receipts(file_bytes, TRUSTED, "van-07")
    assert [r.id for r in got] == [r.id for r in batch] + ["id-y"]
    assert [r.settled for r in got[-2:]] == [False, True]


def test_a_kiosk_trusts_several_keys_while_the_central_key_rotates() -> None:
    both = {**TRUSTED, key_id(NEXT_CENTRAL.public_key()): NEXT_CENTRAL.public_key()}
    for key in (CENTRAL, NEXT_CENTRAL):
        assert verify_receipts(ReceiptSigner(key).sign("van-07", [stored()]), both, "van-07") == [stored()]
    with pytest.raises(ReceiptError) as info:
        verify_receipts(ReceiptSigner(NEXT_CENTRAL).sign("van-07", [stored()]), TRUSTED, "van-07")
    assert info.value.reason == "unknown_key"


def _resigned_header(frame: bytes, change: dict[str, Any], key: Ed25519PrivateKey | None = None) -> bytes:
    """The frame with its header changed, signed again with ``key`` or keeping the old signature."""
    length = int.from_bytes(frame[4:8], "big")
    header = json.loads(frame[8:8 + length])
    header.update(change)
    raw = json.dumps(header).encode()
    signature = key.sign(b"kiosk-agent receipts v1\x00" + raw) if key else frame[8 + length:]
    return frame[:4] + len(raw).to_bytes(4, "big") + raw + signature


GOOD = ReceiptSigner(CENTRAL).sign("van-07", [stored()])
IMPOSTOR = Ed25519PrivateKey.generate()


def entries(*changes: dict[str, Any]) -> dict[str, Any]:
    return {"receipts": [{"id": ID, "status": "stored", "sha256": SHA, **c} for c in changes]}



@pytest.mark.parametrize("data, reason", [
    (json.dumps({"v": 1, "id": ID, "status": "stored"}).encode(), "malformed"),  # yesterday's receipt
    (b"", "malformed"),
    (GOOD[:-1], "malformed"),
    (GOOD + b"x", "malformed"),
    (_resigned_header(GOOD, entries({"sha256": "x"}), CENTRAL), "malformed"),
    (_resigned_header(GOOD, entries({"status": "gone"}), CENTRAL), "malformed"),
    (_resigned_header(GOOD, {"receipts": []}, CENTRAL), "malformed"),
    (_resigned_header(GOOD, {"kid": "0" * 16}, IMPOSTOR), "unknown_key"),
    (ReceiptSigner(IMPOSTOR).sign("van-07", [stored()]), "unknown_key"),
    # The trusted key's id claimed, the header altered after signing (another id), or signed by another key.
    (_resigned_header(GOOD, entries({"id": "other"})), "bad_signature"),
    (_resigned_header(GOOD, {}, IMPOSTOR), "bad_signature"),
    (ReceiptSigner(CENTRAL).sign("van-08", [stored()]), "wrong_kiosk"),
])
def test_refusals_name_their_reason(data: bytes, reason: str) -> None:
    with pytest.raises(ReceiptError) as info:
        verify_receipts(data, TRUSTED, "van-07")
    assert info.value.reason == reason


def test_one_bad_frame_spoils_the_whole_file() -> None:
    with pytest.raises(ReceiptError):
        verify_receipts(GOOD + ReceiptSigner(IMPOSTOR).sign("van-07", [stored("id-2")]), TRUSTED, "van-07")


def test_kept_receipts_are_signed_again_for_a_new_send() -> None:
    kept = stored(status="duplicate").record()
    again = Receipt.from_record(kept, ID, "cd" * 32, "f" * 32)
    assert (again.status, again.sha256, again.nonce) == ("duplicate", "cd" * 32, "f" * 32)
    assert again.receiver == "r1"
    # What a receiver kept before receipts were signed: no hash, no nonce.
    old = json.dumps({"v": 1, "id": ID, "status": "stored", "receiver": "r0"}).encode()
    assert Receipt.from_record(old, ID, SHA, NONCE) == stored(receiver="r0")
    with pytest.raises(ReceiptError):
        Receipt.from_record(b"[]", ID, SHA, NONCE)


# --- the kiosk's gate ------------------------------------------------------------------------


class Gate:
    def __init__(self) -> None:
        self.counted: list[str] = []
        self.events: list[dict[str, Any]] = []
        self.gate = ReceiptGate(TRUSTED, "van-07", self.counted.append,
                                lambda kind, **f: self.events.append({"event": kind, **f}))

    def check(self, *receipts: Receipt, in_flight: dict[str, Sent] | None = None) -> list[Receipt]:
        return self.gate.check(ReceiptSigner(CENTRAL).sign("van-07", list(receipts)), in_flight or {})


def test_gate_passes_only_receipts_for_this_flight_and_these_bytes(caplog: pytest.LogCaptureFixture) -> None:
    g = Gate()
    flight = {ID: Sent(SHA, NONCE)}
    caplog.set_level(logging.WARNING)
    assert g.check(stored(), in_flight=flight) == [stored()]
    assert g.check(stored("never-sent"), in_flight=flight) == []
    assert g.check(stored(sha256="cd" * 32), in_flight=flight) == []
    assert g.check(stored(nonce="f" * 32), in_flight=flight) == []
    assert g.check(stored(status="rejected", nonce="f" * 32), in_flight=flight) == []
    assert g.counted == ["not_in_flight", "hash_mismatch", "stale_nonce", "stale_nonce"]
    assert [e["reason"] for e in g.events] == g.counted
    assert all(e["event"] == "receipt_refused" for e in g.events)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 4 and all("refused a receipt" in w and "nothing deleted" in w for w in warnings)
    # A batch: the good one passes, the bad one is refused on its own.
    assert g.check(stored(), stored("never-sent"), in_flight=flight) == [stored()]


def test_gate_refuses_unauthenticated_messages_with_the_reason() -> None:
    g = Gate()
    assert g.gate.check(b'{"v":1,"id":"x","status":"stored"}', {ID: Sent(SHA, NONCE)}) == []
    assert g.gate.check(ReceiptSigner(IMPOSTOR).sign("van-07", [stored()]), {ID: Sent(SHA, NONCE)}) == []
    assert g.counted == ["malformed", "unknown_key"]


def test_late_duplicates_of_a_settled_item_are_not_security_events() -> None:
    g = Gate()
    g.gate.settled(ID, Sent(SHA, NONCE))
    assert g.check(stored(status="duplicate")) == [] and g.counted == []
    # The same id with another send's nonce is no duplicate of that flight.
    assert g.check(stored(nonce="f" * 32)) == [] and g.counted == ["not_in_flight"]


def test_gate_logging_is_bounded_but_counting_is_not(caplog: pytest.LogCaptureFixture) -> None:
    g = Gate()
    caplog.set_level(logging.WARNING)
    for i in range(REPORTS_PER_MINUTE + 30):
        g.check(stored(f"x-{i}"))
    assert len(g.counted) == REPORTS_PER_MINUTE + 30
    assert len(caplog.records) == REPORTS_PER_MINUTE and len(g.events) == REPORTS_PER_MINUTE
    g.gate._window_start -= 61  # a minute later: the rest is summed up in one line
    g.check(stored("y"))
    assert any("30 more receipts refused" in r.getMessage() for r in caplog.records)


# --- registration status ------------------------------------------------------------------

FAILED = RegistrationStatus(ID, "failed", 1_764_000_000_000_000,
                            reason=FailureReason("encoding", "a text field cannot be written", 2,
                                                 "2026-11-28T12:01:00Z"))
INCOMPLETE = RegistrationStatus(ID, "incomplete", 7, missing=(MissingPart("finger-3", 3, SHA[:36]),))


def test_status_golden_bytes_and_round_trip() -> None:
    frame = ReceiptSigner(CENTRAL).sign_status("van-07", INCOMPLETE, issued_at=AT)
    header = (b'{"files":[],"id":"' + ID.encode() + b'","issued_at":"2026-11-28T12:00:00.123Z","kid":"'
              + key_id(CENTRAL.public_key()).encode() + b'","kiosk_id":"van-07","missing":[{"id":"'
              + SHA[:36].encode() + b'","item":"finger-3","position":3}],"reason":null,"seq":7,'
              b'"state":"incomplete","type":"registration-status"}')
    signature = CENTRAL.sign(b"kiosk-agent registration status v1\x00" + header)
    assert frame == b"KAR\x01" + len(header).to_bytes(4, "big") + header + signature
    assert verify_registration_status(frame, TRUSTED, "van-07") == INCOMPLETE
    failed = ReceiptSigner(CENTRAL).sign_status("van-07", FAILED)
    assert verify_registration_status(failed, TRUSTED, "van-07") == FAILED


def _resigned(frame: bytes, change: dict[str, Any], context: bytes) -> bytes:
    """The frame with its header changed and signed again with CENTRAL under ``context``."""
    length = int.from_bytes(frame[4:8], "big")
    raw = json.dumps({**json.loads(frame[8:8 + length]), **change}).encode()
    return frame[:4] + len(raw).to_bytes(4, "big") + raw + CENTRAL.sign(context + raw)


def _status_with(change: dict[str, Any]) -> bytes:
    return _resigned(ReceiptSigner(CENTRAL).sign_status("van-07", FAILED), change,
                     b"kiosk-agent registration status v1\x00")


@pytest.mark.parametrize("change", [
    {"state": "done"}, {"seq": 0}, {"seq": True}, {"seq": "7"}, {"id": ""},
    {"missing": [{"item": "finger-3", "position": 16, "id": ID}]},
    {"missing": [{"item": "", "position": 1, "id": ID}]},
    {"missing": [{"item": "f", "position": 1, "id": ID}] * 65},
    {"reason": {"code": "Not A Code", "message": "x"}}, {"reason": {"code": "storage", "message": "x" * 201}},
    {"files": [{"name": "x.an2", "sha256": "AB" * 32, "bytes": 1}]},
])
def test_a_status_no_receiver_sends_is_malformed(change: dict[str, Any]) -> None:
    with pytest.raises(ReceiptError) as err:
        verify_registration_status(_status_with(change), TRUSTED, "van-07")
    assert err.value.reason == "malformed"


def test_receipts_and_statuses_cannot_pass_for_each_other() -> None:
    """Same key, same frame: the signing context and the type keep them apart."""
    signer = ReceiptSigner(CENTRAL)
    status, receipts = signer.sign_status("van-07", FAILED), signer.sign("van-07", [stored()])
    with pytest.raises(ReceiptError) as err:
        verify_receipts(status, TRUSTED, "van-07")
    assert err.value.reason == "malformed"
    with pytest.raises(ReceiptError) as err:
        verify_registration_status(receipts, TRUSTED, "van-07")
    assert err.value.reason == "malformed"
    # A status header signed under the receipts' context (as a receipt) does not verify.
    with pytest.raises(ReceiptError) as err:
        verify_registration_status(_resigned(status, {}, b"kiosk-agent receipts v1\x00"), TRUSTED, "van-07")
    assert err.value.reason == "bad_signature"
    with pytest.raises(ReceiptError) as err:
        verify_registration_status(status + b"x", TRUSTED, "van-07")
    assert err.value.reason == "malformed"
