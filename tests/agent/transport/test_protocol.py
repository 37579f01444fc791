from __future__ import annotations

import hashlib
import json

import pytest

from agent.capture.record import CaptureRecord
from agent.errors import PermanentError
from agent.transport.protocol import (
    ProtocolError,
    Topics,
    decode_capture,
    encode_capture,
    frame_send,
    open_send,
)
from drivers import Modality


def record(image: bytes = b"\x89PNG fake image \x00\xff" * 50, **kw) -> CaptureRecord:  # type: ignore[no-untyped-def]
    fields = dict(id="0190d4c2-0000-7000-8000-000000000001", kiosk_id="k1", site="s", operator_id=None,
                  device_id="finger", driver="sim-finger", device_serial="SN1", modality=Modality.FINGER,
                  position=2, captured_at="2026-11-28T12:00:00.000Z", image_format="png", width=10,
                  height=20, ppi=500, image_sha256=hashlib.sha256(image).hexdigest(), quality=None,
                  image=image, seq=7)
    fields.update(kw)
    return CaptureRecord(**fields)  # type: ignore[arg-type]


def test_round_trip_is_binary_safe_and_small() -> None:
    image = bytes(range(256)) * 400
    rec = record(image)
    payload = encode_capture(rec)
    assert payload.endswith(image)  # raw bytes, no base64
    assert len(payload) - len(image) < 1024
    assert decode_capture(payload) == rec


def test_tampered_image_is_rejected_with_its_id() -> None:
    payload = bytearray(encode_capture(record()))
    payload[-1] ^= 0xFF
    with pytest.raises(ProtocolError, match="SHA-256") as info:
        decode_capture(bytes(payload))
    assert info.value.item_id == "0190d4c2-0000-7000-8000-000000000001"


@pytest.mark.parametrize("payload, message", [
    (b"", "too short"),
    (b"XYZ\x01\x00\x00\x00\x02{}", "bad magic"),
    (b"KAE\x09\x00\x00\x00\x02{}", "version 9"),
    (b"KAE\x01\x00\x00\xff\xff{}", "does not fit"),
    (b"KAE\x01\x00\x00\x00\x02{]", "not JSON"),
    (b'KAE\x01\x00\x00\x00\x10{"type":"other"}', "not a capture header"),
])
def test_malformed_envelopes(payload: bytes, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        decode_capture(payload)


def test_truncated_image_detected() -> None:
    payload = encode_capture(record())
    with pytest.raises(ProtocolError, match="header says"):
        decode_capture(payload[:-5])


def test_transmission_frame_names_the_send() -> None:
    sealed = b"KAS\x01" + bytes(range(256))
    nonce = "0123456789abcdef0123456789abcdef"
    framed = frame_send(sealed, nonce)
    header = b'{"nonce":"0123456789abcdef0123456789abcdef","type":"send"}'
    assert framed == b"KAT\x01" + len(header).to_bytes(4, "big") + header + sealed  # golden bytes
    assert open_send(framed) == (nonce, sealed)
    # A bare sealed envelope (a tool, an older kiosk) has no nonce.
    assert open_send(sealed) == ("", sealed)
    for bad in (frame_send(sealed, "short"), framed.replace(b'"nonce"', b'"nonse"'),
                b"KAT\x01\x00\x00\x00\x02{]"):
        with pytest.raises(ProtocolError):
            open_send(bad)


def test_topics() -> None:
    t = Topics("org/kiosk", "k1")
    assert t.captures == "org/kiosk/k1/captures"
    assert Topics("org/kiosk", "+").kiosk_of("org/kiosk/k9/captures") == "k9"
    with pytest.raises(ProtocolError):
        t.kiosk_of("org/k9/captures")


def test_protocol_errors_are_permanent_and_still_value_errors() -> None:
    exc = ProtocolError("bad magic", "some-id")
    assert isinstance(exc, PermanentError) and not exc.transient
    assert isinstance(exc, ValueError) and exc.item_id == "some-id" and str(exc) == "bad magic"


@pytest.mark.parametrize("field, raw, message", [
    ("width", "1e400", "must be an integer"),       # inf: int() raised OverflowError, uncaught
    ("height", "-5", "outside"),
    ("width", "1000000000000000000000000000000", "outside"),
    ("ppi", "true", "must be an integer"),
    ("ppi", "500.0", "must be an integer"),
    ("quality", "1e400", "must be an integer"),
    ("quality", "101", "outside"),
    ("seq", "-1e999", "must be an integer"),
])
def test_hostile_header_numbers_are_refused_as_protocol_errors(field: str, raw: str, message: str) -> None:
    """Red team: a kiosk holding its own key sent width Infinity; the receiver logged a
    traceback per message and answered nothing. Now each is a ProtocolError naming the field."""
    from agent.transport.protocol import MAGIC, pack_frame
    rec = record()
    header = dict(rec.metadata(), v=1, type="capture")
    header[field] = "@@HOSTILE@@"
    text = json.dumps(header, separators=(",", ":"), sort_keys=True).replace('"@@HOSTILE@@"', raw)
    with pytest.raises(ProtocolError, match=message) as info:
        decode_capture(pack_frame(MAGIC, text.encode(), rec.image))
    assert field in str(info.value)
