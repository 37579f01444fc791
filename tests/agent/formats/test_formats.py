"""Fingerprint images, ISO 19794-4 records and ANSI/NIST transactions, each read back by a
reader that shares no code with the writer: Pillow + wsq for WSQ, OpenCV for PNG, struct
offsets from the standard for ISO 19794-4, and nistitl's own parser for ANSI/NIST."""

from __future__ import annotations

import io
import struct
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from functools import cache

import cv2
import nistitl
import numpy as np
import pytest
from PIL import Image

from agent.config import ConfigError, FormatsConfig, validate_config
from agent.formats import ansi_nist, images, iso19794_4
from agent.formats.ansi_nist import (
    FaceImage,
    FingerException,
    FingerImage,
    RegistrationRecord,
    TransactionOptions,
    build_transaction,
)
from drivers.fingerprint_synth import synthesize


@cache
def finger(seed: int = 0, width: int = 320, height: int = 400) -> np.ndarray:
    return synthesize(seed, width, height)


# --- PNG and WSQ --------------------------------------------------------------------------


def test_png_is_lossless_with_its_resolution() -> None:
    gray = finger()
    encoded = images.encode_finger(gray, 500, "png")
    decoded = cv2.imdecode(np.frombuffer(encoded.data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert decoded.dtype == np.uint8 and decoded.ndim == 2  # 8-bit grey, not RGB
    assert np.array_equal(decoded, gray)
    # pHYs read independently: Pillow reports it as dots per inch.
    with Image.open(io.BytesIO(encoded.data)) as img:
        assert img.mode == "L"
        assert [round(d) for d in img.info["dpi"]] == [500, 500]
    assert (encoded.width, encoded.height, encoded.ppi) == (320, 400, 500)


@pytest.mark.parametrize(("width", "height"), [(320, 400), (257, 361)])
def test_wsq_round_trips_at_native_size(width: int, height: int) -> None:
    gray = finger(1, width, height)
    encoded = images.encode_finger(gray, 500, "wsq")
    assert encoded.data[:2] == b"\xff\xa0"  # WSQ start of image
    assert len(encoded.data) < gray.size / 5  # 0.75 bpp is ~10:1 on 8-bit pixels
    import wsq  # noqa: F401  (the independent reader: Pillow with the wsq plugin)

    with Image.open(io.BytesIO(encoded.data)) as img:
        assert img.format == "WSQ" and img.size == (width, height)
        decoded = np.asarray(img.convert("L")).astype(np.int16)
    error = np.abs(decoded - gray.astype(np.int16))
    assert error.mean() < 8 and np.percentile(error, 99) < 40
    # Not trivially close: the codec is lossy, so a bug that returned the input would show.
    assert error.mean() > 0.5


def test_decode_finger_reads_both_formats() -> None:
    gray = finger()
    pixels, ppi = images.decode_finger(images.encode_png(gray, 1000).data)
    assert ppi == 1000 and np.array_equal(pixels, gray)
    pixels, ppi = images.decode_finger(images.encode_wsq(gray, 500).data)
    assert ppi == 500 and pixels.shape == gray.shape  # from the WSQ file's NISTCOM comment
    with pytest.raises(ValueError, match="neither a PNG, a WSQ nor a JP2"):
        images.decode_finger(b"GIF89a")


def test_wsq_refuses_a_bitrate_it_would_ignore() -> None:
    with pytest.raises(ValueError, match="0.75 bpp only"):
        images.encode_finger(finger(), 500, "wsq", wsq_bitrate=1.5)
    with pytest.raises(ValueError, match="2-D uint8"):
        images.encode_finger(finger().astype(np.float32), 500, "png")


def test_formats_config() -> None:
    assert FormatsConfig().finger_format == "png" and FormatsConfig().wsq_bitrate == 0.75
    with pytest.raises(ConfigError) as err:
        validate_config({"kiosk": {"id": "k"}, "mqtt": {"allow_plaintext": True},
                         "formats": {"finger_format": "jpeg", "wsq_bitrate": 2.25, "iso_edition": "2019"}})
    assert any(p.startswith("formats.finger_format:") for p in err.value.problems)
    assert any(p.startswith("formats.wsq_bitrate:") for p in err.value.problems)
    assert any(p.startswith("formats.iso_edition:") for p in err.value.problems)
    ok = FormatsConfig.model_validate({"finger_format": "jp2l", "iso_edition": "2011"})
    assert (ok.finger_format, ok.iso_edition, FormatsConfig().iso_edition) == ("jp2l", "2011", "2005")


# --- ISO/IEC 19794-4:2005 -----------------------------------------------------------------


def test_iso_record_header_fields_at_their_offsets() -> None:
    wsq_a = images.encode_wsq(finger(0), 500).data
    wsq_b = images.encode_wsq(finger(1), 500).data
    record = iso19794_4.FingerImageRecord(
        compression="wsq", ppi=500, capture_device_id=0x1234,
        acquisition_level=iso19794_4.acquisition_level(500),
        views=(iso19794_4.FingerView(2, wsq_a, 320, 400, quality=87, impression=0),
               iso19794_4.FingerView(7, wsq_b, 320, 400, quality=None, impression=1)))
    data = iso19794_4.write_record(record)
    # General header, byte by byte from the standard's table.
    assert data[0:4] == b"FIR\x00"
    assert data[4:8] == b"010\x00"
    assert int.from_bytes(data[8:14], "big") == len(data) == 32 + 2 * 14 + len(wsq_a) + len(wsq_b)
    assert data[14:16] == b"\x12\x34"  # capture device id
    assert struct.unpack(">H", data[16:18]) == (31,)  # acquisition level: 500 ppi
    assert data[18] == 2  # number of fingers
    assert data[19] == 1  # scale units: ppi
    assert struct.unpack(">HHHH", data[20:28]) == (500, 500, 500, 500)  # scan h/v, image h/v
    assert data[28] == 8  # pixel depth
    assert data[29] == 2  # compression: WSQ
    assert data[30:32] == b"\x00\x00"
    # First view header at 32.
    v = data[32:46]
    assert struct.unpack(">I", v[0:4]) == (14 + len(wsq_a),)
    assert (v[4], v[5], v[6], v[7], v[8]) == (2, 1, 1, 87, 0)  # position, count, number, quality, imp.
    assert struct.unpack(">HH", v[9:13]) == (320, 400)
    assert v[13] == 0
    assert data[46:46 + len(wsq_a)] == wsq_a
    # Second view follows the first image directly; no quality computed is 254.
    w = data[46 + len(wsq_a):60 + len(wsq_a)]
    assert (w[4], w[7], w[8]) == (7, 254, 1)
    assert iso19794_4.read_record(data) == replace(record, scan_ppi=500)  # 0 meant "as image"


def test_iso_png_uses_the_2005_code_and_raw_pixels_round_trip() -> None:
    gray = finger()
    png = iso19794_4.write_record(iso19794_4.FingerImageRecord(
        "png", 1000, (iso19794_4.FingerView(1, images.encode_png(gray, 1000).data, 320, 400, 60),)))
    assert png[29] == 5 and struct.unpack(">H", png[24:26]) == (1000,)
    raw = iso19794_4.write_record(iso19794_4.FingerImageRecord(
        "raw", 500, (iso19794_4.FingerView(3, gray.tobytes(), 320, 400, 60),)))
    back = iso19794_4.read_record(raw)
    assert back.compression == "raw"
    assert np.array_equal(np.frombuffer(back.views[0].data, np.uint8).reshape(400, 320), gray)


@pytest.mark.parametrize(("mutate", "message"), [
    (lambda d: b"FMR\x00" + d[4:], "not an ISO 19794-4:2005 record"),
    (lambda d: d[:-1], "record length says"),
    (lambda d: d[:29] + b"\x09" + d[30:], "unknown compression code 9"),
    (lambda d: d[:14], "shorter than the 32-byte"),
])
def test_iso_reader_rejects_malformed_records(mutate, message: str) -> None:  # type: ignore[no-untyped-def]
    data = iso19794_4.write_record(iso19794_4.FingerImageRecord(
        "raw", 500, (iso19794_4.FingerView(1, bytes(64), 8, 8),)))
    with pytest.raises(ValueError, match=message):
        iso19794_4.read_record(mutate(data))


# --- ANSI/NIST-ITL 1-2011 -----------------------------------------------------------------

CREATED = datetime(2026, 3, 14, 23, 30, 5, tzinfo=timezone(timedelta(hours=-5)))  # 04:30:05 UTC next day


def registration(**overrides: object) -> RegistrationRecord:
    wsq_2 = images.encode_wsq(finger(2), 500)
    png_7 = images.encode_png(finger(7), 500)
    fields: dict = dict(
        id="0195f1c2-7a3b-7c00-8000-00000000abcd", applicant_ref="APP-2026-0042", operator_id="op-17",
        kiosk_id="van-3", site="Mobile van 3, Harbour Road", created_at=CREATED,
        fingers=[FingerImage(7, png_7.data, "png", 320, 400, 500, quality=None),
                 FingerImage(2, wsq_2.data, "wsq", 320, 400, 500, quality=87)],
        exceptions=[FingerException(5, "XX", "amputated at birth"), FingerException(10, "UP", "bandaged")],
        face=FaceImage(b"\xff\xd8\xff\xe0fake-jfif\xff\xd9", 480, 640),
    )
    fields.update(overrides)
    return RegistrationRecord(**fields)


def parsed(data: bytes) -> nistitl.Message:
    msg = nistitl.Message()
    msg.parse(data)  # nistitl's own parser checks LEN of every record and the CNT of Type-1
    return msg


def test_transaction_type1_and_type2() -> None:
    reg = registration()
    msg = parsed(build_transaction(reg, TransactionOptions("CPS", "ORI123", "DAI456")))
    t1 = msg[0]
    assert t1.VER == "0500" and t1.TOT == "CPS"
    assert t1.DAT == "20260315"  # the UTC date
    assert t1._14 == "20260315043005Z"  # GMT
    assert (t1.ORI, t1.DAI, t1.TCN) == ("ORI123", "DAI456", reg.id)
    assert (t1.NSR, t1.NTR) == ("19.69", "19.69")
    assert t1._13 == [["KIOSKAGENT", "1.0"]]
    # CNT lists every record: Type-2, four Type-14 (two images, two exceptions), Type-10.
    assert [r.type for r in msg] == [1, 2, 14, 14, 14, 14, 10]
    assert t1.CNT == [["1", "6"], ["2", "0"], ["14", "1"], ["14", "2"], ["14", "3"], ["14", "4"], ["10", "5"]]
    t2 = msg[1]
    assert (t2._101, t2._102, t2._103, t2._104, t2._105) == (
        "APP-2026-0042", "op-17", "van-3", "Mobile van 3, Harbour Road", "2026-03-15T04:30:05Z")


def test_transaction_type14_images_and_exceptions() -> None:
    reg = registration()
    msg = parsed(build_transaction(reg))
    t14 = list(msg.iter(14))
    by_position = {int(r.FGP): r for r in t14}
    assert sorted(by_position) == [2, 5, 7, 10]
    wsq_rec = by_position[2]
    assert (wsq_rec.IMP, wsq_rec.SRC, wsq_rec._5) == ("0", "KIOSK", "20260315")
    assert (wsq_rec.HLL, wsq_rec.VLL, wsq_rec.SLC) == ("320", "400", "1")
    assert (wsq_rec._9, wsq_rec._10, wsq_rec._16, wsq_rec._17) == ("500", "500", "500", "500")
    assert (wsq_rec.CGA, wsq_rec.BPX) == ("WSQ20", "8")
    assert wsq_rec._24 == [["2", "87", "0000", "1"]]  # FQM: position, score, vendor, product
    assert wsq_rec._22 == [["2", "254"]]  # NQM: no NFIQ value claimed
    assert wsq_rec._999 == reg.fingers[1].image
    png_rec = by_position[7]
    assert png_rec.CGA == "PNG" and png_rec._999 == reg.fingers[0].image
    assert png_rec[24] is None  # no score, no FQM
    assert cv2.imdecode(np.frombuffer(png_rec._999, np.uint8), cv2.IMREAD_UNCHANGED).shape == (400, 320)
    amputated, unable = by_position[5], by_position[10]
    assert amputated._18 == [["5", "XX"]] and amputated._20 == "amputated at birth"
    assert unable._18 == [["10", "UP"]] and unable._20 == "bandaged"
    assert amputated[999] is None and amputated[6] is None  # no image, no image fields


def test_transaction_type10_face() -> None:
    reg = registration()
    t10 = next(parsed(build_transaction(reg)).iter(10))
    assert (t10._3, t10._4, t10._5) == ("FACE", "KIOSK", "20260315")
    assert (t10._6, t10._7, t10._11, t10._13, t10._20) == ("480", "640", "JPEGB", "1", "F")
    assert t10._999 == reg.face.jpeg


def test_transaction_without_face_or_fingers() -> None:
    msg = parsed(build_transaction(registration(fingers=[], face=None, exceptions=[])))
    assert [r.type for r in msg] == [1, 2]
    assert msg[0].NSR == "00.00"


def test_separators_in_text_cannot_break_the_record() -> None:
    reg = registration(applicant_ref="A\x1dB\x1cC", site="")
    t2 = parsed(build_transaction(reg))[1]
    assert t2._101 == "ABC" and t2[104] is None  # an empty reference is left out


@pytest.mark.parametrize(("overrides", "message"), [
    ({"created_at": datetime(2026, 1, 1)}, "timezone-aware"),
    ({"exceptions": [FingerException(2, "XX")]}, "appears twice"),
    ({"exceptions": [FingerException(11, "UP")]}, "positions are 1..10"),
    ({"fingers": [FingerImage(1, b"x", "jpeg", 1, 1, 500)]}, "format 'jpeg'"),  # type: ignore[arg-type]
    ({"fingers": [FingerImage(1, b"x", "png", 1, 1, 500, quality=101)]}, "quality 101"),
])
def test_build_transaction_refuses_inconsistent_registrations(overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_transaction(registration(**overrides))


def test_options_from_config_and_encoded_images() -> None:
    formats = validate_config({"kiosk": {"id": "k"}, "mqtt": {"allow_plaintext": True}, "formats": {
        "transaction_type": "MAP", "originating_agency": "ORIX", "destination_agency": "DAIX"}}).formats
    encoded = images.encode_finger(finger(3), 500, "wsq")
    reg = registration(fingers=[FingerImage.from_encoded(4, encoded, quality=55)], exceptions=[])
    msg = parsed(build_transaction(reg, TransactionOptions.from_config(formats)))
    assert (msg[0].TOT, msg[0].ORI, msg[0].DAI) == ("MAP", "ORIX", "DAIX")
    t14 = next(msg.iter(14))
    assert (t14.FGP, t14.CGA, t14.HLL, t14._9, t14.SRC) == ("4", "WSQ20", "320", "500", "ORIX")
    assert t14._999 == encoded.data


def test_text_beyond_ascii_is_utf8_declared_in_dcs() -> None:
    # Formerly refused (latin-1 only); tests/agent/formats/test_text_and_profiles.py reads it back.
    msg = parsed(build_transaction(registration(site="Gdańsk")))
    assert msg[0]._15 == [["3", "UTF-8"]]


def test_utc_is_used_for_dates() -> None:
    reg = registration(created_at=datetime(2026, 3, 15, 4, 30, 5, tzinfo=UTC))
    assert parsed(build_transaction(reg))[0].DAT == "20260315"
    assert ansi_nist.CGA == {"raw": "NONE", "wsq": "WSQ20", "png": "PNG", "jp2l": "JP2L"}
