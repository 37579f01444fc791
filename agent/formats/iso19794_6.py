"""ISO/IEC 19794-6:2011 iris image records (version "020"): a writer and a strict reader.

Layout (big-endian; the 2011 edition's general header and representation, Tables 2 to 4;
docs/formats.md, "Iris", says where each value comes from). A 16-byte general header:

    size  general header
     4    format identifier "IIR\\0"
     4    version "020\\0" (the 2011 edition; 2005 records have no version of this shape)
     4    record length, whole record in bytes
     2    number of iris representations
     1    certification flag (0: no certification blocks)
     1    number of eyes represented (0..2)

    size  representation, one per image
     4    representation length: this header and the image data
     9    capture date and time, UTC: year (2), month, day, hour, minute, second, millisecond (2)
     1    capture device technology (0: unknown, 1: CMOS/CCD)
     2+2  capture device vendor and type (0: unreported)
     1    number of quality blocks, then per block: score (1), algorithm vendor (2), algorithm (2)
     2    representation number (1, 2, ...)
     1    eye label (0: subject eye undefined, 1: right eye, 2: left eye)
     1    image type (1: uncropped, 2: VGA, 3: cropped, 7: cropped and masked)
     1    image format (Table 4: 2 mono raw, 6 mono JPEG, 10 mono JPEG 2000, 14 mono PNG; the
          RGB code of each is one higher by two)
     1    image properties: horizontal orientation (bits 0-1), vertical orientation (bits 2-3),
          compression history (bits 6-7); orientation 0 undefined, 1 base, 2 flipped;
          history 0 undefined, 1 lossless or none, 2 lossy
     2+2  width and height in pixels
     1    bit depth (8 for grey)
     2    camera range (0: unassigned)
     2+2  roll angle of the eye and its uncertainty (0xFFFF: undefined)
     2x6  iris centre smallest and largest x, smallest and largest y, iris diameter smallest and
          largest (0: undefined)
     4    image data length, then the image data
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from datetime import UTC, datetime

from agent.formats.positions import EYE_LABELS

FORMAT_ID = b"IIR\x00"
VERSION = b"020\x00"
GENERAL = struct.Struct(">4s4sIHBB")
DATETIME = struct.Struct(">HBBBBBH")
DEVICE = struct.Struct(">BHH")
QUALITY = struct.Struct(">BHH")
#: Representation number .. iris diameters, then the image data length.
IMAGE = struct.Struct(">HBBBBHHBHHH6HI")
assert (GENERAL.size, DATETIME.size, DEVICE.size, IMAGE.size) == (16, 9, 5, 33)

#: Table 4 image formats of grey images the kiosk writes or reads.
IMAGE_FORMATS = {"raw": 2, "jpeg": 6, "jp2l": 10, "png": 14}
FORMAT_NAMES = {v: k for k, v in IMAGE_FORMATS.items()}
UNCROPPED, VGA, CROPPED, CROPPED_MASKED = 1, 2, 3, 7
IMAGE_TYPES = frozenset({UNCROPPED, VGA, CROPPED, CROPPED_MASKED})
DEVICE_CMOS_CCD = 1
ORIENTATION_BASE = 1
HISTORY_LOSSLESS, HISTORY_LOSSY = 1, 2
UNDEFINED_ANGLE = 0xFFFF
#: The device's score goes in a quality block: vendor 0 (no IBIA-registered vendor: the
#: device's own algorithm is not named by SBI), algorithm 1, as the finger records do.
QUALITY_VENDOR, QUALITY_ALGORITHM = 0x0000, 0x0001
#: No iris camera the kiosk drives makes frames larger than this on a side; 19794-6 itself
#: allows 2 bytes (65535), which a hostile record would use to ask for gigabytes.
MAX_SIDE = 4096
MIN_SIDE = 16


@dataclass(frozen=True)
class IrisView:
    eye: int  # 17.003 / 19794-6 eye label: 0 undefined, 1 right, 2 left
    image: bytes
    image_format: str  # "png", "jp2l", "jpeg" or "raw"
    width: int
    height: int
    quality: int | None = None  # 0..100, the device's score
    image_type: int = UNCROPPED
    bit_depth: int = 8


@dataclass(frozen=True)
class IrisRecord:
    views: tuple[IrisView, ...]
    captured_at: datetime  # timezone-aware
    device_technology: int = DEVICE_CMOS_CCD


def _check_view(v: IrisView) -> None:
    if v.eye not in EYE_LABELS:
        raise ValueError(f"eye label {v.eye} is not one of {sorted(EYE_LABELS)}")
    if v.image_format not in IMAGE_FORMATS:
        raise ValueError(f"image format {v.image_format!r} is not one of {sorted(IMAGE_FORMATS)}")
    if not (MIN_SIDE <= v.width <= MAX_SIDE and MIN_SIDE <= v.height <= MAX_SIDE):
        raise ValueError(f"iris image {v.width} x {v.height} is not {MIN_SIDE}..{MAX_SIDE} pixels each way")
    if v.quality is not None and not 0 <= v.quality <= 100:
        raise ValueError(f"quality {v.quality} is not 0..100")
    if v.image_type not in IMAGE_TYPES or v.bit_depth != 8 or not v.image:
        raise ValueError("an 8-bit iris image of a Table 4 image type is needed")


def _properties(image_format: str) -> int:
    history = HISTORY_LOSSY if image_format == "jpeg" else HISTORY_LOSSLESS
    return ORIENTATION_BASE | ORIENTATION_BASE << 2 | history << 6


def write_record(record: IrisRecord) -> bytes:
    if record.captured_at.tzinfo is None:
        raise ValueError("captured_at must be timezone-aware")
    if not 1 <= len(record.views) <= 0xFFFF:
        raise ValueError("a record holds 1 to 65535 representations")
    utc = record.captured_at.astimezone(UTC)
    when = DATETIME.pack(utc.year, utc.month, utc.day, utc.hour, utc.minute, utc.second,
                         utc.microsecond // 1000)
    body = []
    for number, v in enumerate(record.views, start=1):
        _check_view(v)
        quality = b"\x00" if v.quality is None else b"\x01" + QUALITY.pack(
            v.quality, QUALITY_VENDOR, QUALITY_ALGORITHM)
        image = IMAGE.pack(number, v.eye, v.image_type, IMAGE_FORMATS[v.image_format],
                           _properties(v.image_format), v.width, v.height, v.bit_depth, 0,
                           UNDEFINED_ANGLE, UNDEFINED_ANGLE, 0, 0, 0, 0, 0, 0, len(v.image))
        header = when + DEVICE.pack(record.device_technology, 0, 0) + quality + image
        body.append(struct.pack(">I", 4 + len(header) + len(v.image)) + header + v.image)
    length = GENERAL.size + sum(len(b) for b in body)
    if length > 0xFFFFFFFF:
        raise ValueError("record longer than a 4-byte length can say")
    eyes = len({v.eye for v in record.views} - {0}) or 1
    return GENERAL.pack(FORMAT_ID, VERSION, length, len(body), 0, min(eyes, 2)) + b"".join(body)


def read_record(data: bytes) -> IrisRecord:
    """Parse a 2011 record; every length must agree with the bytes, or ValueError says which."""
    if len(data) < GENERAL.size:
        raise ValueError("shorter than the 16-byte general header")
    fmt, version, length, count, certified, eyes = GENERAL.unpack_from(data)
    if fmt != FORMAT_ID or version != VERSION:
        raise ValueError(f"not an ISO/IEC 19794-6:2011 record (identifier {fmt!r}, version {version!r})")
    if length != len(data):
        raise ValueError(f"record length says {length} bytes, have {len(data)}")
    if certified:
        raise ValueError("certification blocks are not read")
    if not 1 <= count or eyes > 2:
        raise ValueError(f"{count} representations of {eyes} eyes")
    views, pos, when = [], GENERAL.size, None
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
        technology = data[cur]
        cur += DEVICE.size
        blocks = data[cur]
        if cur + 1 + blocks * QUALITY.size + IMAGE.size > end:
            raise ValueError("representation header runs past its length")
        qualities = [QUALITY.unpack_from(data, cur + 1 + i * QUALITY.size) for i in range(blocks)]
        cur += 1 + blocks * QUALITY.size
        (_number, eye, image_type, image_format, _props, width, height, depth, _range, _roll,
         _uncertainty, *_centre, image_length) = IMAGE.unpack_from(data, cur)
        cur += IMAGE.size
        if cur + image_length != end:
            raise ValueError(f"image data length {image_length} does not fill the representation")
        if image_format not in FORMAT_NAMES:
            raise ValueError(f"image format {image_format} is not a grey format the kiosk reads")
        score = qualities[0][0] if qualities else None
        view = IrisView(eye, data[cur:end], FORMAT_NAMES[image_format], width, height,
                        score if score is not None and score <= 100 else None, image_type, depth)
        _check_view(view)
        views.append(view)
        pos = end
    if pos != len(data):
        raise ValueError(f"{len(data) - pos} bytes after the last representation")
    assert when is not None
    return IrisRecord(tuple(views), when, technology)
