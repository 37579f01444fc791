"""The U.are.U 4000 driver on the emulated USB bus, and decoding its PNGs."""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from drivers.uru4000 import Uru4000Config, Uru4000Driver
from tests.emulators.uru4000_backend import (
    EmulatedBus,
)

FAST: dict[str, Any] = {"poll_interval_s": 0.01, "transfer_timeout_s": 0.2, "capture_timeout_s": 1.0}


def make_driver(bus: EmulatedBus, **config: Any) -> Uru4000Driver:
    return Uru4000Driver("finger", Uru4000Config(**{**FAST, **config}), backend=bus)


def decode_png(png: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)
