"""The scales over which quality analytics (agent/quality/analytics.py) bucket check values.

Each check with a fixed scale gets a ten-bucket histogram over ``(low, high)``; values outside
count in the end buckets. The scales follow each check's threshold in ``[quality.face]`` and
``[quality.finger]`` (agent/quality/config.py): where it can, a default threshold falls on a
bucket edge, so the buckets show how many values passed and failed and by how much. Yaw, pitch,
roll and gaze are recorded signed (as the report shows them), so their scales are too.
Changing a scale changes what old buckets mean: add a check, do not rescale one.
"""

from __future__ import annotations

FINGER_RANGES: dict[str, tuple[float, float]] = {
    "score": (0, 100), "registration_min_quality": (0, 100), "device_quality": (0, 100),
    "empty_or_low_contrast": (0, 250), "orientation_certainty": (0, 1), "ridge_frequency": (0, 1),
    "ridge_valley_clarity": (0, 1), "orientation_spread": (0, 1), "orientation_jump_deg": (0, 50),
    "singular_points": (0, 10), "ridge_period_mm": (0, 1), "finger_count": (0, 10),
    # libfprint's NBIS count: the gate is 5, synthetic prints have 38-78.
    "minutiae": (0, 100),
}

FACE_RANGES: dict[str, tuple[float, float]] = {
    "face_count": (0, 10),
    "eye_distance": (0, 300),  # px; edge at 90
    "horizontal_centre": (0.25, 0.75),  # edges at 0.45 and 0.55
    "eye_line_height": (0, 1),  # edges at 0.5 and 0.7
    "roll": (-20, 20),  # degrees; edges at -8 and 8
    "luminance": (0, 250),  # edge at 200
    "dark_pixels": (0, 0.5), "bright_pixels": (0, 0.5),  # shares; edge at 0.05
    "sharpness": (0, 0.4),  # edge at 0.04; sharp portraits 0.11-0.28
    "background": (0, 40),  # grey levels per pixel; edge at 8
    "yaw": (-25, 25), "pitch": (-25, 25),  # degrees; edges at -10 and 10
    "eyes_open": (0, 0.5),  # eye aspect ratio; edge at 0.15, open eyes about 0.3
    "mouth_closed": (0, 0.6),  # edge at 0.12
    "expression": (-0.18, 0.42),  # edge at 0.12; may be negative (corners down)
    "gaze": (-0.25, 0.25),  # eye widths; edges at -0.1 and 0.1
    "eyes_visible": (0, 0.8),  # edge at 0.08; portraits 0.3, the simulated face 0.5
    "eye_glare": (0, 0.15),  # share; edge at 0.03
    "lighting_balance": (0, 0.5),  # edge at 0.25
    "face_scale": (0.05, 1.05),  # share of the frame's height; edges at 0.25 and 0.65
}

#: One table for every modality: the names differ, and those shared (the registration and
#: device scores, 0..100) mean the same in each.
CHECK_RANGES: dict[str, tuple[float, float]] = {**FINGER_RANGES, **FACE_RANGES}
