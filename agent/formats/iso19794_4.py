"""ISO/IEC 19794-4:2005 finger image records: a writer, and a reader for tests and receivers.
The 2011 edition is iso19794_4_2011.py, which shares the record types defined here.

Layout (big-endian), a 32-byte general header then, per image, a 14-byte view header and the
image data:

    offset  size  general header
     0      4     format identifier "FIR\\0"
     4      4     version "010\\0"
     8      6     record length, whole record in bytes
    14      2     capture device id (0: unreported)
    16      2     image acquisition level (31: 500 ppi, 8-bit grey; 41: 1000 ppi)
    18      1     number of fingers/palms (views in the record)
    19      1     scale units (1: pixels per inch, 2: per centimetre)
    20      2+2   scan resolution, horizontal and vertical
    24      2+2   image resolution, horizontal and vertical
    28      1     pixel depth, bits
    29      1     image compression algorithm (the 2005 table: 0 raw, 2 WSQ, 3 JPEG, 4 JPEG 2000,
                  5 PNG; the 2011 edition renumbered PNG to 6)
    30      2     reserved, zero

    offset  size  view header (relative to the view)
     0      4     length of the view: header plus image data
     4      1     finger position (ANSI/NIST codes: 0 unknown, 1 right thumb .. 10 left little)
     5      1     count of views of this finger
     6      1     view number
     7      1     finger image quality, 0..100 (254: not computed)
     8      1     impression type (0: live-scan plain, 1: live-scan rolled, ...)
     9      2     horizontal line length, pixels
    11      2     vertical line length, pixels
    13      1     reserved, zero

Resolution, depth and compression are record-wide, so all views of a record share them.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from datetime import datetime

from agent.formats.positions import CAPTURE_POSITIONS, position_problem

FORMAT_ID = b"FIR\x00"
VERSION = b"010\x00"
GENERAL_HEADER = struct.Struct(">4s4s6sHHBBHHHHBBH")
VIEW_HEADER = struct.Struct(">IBBBBBHHB")
assert GENERAL_HEADER.size == 32 and VIEW_HEADER.size == 14

#: The 2005 edition's compression codes (Table 3): one code for JPEG 2000, lossy or not.
COMPRESSION = {"raw": 0, "wsq": 2, "jpeg": 3, "jp2": 4, "jp2l": 4, "png": 5}
COMPRESSION_NAMES = {0: "raw", 2: "wsq", 3: "jpeg", 4: "jp2", 5: "png"}
SCALE_PPI = 1
QUALITY_NOT_COMPUTED = 254


@dataclass(frozen=True)
class FingerView:
    position: int
    data: bytes
    width: int
    height: int
    quality: int | None = None
    impression: int = 0
    view_number: int = 1
    view_count: int = 1


@dataclass(frozen=True)
class FingerImageRecord:
    compression: str
    ppi: int
    views: tuple[FingerView, ...]
    capture_device_id: int = 0
    acquisition_level: int = 31
    scan_ppi: int = 0  # 0: the same as ppi
    pixel_depth: int = 8
    #: Capture date and time (timezone-aware); the 2011 edition requires it, 2005 has no field.
    captured_at: datetime | None = None


def acquisition_level(ppi: int) -> int:
    """The setting level the resolution allows (levels 41, 31, 20, 10 of the standard's table)."""
    if ppi >= 1000:
        return 41
    if ppi >= 500:
        return 31
    return 20 if ppi >= 250 else 10


def write_record(record: FingerImageRecord) -> bytes:
    """The record in the 2005 edition (version 010)."""
    if record.compression not in COMPRESSION:
        raise ValueError(f"unknown compression {record.compression!r}; one of {sorted(COMPRESSION)}")
    if not record.views or len(record.views) > 255:
        raise ValueError("a record holds 1 to 255 views")
    scan = record.scan_ppi or record.ppi
    body = []
    for v in record.views:
        # 13..15: plain slaps (right four, left four, both thumbs), as in ANSI/NIST.
        problem = position_problem(v.position, CAPTURE_POSITIONS)
        if problem is not None:
            raise ValueError(f"finger position {problem}")
        quality = QUALITY_NOT_COMPUTED if v.quality is None else v.quality
        if not 0 <= quality <= 100 and quality != QUALITY_NOT_COMPUTED:
            raise ValueError(f"quality {quality} is not 0..100")
        data = image_data(record.compression, v.data)
        body.append(VIEW_HEADER.pack(VIEW_HEADER.size + len(data), v.position, v.view_count,
                                     v.view_number, quality, v.impression, v.width, v.height, 0))
        body.append(data)
    length = GENERAL_HEADER.size + sum(len(b) for b in body)
    if length >= 1 << 48:
        raise ValueError("record longer than a 6-byte length can say")
    header = GENERAL_HEADER.pack(FORMAT_ID, VERSION, length.to_bytes(6, "big"), record.capture_device_id,
                                 record.acquisition_level, len(record.views), SCALE_PPI, scan, scan,
                                 record.ppi, record.ppi, record.pixel_depth,
                                 COMPRESSION[record.compression], 0)
    return header + b"".join(body)


def image_data(compression: str, data: bytes) -> bytes:
    """What a view holds: JPEG 2000 as the bare codestream (the record's header says the
    resolution; ISO 19794 readers hand the bytes to a codestream decoder), the rest as is."""
    if compression in ("jp2", "jp2l"):
        from agent.formats.jp2 import codestream

        return codestream(data)
    return data


def read_record(data: bytes) -> FingerImageRecord:
    """Parse a record; ValueError says what is malformed."""
    if len(data) < GENERAL_HEADER.size:
        raise ValueError("shorter than the 32-byte general header")
    (fmt, version, length, device, level, count, units, scan_h, _scan_v, img_h, _img_v, depth,
     compression, _reserved) = GENERAL_HEADER.unpack_from(data)
    if fmt != FORMAT_ID or version != VERSION:
        raise ValueError(f"not an ISO 19794-4:2005 record (identifier {fmt!r}, version {version!r})")
    if int.from_bytes(length, "big") != len(data):
        raise ValueError(f"record length says {int.from_bytes(length, 'big')} bytes, have {len(data)}")
    if units != SCALE_PPI:
        raise ValueError(f"scale units {units}: only pixels per inch (1) are read")
    if compression not in COMPRESSION_NAMES:
        raise ValueError(f"unknown compression code {compression}")
    views, pos = [], GENERAL_HEADER.size
    for _ in range(count):
        if pos + VIEW_HEADER.size > len(data):
            raise ValueError("truncated view header")
        size, position, view_count, number, quality, impression, w, h, _ = VIEW_HEADER.unpack_from(data, pos)
        if size < VIEW_HEADER.size or pos + size > len(data):
            raise ValueError(f"view length {size} runs past the record")
        image = data[pos + VIEW_HEADER.size:pos + size]
        views.append(FingerView(position, image, w, h, None if quality == QUALITY_NOT_COMPUTED else quality,
                                impression, number, view_count))
        pos += size
    if pos != len(data):
        raise ValueError(f"{len(data) - pos} bytes after the last view")
    return FingerImageRecord(COMPRESSION_NAMES[compression], img_h, tuple(views), device, level, scan_h,
                             depth)
