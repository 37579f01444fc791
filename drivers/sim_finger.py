"""Simulated fingerprint scanner: synthetic 500 ppi prints with scriptable faults.

Each finger (device seed + finger position) has one master print, synthesised when first
asked for (about 0.3 s) and kept in memory; every capture is a cheap variation of it, so
two captures of one finger match each other and not another finger, as a matcher expects.
"""

from __future__ import annotations

import zlib
from collections import OrderedDict
from typing import Literal, get_args

import numpy as np
from pydantic import Field

from drivers.base import CapturedImage, CaptureRequest, Modality
from drivers.errors import CaptureRetry
from drivers.fingerprint_synth import synthesize, vary
from drivers.png_phys import encode_grey_png
from drivers.sim_common import SimConfig, SimDevice

#: "poor": an image comes back, but smudged and faint (quality checks should refuse it);
#: "missing-finger": a slap with one finger fewer than asked for.
FingerFault = Literal["ok", "no-finger", "too-messy", "poor", "missing-finger", "timeout", "disconnect",
                      "broken"]
#: ANSI/NIST slap positions and the fingers each holds (13 right four, 14 left four, 15 thumbs).
SLAPS: dict[int, tuple[int, ...]] = {13: (2, 3, 4, 5), 14: (7, 8, 9, 10), 15: (1, 6)}
SLAP_GAP_PX = 40


class SimFingerConfig(SimConfig):
    driver: Literal["sim-finger"] = "sim-finger"
    #: Image width in pixels (320 px is 16 mm at 500 ppi, a typical single-finger platen).
    width: int = Field(320, ge=128, le=1600)
    #: Image height in pixels.
    height: int = Field(400, ge=128, le=1600)
    #: Resolution reported with the image; the ridge period scales with it (~9 px at 500).
    ppi: int = Field(500, ge=250, le=1000)
    #: How many master prints (one per finger position) to keep in memory; the least recently
    #: used one is dropped beyond that and synthesised again, identically, when next needed.
    pool_size: int = Field(10, ge=1, le=64)
    #: Scripted faults, one per capture attempt, then "ok" for ever.
    faults: list[FingerFault] = Field(default_factory=list)


class SimFingerDriver(SimDevice):
    name = "sim-finger"
    modality = Modality.FINGER
    model = "SimFinger 500"
    config_model = SimFingerConfig
    fault_names = frozenset(get_args(FingerFault))
    config: SimFingerConfig

    def __init__(self, device_id: str, config: SimFingerConfig) -> None:
        super().__init__(device_id, config, config.faults)
        self._masters: OrderedDict[int, np.ndarray] = OrderedDict()
        self._rng = np.random.default_rng(config.seed)

    def capture(self, request: CaptureRequest) -> CapturedImage:
        fault = self._begin_capture()
        if fault == "no-finger":
            raise CaptureRetry("no finger", "place your finger flat on the glass")
        if fault == "too-messy":
            raise CaptureRetry("image too smudged",
                               "wipe the finger and the glass, then press gently without rolling")
        if request.position in SLAPS:
            fingers = list(SLAPS[request.position])
            if fault == "missing-finger":
                fingers.pop(int(self._rng.integers(len(fingers))))
            image = self._slap(fingers)
        else:
            image = vary(self.master(request.position), self._rng)
        if fault == "poor":
            image = _degrade(image, self._rng)
        return CapturedImage(
            modality=Modality.FINGER, position=request.position, image_format="png",
            # Like every scanner driver, the PNG says its resolution (pHYs), as records need it.
            image=encode_grey_png(image, self.config.ppi), width=image.shape[1], height=image.shape[0],
            ppi=self.config.ppi,
        )

    def _slap(self, fingers: list[int]) -> np.ndarray:
        """Fingers side by side on a wide platen, as a 4-4-2 slap scanner sees them."""
        h, w = self.config.height, self.config.width
        canvas = np.full((h, len(SLAPS[13]) * (w + SLAP_GAP_PX)), 225, np.uint8)
        for i, position in enumerate(fingers):
            x = i * (w + SLAP_GAP_PX)
            canvas[:, x:x + w] = vary(self.master(position), self._rng)
        return canvas

    def master(self, position: int) -> np.ndarray:
        """The master print of the finger at ``position`` (read-only: it is shared)."""
        if position in self._masters:
            self._masters.move_to_end(position)
            return self._masters[position]
        # A hash rather than arithmetic so any (seed, position) pair names a distinct finger.
        finger_seed = zlib.crc32(f"{self.config.seed}:{position}".encode())
        master = synthesize(finger_seed, self.config.width, self.config.height, self.config.ppi)
        master.flags.writeable = False
        self._masters[position] = master
        if len(self._masters) > self.config.pool_size:
            self._masters.popitem(last=False)
        return master


def _degrade(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A smudged, faint print: ridges blurred together, contrast mostly gone, sensor noise."""
    import cv2

    blurred = cv2.GaussianBlur(image, (0, 0), 3.0).astype(np.float32)
    faint = 225 - (225 - blurred) * 0.5 + rng.normal(0, 6, image.shape)
    return np.clip(faint, 0, 255).astype(np.uint8)
