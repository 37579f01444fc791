"""8-bit greyscale PNGs that carry their resolution (the pHYs chunk).

A fingerprint image is useless to a matcher without its resolution, and OpenCV's PNG encoder
writes none, so the chunk is added here: pixels per metre, unit 1 (metre), placed right after
IHDR as the PNG specification requires it to come before the image data.
"""

from __future__ import annotations

import struct
import zlib

import cv2
import numpy as np

from drivers.errors import PermanentDeviceError

SIGNATURE = b"\x89PNG\r\n\x1a\n"
METRES_PER_INCH = 0.0254


def ppi_to_ppm(ppi: int) -> int:
    return round(ppi / METRES_PER_INCH)


def ppm_to_ppi(ppm: int) -> int:
    return round(ppm * METRES_PER_INCH)


def encode_grey_png(image: np.ndarray, ppi: int) -> bytes:
    """``image`` (2-D uint8) as a greyscale PNG with ``ppi`` in its pHYs chunk (none if 0)."""
    if image.dtype != np.uint8 or image.ndim != 2:
        raise ValueError(f"expected a 2-D uint8 image, got {image.dtype} with shape {image.shape}")
    ok, data = cv2.imencode(".png", image)
    if not ok:  # OpenCV reports this by return value; only a build without the codec fails
        raise PermanentDeviceError("this OpenCV build cannot encode PNG images")
    return set_phys(data.tobytes(), ppi) if ppi > 0 else data.tobytes()


def _chunks(png: bytes) -> list[tuple[bytes, bytes]]:
    if not png.startswith(SIGNATURE):
        raise ValueError("not a PNG file")
    chunks, pos = [], len(SIGNATURE)
    while pos < len(png):
        if pos + 12 > len(png):
            raise ValueError("truncated PNG chunk")
        (length,) = struct.unpack(">I", png[pos:pos + 4])
        kind = png[pos + 4:pos + 8]
        chunks.append((kind, png[pos + 8:pos + 8 + length]))
        pos += 12 + length
    return chunks


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def set_phys(png: bytes, ppi: int) -> bytes:
    """``png`` with its pHYs chunk set to ``ppi`` (an existing one is replaced)."""
    ppm = ppi_to_ppm(ppi)
    phys = _chunk(b"pHYs", struct.pack(">IIB", ppm, ppm, 1))
    out = [SIGNATURE]
    for kind, data in _chunks(png):
        if kind == b"pHYs":
            continue
        out.append(_chunk(kind, data))
        if kind == b"IHDR":
            out.append(phys)
    return b"".join(out)


def read_phys(png: bytes) -> tuple[int, int, int] | None:
    """(x pixels per unit, y pixels per unit, unit) from the pHYs chunk, or None without one."""
    for kind, data in _chunks(png):
        if kind == b"pHYs":
            x, y, unit = struct.unpack(">IIB", data)
            return x, y, unit
    return None


def png_ppi(png: bytes) -> int:
    """The resolution a PNG declares in pixels per inch; 0 when it declares none in metres."""
    phys = read_phys(png)
    if phys is None or phys[2] != 1:
        return 0
    return ppm_to_ppi(phys[0])
