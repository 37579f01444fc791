"""Finding a face and its eyes in a frame: OpenCV's Haar cascades, or YuNet when a model is
configured. agent/quality/face.py judges what these find; where the face mesh runs
(agent/quality/landmarks.py) it finds the face itself, and these are the fallback."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from agent.quality.config import FaceQualityConfig

#: Eye centres as shares of a Haar face box, used when the eye detector finds no eyes
#: (measured on the astronaut photograph and the simulated camera's face; docs/face-quality.md).
EST_EYE_X = (0.28, 0.72)
EST_EYE_Y = 0.37
#: The face band is searched for eyes at this width (see HaarDetector._eyes).
EYE_SEARCH_WIDTH_PX = 100


@dataclass(frozen=True)
class Face:
    #: x, y, width, height in frame pixels.
    box: tuple[int, int, int, int]
    #: Eye centres (image-left first) in frame pixels; None when the detector found no pair.
    eyes: tuple[tuple[float, float], tuple[float, float]] | None = None
    #: The face mesh's points (agent/quality/landmarks.py), (478, 2) frame pixels; None on the
    #: Haar and YuNet paths.
    landmarks: np.ndarray | None = field(default=None, compare=False, repr=False)

    def eye_points(self) -> tuple[tuple[float, float], tuple[float, float], bool]:
        """The eye centres and whether they were measured (False: estimated from the box)."""
        if self.eyes is not None:
            return self.eyes[0], self.eyes[1], True
        x, y, w, h = self.box
        left = (x + EST_EYE_X[0] * w, y + EST_EYE_Y * h)
        right = (x + EST_EYE_X[1] * w, y + EST_EYE_Y * h)
        return left, right, False


class FaceDetector(Protocol):
    def detect(self, grey: np.ndarray, bgr: np.ndarray | None) -> list[Face]: ...


class HaarDetector:
    """OpenCV's stock Haar cascades: frontal face, then eyes inside its upper half."""

    def __init__(self, min_face_px: int = 80) -> None:
        self.min_face_px = min_face_px
        self.face = _cascade("haarcascade_frontalface_alt2.xml")
        # The plain eye cascade misses eyes behind glasses; the second one is tried only
        # when the first finds no pair, so most frames pay for one.
        self.eye_cascades = (_cascade("haarcascade_eye.xml"),
                             _cascade("haarcascade_eye_tree_eyeglasses.xml"))

    def detect_faces(self, grey: np.ndarray) -> list[tuple[int, int, int, int]]:
        """The face boxes alone: the benchmark's baseline calls exactly this."""
        size = (self.min_face_px, self.min_face_px)
        found = self.face.detectMultiScale(grey, scaleFactor=1.1, minNeighbors=5, minSize=size)
        return [tuple(int(v) for v in box) for box in found]  # type: ignore[misc]

    def detect(self, grey: np.ndarray, bgr: np.ndarray | None = None) -> list[Face]:
        return [Face(box, self._eyes(grey, box)) for box in self.detect_faces(grey)]

    def _eyes(self, grey: np.ndarray, box: tuple[int, int, int, int]
              ) -> tuple[tuple[float, float], tuple[float, float]] | None:
        x, y, w, h = box
        top, bottom = y + int(0.15 * h), y + int(0.60 * h)
        roi = grey[top:bottom, x:x + w]
        # The eye cascade costs as much as the face search at full size; on the face band
        # shrunk to EYE_SEARCH_WIDTH_PX it costs a quarter, and the eye distance it gives moves
        # by about 2 px in 100 (measured on the test images, docs/face-quality.md).
        scale = min(1.0, EYE_SEARCH_WIDTH_PX / w)
        if scale < 1.0:
            roi = cv2.resize(roi, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        width = roi.shape[1]
        min_eye, max_eye = max(8, int(0.12 * width)), max(9, width // 2)
        for cascade in self.eye_cascades:
            found = cascade.detectMultiScale(roi, scaleFactor=1.1, minNeighbors=3,
                                             minSize=(min_eye, min_eye), maxSize=(max_eye, max_eye))
            centres = [(x + (ex + ew / 2) / scale, top + (ey + eh / 2) / scale) for ex, ey, ew, eh in found]
            pair = _eye_pair(centres, box)
            if pair is not None:
                return pair
        return None


def _eye_pair(centres: list[tuple[float, float]], box: tuple[int, int, int, int]
              ) -> tuple[tuple[float, float], tuple[float, float]] | None:
    """The candidate nearest each expected eye position, one per half of the face box.

    Eye cascades also fire on eyebrows and nostrils; taking the candidate nearest where an
    eye should be drops those without a second classifier.
    """
    x, y, w, h = box
    pair = []
    for share, lo, hi in ((EST_EYE_X[0], x, x + w / 2), (EST_EYE_X[1], x + w / 2, x + w)):
        expected = (x + share * w, y + EST_EYE_Y * h)
        side = [c for c in centres if lo <= c[0] < hi]
        if not side:
            return None
        pair.append(min(side, key=lambda c: math.dist(c, expected)))
    return pair[0], pair[1]


class YuNetDetector:
    """cv2.FaceDetectorYN with a YuNet ONNX model: faces with eye landmarks in one pass."""

    def __init__(self, model: Path, min_face_px: int = 80, score: float = 0.8) -> None:
        if not Path(model).is_file():
            raise FileNotFoundError(f"YuNet model {model} not found (quality.face.yunet_model)")
        try:
            self._net = cv2.FaceDetectorYN.create(str(model), "", (320, 320), score)
        except cv2.error as exc:
            raise RuntimeError(f"cannot load the YuNet model {model} (quality.face.yunet_model): "
                               f"{str(exc).strip().splitlines()[-1]}") from None
        self._size = (0, 0)
        self.min_face_px = min_face_px

    def detect(self, grey: np.ndarray, bgr: np.ndarray | None) -> list[Face]:
        if bgr is None:
            bgr = cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR)
        height, width = bgr.shape[:2]
        if (width, height) != self._size:
            self._net.setInputSize((width, height))
            self._size = (width, height)
        _, rows = self._net.detect(bgr)
        faces = []
        for row in rows if rows is not None else ():
            x, y, w, h = (int(round(v)) for v in row[:4])
            if w < self.min_face_px:
                continue
            # YuNet's landmarks: the person's right eye, then left eye (image left, then right).
            a, b = (float(row[4]), float(row[5])), (float(row[6]), float(row[7]))
            faces.append(Face((x, y, w, h), (a, b) if a[0] <= b[0] else (b, a)))
        return faces


def _cascade(name: str) -> cv2.CascadeClassifier:
    data = getattr(cv2, "data", None)
    path = Path(data.haarcascades if data else "") / name
    cascade = cv2.CascadeClassifier(str(path))
    if cascade.empty():
        # OpenCV 5 ships no cascades: the pin in pyproject.toml (< 5) is what prevents this.
        raise RuntimeError(f"OpenCV has no Haar cascade {name} (opencv-python-headless < 5 "
                           "ships them; or set quality.face.yunet_model)")
    return cascade


def make_detector(cfg: FaceQualityConfig) -> FaceDetector:
    if cfg.yunet_model is not None:
        return YuNetDetector(cfg.yunet_model, cfg.min_face_px)
    return HaarDetector(cfg.min_face_px)
