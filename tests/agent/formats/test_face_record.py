"""ISO/IEC 19794-5:2011 face records: every field at the offset the standard's tables give, read
with struct here (not with the module's reader), the token JPEG decoded by OpenCV."""

from __future__ import annotations

import struct
from datetime import UTC, datetime

import cv2
import numpy as np
import pytest

from agent.formats import iso19794_5
from agent.formats.iso19794_4 import FingerImageRecord, FingerView
from agent.formats.iso19794_4_2011 import write_fir

CAPTURED = datetime(2026, 3, 15, 4, 30, 5, 120000, tzinfo=UTC)


def token(width: int = 480) -> tuple[bytes, int, int]:
    height = round(width / 0.75)
    image = np.full((height, width, 3), 180, np.uint8)
    cv2.circle(image, (width // 2, int(height * 0.55)), width // 4, (90, 120, 200), -1)
    ok, data = cv2.imencode(".jpg", image)
    assert ok
    return data.tobytes(), width, height


def test_fields_at_their_offsets() -> None:
    jpeg, width, height = token()
    data = iso19794_5.write_record(iso19794_5.FaceRecord(jpeg, width, height, CAPTURED, quality=91))
    assert struct.unpack(">4s4sIHBH", data[:17]) == (b"FAC\x00", b"030\x00", len(data), 1, 0, 0)
    rep = 17
    assert struct.unpack(">I", data[rep:rep + 4]) == (len(data) - 17,)
    assert struct.unpack(">HBBBBBH", data[rep + 4:rep + 13]) == (2026, 3, 15, 4, 30, 5, 120)
    assert struct.unpack(">BHH", data[rep + 13:rep + 18]) == (6, 0, 0)  # video frame, digital
    assert struct.unpack(">BBHH", data[rep + 18:rep + 24]) == (1, 91, 0, 1)  # one quality block
    facial = rep + 24
    assert data[facial:facial + 17] == bytes(17)  # no landmarks, everything unspecified
    info = facial + 17
    (kind, data_type, w, h, level, processing, xref, space) = struct.unpack(">BBHHBHBB", data[info:info + 11])
    assert (kind, data_type, w, h, xref, space) == (2, 0, width, height, 0, 1)  # token, JPEG, RGB
    assert level == 2  # head ~240 px across: level 2 is 240..300
    assert processing == 0b100011  # rotated, cropped, interpolated
    (length,) = struct.unpack(">I", data[info + 11:info + 15])
    assert data[info + 15:] == jpeg and length == len(jpeg)
    decoded = cv2.imdecode(np.frombuffer(data[info + 15:], np.uint8), cv2.IMREAD_COLOR)
    assert decoded.shape == (height, width, 3)
    back = iso19794_5.read_record(data)
    assert (back.width, back.height, back.quality, back.captured_at) == (width, height, 91, CAPTURED)


@pytest.mark.parametrize(("head", "level"), [(100, 0), (180, 1), (239, 1), (240, 2), (500, 5), (900, 7)])
def test_sampling_rate_levels(head: int, level: int) -> None:
    assert iso19794_5.sampling_level(head) == level


def test_no_score_writes_no_quality_block_and_bad_records_are_refused() -> None:
    jpeg, width, height = token(240)
    data = iso19794_5.write_record(iso19794_5.FaceRecord(jpeg, width, height, CAPTURED))
    assert data[17 + 18] == 0 and iso19794_5.read_record(data).quality is None
    with pytest.raises(ValueError, match="record length"):
        iso19794_5.read_record(data[:-1])
    with pytest.raises(ValueError, match="timezone-aware"):
        iso19794_5.write_record(iso19794_5.FaceRecord(jpeg, width, height, datetime(2026, 1, 1)))


def test_an_unknown_iso_edition_is_refused() -> None:
    with pytest.raises(ValueError, match="edition '2019'"):
        write_fir(FingerImageRecord("raw", 500, (FingerView(1, bytes(4), 2, 2),)), "2019")
