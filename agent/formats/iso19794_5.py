"""ISO/IEC 19794-5:2011 face image records (version "030") holding the kiosk's token image.

Layout (big-endian). A 17-byte general header, then one representation:

    size  general header
     4    format identifier "FAC\\0"
     4    version "030\\0"
     4    record length, whole record in bytes
     2    number of representations (1)
     1    certification flag (0)
     2    temporal semantics (0: one representation)

    size  representation
     4    representation length: this header, the image length field and the image
     9    capture date and time, UTC: year (2), month, day, hour, minute, second, millisecond (2)
     1    capture device technology (6: video frame, digital camera)
     2+2  capture device vendor and type (0: unreported)
     1    number of quality blocks, then per block: score (1), algorithm vendor (2), algorithm (2)
    17    facial information: landmark count (2, 0), gender, eye colour, hair colour, subject
          height (1 each, 0: unspecified), property mask (3, 0: not specified), expression (2,
          0: unspecified), pose yaw/pitch/roll and their uncertainties (1 each, 0: unspecified)
    11    image information: face image type (1; 2 token frontal), image data type (1; 0 JPEG),
          width (2), height (2), spatial sampling rate level (1; pixels across the head, Table
          18), post-acquisition processing (2, a bit field: 0 rotated, 1 cropped, 5 interpolated
          for the token's affine warp), cross reference (1, 0), colour space (1; 1 24-bit RGB)
     4    image data length, then the image data

The token's geometry (eyes level 0.6 W from the top, 0.25 W apart) makes the head about half
the image's width, which is what the sampling rate level is computed from.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from datetime import UTC, datetime

FORMAT_ID = b"FAC\x00"
VERSION = b"030\x00"
GENERAL = struct.Struct(">4s4sIHBH")
DATETIME = struct.Struct(">HBBBBBH")
DEVICE = struct.Struct(">BHH")
QUALITY = struct.Struct(">BHH")
FACIAL = struct.Struct(">HBBBB3s2sBBBBBB")
IMAGE = struct.Struct(">BBHHBHBB")
assert (GENERAL.size, DATETIME.size, FACIAL.size, IMAGE.size) == (17, 9, 17, 11)

DEVICE_VIDEO_DIGITAL = 6
TOKEN_FRONTAL = 2
IMAGE_DATA_TYPES = {"jpeg": 0, "jp2": 1, "jp2l": 2, "png": 3}
RGB_24 = 1
#: Post-acquisition processing bits the token's affine warp applies: rotated, cropped, interpolated.
TOKEN_PROCESSING = (1 << 0) | (1 << 1) | (1 << 5)
#: Spatial sampling rate levels (Table 18): pixels across the width of the head.
_SAMPLING_BOUNDS = (180, 240, 300, 370, 480, 610, 750)
QUALITY_VENDOR, QUALITY_ALGORITHM = 0x0000, 0x0001


@dataclass(frozen=True)
class FaceRecord:
    image: bytes
    width: int
    height: int
    captured_at: datetime  # timezone-aware
    quality: int | None = None  # 0..100, the kiosk's face score
    image_format: str = "jpeg"
    face_image_type: int = TOKEN_FRONTAL
    processing: int = TOKEN_PROCESSING


def sampling_level(head_width_px: int) -> int:
    """Table 18's level for ``head_width_px`` pixels across the head (0: under 180)."""
    return sum(1 for bound in _SAMPLING_BOUNDS if head_width_px >= bound)


def write_record(face: FaceRecord) -> bytes:
    if face.captured_at.tzinfo is None:
        raise ValueError("captured_at must be timezone-aware")
    if face.image_format not in IMAGE_DATA_TYPES:
        raise ValueError(f"image format {face.image_format!r} is not one of {sorted(IMAGE_DATA_TYPES)}")
    if not (0 < face.width <= 0xFFFF and 0 < face.height <= 0xFFFF) or not face.image:
        raise ValueError("a face record needs an image with a size")
    if face.quality is not None and not 0 <= face.quality <= 100:
        raise ValueError(f"quality {face.quality} is not 0..100")
    utc = face.captured_at.astimezone(UTC)
    when = DATETIME.pack(utc.year, utc.month, utc.day, utc.hour, utc.minute, utc.second,
                         utc.microsecond // 1000)
    quality = b"\x00" if face.quality is None else b"\x01" + QUALITY.pack(
        face.quality, QUALITY_VENDOR, QUALITY_ALGORITHM)
    facial = FACIAL.pack(0, 0, 0, 0, 0, b"\x00\x00\x00", b"\x00\x00", 0, 0, 0, 0, 0, 0)
    # The token's head spans about half its width (eyes 0.25 W apart, head ~2 eye distances).
    image = IMAGE.pack(face.face_image_type, IMAGE_DATA_TYPES[face.image_format], face.width,
                       face.height, sampling_level(face.width // 2), face.processing, 0, RGB_24)
    header = when + DEVICE.pack(DEVICE_VIDEO_DIGITAL, 0, 0) + quality + facial + image
    representation = (struct.pack(">I", 4 + len(header) + 4 + len(face.image)) + header
                      + struct.pack(">I", len(face.image)) + face.image)
    return GENERAL.pack(FORMAT_ID, VERSION, GENERAL.size + len(representation), 1, 0, 0) + representation


def read_record(data: bytes) -> FaceRecord:
    """Parse a record written as above (one representation); ValueError says what is wrong."""
    if len(data) < GENERAL.size:
        raise ValueError("shorter than the 17-byte general header")
    fmt, version, length, count, certified, _temporal = GENERAL.unpack_from(data)
    if fmt != FORMAT_ID or version != VERSION:
        raise ValueError(f"not an ISO 19794-5:2011 record (identifier {fmt!r}, version {version!r})")
    if length != len(data) or count != 1 or certified:
        raise ValueError(f"record length {length} of {len(data)} bytes, {count} representations, "
                         f"certification {certified}: one uncertified representation expected")
    pos = GENERAL.size
    (size,) = struct.unpack_from(">I", data, pos)
    if pos + size != len(data):
        raise ValueError(f"representation length {size} does not fill the record")
    cur = pos + 4
    year, month, day, hour, minute, second, milli = DATETIME.unpack_from(data, cur)
    cur += DATETIME.size + DEVICE.size
    qualities = [QUALITY.unpack_from(data, cur + 1 + i * QUALITY.size) for i in range(data[cur])]
    cur += 1 + len(qualities) * QUALITY.size
    landmarks = FACIAL.unpack_from(data, cur)[0]
    cur += FACIAL.size + 8 * landmarks
    kind, data_type, width, height, _level, processing, _xref, _space = IMAGE.unpack_from(data, cur)
    cur += IMAGE.size
    (image_length,) = struct.unpack_from(">I", data, cur)
    if cur + 4 + image_length != len(data):
        raise ValueError(f"image length {image_length} does not fill the representation")
    formats = {v: k for k, v in IMAGE_DATA_TYPES.items()}
    if data_type not in formats:
        raise ValueError(f"unknown image data type {data_type}")
    return FaceRecord(data[cur + 4:], width, height,
                      datetime(year, month, day, hour, minute, second, milli * 1000, tzinfo=UTC),
                      qualities[0][0] if qualities else None, formats[data_type], kind, processing)
