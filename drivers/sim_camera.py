"""Simulated camera: a synthetic frontal face (JPEG) with scriptable faults."""

from __future__ import annotations

from typing import Literal

import cv2
import numpy as np
from pydantic import Field

from drivers.base import CapturedImage, CaptureRequest, DriverConfig, Modality
from drivers.errors import CaptureRetry
from drivers.sim_common import SimDevice

CameraFault = Literal["ok", "no-face", "timeout", "disconnect"]


class SimCameraConfig(DriverConfig):
    driver: Literal["sim-camera"] = "sim-camera"
    width: int = Field(640, ge=160, le=4096)
    height: int = Field(480, ge=120, le=4096)
    jpeg_quality: int = Field(90, ge=10, le=100)
    seed: int = 0
    capture_delay_s: float = Field(0.0, ge=0)
    faults: list[CameraFault] = Field(default_factory=list)


class SimCameraDriver(SimDevice):
    name = "sim-camera"
    modality = Modality.FACE
    vendor = "kiosk-agent simulator"
    model = "SimCamera"
    config_model = SimCameraConfig

    def __init__(self, device_id: str, config: SimCameraConfig) -> None:
        super().__init__(device_id, config)
        self.config: SimCameraConfig = config
        self._rng = np.random.default_rng(config.seed)

    def capture(self, request: CaptureRequest) -> CapturedImage:
        fault = self._begin_capture()
        if fault == "no-face":
            raise CaptureRetry("no face", "look straight at the camera")
        frame = draw_face(self.config.width, self.config.height, self._rng)
        ok, jpeg = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, self.config.jpeg_quality])
        if not ok:
            raise RuntimeError("JPEG encoding failed")
        return CapturedImage(
            modality=Modality.FACE, position=0, image_format="jpeg", image=jpeg.tobytes(),
            width=self.config.width, height=self.config.height, ppi=0,
        )


def draw_face(width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """A plain frontal face on a light, even background; eyes ~0.16 W apart."""
    s = width / 640  # drawn for 640 x 480, scaled
    light = rng.uniform(0.9, 1.05)
    frame = np.full((height, width, 3), (210, 212, 215), np.float32)
    cx = width / 2 + rng.uniform(-12, 12) * s
    cy = height * 0.47 + rng.uniform(-8, 8) * s

    def p(x: float, y: float) -> tuple[int, int]:
        return int(cx + x * s), int(cy + y * s)

    skin = (140, 170, 205)
    cv2.rectangle(frame, p(-150, 150), p(150, 400), (90, 70, 60), -1)       # shoulders
    cv2.rectangle(frame, p(-35, 90), p(35, 170), skin, -1)                  # neck
    cv2.ellipse(frame, p(0, -20), (int(112 * s), int(140 * s)), 0, 0, 360, (40, 45, 55), -1)  # hair
    cv2.ellipse(frame, p(0, 0), (int(100 * s), int(130 * s)), 0, 0, 360, skin, -1)           # face
    for side in (-1, 1):
        ex, ey = side * 50, -25
        cv2.ellipse(frame, p(ex, ey), (int(20 * s), int(10 * s)), 0, 0, 360, (245, 245, 245), -1)
        cv2.circle(frame, p(ex, ey), int(7 * s), (60, 40, 30), -1)
        cv2.line(frame, p(ex - 22, ey - 22), p(ex + 22, ey - 24), (50, 50, 60), max(1, int(5 * s)))
    cv2.line(frame, p(0, -10), p(-8, 35), (110, 135, 170), max(1, int(3 * s)))  # nose
    cv2.ellipse(frame, p(0, 65), (int(32 * s), int(10 * s)), 0, 0, 180, (90, 90, 160), max(1, int(4 * s)))
    frame = frame * light + rng.normal(0, 3, size=frame.shape)
    frame = cv2.GaussianBlur(frame, (3, 3), 0)
    return np.clip(frame, 0, 255).astype(np.uint8)
