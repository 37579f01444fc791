"""Text in ANSI/NIST transactions: 7-bit ASCII, or UTF-8 declared in 1.015 DCS, read back by
an independent strict reader (tests/agent/formats/an2_reader.py) and by nistitl; and the face's
subject acquisition profile (10.013)."""

from __future__ import annotations

from datetime import UTC, datetime

import nistitl
import pytest

from agent.formats import images
from agent.formats.ansi_nist import (
    FaceImage,
    FingerException,
    FingerImage,
    RegistrationRecord,
    build_transaction,
)
from drivers.fingerprint_synth import synthesize
from tests.agent.formats import an2_reader

NAMES = {
    "urdu": "ڈاکٹر عائشہ صدیقی-0042",
    "arabic": "محمد بن عبد الله",
    "sindhi": "ڄاڻ ڌڻي",
    "pashto": "ښځه پښتون",
    "chinese": "王小明",
    "polish": "Łukasz Żółć-0042",
    "emoji": "Ana 👩🏽‍⚕️ 🇵🇰",
    "latin-1": "São Tomé",
}


def registration(name: str, **overrides: object) -> RegistrationRecord:
    png = images.encode_png(synthesize(4, 128, 160), 500)
    fields: dict = dict(
        id="0195f1c2-7a3b-7c00-8000-00000000abcd", applicant_ref=name, operator_id="op-17",
        kiosk_id="van-3", site=f"{name} office", created_at=datetime(2026, 3, 15, 4, 30, 5, tzinfo=UTC),
        fingers=[FingerImage.from_encoded(2, png)],
        exceptions=[FingerException(5, "UP", f"bandage; {name}")],
        face=FaceImage(b"\xff\xd8\xff\xd9", 480, 640, full_frontal=True),
    )
    fields.update(overrides)
    return RegistrationRecord(**fields)


@pytest.mark.parametrize("script", sorted(NAMES))
def test_names_in_any_script_read_back_identically(script: str) -> None:
    name = NAMES[script]
    data = build_transaction(registration(name))
    tx = an2_reader.read(data)
    assert tx.encoding == "utf-8"
    assert tx.items(tx.records[0], 15) == [["3", "UTF-8"]]  # DCS: index 3, UTF-8
    t2 = tx.of_type(2)[0]
    assert (tx.text(t2, 101), tx.text(t2, 104)) == (name, f"{name} office")
    exception = [r for r in tx.of_type(14) if 20 in r.fields][0]
    assert tx.text(exception, 20) == f"bandage; {name}"
    # On the wire: UTF-8 bytes, not Latin-1 (where "São" was read as "Sمo" elsewhere).
    assert name.encode("utf-8") in data
    # nistitl, the writer's own library, still parses the lengths and the content list.
    nistitl.Message().parse(data)


def test_ascii_text_declares_no_character_set() -> None:
    data = build_transaction(registration("APP-2026-0042"))
    tx = an2_reader.read(data)
    assert 15 not in tx.records[0].fields and tx.encoding == "ascii"
    assert tx.text(tx.of_type(2)[0], 101) == "APP-2026-0042"
    assert all(b < 0x80 for record in tx.records for tag, value in record.fields.items() if tag != 999
               for b in value)


def test_separators_and_controls_are_dropped_from_unicode_text() -> None:
    data = build_transaction(registration("王\x1c小\x1d明\x1e\x1f\x02\x7f"))
    tx = an2_reader.read(data)
    assert tx.text(tx.of_type(2)[0], 101) == "王小明"


def test_text_that_is_no_unicode_is_refused() -> None:
    with pytest.raises(ValueError, match="lone surrogate"):
        build_transaction(registration("A\ud800B"))


@pytest.mark.parametrize(("full_frontal", "sap"), [(True, "14"), (False, "1"), (None, "1")])
def test_face_profile_follows_the_kiosk_checks(full_frontal: bool | None, sap: str) -> None:
    face = FaceImage(b"\xff\xd8\xff\xd9", 640, 480, full_frontal=full_frontal)
    tx = an2_reader.read(build_transaction(registration("A", face=face)))
    assert tx.text(tx.of_type(10)[0], 13) == sap


def test_resampled_wsq_keeps_the_native_resolution_as_scan_resolution() -> None:
    wsq = images.encode_wsq(synthesize(5, 258, 202), 450)
    reg = registration("A", fingers=[FingerImage.from_encoded(3, wsq)], exceptions=[])
    tx = an2_reader.read(build_transaction(reg))
    t14 = tx.of_type(14)[0]
    assert [tx.text(t14, f) for f in (9, 10, 16, 17, 11)] == ["500", "500", "450", "450", "WSQ20"]
    # NSR: the scanner's resolution in pixels per millimetre; NTR: the images'.
    assert (tx.text(tx.records[0], 11), tx.text(tx.records[0], 12)) == ("17.72", "19.69")


@pytest.mark.parametrize(("finger", "message"), [
    (FingerImage(2, b"x", "png", 10, 10, 0), "resolution 0 ppi"),
    (FingerImage(2, b"x", "png", 10, 10, 5000), "resolution 5000 ppi"),
    (FingerImage(2, b"x", "wsq", 10, 10, 450), "WSQ is written at 500 ppi only"),
])
def test_no_record_is_written_with_an_implausible_resolution(finger: FingerImage, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_transaction(registration("A", fingers=[finger]))
