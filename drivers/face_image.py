"""A camera's image outputs: the JPEG it delivers and the ISO/IEC 19794-5 token image.

Where the token sits (its size and the affine map from frame to token) is the face judge's
finding (agent/quality/face.py ``token_geometry``); this only cuts it out, for the camera
driver while the person is there and for the agent when it rebuilds a token from a capture.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np


def token_image(bgr: np.ndarray, geometry: dict[str, Any]) -> np.ndarray:
    """The token image cut from the frame; parts beyond the frame repeat its edge pixels."""
    matrix = np.array(geometry["affine"], np.float64)
    return cv2.warpAffine(bgr, matrix, (geometry["width"], geometry["height"]),
                          flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def encode_jpeg(bgr: np.ndarray, quality: int) -> bytes:
    ok, data = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("this OpenCV build cannot encode JPEG")
    return data.tobytes()
