"""Keeping the chosen attempt: sealed into the durable queue at once, then written down.

The kept image goes to the queue first (agent/capture/service.py ``commit``), then the
session's store records the item as captured; a crash in between only means the item is
captured again. An image that passed no check is kept all the same, flagged
``force_captured`` with the checks it failed, never accepted silently. Fingers travel in
``formats.finger_format``; a face brings its ISO token image, committed beside it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import cv2
import numpy as np

from agent.capture.attempts import Kept
from agent.capture.service import CaptureService
from agent.formats.config import FormatsConfig
from agent.quality.analytics import QualityAnalytics
from agent.quality.report import QualityReport
from agent.registration.feed import SessionFeed
from agent.registration.judging import Judgement
from agent.registration.plan import PlanItem
from agent.registration.store import ItemState, SessionState, SessionStore
from drivers import CapturedImage, Modality

log = logging.getLogger(__name__)


class Keeper:
    def __init__(
        self, capture: CaptureService, formats: FormatsConfig, store: SessionStore, feed: SessionFeed
    ) -> None:
        self.capture = capture
        self.formats = formats
        self.store = store
        self.feed = feed
        #: Daily quality aggregates (agent/quality/analytics.py), set by the service; None: off.
        self.analytics: QualityAnalytics | None = None
        #: When and where a capture is kept (``ItemState.taken``), set by the service.
        self.context: Callable[[], dict[str, Any]] = dict

    def keep_item(
        self, state: SessionState, item: PlanItem, kept: Kept[Judgement], expected_fingers: int,
        held: bool = False,
    ) -> dict[str, Any]:
        """Commit a session item's kept attempt (and a face's token) and record it as captured;
        ``held``: out of the send order until a supervisor approves (approval.py)."""
        report = _report(kept)
        force = not kept.verdict.passed
        registration = {
            "id": state.id,
            "item": item.key,
            "fingers": list(item.fingers),
            "attempts": kept.attempts,
            "force_captured": force,
            "applicant_ref": state.applicant_ref,
        }
        outcome = self.capture.commit(
            item.device, self._judged_image(kept), kept.attempts,
            operator_id=state.operator_id, registration=registration, held=held,
        )
        token_id = self._commit_token(state, item, kept, outcome.id, registration, held)
        saved = ItemState(
            item.key, "captured", outcome.id, token_id, report.score, force, kept.attempts,
            {"failed_checks": [c.name for c in report.failed()], "hints": report.hints()},
            self.context(),
        )
        self.store.save_item(state.id, saved)
        if self.analytics is not None:  # where the item is recorded as captured
            self.analytics.record_item(state.operator_id, item.modality.value, report.score,
                                       kept.attempts, force, expected_fingers)
        if force:
            log.warning(
                "registration %s: %s force-captured at quality %d after %d attempts (failed: %s)",
                state.id, item.key, report.score, kept.attempts, ", ".join(saved.detail["failed_checks"]),
            )
        self.feed.event(
            state.id, "captured", item=item.key, capture_id=outcome.id, quality=report.score,
            force_captured=force,
        )
        result = {
            "session": state.id,
            "item": item.key,
            "capture_id": outcome.id,
            "token_id": token_id,
            "attempts": kept.attempts,
            "force_captured": force,
            # `quality` is the score 0..100 wherever the API shows one (session items, events);
            # the checks behind it are the report.
            "quality": report.score,
            "report": report.as_dict(),
            "expected_fingers": expected_fingers if item.modality is Modality.FINGER else None,
        }
        self.feed.keep_result(outcome.id, result)
        return result

    def keep_single(self, device: str, position: int, kept: Kept[Judgement]) -> dict[str, Any]:
        """Commit a capture taken outside any session."""
        outcome = self.capture.commit(device, self._judged_image(kept), kept.attempts)
        result = {
            "capture_id": outcome.id,
            "device": device,
            "position": position,
            "attempts": kept.attempts,
            "passed": kept.verdict.passed,
            "quality": _report(kept).score,
            "report": _report(kept).as_dict(),
        }
        self.feed.keep_result(outcome.id, result)
        return result

    def _commit_token(
        self, state: SessionState, item: PlanItem, kept: Kept[Judgement], capture_id: str,
        registration: dict[str, Any], held: bool = False,
    ) -> str | None:
        token = kept.verdict.detail.token
        if token is None:
            return None
        image = CapturedImage(
            Modality.FACE, 0, "jpeg", token, *_jpeg_size(token), ppi=0,
            quality=_report(kept).score, quality_detail={"token_of": capture_id},
        )
        return self.capture.commit(
            item.device, image, kept.attempts, operator_id=state.operator_id,
            registration={**registration, "item": "face-token"}, held=held,
        ).id

    def _judged_image(self, kept: Kept[Judgement]) -> CapturedImage:
        """The kept image in its travelling format, carrying the registration's checks."""
        report = _report(kept)
        image = self._encode(kept.image)
        return replace(
            image,
            quality=report.score,
            quality_detail={**image.quality_detail, "registration_checks": report.as_dict()},
        )

    def _encode(self, image: CapturedImage) -> CapturedImage:
        """Fingers in the configured format by the resolution rule of agent/formats/images.py:
        PNG and JPEG 2000 lossless at the native resolution, said inside the file; WSQ at 500
        ppi, resampled when the scanner is not, the native one kept as ``scan_ppi``."""
        fmt = self.formats.finger_format
        if image.modality is not Modality.FINGER:
            return image
        from agent.formats.images import encode_finger
        from drivers.png_phys import png_ppi, set_phys

        if image.image_format == fmt:
            if fmt == "png" and png_ppi(image.image) != image.ppi:
                # Every PNG that leaves the kiosk says its resolution (pHYs), whatever the driver did.
                return replace(image, image=set_phys(image.image, image.ppi))
            return image
        gray = cv2.imdecode(np.frombuffer(image.image, np.uint8), cv2.IMREAD_GRAYSCALE)
        encoded = encode_finger(gray, image.ppi, fmt=fmt, wsq_bitrate=self.formats.wsq_bitrate)
        detail = {**image.quality_detail, **({"scan_ppi": encoded.scan_ppi} if encoded.scan_ppi else {})}
        return replace(image, image_format=encoded.format, image=encoded.data, width=encoded.width,
                       height=encoded.height, ppi=encoded.ppi, quality_detail=detail)


def _report(kept: Kept[Judgement]) -> QualityReport:
    return kept.verdict.detail.report


def _jpeg_size(jpeg: bytes) -> tuple[int, int]:
    decoded = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_GRAYSCALE)
    return (int(decoded.shape[1]), int(decoded.shape[0])) if decoded is not None else (0, 0)
