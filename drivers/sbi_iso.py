"""The ISO records inside an SBI capture's ``bioValue``, read just far enough to get the image.

MOSIP devices send fingers as ISO/IEC 19794-4:2011 records (JPEG 2000 lossless at 500 ppi),
faces as ISO/IEC 19794-5:2011 records and irises as ISO/IEC 19794-6:2011 records (JPEG 2000
lossless). The drivers may not use the agent's record code
(tests/test_layout.py), and a driver needs only the image, its resolution and its size, so
this reader is small and strict: every length must agree with the bytes that are there.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import cv2
import numpy as np

FIR_ID, FIR_2011 = b"FIR\x00", b"020\x00"
FAC_ID, FAC_2011 = b"FAC\x00", b"030\x00"
_GENERAL = struct.Struct(">4s4sIHBB")
#: After the representation length: date and time (9), device technology, vendor, type (5).
_DATE_DEVICE = 14
_IMAGE = struct.Struct(">BBBHHHHBBBHHI")
SCALE_PPI = 1
#: Compression codes of the 2011 edition this reader decodes (Table 9): JPEG, JPEG 2000, PNG.
DECODABLE = {3: "jpeg", 4: "jp2", 5: "jp2", 6: "png"}
#: No scanner or camera the kiosk drives makes images larger than this on a side.
MAX_SIDE = 4096
JPEG_SOI = b"\xff\xd8\xff"
JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  \r\n\x87\n"
J2K_SOC = b"\xff\x4f\xff\x51"


IIR_ID, IIR_2011 = b"IIR\x00", b"020\x00"
#: 19794-6:2011 representation, from the representation number to the image data length.
_IRIS_IMAGE = struct.Struct(">HBBBBHHBHHH6HI")
#: Grey image formats of 19794-6:2011 Table 4 this reader decodes: mono JPEG, JPEG 2000, PNG.
IRIS_DECODABLE = {6: "jpeg", 10: "jp2", 14: "png"}
EYE_LABELS = (0, 1, 2)  # undefined, right, left


@dataclass(frozen=True)
class IrisEye:
    eye: int
    gray: np.ndarray


@dataclass(frozen=True)
class FingerImage:
    position: int
    ppi: int
    gray: np.ndarray


def decode(data: bytes, colour: bool = False) -> np.ndarray:
    """The image in ``data`` (JPEG, JPEG 2000 or PNG), bounded in size; ValueError otherwise."""
    if not data.startswith((JPEG_SOI, JP2_SIGNATURE, J2K_SOC, b"\x89PNG")):
        raise ValueError("the image is not JPEG, JPEG 2000 or PNG")
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR if colour else cv2.IMREAD_GRAYSCALE)
    if image is None:
        raise ValueError("the image does not decode")
    if max(image.shape[:2]) > MAX_SIDE:
        raise ValueError(f"the image is larger than {MAX_SIDE} pixels on a side")
    return image


def read_finger(data: bytes) -> FingerImage:
    """The one finger image in an ISO/IEC 19794-4:2011 record."""
    if len(data) < _GENERAL.size:
        raise ValueError("finger record shorter than its general header")
    fmt, version, length, count, certified, _ = _GENERAL.unpack_from(data)
    if (fmt, version) != (FIR_ID, FIR_2011):
        raise ValueError("not an ISO/IEC 19794-4:2011 finger record")
    if length != len(data) or count != 1 or certified:
        raise ValueError("finger record length, representation count or certification flag is wrong")
    (size,) = struct.unpack_from(">I", data, _GENERAL.size)
    cur = _GENERAL.size + 4 + _DATE_DEVICE
    if _GENERAL.size + size != len(data) or cur >= len(data):
        raise ValueError("finger representation length does not match the record")
    cur += 1 + data[cur] * 5  # quality blocks: the device's score travels in qualityScore
    if cur + _IMAGE.size > len(data):
        raise ValueError("finger representation header runs past the record")
    (position, _n, units, _sh, _sv, ppi, ppi_v, depth, compression, _imp, width, height,
     data_length) = _IMAGE.unpack_from(data, cur)
    cur += _IMAGE.size
    if units != SCALE_PPI or ppi != ppi_v or depth != 8:
        raise ValueError("finger image is not 8-bit with a square resolution in pixels per inch")
    if compression not in DECODABLE or cur + data_length != len(data):
        raise ValueError(f"finger image compression {compression} or data length is not usable")
    gray = decode(data[cur:])
    if gray.shape != (height, width):
        raise ValueError(f"finger image is {gray.shape[1]}x{gray.shape[0]}, the record says {width}x{height}")
    return FingerImage(position, ppi, gray)


def face_image(data: bytes) -> bytes:
    """The encoded image of an ISO/IEC 19794-5:2011 face record.

    Only the general header and the representation length are checked field by field; the
    image is the JPEG or JPEG 2000 data that ends the representation (the facial information
    and landmark blocks before it are not used by the kiosk, which judges the face itself).
    """
    if len(data) < 15 + 4 or data[:4] != FAC_ID or data[4:8] != FAC_2011:
        raise ValueError("not an ISO/IEC 19794-5:2011 face record")
    (length,) = struct.unpack_from(">I", data, 8)
    (count,) = struct.unpack_from(">H", data, 12)
    (size,) = struct.unpack_from(">I", data, 15)
    if length != len(data) or count != 1 or 15 + size != len(data):
        raise ValueError("face record lengths do not match the bytes")
    starts = [i for i in (data.find(JPEG_SOI, 19), data.find(JP2_SIGNATURE, 19)) if i >= 0]
    if not starts:
        raise ValueError("face record holds no JPEG or JPEG 2000 image")
    return data[min(starts):]


def read_iris(data: bytes) -> list[IrisEye]:
    """The eye images of an ISO/IEC 19794-6:2011 record, each checked against its header."""
    if len(data) < _GENERAL.size:
        raise ValueError("iris record shorter than its general header")
    fmt, version, length, count, certified, eyes = _GENERAL.unpack_from(data)
    if (fmt, version) != (IIR_ID, IIR_2011):
        raise ValueError("not an ISO/IEC 19794-6:2011 iris record")
    if length != len(data) or not 1 <= count <= 2 or certified or eyes > 2:
        raise ValueError("iris record length, representation count, eye count or certification flag is wrong")
    found, pos = [], _GENERAL.size
    for _ in range(count):
        if pos + 4 > len(data):
            raise ValueError("iris representation runs past the record")
        (size,) = struct.unpack_from(">I", data, pos)
        end, cur = pos + size, pos + 4 + _DATE_DEVICE
        if cur >= len(data) or end > len(data):
            raise ValueError("iris representation length runs past the record")
        cur += 1 + data[cur] * 5  # quality blocks: the device's score travels in qualityScore
        if cur + _IRIS_IMAGE.size > end:
            raise ValueError("iris representation header runs past its length")
        (_n, eye, _kind, image_format, _props, width, height, depth, _range, _roll, _unc, *_centre,
         image_length) = _IRIS_IMAGE.unpack_from(data, cur)
        cur += _IRIS_IMAGE.size
        if eye not in EYE_LABELS or depth != 8 or image_format not in IRIS_DECODABLE:
            raise ValueError(f"iris image of eye label {eye}, bit depth {depth}, format {image_format} "
                             "is not an 8-bit grey image the kiosk reads")
        if not (0 < width <= MAX_SIDE and 0 < height <= MAX_SIDE) or cur + image_length != end:
            raise ValueError("iris image size or data length is not usable")
        gray = decode(data[cur:end])
        if gray.shape != (height, width):
            raise ValueError(f"iris image is {gray.shape[1]}x{gray.shape[0]}, the record says "
                             f"{width}x{height}")
        found.append(IrisEye(eye, gray))
        pos = end
    if pos != len(data):
        raise ValueError("bytes after the last iris representation")
    return found
