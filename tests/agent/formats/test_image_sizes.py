"""Image sizes in an ANSI/NIST transaction: HLL/VLL of Type-14 and Type-10 are 10..99999 pixels.

The size comes from the capture header a kiosk sends (agent/transport/protocol.py takes any
integer): a kiosk holding its own valid key could have the receiver write, as a complete
registration, a transaction whose finger is -5 pixels wide or 10**30 (measured: both were
written). Such a transaction is refused now, as one with an implausible resolution is, and
the registration is reported failed ("bad-data") instead of complete.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from agent.formats.ansi_nist import FaceImage, FingerImage, RegistrationRecord, build_transaction


def registration(name: str, **overrides: object) -> RegistrationRecord:
    fields: dict = dict(id="0195f1c2-7a3b-7c00-8000-00000000abcd", applicant_ref=name, operator_id="op-17",
                        kiosk_id="van-3", site="office", created_at=datetime(2026, 3, 15, tzinfo=UTC),
                        fingers=[FingerImage(2, b"x", "png", 128, 160, 500)])
    fields.update(overrides)
    return RegistrationRecord(**fields)


@pytest.mark.parametrize("width, height", [(-5, 400), (0, 400), (10**30, 400), (320, 100_000), (9, 400)])
def test_no_finger_of_an_impossible_size_is_written(width: int, height: int) -> None:
    with pytest.raises(ValueError, match="size"):
        build_transaction(registration("A", fingers=[FingerImage(2, b"x", "png", width, height, 500)]))


@pytest.mark.parametrize("width, height", [(-1, 640), (480, 10**12)])
def test_no_face_of_an_impossible_size_is_written(width: int, height: int) -> None:
    with pytest.raises(ValueError, match="size"):
        build_transaction(registration("A", face=FaceImage(b"\xff\xd8\xff\xd9", width, height)))


def test_plausible_sizes_still_pass() -> None:
    assert build_transaction(registration("A", fingers=[FingerImage(2, b"x", "png", 10, 99_999, 500)]))
