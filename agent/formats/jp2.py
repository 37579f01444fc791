"""JPEG 2000 lossless finger images: OpenCV's OpenJPEG codec, plus the resolution box it omits.

OpenCV writes a JP2 file (signature, ``ftyp``, ``jp2h`` header, ``jp2c`` codestream) and, with
``IMWRITE_JPEG2000_COMPRESSION_X1000 = 1000``, the reversible 5/3 wavelet: lossless (the tests
check pixel equality with two other decoders). It writes no resolution, and a print without
one is useless, so the capture-resolution box (``res `` holding ``resc``, ISO/IEC 15444-1
Annex I) is added to ``jp2h`` here: grid points per metre as N / D x 10^E, written exactly as
ppi / 254 x 10^4.

ANSI/NIST-ITL Type-14 records carry the JP2 file; an ISO/IEC 19794-4 record carries the bare
codestream (``codestream()``), whose header already says the resolution.
"""

from __future__ import annotations

import struct

import numpy as np

SIGNATURE = b"\x00\x00\x00\x0cjP  \r\n\x87\n"
CODESTREAM_SOC = b"\xff\x4f\xff\x51"  # start of codestream, then the SIZ marker
#: OpenCV's compression setting for the reversible (lossless) path.
LOSSLESS_X1000 = 1000
_RESC = struct.Struct(">HHHHbb")  # VRcN, VRcD, HRcN, HRcD, VRcE, HRcE
METRES_PER_INCH = 0.0254


def _boxes(data: bytes, start: int = 0, end: int | None = None) -> list[tuple[bytes, int, int]]:
    """(type, content start, content end) of each box in data[start:end]; ValueError if broken."""
    end = len(data) if end is None else end
    boxes, pos = [], start
    while pos < end:
        if pos + 8 > end:
            raise ValueError("truncated JPEG 2000 box header")
        length, kind = struct.unpack_from(">I4s", data, pos)
        header = 8
        if length == 1:  # a 64-bit length follows
            if pos + 16 > end:
                raise ValueError("truncated JPEG 2000 box header")
            (length,) = struct.unpack_from(">Q", data, pos + 8)
            header = 16
        elif length == 0:  # the box runs to the end
            length = end - pos
        if length < header or pos + length > end:
            raise ValueError(f"JPEG 2000 box {kind!r} runs past its container")
        boxes.append((kind, pos + header, pos + length))
        pos += length
    return boxes


def _box(kind: bytes, content: bytes) -> bytes:
    return struct.pack(">I4s", 8 + len(content), kind) + content


def encode_jp2_lossless(gray: np.ndarray, ppi: int) -> bytes:
    """``gray`` (2-D uint8) as a lossless JP2 file that says ``ppi`` in its resolution box."""
    import cv2

    if gray.dtype != np.uint8 or gray.ndim != 2:
        raise ValueError(f"expected a 2-D uint8 image, got {gray.dtype} with shape {gray.shape}")
    if not 1 <= ppi <= 65535:
        raise ValueError(f"resolution {ppi} ppi cannot be written to a JP2 resolution box")
    ok, data = cv2.imencode(".jp2", gray, [cv2.IMWRITE_JPEG2000_COMPRESSION_X1000, LOSSLESS_X1000])
    if not ok:  # only a build without OpenJPEG fails, and says so by return value
        raise RuntimeError("this OpenCV build cannot encode JPEG 2000")
    return set_resolution(data.tobytes(), ppi)


def set_resolution(jp2: bytes, ppi: int) -> bytes:
    """``jp2`` with its capture resolution set to ``ppi`` (an existing ``res `` box replaced)."""
    if not jp2.startswith(SIGNATURE):
        raise ValueError("not a JP2 file")
    resc = _box(b"resc", _RESC.pack(ppi, 254, ppi, 254, 4, 4))
    out = []
    for kind, start, end in _boxes(jp2):
        content = jp2[start:end]
        if kind == b"jp2h":
            kept = [jp2[s - 8:e] for k, s, e in _boxes(jp2, start, end) if k != b"res "]
            content = b"".join(kept) + _box(b"res ", resc)
        out.append(_box(kind, content))
    return b"".join(out)


def resolution(jp2: bytes) -> int:
    """The capture resolution a JP2 file declares, in pixels per inch; 0 when it says none."""
    if not jp2.startswith(SIGNATURE):
        raise ValueError("not a JP2 file")
    for kind, start, end in _boxes(jp2):
        if kind != b"jp2h":
            continue
        for sub, s, e in _boxes(jp2, start, end):
            if sub != b"res ":
                continue
            for res_kind, rs, re_ in _boxes(jp2, s, e):
                if res_kind == b"resc" and re_ - rs == _RESC.size:
                    _vn, _vd, hn, hd, _ve, he = _RESC.unpack_from(jp2, rs)
                    if hd:
                        return round(hn / hd * 10.0 ** he * METRES_PER_INCH)
    return 0


def codestream(jp2: bytes) -> bytes:
    """The JPEG 2000 codestream inside a JP2 file (what an ISO/IEC 19794 record holds)."""
    if jp2.startswith(CODESTREAM_SOC):
        return jp2
    for kind, start, end in _boxes(jp2):
        if kind == b"jp2c":
            return jp2[start:end]
    raise ValueError("a JP2 file without a codestream box")
