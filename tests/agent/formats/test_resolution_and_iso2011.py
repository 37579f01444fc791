"""The resolution rule (WSQ at 500 ppi only, PNG and JPEG 2000 lossless at their own and saying
it) and ISO/IEC 19794-4:2011 records, each checked by a reader the kiosk does not write with:
NBIS's WSQ decoder (the wsq package's C module), Pillow and OpenCV for JPEG 2000 and PNG, and
the ``iso19794`` package for the 2011 record."""

from __future__ import annotations

import io
import struct
from datetime import UTC, datetime
from functools import cache

import _wsq  # NBIS's decoder inside the wsq package: reports the ppi of the file's comment
import cv2
import numpy as np
import pytest
from PIL import Image

from agent.formats import images, iso19794_4, jp2
from agent.formats.iso19794_4_2011 import read_record_2011, write_fir
from drivers.fingerprint_synth import synthesize

CAPTURED = datetime(2026, 3, 15, 4, 30, 5, tzinfo=UTC)


@cache
def finger(seed: int = 0, width: int = 258, height: int = 202) -> np.ndarray:
    return synthesize(seed, width, height)


@pytest.mark.parametrize("ppi", [450, 500, 508, 1000])
def test_wsq_is_always_500_ppi_and_the_file_says_so(ppi: int) -> None:
    encoded = images.encode_wsq(finger(), ppi)
    _pixels, width, height, file_ppi = _wsq.decompress(encoded.data)
    assert file_ppi == encoded.ppi == 500  # the NISTCOM comment matches the record's value
    # Resampled to the same millimetres: 258 px at 450 ppi is 287 px at 500 ppi.
    assert (width, height) == (encoded.width, encoded.height) == (round(258 * 500 / ppi),
                                                                  round(202 * 500 / ppi))
    assert encoded.scan_ppi == (0 if ppi == 500 else ppi) and encoded.native_ppi == ppi


@pytest.mark.parametrize("ppi", [450, 500, 1000])
def test_jpeg2000_lossless_is_pixel_exact_and_carries_its_resolution(ppi: int) -> None:
    gray = finger(1)
    encoded = images.encode_finger(gray, ppi, "jp2l")
    assert encoded.data.startswith(jp2.SIGNATURE) and (encoded.ppi, encoded.scan_ppi) == (ppi, 0)
    with Image.open(io.BytesIO(encoded.data)) as img:  # Pillow's OpenJPEG binding
        assert img.format == "JPEG2000" and [round(d) for d in img.info["dpi"]] == [ppi, ppi]
        assert np.array_equal(np.asarray(img), gray)
    decoded = cv2.imdecode(np.frombuffer(encoded.data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert np.array_equal(decoded, gray)
    assert len(encoded.data) < gray.size  # compressed, not stored
    assert images.decode_finger(encoded.data)[1] == ppi


def test_png_says_its_resolution() -> None:
    with Image.open(io.BytesIO(images.encode_finger(finger(), 508, "png").data)) as img:
        assert [round(d) for d in img.info["dpi"]] == [508, 508]


def record(fmt: str, ppi: int = 500) -> tuple[iso19794_4.FingerImageRecord, list[np.ndarray]]:
    prints = [finger(2, 320, 400), finger(3, 320, 400)]
    data = [p.tobytes() if fmt == "raw" else images.encode_finger(p, ppi, fmt).data  # type: ignore[arg-type]
            for p in prints]
    views = (iso19794_4.FingerView(2, data[0], 320, 400, quality=87),
             iso19794_4.FingerView(7, data[1], 320, 400, quality=None, impression=1))
    return iso19794_4.FingerImageRecord(fmt, ppi, views, captured_at=CAPTURED), prints


@pytest.fixture(scope="module")
def iso19794_reader():  # type: ignore[no-untyped-def]
    """The iso19794 package (2011 edition reader). Its 0.1.0 release predates Pillow 10.1,
    which made ``Image.mode`` read-only; this gives its plugin the setter it assumes, and
    nothing else: parsing and decoding stay the package's own."""
    import wsq  # noqa: F401  (its WSQ decoder)
    from iso19794 import FIR

    if not isinstance(getattr(FIR.FIRImageFile, "mode", None), property) or \
            FIR.FIRImageFile.mode.fset is None:  # type: ignore[union-attr]
        FIR.FIRImageFile.mode = property(lambda self: self._mode,  # type: ignore[assignment]
                                         lambda self, value: setattr(self, "_mode", value))
    return FIR


@pytest.mark.parametrize("fmt", ["raw", "wsq", "jp2l"])
def test_iso2011_records_read_by_the_iso19794_package(iso19794_reader, fmt: str) -> None:  # type: ignore[no-untyped-def]
    rec, prints = record(fmt)
    data = write_fir(rec, "2011")
    assert data[:8] == b"FIR\x00020\x00" and struct.unpack(">I", data[8:12]) == (len(data),)
    with Image.open(io.BytesIO(data)) as img:
        assert img.info["nb_representation"] == 2 and img.info["nb_position"] == 2
        views = []
        for frame, (position, impression) in enumerate([("RIGHT_INDEX_FINGER", "LIVESCAN_PLAIN"),
                                                         ("LEFT_INDEX_FINGER", "LIVESCAN_ROLLED")]):
            img.seek(frame)
            head = img.header
            assert (head["position"], head["impression_type"], head["scale_units"]) == (
                position, impression, "PPI")
            assert head["horizontal_image_sampling_rate"] == head["vertical_scan_sampling_rate"] == 500
            assert head["image_compression_algo"] == {"raw": "RAW", "wsq": "WSQ",
                                                      "jp2l": "JPEG2000_LOSSLESS"}[fmt]
            assert head["capture_datetime"] == datetime(2026, 3, 15, 4, 30, 5)
            assert head["quality_records"][:1] == ([(87, b"\x00\x00", b"\x00\x01")] if frame == 0 else [])
            img.load()
            views.append(np.asarray(img))
        assert isinstance(img, iso19794_reader.FIRImageFile)  # the package's own parser read it all
    if fmt != "wsq":  # lossless: the very pixels
        assert all(np.array_equal(v, p) for v, p in zip(views, prints, strict=True))
    else:
        assert all(np.abs(v.astype(int) - p).mean() < 8 for v, p in zip(views, prints, strict=True))
    assert read_record_2011(data).views[0].quality == 87


def test_iso2011_png_header_and_compression_codes() -> None:
    rec, _ = record("png", 1000)
    data = write_fir(rec, "2011")
    # 16-byte general header, then the representation: length 4, date 9, device 5, one
    # quality block (1 + 5), position, number, units, scan h/v, image h/v, depth, compression.
    rep = 16
    assert data[rep + 18] == 1 and data[rep + 19] == 87  # one quality block, score 87
    image = rep + 4 + 9 + 5 + 1 + 5
    assert struct.unpack(">BBBHHHHBB", data[image:image + 13]) == (2, 1, 1, 1000, 1000, 1000, 1000, 8, 6)
    # The 2005 edition codes PNG 5 and has one code (4) for JPEG 2000; 2011 has 5 and 6.
    assert iso19794_4.write_record(rec)[29] == 5
    assert iso19794_4.write_record(record("jp2l")[0])[29] == 4
    assert write_fir(record("jp2l")[0], "2011")[rep + 4 + 9 + 5 + 6 + 12] == 5


def test_iso_records_hold_the_jpeg2000_codestream() -> None:
    rec, prints = record("jp2l")
    for edition in ("2005", "2011"):
        data = write_fir(rec, edition)
        assert data.count(jp2.CODESTREAM_SOC) == 2 and jp2.SIGNATURE not in data


@pytest.mark.parametrize(("mutate", "message"), [
    (lambda d: d[:4] + b"010\x00" + d[8:], "not an ISO 19794-4:2011"),
    (lambda d: d[:-1], "record length says"),
    (lambda d: d[:14] + b"\x01" + d[15:], "certification"),
])
def test_iso2011_reader_rejects_malformed_records(mutate, message: str) -> None:  # type: ignore[no-untyped-def]
    data = write_fir(record("raw")[0], "2011")
    with pytest.raises(ValueError, match=message):
        read_record_2011(mutate(data))


def test_iso2011_needs_a_capture_time() -> None:
    rec, _ = record("raw")
    with pytest.raises(ValueError, match="capture time"):
        write_fir(iso19794_4.FingerImageRecord("raw", 500, rec.views), "2011")
