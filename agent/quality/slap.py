"""Counting the fingers on a slap image, so a 4-4-2 capture with a finger missing is caught.

A finger on the glass is a region of ridges: high local variance. The mask of such pixels is
closed (ridges join into one blob per finger) and its connected regions larger than a
fingertip's minimum area are counted. Fingers pressed so close that they touch count as one;
that errs towards "fewer fingers than requested", which asks for a retry rather than
accepting a slap silently.
"""

from __future__ import annotations

import cv2
import numpy as np

#: A fingertip in contact covers at least ~60 mm^2: 0.093 in^2 -> px at 500 ppi.
MIN_FINGER_MM2 = 60.0


def count_fingers(gray: np.ndarray, ppi: int = 500) -> int:
    ppi = ppi or 500
    img = gray.astype(np.float32)
    window = max(3, int(round(ppi / 500 * 15)) | 1)
    mean = cv2.blur(img, (window, window))
    var = cv2.blur(img * img, (window, window)) - mean * mean
    mask = (var > 150.0).astype(np.uint8)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (window, window))
    mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, kernel)
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, kernel)
    count, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    px_per_mm = ppi / 25.4
    min_area = MIN_FINGER_MM2 * px_per_mm * px_per_mm
    return int(sum(1 for i in range(1, count) if stats[i, cv2.CC_STAT_AREA] >= min_area))
