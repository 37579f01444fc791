"""Simulated fingerprint scanner: synthetic 500 ppi prints with scriptable faults."""

from __future__ import annotations

from typing import Literal

import cv2
import numpy as np
from pydantic import Field

from drivers.base import CapturedImage, CaptureRequest, DriverConfig, Modality
from drivers.errors import CaptureRetry
from drivers.fingerprint_synth import synthesize, vary
from drivers.sim_common import SimDevice

FingerFault = Literal["ok", "no-finger", "too-messy", "timeout", "disconnect"]


class SimFingerConfig(DriverConfig):
    driver: Literal["sim-finger"] = "sim-finger"
    width: int = Field(320, ge=64, le=1600)
    height: int = Field(400, ge=64, le=1600)
    ppi: int = Field(500, ge=100, le=2000)
    #: Different seeds give different people's fingers.
    seed: int = 0
    #: Distinct master prints kept per finger position; captures are variations of them.
    pool_size: int = Field(1, ge=1, le=16)
    #: Simulated time for the person to place the finger.
    capture_delay_s: float = Field(0.0, ge=0)
    #: Scripted faults, one per capture attempt, then "ok" for ever.
    faults: list[FingerFault] = Field(default_factory=list)


class SimFingerDriver(SimDevice):
    name = "sim-finger"
    modality = Modality.FINGER
    vendor = "kiosk-agent simulator"
    model = "SimFinger 500"
    config_model = SimFingerConfig

    def __init__(self, device_id: str, config: SimFingerConfig) -> None:
        super().__init__(device_id, config)
        self.config: SimFingerConfig = config
        self._masters: dict[tuple[int, int], np.ndarray] = {}
        self._rng = np.random.default_rng(config.seed)
        self._count = 0

    def capture(self, request: CaptureRequest) -> CapturedImage:
        fault = self._begin_capture()
        if fault == "no-finger":
            raise CaptureRetry("no finger", "place your finger flat on the glass")
        if fault == "too-messy":
            raise CaptureRetry("image too messy", "wipe the finger and the glass, then press gently")
        self._count += 1
        master = self._master(request.position, self._count % self.config.pool_size)
        image = vary(master, self._rng)
        ok, png = cv2.imencode(".png", image)
        if not ok:  # OpenCV reports failure by return value, not exception
            raise RuntimeError("PNG encoding failed")
        return CapturedImage(
            modality=Modality.FINGER, position=request.position, image_format="png",
            image=png.tobytes(), width=self.config.width, height=self.config.height,
            ppi=self.config.ppi,
        )

    def _master(self, position: int, variant: int) -> np.ndarray:
        key = (position, variant)
        if key not in self._masters:
            seed = self.config.seed * 1000 + position * 16 + variant
            self._masters[key] = synthesize(seed, self.config.width, self.config.height)
        return self._masters[key]
