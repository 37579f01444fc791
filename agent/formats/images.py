"""Fingerprint images as PNG or WSQ, always at the resolution the scanner produced.

Resampling a print changes its ridge period, which matchers rely on, so nothing here scales.
PNG carries the resolution in its pHYs chunk (drivers/png_phys.py). WSQ comes from the ``wsq``
package, a Pillow plugin around NIST's NBIS codec; that package fixes the bit rate at 0.75
bits per pixel (the FBI's rate for 500 ppi prints) and writes no resolution into the file, so
the resolution travels in the records around the image (ISO 19794-4 header, Type-14 fields).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Literal

import numpy as np

from drivers.png_phys import encode_grey_png, png_ppi

FingerFormat = Literal["png", "wsq"]
#: The only rate the wsq package's encoder uses, whatever it is asked for.
WSQ_BITRATE = 0.75
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
WSQ_SOI = b"\xff\xa0"  # WSQ start-of-image marker


@dataclass(frozen=True)
class EncodedImage:
    format: FingerFormat
    data: bytes
    width: int
    height: int
    ppi: int


def _check_grey(gray: np.ndarray) -> None:
    if gray.dtype != np.uint8 or gray.ndim != 2:
        raise ValueError(f"expected a 2-D uint8 image, got {gray.dtype} with shape {gray.shape}")


def encode_png(gray: np.ndarray, ppi: int) -> EncodedImage:
    _check_grey(gray)
    return EncodedImage("png", encode_grey_png(gray, ppi), gray.shape[1], gray.shape[0], ppi)


def encode_wsq(gray: np.ndarray, ppi: int, bitrate: float = WSQ_BITRATE) -> EncodedImage:
    _check_grey(gray)
    if bitrate != WSQ_BITRATE:
        raise ValueError(f"the wsq package encodes at {WSQ_BITRATE} bpp only, not {bitrate}")
    import wsq  # noqa: F401  (registers the WSQ codec with Pillow)
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(gray).save(out, "WSQ")
    return EncodedImage("wsq", out.getvalue(), gray.shape[1], gray.shape[0], ppi)


def encode_finger(gray: np.ndarray, ppi: int, fmt: FingerFormat = "png",
                  wsq_bitrate: float = WSQ_BITRATE) -> EncodedImage:
    """``gray`` (2-D uint8, dark ridges on light) in ``fmt`` at its native ``ppi``."""
    if fmt == "png":
        return encode_png(gray, ppi)
    if fmt == "wsq":
        return encode_wsq(gray, ppi, wsq_bitrate)
    raise ValueError(f"unknown fingerprint format {fmt!r}; use 'png' or 'wsq'")


def sniff_format(data: bytes) -> FingerFormat:
    if data.startswith(PNG_SIGNATURE):
        return "png"
    if data.startswith(WSQ_SOI):
        return "wsq"
    raise ValueError("neither a PNG nor a WSQ image")


def decode_finger(data: bytes) -> tuple[np.ndarray, int]:
    """(pixels, ppi) of a PNG or WSQ fingerprint; ppi is 0 when the file does not say (WSQ)."""
    from PIL import Image

    fmt = sniff_format(data)
    if fmt == "wsq":
        import wsq  # noqa: F401

    with Image.open(io.BytesIO(data)) as img:
        pixels = np.asarray(img.convert("L"))
    return pixels, png_ppi(data) if fmt == "png" else 0
