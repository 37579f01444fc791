"""Iris records: ISO/IEC 19794-6:2011 read back field by field at the offsets the standard's
tables give (with struct here, not with the module's reader), and ANSI/NIST-ITL Type-17 read
back by the independent reader (tests/agent/formats/an2_reader.py). The ``iso19794`` package
reads parts 4 and 5 only (FIR, FAC), so it cannot check part 6. The iris images are synthetic
(concentric rings with noise), made here."""

from __future__ import annotations

import struct
from datetime import UTC, datetime

import cv2
import numpy as np
import pytest

from agent.formats import iso19794_6
from agent.formats.ansi_nist import IrisImage, RegistrationRecord, build_transaction
from agent.formats.iris import iris_images, iris_record
from agent.formats.jp2 import encode_jp2_lossless
from tests.agent.formats import an2_reader

CAPTURED = datetime(2026, 3, 15, 4, 30, 5, 120000, tzinfo=UTC)


def eye(seed: int, width: int = 320, height: int = 240) -> np.ndarray:
    """A synthetic near-infrared eye: dark pupil, ringed iris, grey sclera, noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:height, :width]
    r = np.hypot(x - width / 2, y - height / 2)
    image = np.full((height, width), 170.0)
    iris = r < height * 0.35
    image[iris] = 110 + 30 * np.sin(r[iris] * (0.6 + seed * 0.05))
    image[r < height * 0.12] = 20
    return np.clip(image + rng.normal(0, 6, image.shape), 0, 255).astype(np.uint8)


def png(gray: np.ndarray) -> bytes:
    return cv2.imencode(".png", gray)[1].tobytes()


def test_fields_at_their_offsets_and_pixels_survive() -> None:
    right, left = eye(1), eye(2)
    views = (iso19794_6.IrisView(1, png(right), "png", 320, 240, 72),
             iso19794_6.IrisView(2, encode_jp2_lossless(left, 500), "jp2l", 320, 240, None))
    data = iso19794_6.write_record(iso19794_6.IrisRecord(views, CAPTURED))
    assert struct.unpack(">4s4sIHBB", data[:16]) == (b"IIR\x00", b"020\x00", len(data), 2, 0, 2)
    pos, seen = 16, []
    for number, (label, gray, fmt, quality) in enumerate(((1, right, 14, 72), (2, left, 10, None)), 1):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        assert struct.unpack(">HBBBBBH", data[pos + 4:pos + 13]) == (2026, 3, 15, 4, 30, 5, 120)
        assert struct.unpack(">BHH", data[pos + 13:pos + 18]) == (1, 0, 0)  # CMOS/CCD, unreported
        cur = pos + 18
        if quality is None:
            assert data[cur] == 0
            cur += 1
        else:
            assert struct.unpack(">BBHH", data[cur:cur + 6]) == (1, quality, 0, 1)
            cur += 6
        (rep, label_, kind, image_format, props, w, h, depth, rng, roll, unc) = struct.unpack(
            ">HBBBBHHBHHH", data[cur:cur + 17])
        assert (rep, label_, kind, image_format, w, h, depth) == (number, label, 1, fmt, 320, 240, 8)
        assert props == 0b01_00_01_01  # base orientation both ways, lossless history
        assert (rng, roll, unc) == (0, 0xFFFF, 0xFFFF)
        assert struct.unpack(">6H", data[cur + 17:cur + 29]) == (0,) * 6
        (image_length,) = struct.unpack(">I", data[cur + 29:cur + 33])
        image = data[cur + 33:pos + length]
        assert len(image) == image_length
        decoded = cv2.imdecode(np.frombuffer(image, np.uint8), cv2.IMREAD_GRAYSCALE)
        assert np.array_equal(decoded, gray)  # lossless: PNG and JPEG 2000 5/3
        seen.append(label_)
        pos += length
    assert pos == len(data) and seen == [1, 2]
    back = iso19794_6.read_record(data)
    assert [v.eye for v in back.views] == [1, 2] and back.views[0].quality == 72
    assert back.captured_at == CAPTURED


def test_hostile_records_are_refused() -> None:
    data = iso19794_6.write_record(iso19794_6.IrisRecord(
        (iso19794_6.IrisView(2, png(eye(3)), "png", 320, 240, 50),), CAPTURED))
    with pytest.raises(ValueError, match="record length"):
        iso19794_6.read_record(data[:-1])
    bigger = bytearray(data)
    struct.pack_into(">H", bigger, 16 + 4 + 9 + 5 + 6 + 5, 60000)  # width
    with pytest.raises(ValueError, match="pixels each way"):
        iso19794_6.read_record(bytes(bigger))
    label = bytearray(data)
    label[16 + 4 + 9 + 5 + 6 + 2] = 3  # no eye label 3
    with pytest.raises(ValueError, match="eye label 3"):
        iso19794_6.read_record(bytes(label))
    long_image = bytearray(data)
    struct.pack_into(">I", long_image, 16 + 4 + 9 + 5 + 6 + 29, 10**9)
    with pytest.raises(ValueError, match="does not fill"):
        iso19794_6.read_record(bytes(long_image))
    with pytest.raises(ValueError, match="timezone-aware"):
        iso19794_6.write_record(iso19794_6.IrisRecord(
            (iso19794_6.IrisView(1, b"x", "png", 320, 240),), datetime(2026, 1, 1)))


def registration(irises: list[IrisImage]) -> RegistrationRecord:
    return RegistrationRecord("REG-IRIS-1", "APP-1", "op-1", "kiosk-1", "site", CAPTURED, irises=irises)


def test_type17_records_read_back_by_the_independent_reader() -> None:
    right, left = eye(4), eye(5)
    data = build_transaction(registration([IrisImage(2, png(left), "png", 320, 240, 81),
                                           IrisImage(1, png(right), "png", 320, 240, None)]))
    tx = an2_reader.read(data)
    records = tx.of_type(17)
    assert [tx.text(r, 3) for r in records] == ["1", "2"]  # ELR: right eye first
    for record, gray in zip(records, (right, left), strict=True):
        assert {n: tx.text(record, n) for n in (4, 5, 6, 7, 8, 9, 10, 11, 12, 13)} == {
            4: "KIOSK", 5: "20260315", 6: "320", 7: "240", 8: "0", 9: "1", 10: "1", 11: "PNG",
            12: "8", 13: "GRAY"}
        decoded = cv2.imdecode(np.frombuffer(record.fields[999], np.uint8), cv2.IMREAD_GRAYSCALE)
        assert np.array_equal(decoded, gray)
    assert 24 not in records[0].fields  # no device score, no IQS
    assert tx.items(records[1], 24) == [["81", "0000", "1"]]


def test_bad_irises_are_refused_before_anything_is_written() -> None:
    image = png(eye(6))
    with pytest.raises(ValueError, match="an eye appears twice"):
        build_transaction(registration([IrisImage(1, image, "png", 320, 240),
                                        IrisImage(1, image, "png", 320, 240)]))
    with pytest.raises(ValueError, match="eye label 7"):
        build_transaction(registration([IrisImage(7, image, "png", 320, 240)]))
    with pytest.raises(ValueError, match="not 10..99999 pixels"):
        build_transaction(registration([IrisImage(1, image, "png", 320, 0)]))


def test_the_assembly_helpers_take_a_manifests_iris_parts() -> None:
    right = png(eye(7))
    captures = [{"id": "c1", "item": "iris-right", "modality": "iris", "position": 1},
                {"id": "c2", "item": "face", "modality": "face", "position": 0}]
    parts = {"c1": ({"image_format": "png", "width": 320, "height": 240, "quality": 77}, right),
             "c2": ({"image_format": "jpeg", "width": 10, "height": 10}, b"")}
    irises = iris_images(captures, parts)
    assert irises == [IrisImage(1, right, "png", 320, 240, 77)]
    record = iso19794_6.read_record(iris_record(irises, CAPTURED) or b"")
    assert record.views[0].eye == 1 and record.views[0].image == right
    assert iris_record([], CAPTURED) is None
    captures[0]["position"] = True  # JSON true is not eye 1
    with pytest.raises(ValueError, match="not an eye label"):
        iris_images(captures, parts)
