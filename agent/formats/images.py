"""Fingerprint images as PNG, WSQ or JPEG 2000 lossless, by one resolution rule.

- PNG and JPEG 2000 lossless keep the scanner's native resolution and say it inside the file
  (PNG pHYs, drivers/png_phys.py; JP2 capture-resolution box, agent/formats/jp2.py).
- WSQ is defined for 500 ppi prints, and the ``wsq`` package writes "PPI 500" into the file's
  NISTCOM comment whatever the print's real resolution. So WSQ is written only at 500 ppi: a
  print at another resolution is first resampled to 500 ppi (area averaging down, cubic up),
  which keeps the ridge period in millimetres; the native resolution travels on as the scan
  resolution (ISO/IEC 19794-4 scan resolution, ANSI/NIST 14.016/14.017 SHPS/SVPS).

The ``wsq`` package fixes its bit rate at 0.75 bits per pixel (the FBI's rate for 500 ppi).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Literal

import numpy as np

from agent.formats import jp2
from drivers.png_phys import encode_grey_png, png_ppi

FingerFormat = Literal["png", "wsq", "jp2l"]
FINGER_FORMATS: tuple[FingerFormat, ...] = ("png", "wsq", "jp2l")
#: The only rate the wsq package's encoder uses, whatever it is asked for.
WSQ_BITRATE = 0.75
#: The one resolution WSQ is written at (the FBI's WSQ specification is for 500 ppi prints).
WSQ_PPI = 500
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
WSQ_SOI = b"\xff\xa0"  # WSQ start-of-image marker
_WSQ_COMMENT = b"\xff\xa8"
_WSQ_SOF = b"\xff\xa2"


@dataclass(frozen=True)
class EncodedImage:
    format: FingerFormat
    data: bytes
    width: int
    height: int
    #: The image's resolution, as the file and the records around it say.
    ppi: int
    #: The scanner's native resolution; differs from ``ppi`` only when WSQ resampled the print.
    scan_ppi: int = 0

    @property
    def native_ppi(self) -> int:
        return self.scan_ppi or self.ppi


def _check_grey(gray: np.ndarray) -> None:
    if gray.dtype != np.uint8 or gray.ndim != 2:
        raise ValueError(f"expected a 2-D uint8 image, got {gray.dtype} with shape {gray.shape}")


def encode_png(gray: np.ndarray, ppi: int) -> EncodedImage:
    _check_grey(gray)
    return EncodedImage("png", encode_grey_png(gray, ppi), gray.shape[1], gray.shape[0], ppi)


def encode_jp2l(gray: np.ndarray, ppi: int) -> EncodedImage:
    _check_grey(gray)
    return EncodedImage("jp2l", jp2.encode_jp2_lossless(gray, ppi), gray.shape[1], gray.shape[0], ppi)


def resample(gray: np.ndarray, ppi: int, to_ppi: int) -> np.ndarray:
    """``gray`` scanned at ``ppi`` as if scanned at ``to_ppi`` (same millimetres per ridge)."""
    import cv2

    if ppi == to_ppi:
        return gray
    height, width = gray.shape
    size = (max(1, round(width * to_ppi / ppi)), max(1, round(height * to_ppi / ppi)))
    interpolation = cv2.INTER_AREA if to_ppi < ppi else cv2.INTER_CUBIC
    return cv2.resize(gray, size, interpolation=interpolation)


def encode_wsq(gray: np.ndarray, ppi: int, bitrate: float = WSQ_BITRATE) -> EncodedImage:
    """WSQ at 500 ppi; a print at another resolution is resampled first (module docstring)."""
    _check_grey(gray)
    if bitrate != WSQ_BITRATE:
        raise ValueError(f"the wsq package encodes at {WSQ_BITRATE} bpp only, not {bitrate}")
    if ppi <= 0:
        raise ValueError(f"a print at {ppi} ppi cannot be resampled to {WSQ_PPI} ppi for WSQ")
    import wsq  # noqa: F401  (registers the WSQ codec with Pillow)
    from PIL import Image

    pixels = resample(gray, ppi, WSQ_PPI)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "WSQ")
    data = out.getvalue()
    if wsq_ppi(data) != WSQ_PPI:  # the package's fixed comment is what makes 500 the only rate
        raise RuntimeError(f"the wsq package wrote {wsq_ppi(data)} ppi, not {WSQ_PPI}")
    return EncodedImage("wsq", data, pixels.shape[1], pixels.shape[0], WSQ_PPI,
                        scan_ppi=ppi if ppi != WSQ_PPI else 0)


def encode_finger(gray: np.ndarray, ppi: int, fmt: FingerFormat = "png",
                  wsq_bitrate: float = WSQ_BITRATE) -> EncodedImage:
    """``gray`` (2-D uint8, dark ridges on light) in ``fmt`` by the resolution rule above."""
    if fmt == "png":
        return encode_png(gray, ppi)
    if fmt == "wsq":
        return encode_wsq(gray, ppi, wsq_bitrate)
    if fmt == "jp2l":
        return encode_jp2l(gray, ppi)
    raise ValueError(f"unknown fingerprint format {fmt!r}; one of {', '.join(FINGER_FORMATS)}")


def sniff_format(data: bytes) -> FingerFormat:
    if data.startswith(PNG_SIGNATURE):
        return "png"
    if data.startswith(WSQ_SOI):
        return "wsq"
    if data.startswith(jp2.SIGNATURE):
        return "jp2l"
    raise ValueError("neither a PNG, a WSQ nor a JP2 image")


def wsq_ppi(data: bytes) -> int:
    """The resolution in a WSQ file's NISTCOM comment ("PPI n"); 0 without one (or -1 there)."""
    pos = len(WSQ_SOI)
    while pos + 4 <= len(data):
        marker = data[pos:pos + 2]
        if marker == _WSQ_SOF:  # comments come before the frame header
            break
        length = int.from_bytes(data[pos + 2:pos + 4], "big")
        if length < 2:
            raise ValueError("WSQ segment shorter than its length field")
        if marker == _WSQ_COMMENT:
            text = data[pos + 4:pos + 2 + length]
            if text.startswith(b"NIST_COM"):
                for line in text.split(b"\n"):
                    if line.startswith(b"PPI "):
                        return max(0, int(line[4:].strip() or b"0"))
        pos += 2 + length
    return 0


def decode_finger(data: bytes) -> tuple[np.ndarray, int]:
    """(pixels, ppi) of a PNG, WSQ or JP2 fingerprint; ppi is what the file says (0: nothing)."""
    from PIL import Image

    fmt = sniff_format(data)
    if fmt == "wsq":
        import wsq  # noqa: F401

    with Image.open(io.BytesIO(data)) as img:
        pixels = np.asarray(img.convert("L"))
    ppi = {"png": png_ppi, "wsq": wsq_ppi, "jp2l": jp2.resolution}[fmt](data)
    return pixels, ppi
