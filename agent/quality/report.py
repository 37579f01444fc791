"""What every image-quality assessor returns: named checks and an overall score.

A check carries its measured value, the threshold it was held to, pass or fail, and the
hint the operator can say to the person in front of the kiosk, so a capture that fails is
fixed while the person is still there. Face checks live in agent/quality/face.py, finger
checks in agent/quality/finger.py; both return a ``QualityReport``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from agent.errors import PermanentError


@dataclass(frozen=True)
class Check:
    name: str
    #: The measured value; None when it could not be measured (then ``passed`` is False).
    value: float | None
    #: The rule, readable by a person: ">= 90", "0.45..0.55", "== 1".
    threshold: str
    passed: bool
    #: What the operator says to the person when the check fails ("move closer").
    hint: str = ""
    #: How the value was obtained when that matters ("estimated from the face box").
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "value": self.value, "threshold": self.threshold,
                "passed": self.passed, "hint": self.hint, "note": self.note}


@dataclass(frozen=True)
class QualityReport:
    modality: str  # "face" or "finger"
    #: 0 (unusable) .. 100 (best).
    score: int
    checks: tuple[Check, ...]
    #: Which assessor produced it, e.g. "kiosk-agent finger quality (not NFIQ 2)".
    assessor: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    def failed(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]

    def hints(self) -> list[str]:
        """The operator's hints of the failed checks, each once, in check order."""
        seen: list[str] = []
        for c in self.failed():
            if c.hint and c.hint not in seen:
                seen.append(c.hint)
        return seen

    def as_dict(self) -> dict[str, Any]:
        return {"modality": self.modality, "score": self.score, "passed": self.passed,
                "assessor": self.assessor, "checks": [c.as_dict() for c in self.checks],
                "hints": self.hints(), **({"extra": self.extra} if self.extra else {})}


class BadImage(PermanentError, ValueError):
    """The input is not an image that can be assessed (missing, unreadable, wrong shape)."""


def load_image(path: Any, *, grey: bool) -> Any:
    """Read an image file as a numpy array (8-bit; grey or BGR); BadImage says why not."""
    from pathlib import Path

    import cv2
    import numpy as np

    p = Path(path)
    if not p.is_file():
        raise BadImage(f"{p}: no such file")
    data = np.fromfile(p, np.uint8)
    if data.size == 0:
        raise BadImage(f"{p}: the file is empty")
    pixels = cv2.imdecode(data, cv2.IMREAD_GRAYSCALE if grey else cv2.IMREAD_COLOR)
    if pixels is None:
        raise BadImage(f"{p}: not an image OpenCV can decode (PNG, JPEG, BMP, TIFF ...)")
    return pixels
