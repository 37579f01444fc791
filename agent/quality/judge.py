"""The agent's face checks as a camera's face judge (drivers/base.py ``FaceJudge``).

The camera driver only knows the judge's plain verdict; this turns agent/quality/face.py's
``FaceAssessor`` into one, so the thresholds of ``[quality.face]`` reach the camera without
the drivers depending on the agent.
"""

from __future__ import annotations

import functools

import numpy as np

from agent.quality.config import FaceQualityConfig
from agent.quality.face import Assessment, FaceAssessor, token_geometry
from drivers.base import FaceJudge, FaceVerdict, MakeFaceJudge
from drivers.errors import PermanentDeviceError


def face_judge(cfg: FaceQualityConfig) -> FaceJudge:
    """A judge running the face checks with ``cfg``; PermanentDeviceError when its detector
    cannot be loaded (a YuNet model missing or broken, no Haar cascades), naming the setting."""
    try:
        assessor = FaceAssessor(cfg)
    except (FileNotFoundError, RuntimeError) as exc:
        raise PermanentDeviceError(str(exc)) from None
    # The face mesh loads here, as the camera opens, rather than within the first capture's
    # time budget (about a second); where it cannot run, the judge uses the Haar cascades.
    assessor.mesh  # noqa: B018

    def judge(frame: np.ndarray) -> FaceVerdict:
        return verdict(assessor.assess(frame))

    return judge


def face_judge_maker(cfg: FaceQualityConfig) -> MakeFaceJudge:
    """What a camera's ``make_judge`` takes: the judge is built when the camera opens."""
    return functools.partial(face_judge, cfg)


def verdict(assessment: Assessment) -> FaceVerdict:
    report = assessment.report
    token = token_geometry(assessment.face) if assessment.face is not None else None
    return FaceVerdict(passed=report.passed, score=report.score, faces=assessment.faces_seen,
                       hints=tuple(report.hints()), report=report.as_dict(), token=token)
