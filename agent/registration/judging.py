"""Judging one attempt of a registration item on the kiosk, while the person is still there.

Fingers: the finger quality score (agent/quality/finger.py) against
``registration.finger_min_quality``; slaps also by counting the fingers on the glass
(agent/quality/slap.py). Faces: the ICAO checks (agent/quality/face.py), or the camera's
own when it judged the frame itself, and ``registration.face_min_quality``; a face also
gets its ISO token image. Irises: the device's own score (MOSIP SBI ``qualityScore``; the
kiosk has no iris measure) against ``registration.iris_min_quality``, and the score the kiosk
asked the device for. Each judgement is a ``Verdict`` for the shared attempt loop
(agent/capture/attempts.py), which keeps the best.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, replace
from typing import Any

import cv2
import numpy as np

from agent.capture.attempts import Verdict
from agent.quality.config import QualityConfig
from agent.quality.report import Check, QualityReport
from agent.registration.config import RegistrationConfig
from agent.registration.errors import RegistrationError
from agent.registration.plan import SLAPS, PlanItem
from drivers import CapturedImage, Modality


@dataclass(frozen=True)
class Judgement:
    report: QualityReport
    #: The face's ISO 19794-5 token image (JPEG), when a face was found.
    token: bytes | None = None


class Judge:
    """Judges attempts for every session; safe to call from several request threads."""

    def __init__(self, registration: RegistrationConfig, quality: QualityConfig) -> None:
        self.reg = registration
        self.quality = quality
        self._finger_assessor: Any = None
        self._face_assessor: Any = None
        self._finger_lock = threading.Lock()
        self._face_lock = threading.Lock()

    def judge(self, item: PlanItem, image: CapturedImage, expected_fingers: int) -> Verdict[Judgement]:
        if item.modality is Modality.FACE:
            judgement = self._face(image)
        elif item.modality is Modality.IRIS:
            judgement = _iris(image, self.reg.iris_min_quality)
        else:
            judgement = self._finger(item, image, expected_fingers)
        report = judgement.report
        return Verdict(report.passed, report.score, judgement)

    def live_face_checks(self, frame: np.ndarray) -> dict[str, Any]:
        """The face checks of one preview frame, shown beside the live preview."""
        return self._assess_face(frame).report.as_dict()

    def _finger(self, item: PlanItem, image: CapturedImage, expected: int) -> Judgement:
        from agent.quality.finger import minutiae_check
        from agent.quality.slap import count_fingers

        gray = cv2.imdecode(np.frombuffer(image.image, np.uint8), cv2.IMREAD_GRAYSCALE)
        if gray is None:
            raise RegistrationError(
                "device", f"device {item.device} returned an image that cannot be decoded"
            )
        report = self._assess_finger(gray, image.ppi or 500)
        threshold = self.reg.finger_min_quality
        checks = [
            *report.checks,
            Check(
                "registration_min_quality",
                report.score,
                f">= {threshold}",
                report.score >= threshold,
                "press the finger flat and firmly",
            ),
        ]
        checks += _device_checks(image)
        minutiae = minutiae_check(image.quality_detail)  # the driver's count, as a check too
        checks += [minutiae] if minutiae is not None else []
        if item.position in SLAPS:
            found = count_fingers(gray, image.ppi or 500)
            checks.append(
                Check(
                    "finger_count",
                    found,
                    f"== {expected}",
                    found == expected,
                    f"place all {expected} fingers flat on the glass",
                )
            )
        return Judgement(replace(report, checks=tuple(checks)))

    def _face(self, image: CapturedImage) -> Judgement:
        from agent.quality.face import encode_jpeg, token_from_capture, token_geometry, token_image

        detail = image.quality_detail
        token: bytes | None = None
        if detail.get("checks"):  # a camera that judges faces itself (the opencv driver)
            report = _camera_report(image)
            token = token_from_capture(image.image, detail)
        else:
            frame = cv2.imdecode(np.frombuffer(image.image, np.uint8), cv2.IMREAD_COLOR)
            if frame is None:
                raise RegistrationError("device", "the camera returned an image that cannot be decoded")
            assessment = self._assess_face(frame)
            report = assessment.report
            if assessment.face is not None:
                token = encode_jpeg(token_image(frame, token_geometry(assessment.face)), 95)
        threshold = self.reg.face_min_quality
        minimum = Check(
            "registration_min_quality",
            report.score,
            f">= {threshold}",
            report.score >= threshold,
            "look straight at the camera",
        )
        return Judgement(replace(report, checks=(*report.checks, *_device_checks(image), minimum)), token)

    def _assess_finger(self, gray: np.ndarray, ppi: int) -> QualityReport:
        from agent.quality.finger import load_assessor

        with self._finger_lock:
            if self._finger_assessor is None:
                self._finger_assessor = load_assessor(self.quality.finger)
        return self._finger_assessor.assess(gray, ppi)

    def _assess_face(self, frame: np.ndarray) -> Any:
        from agent.quality.face import FaceAssessor

        # One detector, used by one thread at a time: OpenCV's cascades are not thread-safe.
        with self._face_lock:
            if self._face_assessor is None:
                self._face_assessor = FaceAssessor(self.quality.face)
            return self._face_assessor.assess(frame)


_DEVICE_HINTS = {Modality.FINGER: "place the fingers flat on the glass",
                 Modality.FACE: "look straight at the camera",
                 Modality.IRIS: "look into the iris camera with both eyes wide open"}


def _iris(image: CapturedImage, threshold: int) -> Judgement:
    """An iris by its device's score alone: without one, nothing says it is usable, so it fails."""
    if image.width <= 0 or image.height <= 0 or not image.image:
        raise RegistrationError("device", "the iris device returned no image")
    score = image.quality
    checks = [Check("registration_min_quality", score, f">= {threshold}",
                    score is not None and score >= threshold, _DEVICE_HINTS[Modality.IRIS],
                    "the iris device's own score" if score is not None
                    else "the device reported no score"),
              *_device_checks(image)]
    return Judgement(QualityReport("iris", score or 0, tuple(checks),
                                   str(image.quality_detail.get("assessor", "device"))))


def _device_checks(image: CapturedImage) -> list[Check]:
    """The device's own score, for devices that report one (MOSIP SBI ``qualityScore``): it joins
    the kiosk's checks, judged against the score the kiosk asked the device for."""
    detail = image.quality_detail
    if detail.get("assessor") != "sbi-device" or image.quality is None:
        return []
    requested = int(detail.get("requested_score", 0))
    return [Check("device_quality", image.quality, f">= {requested}", image.quality >= requested,
                  _DEVICE_HINTS[image.modality],
                  f"the device's score (SBI qualityScore; a slap's is its fingers' average): "
                  f"{detail.get('device_scores')}")]


def _camera_report(image: CapturedImage) -> QualityReport:
    """The report of a camera that judged the frame itself, from its quality detail."""
    detail = image.quality_detail
    checks = tuple(
        Check(
            c["name"],
            c.get("value"),
            c.get("threshold", ""),
            bool(c.get("passed")),
            c.get("hint", ""),
            c.get("note", ""),
        )
        for c in detail["checks"]
    )
    return QualityReport("face", int(image.quality or 0), checks, str(detail.get("assessor", "")))
