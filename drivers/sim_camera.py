"""Simulated camera: a synthetic frontal face (JPEG) with scriptable faults.

The face is drawn, not photographed, but it is built to pass the checks a kiosk runs on a
portrait: OpenCV's stock face detector finds it, the eyes are level and about 100 px apart at
640 x 480 (ICAO asks for at least 90), and the background is light and even. Each capture
moves the head and the lighting a little and adds sensor noise.
"""

from __future__ import annotations

from typing import Literal, get_args

import cv2
import numpy as np
from pydantic import Field

from drivers.base import CapturedImage, CaptureRequest, Modality
from drivers.errors import CaptureRetry
from drivers.sim_common import SimConfig, SimDevice, encode

CameraFault = Literal["ok", "no-face", "timeout", "disconnect", "broken"]

#: Eye centres are this far either side of the face's midline, in pixels at 640 px width.
EYE_OFFSET_PX = 50

# BGR colours.
_BACKGROUND = (214, 212, 208)
_SKIN = (140, 170, 205)
_SKIN_SHADE = (120, 150, 185)
_SOCKET = (105, 132, 165)
_HAIR = (35, 40, 50)
_SHIRT = (110, 80, 60)
_IRIS = (70, 55, 40)
_LIPS = (95, 95, 165)


class SimCameraConfig(SimConfig):
    driver: Literal["sim-camera"] = "sim-camera"
    #: Frame width in pixels; the face is drawn for 640 and scaled with the width.
    width: int = Field(640, ge=320, le=4096)
    #: Frame height in pixels.
    height: int = Field(480, ge=240, le=4096)
    #: JPEG quality, 10..100.
    jpeg_quality: int = Field(90, ge=10, le=100)
    #: Scripted faults, one per capture attempt, then "ok" for ever.
    faults: list[CameraFault] = Field(default_factory=list)


class SimCameraDriver(SimDevice):
    name = "sim-camera"
    modality = Modality.FACE
    model = "SimCamera 640"
    config_model = SimCameraConfig
    fault_names = frozenset(get_args(CameraFault))
    config: SimCameraConfig

    def __init__(self, device_id: str, config: SimCameraConfig) -> None:
        super().__init__(device_id, config, config.faults)
        self._rng = np.random.default_rng(config.seed)

    def capture(self, request: CaptureRequest) -> CapturedImage:
        fault = self._begin_capture()
        if fault == "no-face":
            raise CaptureRetry("no face", "look straight at the camera")
        frame = draw_face(self.config.width, self.config.height, self._rng)
        jpeg = encode(frame, ".jpg", [cv2.IMWRITE_JPEG_QUALITY, self.config.jpeg_quality])
        return CapturedImage(
            modality=Modality.FACE, position=0, image_format="jpeg", image=jpeg,
            width=self.config.width, height=self.config.height, ppi=0,
        )


    def preview(self) -> np.ndarray:
        if not self._open:
            from drivers.errors import DeviceDisconnected

            raise DeviceDisconnected(f"{self.device_id}: camera not open")
        return draw_face(self.config.width, self.config.height, self._rng)


def draw_face(width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """A BGR frame with one frontal face, placed and lit a little differently each call."""
    scale = width / 640
    frame = np.empty((height, width, 3), np.float32)
    frame[:] = _BACKGROUND
    centre = (width / 2 + rng.uniform(-12, 12) * scale, height * 0.46 + rng.uniform(-8, 8) * scale)
    _draw_head(frame, centre, scale)
    # Light from slightly left or right and a global exposure change.
    ramp = np.linspace(-1.0, 1.0, width, dtype=np.float32)[None, :, None]
    frame *= rng.uniform(0.92, 1.04) * (1 + rng.uniform(-0.06, 0.06) * ramp)
    frame += 3.0 * rng.standard_normal(frame.shape, dtype=np.float32)
    frame = cv2.GaussianBlur(frame, (3, 3), 0)  # a real lens never draws a hard edge
    return np.clip(frame, 0, 255).astype(np.uint8)


def _draw_head(frame: np.ndarray, centre: tuple[float, float], scale: float) -> None:
    """Shoulders, neck, hair, face and features, drawn back to front."""

    def at(x: float, y: float) -> tuple[int, int]:
        return round(centre[0] + x * scale), round(centre[1] + y * scale)

    def size(w: float, h: float) -> tuple[int, int]:
        return round(w * scale), round(h * scale)

    def px(n: float) -> int:
        return max(1, round(n * scale))

    cv2.ellipse(frame, at(0, 260), size(190, 110), 0, 180, 360, _SHIRT, -1)  # shoulders
    cv2.rectangle(frame, at(-38, 80), at(38, 170), _SKIN_SHADE, -1)  # neck
    cv2.ellipse(frame, at(0, -35), size(108, 112), 0, 180, 360, _HAIR, -1)  # hair over the crown
    for side in (-1, 1):
        cv2.ellipse(frame, at(side * 98, -5), size(14, 26), 0, 0, 360, _SKIN_SHADE, -1)  # ears
    cv2.ellipse(frame, at(0, 0), size(98, 128), 0, 0, 360, _SKIN_SHADE, -1)  # face, its rim in shade
    cv2.ellipse(frame, at(0, 4), size(86, 118), 0, 0, 360, _SKIN, -1)
    cv2.ellipse(frame, at(0, -80), size(104, 72), 0, 180, 360, _HAIR, -1)  # fringe
    for side in (-1, 1):
        # Shaded sockets: face detectors key on an eye band darker than cheeks and forehead.
        cv2.ellipse(frame, at(side * EYE_OFFSET_PX, -22), size(32, 20), 0, 0, 360, _SOCKET, -1)
        eye = at(side * EYE_OFFSET_PX, -20)
        cv2.ellipse(frame, eye, size(21, 10), 0, 0, 360, (240, 240, 240), -1)
        cv2.circle(frame, eye, px(8), _IRIS, -1)
        cv2.circle(frame, eye, px(4), (15, 15, 15), -1)  # pupil
        cv2.ellipse(frame, eye, size(21, 10), 0, 180, 360, (60, 70, 90), px(2))  # upper lid
        cv2.line(frame, at(side * 30, -42), at(side * 72, -44), _HAIR, px(6))  # eyebrow
    cv2.line(frame, at(0, -12), at(-6, 30), _SKIN_SHADE, px(4))  # nose ridge
    cv2.ellipse(frame, at(0, 36), size(20, 8), 0, 0, 360, _SKIN_SHADE, -1)  # shadow under the nose
    cv2.ellipse(frame, at(0, 32), size(14, 7), 0, 0, 180, (90, 110, 150), px(3))  # nostrils
    cv2.ellipse(frame, at(0, 62), size(30, 9), 0, 0, 180, _LIPS, px(5))  # mouth
