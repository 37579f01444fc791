"""The emulated SBI iris camera's eyes: synthetic near-infrared eye images (a dark pupil, an
iris of concentric rings, grey sclera, noise; no real person's eye) in ISO/IEC 19794-6:2011
records holding JPEG 2000 lossless, written by the kiosk's own record writer (whose layout
tests/agent/formats/test_iris.py checks byte by byte against the standard's tables)."""

from __future__ import annotations

import zlib
from datetime import UTC, datetime
from functools import cache

import numpy as np

from agent.formats.iso19794_6 import IrisRecord, IrisView, write_record
from agent.formats.jp2 import encode_jp2_lossless

SUB_TYPES = {"Finger": "Slap", "Face": "Full face", "Iris": "Double"}
#: The device's score of each eye, distinct so a test sees which eye's score went where.
IRIS_SCORES = {"Right": 81, "Left": 74, "UNKNOWN": 60}
EYE_LABELS = {"Right": 1, "Left": 2, "UNKNOWN": 0}
SIZE = (320, 240)


@cache
def eye_image(subtype: str) -> np.ndarray:
    """The eye this device sees for ``subtype`` (the same image every capture)."""
    width, height = SIZE
    rng = np.random.default_rng(zlib.crc32(subtype.encode()))
    y, x = np.mgrid[:height, :width]
    r = np.hypot(x - width / 2, y - height / 2)
    image = np.full((height, width), 175.0)
    iris = r < height * 0.36
    image[iris] = 105 + 35 * np.sin(r[iris] * (0.5 + 0.1 * len(subtype)))
    image[r < height * 0.13] = 18
    return np.clip(image + rng.normal(0, 7, image.shape), 0, 255).astype(np.uint8)


def iris_record(subtype: str, score: int, wrong_eye: bool = False) -> bytes:
    gray = eye_image(subtype)
    label = EYE_LABELS[subtype]
    if wrong_eye:
        label = {1: 2, 2: 1}.get(label, 1)
    view = IrisView(label, encode_jp2_lossless(gray, 500), "jp2l", gray.shape[1], gray.shape[0], score)
    return write_record(IrisRecord((view,), datetime.now(UTC)))
