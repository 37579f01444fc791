"""Photometric face measures: what the face's pixels say about focus, glare and lighting.

Each takes the grey frame and the face (its box or its landmarks) and returns one number; the
checks in agent/quality/face.py compare them with the thresholds and say what to fix. Kept
apart because these are image measurements, calibrated on images (docs/face-quality.md),
while face.py decides which checks run and how a frame scores. The background measure stays
in face.py: it is framed by the token image's geometry, which lives there.
"""

from __future__ import annotations

import cv2
import numpy as np

from agent.quality.face_detect import Face
from agent.quality.landmarks import EYE_OUTLINE_A, EYE_OUTLINE_B, cheek_regions, eye_regions, face_box

#: The face region's width is scaled down to this before the Laplacian, so a close-up (which
#: is softer per pixel) and a face further away are judged alike. Smaller faces are not
#: scaled up: that would blur them and fail sharpness for a reason that is really distance.
SHARPNESS_WIDTH_PX = 96


def sharpness(region: np.ndarray) -> float:
    """Variance of the Laplacian over the variance of the grey levels (contrast-free).

    Dividing by the grey variance makes the measure blind to exposure: a dark face is
    reported by the exposure checks, not as blurred as well.
    """
    if region.shape[1] > SHARPNESS_WIDTH_PX:
        scale = SHARPNESS_WIDTH_PX / region.shape[1]
        region = cv2.resize(region, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    variance = float(region.var())
    if variance < 1e-6:
        return 0.0
    return float(cv2.Laplacian(region, cv2.CV_32F).var()) / variance


def skin_region(face: Face, grey: np.ndarray) -> np.ndarray:
    """Forehead to chin, cheek to cheek: the part of the box that is face, not hair; within the
    frame (the mesh places the points of a face the frame cuts off beyond its edge, and a
    negative start would wrap around). Empty when none of it is in the frame."""
    x, y, w, h = face.box
    height, width = grey.shape[:2]
    y0, y1 = max(0, y + int(0.20 * h)), min(height, y + int(0.90 * h))
    x0, x1 = max(0, x + int(0.20 * w)), min(width, x + int(0.80 * w))
    return grey[y0:max(y0, y1), x0:max(x0, x1)]


def eye_glare(points: np.ndarray, grey: np.ndarray, bright_level: int) -> float:
    """Share of clipped pixels around the eyes, where a spectacle lens reflects, leaving out
    the eye opening itself: the white of an eye and the catchlight on the cornea are bright in
    every good portrait; a reflection on a lens spreads over the lid and the cheek."""
    clipped = total = 0
    for (x0, y0, x1, y1), outline in zip(eye_regions(points, grey.shape), (EYE_OUTLINE_A, EYE_OUTLINE_B),
                                         strict=True):
        if x1 - x0 < 2 or y1 - y0 < 2:
            continue
        mask = np.full((y1 - y0, x1 - x0), 255, np.uint8)
        opening = np.round(points[list(outline), :2] - (x0, y0)).astype(np.int32)
        cv2.fillPoly(mask, [opening], 0)
        inside = mask > 0
        clipped += int(np.count_nonzero((grey[y0:y1, x0:x1] >= bright_level) & inside))
        total += int(np.count_nonzero(inside))
    return clipped / total if total else 0.0


def eye_contrast(points: np.ndarray, grey: np.ndarray) -> float:
    """Grey-level spread inside the eye openings over the face's mean grey level, of the
    less visible eye. An open eye shows white, iris and lashes (a wide spread); a hand, a bar,
    hair or a dark lens in front of it is nearly even. The mesh places the eyes even where
    they are hidden, so this, not the eye aspect ratio, notices them. Dividing by the face's
    brightness keeps a dark frame (the exposure checks' business) from reading as hidden eyes."""
    height, width = grey.shape
    skin = skin_region(Face(face_box(points)), grey)
    level = float(skin.mean()) if skin.size else 0.0
    if level < 1:
        return 0.0
    spreads = []
    for outline in (EYE_OUTLINE_A, EYE_OUTLINE_B):
        polygon = np.round(points[list(outline), :2]).astype(np.int32)
        mask = np.zeros((height, width), np.uint8)
        cv2.fillPoly(mask, [polygon], 255)
        values = grey[mask > 0]
        spreads.append(float(values.std()) if values.size >= 4 else 0.0)
    return min(spreads) / level


def lighting_imbalance(points: np.ndarray, grey: np.ndarray) -> float | None:
    """1 - the darker cheek's mean grey level over the brighter one's: 0 evenly lit."""
    means = []
    for x0, y0, x1, y1 in cheek_regions(points, grey.shape):
        if x1 - x0 < 2 or y1 - y0 < 2:
            return None
        means.append(float(grey[y0:y1, x0:x1].mean()))
    dark, bright = min(means), max(means)
    return 1 - dark / bright if bright > 0 else 0.0
