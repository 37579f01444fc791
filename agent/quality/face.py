"""Face image quality on the kiosk: ICAO 9303 / ISO/IEC 19794-5 checks.

Where the face mesh runs (agent/quality/face_mesh.py; the measures on its points in
agent/quality/landmarks.py), the face, its eyes and the
checks on pose, eyes, mouth, gaze, glare, lighting and distance come from its landmarks;
elsewhere OpenCV's Haar cascades find the face and eyes and those checks are not made. The
report's ``extra["path"]`` says which ran ("landmarks" or "haar") and, for "haar", why.

``FaceAssessor.assess(frame)`` finds the face, measures every check and returns a
``QualityReport`` (agent/quality/report.py); the camera driver runs it on each frame and keeps the
best one. ``token_image`` cuts the ISO 19794-5 token image (3:4, eyes level at 0.6 W from the
top and 0.25 W apart) out of a frame, and ``token_from_capture`` rebuilds it from a capture's
JPEG and its quality detail, so the token's bytes need not travel in the record.

Checks that need the face are reported only when exactly one face is found: with none or
two, their values would describe nobody in particular, and the one thing to fix is the
face count. Thresholds: ``FaceQualityConfig`` (agent/config.py); the values, their sources
and the calibration are in docs/face-quality.md. The pixel measures behind the focus, glare,
eye and lighting checks are in agent/quality/face_photometry.py.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from agent.quality.config import FaceQualityConfig, QualityConfig
from agent.quality.face_detect import Face, FaceDetector, make_detector
from agent.quality.face_mesh import FaceMesh, LandmarksUnavailable, load_face_mesh
from agent.quality.face_photometry import eye_contrast, eye_glare, lighting_imbalance, sharpness, skin_region
from agent.quality.landmarks import (
    eye_aspect_ratio,
    eye_centres,
    face_box,
    face_height,
    gaze_offset,
    head_pose,
    mouth_opening,
    smile,
)
from agent.quality.report import BadImage, Check, QualityReport, load_image

# The camera driver cuts tokens too: one copy, in drivers/, still importable from here.
from drivers.face_image import encode_jpeg, token_image

ASSESSOR = "kiosk-agent face quality (OpenCV; ICAO 9303 / ISO 19794-5 geometry)"
ASSESSOR_LANDMARKS = ("kiosk-agent face quality (face mesh on mediapipe's models, and OpenCV; "
                      "ICAO 9303 / ISO 19794-5 geometry, pose, eyes, expression)")

log = logging.getLogger(__name__)

#: ISO/IEC 19794-5 token image geometry, in units of its width W.
TOKEN_EYE_Y = 0.6
TOKEN_EYE_X = (0.375, 0.625)
TOKEN_ASPECT = 4 / 3  # height / width
TOKEN_MIN_WIDTH_PX = 240  # the standard's smallest token (eye distance 60 px)


# --- the checks ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Assessment:
    """A report with what the token image needs: the face and its eyes (None: no single face)."""

    report: QualityReport
    face: Face | None

    @property
    def faces_seen(self) -> int:
        return int(self.report.checks[0].value or 0)


class FaceAssessor:
    """Runs the face checks on frames; holds the detector, so build one and reuse it."""

    def __init__(self, cfg: FaceQualityConfig | None = None, detector: FaceDetector | None = None,
                 mesh: FaceMesh | None = None) -> None:
        self.cfg = cfg or FaceQualityConfig()
        self.detector = detector or make_detector(self.cfg)
        self._mesh = mesh
        #: Why the landmarks do not run (None: not tried yet, or running).
        self.landmarks_unavailable: str | None = None
        if self.cfg.landmarks == "off" and mesh is None:
            self.landmarks_unavailable = 'quality.face.landmarks = "off"'
        elif self.cfg.landmarks == "mediapipe" and mesh is None:
            # Required: fail now (the camera's open()), naming the setting, not at a capture.
            try:
                self._mesh = load_face_mesh()
            except LandmarksUnavailable as exc:
                raise LandmarksUnavailable(f'{exc} (quality.face.landmarks = "mediapipe" needs it)') from None

    @property
    def mesh(self) -> FaceMesh | None:
        """The face mesh, loaded on first use ("auto"): its models cost memory, so an agent
        that never judges a face never loads it. None where it cannot run."""
        if self._mesh is None and self.landmarks_unavailable is None:
            try:
                self._mesh = load_face_mesh()
            except LandmarksUnavailable as exc:
                self.landmarks_unavailable = str(exc)
                log.warning("face checks without landmarks (Haar cascades only): %s", exc)
        return self._mesh

    def assess(self, frame: np.ndarray) -> Assessment:
        """The report on one frame: 8-bit grey, BGR or BGRA (BadImage otherwise: a camera
        sending anything else is misconfigured, and its frames would be misread)."""
        bgr, grey = _bgr_and_grey(frame)
        mesh = self.mesh
        if mesh is not None:
            return self._assess_landmarks(mesh, bgr, grey)
        path = {"path": "haar", "landmarks_unavailable": self.landmarks_unavailable}
        faces = self.detector.detect(grey, bgr)
        count = self._count_check(len(faces), grey)
        if len(faces) != 1:
            return Assessment(_report([count], {"faces": len(faces), **path}), None)
        face = faces[0]
        scored = [count, *self._geometry(face, grey.shape), *self._exposure(face, grey),
                  self._sharpness(face, grey), self._background(face, grey)]
        return Assessment(_report(scored, {**_face_extra(face), **path}), face)

    def _assess_landmarks(self, mesh: FaceMesh, bgr: np.ndarray, grey: np.ndarray) -> Assessment:
        found = mesh.find(bgr)
        count = self._count_check(len(found), grey)
        path = {"path": "landmarks", "landmarks": mesh.describe}
        if len(found) != 1:
            return Assessment(_report([count], {"faces": len(found), **path}, ASSESSOR_LANDMARKS), None)
        points = found[0]
        face = Face(face_box(points), eye_centres(points), points)
        scored = [count, *self._geometry(face, grey.shape), *self._exposure(face, grey),
                  self._sharpness(face, grey), self._background(face, grey),
                  *self._landmark_checks(points, grey, mesh.pitch_bias_deg)]
        return Assessment(_report(scored, {**_face_extra(face), **path}, ASSESSOR_LANDMARKS), face)

    def _landmark_checks(self, points: np.ndarray, grey: np.ndarray, pitch_bias_deg: float) -> list[Scored]:
        cfg = self.cfg
        height, width = grey.shape
        pose = head_pose(points, (width, height))
        yaw, pitch = (pose.yaw, pose.pitch - pitch_bias_deg) if pose is not None else (None, None)
        if pitch is not None and pitch > 0:
            nod = "lower your chin a little"
        else:
            nod = "raise your chin a little"
        gaze = gaze_offset(points)
        return [
            _at_most("yaw", None if yaw is None else abs(yaw), cfg.max_yaw_deg,
                     f"|yaw| <= {cfg.max_yaw_deg:g} deg", "turn your face to the camera",
                     shown=None if yaw is None else _r1(yaw)),
            _at_most("pitch", None if pitch is None else abs(pitch), cfg.max_pitch_deg,
                     f"|pitch| <= {cfg.max_pitch_deg:g} deg", nod,
                     shown=None if pitch is None else _r1(pitch)),
            _at_least("eyes_open", eye_aspect_ratio(points), cfg.min_eye_aspect_ratio,
                      f">= {cfg.min_eye_aspect_ratio:g}", "keep your eyes open"),
            _at_most("mouth_closed", mouth_opening(points), cfg.max_mouth_opening,
                     f"<= {cfg.max_mouth_opening:g}", "close your mouth"),
            _at_most("expression", smile(points), cfg.max_smile, f"<= {cfg.max_smile:g}",
                     "a neutral expression, please: no smile"),
            _at_most("gaze", abs(gaze), cfg.max_gaze_offset, f"|offset| <= {cfg.max_gaze_offset:g}",
                     "look straight into the camera", shown=_round(gaze)),
            _at_least("eyes_visible", eye_contrast(points, grey), cfg.min_eye_contrast,
                      f">= {cfg.min_eye_contrast:g}",
                      "nothing in front of the eyes: take off dark glasses, move hair or hands away"),
            _at_most("eye_glare", eye_glare(points, grey, cfg.bright_level), cfg.max_eye_glare_share,
                     f"<= {cfg.max_eye_glare_share:g} at >= {cfg.bright_level}",
                     "glare on the eyes: tilt the glasses down a little, or take them off"),
            _at_most("lighting_balance", lighting_imbalance(points, grey), cfg.max_lighting_imbalance,
                     f"<= {cfg.max_lighting_imbalance:g}", "light the face evenly (one side is in shadow)"),
            _range("face_scale", face_height(points) / height, cfg.face_scale_min, cfg.face_scale_max,
                   "move closer", "move back a little"),
        ]

    def _count_check(self, count: int, grey: np.ndarray) -> Scored:
        hint = ""
        if count == 0:
            # In a dark room the detector finds nothing; "look at the camera" would not help.
            dark = float(grey.mean()) < self.cfg.luminance_min
            hint = "more light" if dark else "look straight at the camera"
        elif count > 1:
            hint = "only one person in front of the camera"
        return Check("face_count", float(count), "== 1", count == 1, hint), float(count == 1)

    def _geometry(self, face: Face, shape: tuple[int, ...]) -> list[Scored]:
        cfg = self.cfg
        height, width = shape[:2]
        left, right, measured = face.eye_points()
        note = "" if measured else "eyes not found: estimated from the face box"
        centre_x = (left[0] + right[0]) / 2 / width
        eye_line = 1 - (left[1] + right[1]) / 2 / height
        roll_rule = f"|roll| <= {cfg.max_roll_deg:g} deg"
        if measured:
            roll = math.degrees(math.atan2(right[1] - left[1], right[0] - left[0]))
            roll_check = _at_most("roll", abs(roll), cfg.max_roll_deg, roll_rule, "keep your head level",
                                  shown=_r1(roll))
        else:
            roll_check = (Check("roll", None, roll_rule, False, "look straight at the camera",
                                "eyes not found: roll not measured"), 0.0)
        return [
            _at_least("eye_distance", math.dist(left, right), cfg.min_eye_distance_px,
                      f">= {cfg.min_eye_distance_px:g} px", "move closer", note),
            _range("horizontal_centre", centre_x, cfg.centre_min, cfg.centre_max,
                   "move to the centre of the picture", "move to the centre of the picture", note),
            _range("eye_line_height", eye_line, cfg.eye_line_min, cfg.eye_line_max,
                   "sit up straight (the eyes are too low in the picture)",
                   "lower your head a little (the eyes are too high in the picture)", note),
            roll_check,
        ]

    def _exposure(self, face: Face, grey: np.ndarray) -> list[Scored]:
        cfg = self.cfg
        skin = skin_region(face, grey)
        if skin.size < 16:  # the face's skin lies outside the frame: nothing to measure
            off = "move to the centre of the picture"
            return [_unmeasured("luminance", f"{cfg.luminance_min:g}..{cfg.luminance_max:g}", off),
                    _unmeasured("dark_pixels", f"<= {cfg.max_dark_share:g} at <= {cfg.dark_level}", off),
                    _unmeasured("bright_pixels", f"<= {cfg.max_bright_share:g} at >= {cfg.bright_level}",
                                off)]
        dark = float(np.count_nonzero(skin <= cfg.dark_level)) / skin.size
        bright = float(np.count_nonzero(skin >= cfg.bright_level)) / skin.size
        return [
            _range("luminance", float(skin.mean()), cfg.luminance_min, cfg.luminance_max,
                   "more light", "less light"),
            _at_most("dark_pixels", dark, cfg.max_dark_share,
                     f"<= {cfg.max_dark_share:g} at <= {cfg.dark_level}", "more light"),
            _at_most("bright_pixels", bright, cfg.max_bright_share,
                     f"<= {cfg.max_bright_share:g} at >= {cfg.bright_level}",
                     "less light (glare on the face)"),
        ]

    def _sharpness(self, face: Face, grey: np.ndarray) -> Scored:
        skin, rule = skin_region(face, grey), f">= {self.cfg.min_sharpness:g}"
        if skin.size < 16:
            return _unmeasured("sharpness", rule, "move to the centre of the picture")
        return _at_least("sharpness", sharpness(skin), self.cfg.min_sharpness, rule, "hold still")

    def _background(self, face: Face, grey: np.ndarray) -> Scored:
        limit = self.cfg.max_background_gradient
        return _at_most("background", background_gradient(face, grey), limit, f"<= {limit:g}",
                        "stand in front of a plain background")


def _face_extra(face: Face) -> dict[str, Any]:
    left, right, measured = face.eye_points()
    return {"faces": 1, "face_box": list(face.box),
            "eyes": [list(map(_r1, left)), list(map(_r1, right))], "eyes_measured": measured}


def background_gradient(face: Face, grey: np.ndarray) -> float | None:
    """Mean gradient magnitude of the background inside the token image's frame.

    The token image is what a document or a matcher gets, so that is the background that
    must be plain; flags or furniture further out do not matter. The head (the face box
    widened for hair and ears) and everything below the chin (shoulders) are left out.
    """
    height, width = grey.shape
    left, right, _ = face.eye_points()
    token_w = 4 * math.dist(left, right)
    cx, cy = (left[0] + right[0]) / 2, (left[1] + right[1]) / 2
    x0, x1 = int(max(0, cx - token_w / 2)), int(min(width, cx + token_w / 2))
    y0, y1 = int(max(0, cy - TOKEN_EYE_Y * token_w)), int(min(height, face.box[1] + face.box[3]))
    if x1 - x0 < 3 or y1 - y0 < 3:
        return None
    roi = grey[y0:y1, x0:x1]
    gx = cv2.Sobel(roi, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(roi, cv2.CV_32F, 0, 1, ksize=3)
    magnitude = cv2.magnitude(gx, gy) / 8  # a 3x3 Sobel's gain is 8: grey levels per pixel
    mask = np.ones(roi.shape, np.uint8)
    fx, fy, fw, fh = face.box
    hx0, hx1 = int(fx - 0.25 * fw) - x0, int(fx + 1.25 * fw) - x0
    hy0 = int(fy - 0.6 * fh) - y0
    mask[max(0, hy0):, max(0, hx0):max(0, hx1)] = 0
    mask[:2, :] = mask[-2:, :] = 0  # Sobel's replicated border is not image content
    mask[:, :2] = mask[:, -2:] = 0
    if not mask.any():
        return None
    return float(cv2.mean(magnitude, mask)[0])


#: A check and its margin: 0.5 at the threshold, 1 at the ideal, below 0.5 when it fails.
Scored = tuple[Check, float]


def _at_least(name: str, value: float, bound: float, rule: str, hint: str, note: str = "") -> Scored:
    value = float(value)  # numpy scalars would make numpy booleans, which JSON refuses
    passed = value >= bound
    # Twice the bound (or more) counts as ideal: more eye distance or sharpness is no better.
    margin = 0.5 * value / bound if not passed else 0.5 + 0.5 * (value - bound) / bound
    return Check(name, _round(value), rule, passed, "" if passed else hint, note), _clip(margin)


def _at_most(name: str, value: float | None, bound: float, rule: str, hint: str, note: str = "",
             shown: float | None = None) -> Scored:
    if value is None:
        return Check(name, None, rule, False, hint, note or "not measured"), 0.0
    value = float(value)
    passed = value <= bound
    margin = 1 - 0.5 * value / bound if bound > 0 else float(passed)
    value_shown = _round(value) if shown is None else shown
    return Check(name, value_shown, rule, passed, "" if passed else hint, note), _clip(margin)


def _bgr_and_grey(frame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    channels = frame.shape[2] if frame.ndim == 3 else 1
    if frame.dtype != np.uint8 or frame.ndim not in (2, 3) or channels not in (1, 3, 4) or frame.size == 0:
        raise BadImage(f"a face frame must be 8-bit grey, BGR or BGRA; got {frame.dtype} {frame.shape}")
    if frame.ndim == 3 and channels == 1:
        frame = frame[:, :, 0]
    if frame.ndim == 2:
        return cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR), frame
    if channels == 4:
        frame = cv2.cvtColor(frame, cv2.COLOR_BGRA2BGR)
    return frame, cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)


def _unmeasured(name: str, rule: str, hint: str) -> Scored:
    return Check(name, None, rule, False, hint, "not measured"), 0.0


def _range(name: str, value: float, low: float, high: float, below: str, above: str,
           note: str = "") -> Scored:
    value = float(value)
    passed = low <= value <= high
    hint = "" if passed else (below if value < low else above)
    half = (high - low) / 2
    margin = 1 - 0.5 * abs(value - (low + half)) / half
    return Check(name, _round(value), f"{low:g}..{high:g}", passed, hint, note), _clip(margin)


def _round(value: float) -> float:
    """Plain floats (JSON), with the digits that mean something at each magnitude."""
    value = float(value)
    return round(value, 1) if abs(value) >= 10 else round(value, 4)


def _r1(value: float) -> float:
    return round(float(value), 1)


def _clip(value: float) -> float:
    return min(1.0, max(0.0, value))


# --- the score ----------------------------------------------------------------------------


def _report(scored: list[Scored], extra: dict[str, Any], assessor: str = ASSESSOR) -> QualityReport:
    checks = tuple(check for check, _ in scored)
    return QualityReport("face", score(scored), checks, assessor, extra)


def score(scored: list[Scored]) -> int:
    """0..100: the mean of the checks' margins; 50 or more exactly when every check passes.

    The best of several passing frames is then the one furthest inside every limit. A
    failing report is capped at 49 so that no failing frame outranks a passing one, and a
    frame without exactly one face scores 0.
    """
    if not scored or not scored[0][0].passed and scored[0][0].name == "face_count":
        return 0
    total = round(100 * sum(margin for _, margin in scored) / len(scored))
    return total if all(check.passed for check, _ in scored) else min(total, 49)


# --- the token image ----------------------------------------------------------------------


def token_geometry(face: Face) -> dict[str, Any]:
    """Size and affine map (frame -> token) of the ISO 19794-5 token image for ``face``.

    The token keeps the frame's resolution (W = 4 x the eye distance, at least 240 px) and
    is rotated so that the eyes are level, as the standard places them.
    """
    left, right, measured = face.eye_points()
    distance = math.dist(left, right)
    width = max(TOKEN_MIN_WIDTH_PX, 2 * round(2 * distance))  # even, so 3:4 stays whole
    height = round(width * TOKEN_ASPECT)
    src = np.float32([left, right])
    dst = np.float32([[TOKEN_EYE_X[0] * width, TOKEN_EYE_Y * width],
                      [TOKEN_EYE_X[1] * width, TOKEN_EYE_Y * width]])
    matrix, _ = cv2.estimateAffinePartial2D(src, dst)
    return {"width": width, "height": height, "affine": [[round(float(v), 6) for v in row] for row in matrix],
            "eyes_measured": measured}


def token_from_capture(jpeg: bytes, quality_detail: dict[str, Any], jpeg_quality: int = 95) -> bytes | None:
    """The token image (JPEG) of a capture, from its full frame and ``quality_detail["token"]``."""
    geometry = quality_detail.get("token")
    if not geometry:
        return None
    frame = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    if frame is None:
        raise BadImage("the capture's image is not a JPEG OpenCV can decode")
    return encode_jpeg(token_image(frame, geometry), jpeg_quality)


# --- the command line ---------------------------------------------------------------------


def assess_file(path: Path, config: QualityConfig | None) -> QualityReport:
    """``kiosk-agent quality IMAGE --modality face``: the report of one image file."""
    cfg = config.face if config is not None else FaceQualityConfig()
    frame = load_image(path, grey=False)
    if min(frame.shape[:2]) < 32:
        raise BadImage(f"{path}: {frame.shape[1]} x {frame.shape[0]} pixels is too small for a face")
    try:
        assessor = FaceAssessor(cfg)
    except (FileNotFoundError, RuntimeError) as exc:  # no YuNet model, no Haar cascades, no mesh
        raise BadImage(str(exc)) from None
    assessment = assessor.assess(frame)
    report = assessment.report
    if assessment.face is not None:
        geometry = token_geometry(assessment.face)
        report = QualityReport(report.modality, report.score, report.checks, report.assessor,
                               {**report.extra, "token": geometry})
    return report
