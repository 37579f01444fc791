"""The [quality.face] and [quality.finger] config sections."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, model_validator

from agent.config_types import Section
from agent.quality.plugins import resolve_factory


class FaceQualityConfig(Section):
    """Thresholds of the face checks (agent/quality/face.py, docs/face-quality.md).

    Defaults follow ICAO 9303 part 3 / ISO/IEC 19794-5 where they give a number; the
    sharpness and background limits have none and were calibrated on the test images.
    """

    #: A YuNet ONNX model (cv2.FaceDetectorYN) to use instead of the Haar cascades.
    yunet_model: Path | None = None
    #: Faces smaller than this (box width, pixels) are not looked for; smaller is slower.
    min_face_px: int = Field(80, ge=20)
    #: Distance between the eye centres, pixels (ICAO: at least 90).
    min_eye_distance_px: float = Field(90.0, gt=0)
    #: Horizontal position of the eye midpoint, as a share of the image width.
    centre_min: float = Field(0.45, ge=0, le=1)
    centre_max: float = Field(0.55, ge=0, le=1)
    #: Height of the eye line above the bottom edge, as a share of the image height.
    eye_line_min: float = Field(0.50, ge=0, le=1)
    eye_line_max: float = Field(0.70, ge=0, le=1)
    #: Head roll from the eye line, degrees either way.
    max_roll_deg: float = Field(8.0, ge=0, le=90)
    #: Mean luminance (0..255) of the face region.
    luminance_min: float = Field(70.0, ge=0, le=255)
    luminance_max: float = Field(200.0, ge=0, le=255)
    #: Face pixels at or below dark_level / at or above bright_level count as clipped.
    dark_level: int = Field(25, ge=0, le=255)
    bright_level: int = Field(247, ge=0, le=255)
    #: Largest share of clipped dark / bright pixels in the face region.
    max_dark_share: float = Field(0.05, ge=0, le=1)
    max_bright_share: float = Field(0.05, ge=0, le=1)
    #: Laplacian variance of the face region normalised by its grey variance (see the doc).
    min_sharpness: float = Field(0.04, ge=0)
    #: Mean gradient magnitude of the background around the head (grey levels per pixel).
    max_background_gradient: float = Field(8.0, ge=0)

    # Checks on facial landmarks (agent/quality/landmarks.py, on the face mesh of
    # agent/quality/face_mesh.py: mediapipe's models run by OpenCV); values and their
    # calibration in docs/face-quality.md.
    #: "auto": the landmarks where the face mesh's models are installed (mediapipe's wheel),
    #: otherwise the Haar checks alone (the report says which); "mediapipe": the landmarks or
    #: the camera fails at open; "off": Haar only.
    landmarks: Literal["auto", "mediapipe", "off"] = "auto"
    #: Head turned / nodding, degrees against the line to the camera. ISO 19794-5 asks 5; the
    #: generic 3-D model reads a frontal photograph within about 3, so 10 flags a visible turn.
    max_yaw_deg: float = Field(10.0, ge=0, le=90)
    max_pitch_deg: float = Field(10.0, ge=0, le=90)
    #: Eye aspect ratio (lid opening / eye width) of the less open eye: open 0.3, closed < 0.1.
    min_eye_aspect_ratio: float = Field(0.15, ge=0)
    #: Gap between the lips / mouth width (ICAO: mouth closed).
    max_mouth_opening: float = Field(0.12, ge=0)
    #: Mouth corners above the middle of the lips, in eye distances (ICAO: neutral expression).
    max_smile: float = Field(0.12)
    #: Irises off the middle of the eyes, in eye widths (0.1 is about 15 degrees of gaze).
    max_gaze_offset: float = Field(0.10, ge=0, le=0.5)
    #: Grey-level spread inside the eye openings over the face's mean grey level: an eye behind
    #: a hand, hair or a dark lens is even (ICAO: eyes clearly visible).
    min_eye_contrast: float = Field(0.08, ge=0)
    #: Share of clipped (>= bright_level) pixels around the eyes, where glasses reflect.
    max_eye_glare_share: float = Field(0.03, ge=0, le=1)
    #: 1 - darker cheek / brighter cheek (ICAO: evenly lit, no shadow on one side).
    max_lighting_imbalance: float = Field(0.25, ge=0, le=1)
    #: Forehead-to-chin height over the frame's height: below is too far, above too close.
    face_scale_min: float = Field(0.25, ge=0, le=1)
    face_scale_max: float = Field(0.65, ge=0, le=1)

    @model_validator(mode="after")
    def _check(self) -> FaceQualityConfig:
        for low, high in (("centre_min", "centre_max"), ("eye_line_min", "eye_line_max"),
                          ("luminance_min", "luminance_max"), ("dark_level", "bright_level"),
                          ("face_scale_min", "face_scale_max")):
            if getattr(self, low) >= getattr(self, high):
                raise ValueError(f"{low} must be less than {high}")
        return self



def _finger_assessor(value: str) -> str:
    # Resolved at load time so a typo stops the kiosk at start-up, not at the first capture.
    if value != "builtin":
        resolve_factory(value)
    return value



class FingerQualityConfig(Section):
    """Fingerprint quality (agent/quality/finger.py, docs/finger-quality.md); not NFIQ 2.

    NFIQ 2's gates keep its numbers (50,000 foreground pixels at 500 ppi); the other limits
    were calibrated on synthetic prints.
    """

    #: "builtin", or "module:callable": a factory called with this table that returns an
    #: object with assess(gray, ppi) -> QualityReport (for example a certified NFIQ 2 wrapper).
    assessor: Annotated[str, AfterValidator(_finger_assessor)] = "builtin"
    #: The overall score (0..100) a print needs to pass.
    min_score: int = Field(40, ge=0, le=100)
    #: Grey levels between the 5th and 95th percentile of the foreground (empty/low-contrast gate).
    min_contrast: float = Field(40.0, ge=0, le=255)
    #: Standard deviation of the whole image (uniform-image gate).
    min_std: float = Field(2.0, ge=0)
    #: Foreground pixels at 500 ppi (NFIQ 2's gate).
    min_foreground_px: int = Field(50_000, ge=0)
    #: A 32 x 32 block is foreground when its grey standard deviation (lightly blurred) is this high.
    foreground_min_std: float = Field(10.0, gt=0)
    #: Mean structure-tensor coherence of the foreground blocks, 0..1.
    min_orientation_certainty: float = Field(0.35, ge=0, le=1)
    #: Plausible ridge period at 500 ppi, pixels, and the share of blocks that must lie in it.
    ridge_period_min_px: float = Field(5.0, gt=0)
    ridge_period_max_px: float = Field(15.0, gt=0)
    min_ridge_frequency_in_band: float = Field(0.7, ge=0, le=1)
    #: Share of a block's spectral energy in its dominant ridge wave, 0..1.
    min_clarity: float = Field(0.15, ge=0, le=1)
    # Does it look like a print (agent/quality/ridge_flow.py)? Checked once the gates pass.
    #: How much the ridge direction varies over the print, 0 (one direction everywhere: a
    #: grating) .. 1; synthetic prints measure 0.12 and more (0.23 unless smudged over the core).
    min_orientation_spread: float = Field(0.05, ge=0, le=1)
    #: Mean angle between neighbouring 16 px blocks' ridge directions, degrees: prints flow
    #: smoothly (synthetic ones 4-10), noise and photos of textures jump (17 and more).
    max_orientation_jump_deg: float = Field(14.0, gt=0, le=90)
    #: Cores and deltas each, per finger's worth of foreground (a whorl has two of each).
    max_singular_points: int = Field(2, ge=0)
    #: The mean ridge period in millimetres, whatever the resolution: adults about 0.4-0.6,
    #: young children down to about 0.3.
    ridge_period_min_mm: float = Field(0.3, gt=0)
    ridge_period_max_mm: float = Field(0.7, gt=0)

    @model_validator(mode="after")
    def _check(self) -> FingerQualityConfig:
        if self.ridge_period_min_px >= self.ridge_period_max_px:
            raise ValueError("ridge_period_min_px must be less than ridge_period_max_px")
        if self.ridge_period_min_mm >= self.ridge_period_max_mm:
            raise ValueError("ridge_period_min_mm must be less than ridge_period_max_mm")
        return self



class QualityAnalyticsConfig(Section):
    """Daily quality aggregates (agent/quality/analytics.py, docs/finger-quality.md): scores,
    checks, retries, force-captured items and exceptions per operator pseudonym and modality."""

    #: Record them (in quality-stats.db in the kiosk's state folder).
    enabled: bool = True
    #: Days of aggregates kept; older days are deleted (once a day, as new ones are written).
    keep_days: int = Field(90, ge=2, le=3660)
    #: The last this many UTC days (today included) go out in telemetry, when they changed; 0: none.
    telemetry_days: int = Field(2, ge=0, le=14)


class QualityConfig(Section):
    """Image-quality thresholds, one table per modality ([quality.face], ...)."""

    face: FaceQualityConfig = Field(default_factory=FaceQualityConfig)
    finger: FingerQualityConfig = Field(default_factory=FingerQualityConfig)
    analytics: QualityAnalyticsConfig = Field(default_factory=QualityAnalyticsConfig)
