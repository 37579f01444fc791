"""Face test images cut from scikit-image's astronaut photograph:
a passing portrait and one negative per check."""

from __future__ import annotations

import functools

import cv2
import numpy as np
from skimage import data as skdata

#: The issue asks for 2x, where Haar's eyes are 90.6 px apart: 0.6 px above ICAO's 90, a
#: margin any OpenCV update could take away (the pupils themselves are 87 px apart). At 2.25x
#: they are about 102 px apart; at 3x a false second face appears.
UPSCALE = 2.25


#: The midpoint of the eyes in the original 512 x 512 photograph.
EYES_AT = (224.5, 102.5)

#: She smiles with her teeth showing, so where the landmark checks run every image cut from the
#: photograph fails "mouth_closed" and "expression", as it should (tests/agent/quality/
#: test_face_landmarks.py). Tests that need the portrait as "a face that passes" relax those
#: two thresholds, and only those, with ``FaceQualityConfig(**SMILE_ALLOWED)``.
SMILE_ALLOWED = {"max_mouth_opening": 0.3, "max_smile": 0.3}


@functools.cache
def _upscaled() -> np.ndarray:
    rgb = skdata.astronaut()
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    return cv2.resize(bgr, None, fx=UPSCALE, fy=UPSCALE, interpolation=cv2.INTER_CUBIC)


def _window(width: int, height: int, shift_x: int = 0) -> np.ndarray:
    """A width x height cut of the upscaled photograph, eyes centred at 40 % from the top."""
    cx, cy = EYES_AT[0] * UPSCALE + shift_x, EYES_AT[1] * UPSCALE
    x0, y0 = int(cx - width / 2), int(cy - 0.4 * height)
    cut = _upscaled()[y0:y0 + height, x0:x0 + width]
    assert cut.shape[:2] == (height, width), "the window left the photograph"
    return cut.copy()


def portrait() -> np.ndarray:
    """640 x 480, like a kiosk camera: one face, centred, eyes about 102 px apart."""
    return _window(640, 480)


def no_face() -> np.ndarray:
    # The studio backdrop above the shoulder, stretched to a frame.
    return cv2.resize(_upscaled()[0:300, 700:1100], (640, 480), interpolation=cv2.INTER_CUBIC)



def two_faces() -> np.ndarray:
    half = _window(320, 480)
    return np.hstack([half, half])


def too_dark() -> np.ndarray:
    return (portrait().astype(np.float32) * 0.25).astype(np.uint8)


def blurred() -> np.ndarray:
    return cv2.GaussianBlur(portrait(), (0, 0), 2.0)


def off_centre() -> np.ndarray:
    return _window(640, 480, shift_x=130)  # the face ends up at 30 % of the width


def too_small() -> np.ndarray:
    # The same scene from further away: the photograph shrunk, its edges continued.
    small = cv2.resize(portrait(), None, fx=0.55, fy=0.55, interpolation=cv2.INTER_AREA)
    top, left = (480 - small.shape[0]) // 2, (640 - small.shape[1]) // 2
    return cv2.copyMakeBorder(small, top, 480 - small.shape[0] - top, left, 640 - small.shape[1] - left,
                              cv2.BORDER_REPLICATE)


def busy_background() -> np.ndarray:
    frame = portrait()
    stripes = (np.indices((330, 640)).sum(axis=0) // 6) % 2 == 1
    frame[0:330][stripes] = (60, 60, 60)
    frame[100:480, 180:460] = portrait()[100:480, 180:460]  # the head and shoulders untouched
    return frame


#: Where the portrait's face box is (Haar: x 209, y 110, 223 px square): the two clipping
#: negatives below paint inside its measured region (20-90 % of its height, 20-80 % of its width).
FACE_BOX = (209, 110, 223)


def _paint(value: int, top: float, bottom: float) -> np.ndarray:
    x, y, size = FACE_BOX
    frame = portrait()
    frame[y + int(top * size):y + int(bottom * size), x + size // 4:x + 3 * size // 4] = value
    return frame


def shadowed_forehead() -> np.ndarray:
    """A band of deep shadow (a cap's brim) across the forehead: about 12 % of the measured face
    region at grey 8, the face's mean brightness still in range."""
    return _paint(8, 0.20, 0.30)


def glare_on_chin() -> np.ndarray:
    """A lamp's reflection burnt out on the chin: about 14 % of the measured face region at 255,
    away from the eyes (whose glare is a check of its own) and the cheeks (lighting balance)."""
    return _paint(255, 0.78, 0.90)
