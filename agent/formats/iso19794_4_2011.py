"""ISO/IEC 19794-4:2011 finger image records (version "020"): a writer and a strict reader.

Layout (big-endian). A 16-byte general header, then one representation per image:

    offset  size  general header
     0      4     format identifier "FIR\\0"
     4      4     version "020\\0"
     8      4     record length, whole record in bytes
    12      2     number of finger representations
    14      1     certification flag (0: no certification blocks)
    15      1     number of distinct finger positions

    size  representation header, in order
     4    representation length: header plus image data
     9    capture date and time, UTC: year (2), month, day, hour, minute, second, millisecond (2)
     1    capture device technology (0: unknown)
     2+2  capture device vendor and type (0: unreported)
     1    number of quality blocks, then per block: score (1), algorithm vendor (2), algorithm (2)
     1    finger position (0 unknown, 1..10 fingers, 13..15 plain slaps)
     1    representation number
     1    scale units (1: pixels per inch)
     2+2  scan resolution, horizontal and vertical
     2+2  image resolution, horizontal and vertical
     1    bit depth
     1    compression (Table 9: 0 raw, 1 raw bit-packed, 2 WSQ, 3 JPEG, 4 JPEG 2000 lossy,
          5 JPEG 2000 lossless, 6 PNG; the 2005 edition had no lossless JPEG 2000 code, PNG 5)
     1    impression type (0 live-scan plain, 1 live-scan rolled, ...)
     2+2  horizontal and vertical line length, pixels
     4    image data length
          image data

Unlike 2005, resolution and compression are per representation; the writer still takes one
FingerImageRecord (one format and resolution) so both editions hold the same views.
"""

from __future__ import annotations

import struct
from datetime import UTC, datetime

from agent.formats.iso19794_4 import (
    FORMAT_ID,
    QUALITY_NOT_COMPUTED,
    SCALE_PPI,
    FingerImageRecord,
    FingerView,
    image_data,
    write_record,
)
from agent.formats.positions import CAPTURE_POSITIONS, position_problem

VERSION = b"020\x00"
GENERAL = struct.Struct(">4s4sIHBB")
DATETIME = struct.Struct(">HBBBBBH")
DEVICE = struct.Struct(">BHH")
QUALITY = struct.Struct(">BHH")
IMAGE = struct.Struct(">BBBHHHHBBBHHI")
assert GENERAL.size == 16 and DATETIME.size == 9 and IMAGE.size == 22

COMPRESSION = {"raw": 0, "wsq": 2, "jpeg": 3, "jp2": 4, "jp2l": 5, "png": 6}
COMPRESSION_NAMES = {v: k for k, v in COMPRESSION.items()}
#: The kiosk's own score goes in a quality block as in ANSI/NIST FQM: vendor 0 (no
#: IBIA-registered vendor), algorithm 1 (docs/finger-quality.md).
QUALITY_VENDOR, QUALITY_ALGORITHM = 0x0000, 0x0001


def _datetime(when: datetime) -> bytes:
    utc = when.astimezone(UTC)
    return DATETIME.pack(utc.year, utc.month, utc.day, utc.hour, utc.minute, utc.second,
                         utc.microsecond // 1000)


def write_fir(record: FingerImageRecord, edition: str = "2005") -> bytes:
    """The record in the ``edition`` a config asks for: "2005" (version 010) or "2011" (020)."""
    if edition == "2005":
        return write_record(record)
    if edition == "2011":
        return write_record_2011(record)
    raise ValueError(f"unknown ISO/IEC 19794-4 edition {edition!r}; 2005 or 2011")


def write_record_2011(record: FingerImageRecord) -> bytes:
    if record.compression not in COMPRESSION:
        raise ValueError(f"unknown compression {record.compression!r}; one of {sorted(COMPRESSION)}")
    if not record.views or len(record.views) > 0xFFFF:
        raise ValueError("a record holds 1 to 65535 representations")
    if record.captured_at is None or record.captured_at.tzinfo is None:
        raise ValueError("the 2011 edition needs a timezone-aware capture time")
    scan = record.scan_ppi or record.ppi
    when = _datetime(record.captured_at)
    body = []
    for number, v in enumerate(record.views, start=1):
        problem = position_problem(v.position, CAPTURE_POSITIONS)
        if problem is not None:
            raise ValueError(f"finger position {problem}")
        if v.quality is not None and not 0 <= v.quality <= 100:
            raise ValueError(f"quality {v.quality} is not 0..100")
        quality = b"\x00" if v.quality is None else b"\x01" + QUALITY.pack(
            v.quality, QUALITY_VENDOR, QUALITY_ALGORITHM)
        data = image_data(record.compression, v.data)
        image = IMAGE.pack(v.position, number, SCALE_PPI, scan, scan, record.ppi, record.ppi,
                           record.pixel_depth, COMPRESSION[record.compression], v.impression,
                           v.width, v.height, len(data))
        header = when + DEVICE.pack(0, 0, record.capture_device_id) + quality + image
        body.append(struct.pack(">I", 4 + len(header) + len(data)) + header + data)
    length = GENERAL.size + sum(len(b) for b in body)
    if length > 0xFFFFFFFF:
        raise ValueError("record longer than a 4-byte length can say")
    positions = len({v.position for v in record.views})
    return GENERAL.pack(FORMAT_ID, VERSION, length, len(body), 0, positions) + b"".join(body)


def read_record_2011(data: bytes) -> FingerImageRecord:
    """Parse a 2011 record; ValueError says what is malformed."""
    if len(data) < GENERAL.size:
        raise ValueError("shorter than the 16-byte general header")
    fmt, version, length, count, certified, _positions = GENERAL.unpack_from(data)
    if fmt != FORMAT_ID or version != VERSION:
        raise ValueError(f"not an ISO 19794-4:2011 record (identifier {fmt!r}, version {version!r})")
    if length != len(data):
        raise ValueError(f"record length says {length} bytes, have {len(data)}")
    if certified:
        raise ValueError("certification blocks are not read")
    views, pos, shared = [], GENERAL.size, None
    for _ in range(count):
        if pos + 4 > len(data):
            raise ValueError("truncated representation")
        (size,) = struct.unpack_from(">I", data, pos)
        end = pos + size
        if size < 4 + DATETIME.size + DEVICE.size + 1 + IMAGE.size or end > len(data):
            raise ValueError(f"representation length {size} runs past the record")
        cur = pos + 4
        year, month, day, hour, minute, second, milli = DATETIME.unpack_from(data, cur)
        when = datetime(year, month, day, hour, minute, second, milli * 1000, tzinfo=UTC)
        cur += DATETIME.size
        _tech, _vendor, device = DEVICE.unpack_from(data, cur)
        cur += DEVICE.size
        qualities = [QUALITY.unpack_from(data, cur + 1 + i * QUALITY.size) for i in range(data[cur])]
        cur += 1 + len(qualities) * QUALITY.size
        if cur + IMAGE.size > end:
            raise ValueError("representation header runs past its length")
        (position, _number, units, scan_h, _scan_v, img_h, _img_v, depth, compression, impression,
         width, height, data_length) = IMAGE.unpack_from(data, cur)
        cur += IMAGE.size
        if units != SCALE_PPI:
            raise ValueError(f"scale units {units}: only pixels per inch (1) are read")
        if compression not in COMPRESSION_NAMES:
            raise ValueError(f"unknown compression code {compression}")
        if cur + data_length != end:
            raise ValueError(f"image data length {data_length} does not fill the representation")
        this = (COMPRESSION_NAMES[compression], img_h, scan_h, depth, device, when)
        if shared not in (None, this):
            raise ValueError("representations differ in format or resolution")
        shared = this
        quality = qualities[0][0] if qualities else None
        views.append(FingerView(position, data[cur:end], width, height,
                                None if quality == QUALITY_NOT_COMPUTED else quality, impression))
        pos = end
    if shared is None:
        raise ValueError("a record without representations")
    if pos != len(data):
        raise ValueError(f"{len(data) - pos} bytes after the last representation")
    compression_name, ppi, scan, depth, device, when = shared
    return FingerImageRecord(compression_name, ppi, tuple(views), device, 31, scan, depth, when)
