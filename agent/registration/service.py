"""Registration sessions: one person, ten fingers (or 4-4-2 slaps) and a face, taken by an
operator through the kiosk's registration app (agent/registration/local_api.py).

A session follows a capture plan. Each item gets up to ``registration.max_attempts``
attempts; every attempt is judged on the kiosk (fingers: agent/quality/finger.py, slaps also
by counting fingers: agent/quality/slap.py; face: agent/quality/face.py) and the best one is kept,
flagged ``force_captured`` when none passed. The kept image is sealed and committed to the
durable queue at once, so a crash mid-session loses nothing already captured; the session's
bookkeeping is in agent/registration/store.py, so an interrupted session can be resumed or
cancelled after a restart. Missing, amputated or bandaged fingers are exceptions with a
reason. Completing the session queues a manifest listing every capture and exception; the
receiver reports the registration complete, and writes its ANSI/NIST-ITL transaction, only
when all of them have arrived (receiver/assembly.py).

Threads: the calls below block (a capture waits for the person) and run on the local API's
request threads; device work goes through each device's worker thread. One action per
device at a time: a second gets RegistrationError("busy").
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Iterator
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from agent.capture.ids import uuid7
from agent.quality.report import Check, QualityReport
from agent.registration.store import ItemState, SessionState, SessionStore
from drivers import CapturedImage, CaptureRequest, CaptureRetry, DriverError, Modality

if TYPE_CHECKING:
    from agent.capture.service import CaptureService
    from agent.capture.workers import DeviceWorker
    from agent.config import AgentConfig
    from agent.security.sealing import Sealer
    from agent.transport.durable_queue import DurableQueue

log = logging.getLogger(__name__)

MANIFEST_KIND = "registration"
#: ANSI/NIST slap positions and the fingers each holds.
SLAPS: dict[int, tuple[int, ...]] = {13: (2, 3, 4, 5), 14: (7, 8, 9, 10), 15: (1, 6)}
FINGER_NAMES = {
    1: "right thumb",
    2: "right index",
    3: "right middle",
    4: "right ring",
    5: "right little",
    6: "left thumb",
    7: "left index",
    8: "left middle",
    9: "left ring",
    10: "left little",
    13: "right four fingers",
    14: "left four fingers",
    15: "both thumbs",
}
EXCEPTION_CODES = {"XX": "amputated", "UP": "unable to print (bandaged, injured)"}
PREVIEW_MAX_PX = 480
#: Seconds added to a device's own capture timeout before the session gives up on it.
DEVICE_GRACE_S = 30.0


class RegistrationError(Exception):
    """``code``: not_found, invalid, busy, closed, incomplete, device, retry."""

    def __init__(self, code: str, message: str, **detail: Any) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.detail = detail


@dataclass(frozen=True)
class PlanItem:
    key: str
    modality: Modality
    #: Finger position 1..10, slap position 13..15, 0 for the face.
    position: int
    fingers: tuple[int, ...]
    device: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "modality": self.modality.value,
            "position": self.position,
            "fingers": list(self.fingers),
            "device": self.device,
            "name": FINGER_NAMES.get(self.position, "face"),
        }


def plan_items(plan: str, face: bool, finger_device: str, face_device: str) -> list[PlanItem]:
    if plan == "ten-flat":
        items = [PlanItem(f"finger-{p}", Modality.FINGER, p, (p,), finger_device) for p in range(1, 11)]
    elif plan == "slaps-442":
        items = [
            PlanItem(f"slap-{p}", Modality.FINGER, p, fingers, finger_device) for p, fingers in SLAPS.items()
        ]
    else:
        raise RegistrationError("invalid", f"unknown plan {plan!r}; plans: ten-flat, slaps-442")
    if face:
        items.append(PlanItem("face", Modality.FACE, 0, (), face_device))
    return items


@dataclass
class _Attempt:
    image: CapturedImage
    report: QualityReport
    passed: bool
    token: bytes | None = None


class RegistrationService:
    def __init__(
        self,
        config: AgentConfig,
        capture: CaptureService,
        queue: DurableQueue,
        sealer: Sealer,
        workers: dict[str, DeviceWorker],
    ) -> None:
        self.config = config
        self.reg = config.registration
        self.capture_service = capture
        self.queue = queue
        self.sealer = sealer
        self.workers = workers
        assert self.reg.store_path is not None  # AgentConfig fills it in
        self.store = SessionStore(self.reg.store_path)
        self._device_locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        self._events: dict[str, list[dict[str, Any]]] = {}
        self._events_cond = threading.Condition()
        self._previews: dict[tuple[str, str], tuple[bytes, str]] = {}
        self._finger_assessor: Any = None
        self._face_assessor: Any = None
        self._face_lock = threading.Lock()
        #: The latest capture results by capture id (quality reports, no images), for the app.
        self._results: dict[str, dict[str, Any]] = {}

    def close(self) -> None:
        self.store.close()

    # --- sessions -----------------------------------------------------------------------

    def start(self, applicant_ref: str, operator_id: str) -> dict[str, Any]:
        for name, value in (("applicant_ref", applicant_ref), ("operator_id", operator_id)):
            if not isinstance(value, str) or not value.strip() or len(value) > 128:
                raise RegistrationError("invalid", f"{name} must be 1-128 characters")
        items = self._plan()
        for device in {i.device for i in items}:
            if device not in self.workers:
                setting = "face_device" if device == self.reg.face_device else "finger_device"
                raise RegistrationError(
                    "invalid",
                    f"registration.{setting} is {device!r}, which is not a "
                    f"configured, enabled device ({', '.join(sorted(self.workers)) or 'none'})",
                )
        session_id = uuid7()
        self.store.create(
            session_id,
            applicant_ref.strip(),
            operator_id.strip(),
            self.reg.plan,
            self.reg.face,
            [i.key for i in items],
        )
        log.info("registration %s started by operator %s (%s)", session_id, operator_id, self.reg.plan)
        self._event(session_id, "started", plan=self.reg.plan)
        return self.view(session_id)

    def _plan(self, state: SessionState | None = None) -> list[PlanItem]:
        plan = state.plan if state else self.reg.plan
        face = state.face if state else self.reg.face
        return plan_items(plan, face, self.reg.finger_device, self.reg.face_device)

    def _state(self, session_id: str) -> SessionState:
        state = self.store.get(session_id)
        if state is None:
            raise RegistrationError("not_found", f"no registration session {session_id!r}")
        return state

    def _open(self, session_id: str) -> SessionState:
        state = self._state(session_id)
        if state.state != "open":
            raise RegistrationError("closed", f"session {session_id} is {state.state}; start a new one")
        return state

    def view(self, session_id: str) -> dict[str, Any]:
        state = self._state(session_id)
        items = []
        for item in self._plan(state):
            s = state.items[item.key]
            missing = [p for p in item.fingers if p in state.exceptions]
            items.append(
                {
                    **item.as_dict(),
                    "status": s.status,
                    "capture_id": s.capture_id,
                    "token_id": s.token_id,
                    "quality": s.quality,
                    "force_captured": s.force_captured,
                    "attempts": s.attempts,
                    "excepted_fingers": missing,
                    **s.detail,
                }
            )
        pending = [i["key"] for i in items if i["status"] == "pending"]
        return {
            "id": state.id,
            "applicant_ref": state.applicant_ref,
            "operator_id": state.operator_id,
            "plan": state.plan,
            "state": state.state,
            "reason": state.reason,
            "created_at": _iso(state.created),
            "updated_at": _iso(state.updated),
            "items": items,
            "pending": pending,
            "next": pending[0] if pending else None,
            "exceptions": [
                {"position": p, "finger": FINGER_NAMES[p], "code": c, "reason": r}
                for p, (c, r) in sorted(state.exceptions.items())
            ],
        }

    def sessions(self, state: str | None = None) -> list[dict[str, Any]]:
        return [self.view(sid) for sid in self.store.list_ids(state)]

    # --- capture ------------------------------------------------------------------------

    def capture(self, session_id: str, item_key: str | None = None) -> dict[str, Any]:
        """Take one plan item (the next pending one by default): attempts, judge, keep the best."""
        state = self._open(session_id)
        plan = {i.key: i for i in self._plan(state)}
        if item_key is None:
            pending = [k for k in plan if state.items[k].status == "pending"]
            if not pending:
                raise RegistrationError(
                    "invalid", "every item is captured or an exception; complete the session"
                )
            item_key = pending[0]
        item = plan.get(item_key)
        if item is None:
            raise RegistrationError("invalid", f"no item {item_key!r} in this plan; items: {', '.join(plan)}")
        expected = [p for p in item.fingers if p not in state.exceptions]
        if item.modality is Modality.FINGER and not expected:
            raise RegistrationError("invalid", f"every finger of {item.key} is recorded as an exception")
        with self._device(item.device):
            best, attempts = self._attempts(session_id, item, len(expected))
            return self._keep(state, item, best, attempts, len(expected))

    @contextlib.contextmanager
    def _device(self, device: str) -> Iterator[None]:
        with self._locks_guard:
            lock = self._device_locks.setdefault(device, threading.Lock())
        if not lock.acquire(blocking=False):
            raise RegistrationError(
                "busy", f"device {device} is busy with another capture; wait for it to finish"
            )
        try:
            yield
        finally:
            lock.release()

    def _attempts(self, session_id: str, item: PlanItem, expected_fingers: int) -> tuple[_Attempt, int]:
        worker = self.workers[item.device]
        timeout = worker.driver.config.capture_timeout_s + DEVICE_GRACE_S
        best: _Attempt | None = None
        last_hint = ""
        attempts = 0
        for attempt in range(1, self.reg.max_attempts + 1):
            attempts = attempt
            self._event(session_id, "attempt", item=item.key, attempt=attempt)
            future = worker.submit(lambda driver: driver.capture(CaptureRequest(position=item.position)))
            try:
                image = future.result(timeout=timeout)
            except CaptureRetry as retry:
                last_hint = retry.hint
                self._event(
                    session_id, "retry", item=item.key, attempt=attempt, reason=retry.reason, hint=retry.hint
                )
                continue
            except FutureTimeout:
                raise RegistrationError(
                    "device",
                    f"device {item.device} did not answer within {timeout:.0f} s; "
                    "nothing already captured is lost",
                    item=item.key,
                ) from None
            except DriverError as exc:
                self._event(session_id, "device_error", item=item.key, error=str(exc))
                raise RegistrationError(
                    "device",
                    f"device {item.device}: {exc}; nothing already captured "
                    "is lost, retry this item when the device is back",
                    item=item.key,
                ) from None
            judged = self._judge(item, image, expected_fingers)
            self._preview(session_id, item, image)
            self._event(
                session_id,
                "judged",
                item=item.key,
                attempt=attempt,
                score=judged.report.score,
                passed=judged.passed,
                hints=judged.report.hints(),
            )
            if best is None or (judged.passed, judged.report.score) > (best.passed, best.report.score):
                best = judged
            if judged.passed:
                break
        if best is None:
            raise RegistrationError(
                "retry",
                f"{item.key}: no usable image in {attempts} attempts",
                hint=last_hint or "try again",
                item=item.key,
            )
        return best, attempts

    # --- judging ------------------------------------------------------------------------

    def _judge(self, item: PlanItem, image: CapturedImage, expected_fingers: int) -> _Attempt:
        if item.modality is Modality.FACE:
            return self._judge_face(image)
        return self._judge_finger(item, image, expected_fingers)

    def _judge_finger(self, item: PlanItem, image: CapturedImage, expected: int) -> _Attempt:
        from agent.quality.finger import load_assessor
        from agent.quality.slap import count_fingers

        gray = cv2.imdecode(np.frombuffer(image.image, np.uint8), cv2.IMREAD_GRAYSCALE)
        if gray is None:
            raise RegistrationError(
                "device", f"device {item.device} returned an image that cannot be decoded"
            )
        if self._finger_assessor is None:
            self._finger_assessor = load_assessor(self.config.quality.finger)
        report: QualityReport = self._finger_assessor.assess(gray, image.ppi or 500)
        checks = list(report.checks)
        threshold = self.reg.finger_min_quality
        checks.append(
            Check(
                "registration_min_quality",
                report.score,
                f">= {threshold}",
                report.score >= threshold,
                "press the finger flat and firmly",
            )
        )
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
        report = replace(report, checks=tuple(checks))
        return _Attempt(image, report, report.passed)

    def _judge_face(self, image: CapturedImage) -> _Attempt:
        from agent.quality.face import encode_jpeg, token_from_capture, token_geometry, token_image

        detail = image.quality_detail
        token: bytes | None = None
        if detail.get("checks"):  # a camera that judges faces itself (the opencv driver)
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
            report = QualityReport("face", int(image.quality or 0), checks, str(detail.get("assessor", "")))
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
        report = replace(
            report,
            checks=(
                *report.checks,
                Check(
                    "registration_min_quality",
                    report.score,
                    f">= {threshold}",
                    report.score >= threshold,
                    "look straight at the camera",
                ),
            ),
        )
        return _Attempt(image, report, report.passed, token)

    # --- keeping the best attempt ---------------------------------------------------------

    def _keep(
        self, state: SessionState, item: PlanItem, best: _Attempt, attempts: int, expected_fingers: int
    ) -> dict[str, Any]:
        image = self._encode(best.image)
        force = not best.passed
        registration = {
            "id": state.id,
            "item": item.key,
            "fingers": list(item.fingers),
            "attempts": attempts,
            "force_captured": force,
            "applicant_ref": state.applicant_ref,
        }
        detail = {"quality_report": best.report.as_dict()}
        image = replace(
            image,
            quality=best.report.score,
            quality_detail={**image.quality_detail, "registration_checks": detail["quality_report"]},
        )
        outcome = self.capture_service.commit(
            item.device, image, attempts, operator_id=state.operator_id, registration=registration
        )
        token_id = None
        if best.token is not None:
            token_image = CapturedImage(
                Modality.FACE,
                0,
                "jpeg",
                best.token,
                *_jpeg_size(best.token),
                ppi=0,
                quality=best.report.score,
                quality_detail={"token_of": outcome.id},
            )
            token_id = self.capture_service.commit(
                item.device,
                token_image,
                attempts,
                operator_id=state.operator_id,
                registration={**registration, "item": "face-token"},
            ).id
        saved = ItemState(
            item.key,
            "captured",
            outcome.id,
            token_id,
            best.report.score,
            force,
            attempts,
            {"failed_checks": [c.name for c in best.report.failed()], "hints": best.report.hints()},
        )
        self.store.save_item(state.id, saved)
        if force:
            log.warning(
                "registration %s: %s force-captured at quality %d after %d attempts (failed: %s)",
                state.id,
                item.key,
                best.report.score,
                attempts,
                ", ".join(saved.detail["failed_checks"]),
            )
        self._event(
            state.id,
            "captured",
            item=item.key,
            capture_id=outcome.id,
            quality=best.report.score,
            force_captured=force,
        )
        result = {
            "session": state.id,
            "item": item.key,
            "capture_id": outcome.id,
            "token_id": token_id,
            "attempts": attempts,
            "force_captured": force,
            "quality": best.report.as_dict(),
            "expected_fingers": expected_fingers if item.modality is Modality.FINGER else None,
        }
        self._remember(outcome.id, result)
        return result

    def _remember(self, capture_id: str, result: dict[str, Any]) -> None:
        with self._events_cond:
            self._results[capture_id] = result
            while len(self._results) > 256:
                self._results.pop(next(iter(self._results)))

    def result(self, capture_id: str) -> dict[str, Any]:
        with self._events_cond:
            found = self._results.get(capture_id)
        if found is None:
            raise RegistrationError(
                "not_found",
                f"no recent capture {capture_id!r} (results of the last 256 captures are kept in memory)",
            )
        return found

    def single_capture(self, device: str, position: int) -> dict[str, Any]:
        """One capture outside any session (the app's "test the scanner" button, enrolment of staff)."""
        worker = self.workers[device]
        modality = worker.driver.modality
        item = PlanItem(
            f"single-{position}",
            modality,
            position,
            SLAPS.get(position, (position,) if 1 <= position <= 10 else ()),
            device,
        )
        with self._device(device):
            best, attempts = self._attempts("single", item, len(item.fingers))
        image = replace(
            self._encode(best.image),
            quality=best.report.score,
            quality_detail={**best.image.quality_detail, "registration_checks": best.report.as_dict()},
        )
        outcome = self.capture_service.commit(device, image, attempts)
        result = {
            "capture_id": outcome.id,
            "device": device,
            "position": position,
            "attempts": attempts,
            "passed": best.passed,
            "quality": best.report.as_dict(),
        }
        self._remember(outcome.id, result)
        return result

    def live_face_checks(self, frame: np.ndarray) -> dict[str, Any]:
        """The face checks of one preview frame, shown beside the live preview."""
        return self._assess_face(frame).report.as_dict()

    def _assess_face(self, frame: np.ndarray) -> Any:
        from agent.quality.face import FaceAssessor

        # One detector, used by one thread at a time: OpenCV's cascades are not thread-safe.
        with self._face_lock:
            if self._face_assessor is None:
                self._face_assessor = FaceAssessor(self.config.quality.face)
            return self._face_assessor.assess(frame)

    def _encode(self, image: CapturedImage) -> CapturedImage:
        """Fingers in the configured format (PNG or WSQ) at their native resolution."""
        fmt = self.config.formats.finger_format
        if image.modality is not Modality.FINGER or image.image_format == fmt:
            return image
        from agent.formats.images import encode_finger

        gray = cv2.imdecode(np.frombuffer(image.image, np.uint8), cv2.IMREAD_GRAYSCALE)
        encoded = encode_finger(gray, image.ppi or 500, fmt=fmt, wsq_bitrate=self.config.formats.wsq_bitrate)
        return replace(image, image_format=encoded.format, image=encoded.data)

    # --- exceptions, completion, cancellation -----------------------------------------------

    def add_exception(self, session_id: str, position: int, code: str, reason: str) -> dict[str, Any]:
        state = self._open(session_id)
        if not isinstance(position, int) or not 1 <= position <= 10:
            raise RegistrationError("invalid", "position must be a finger position 1..10")
        if code not in EXCEPTION_CODES:
            raise RegistrationError(
                "invalid",
                f"code must be one of {', '.join(EXCEPTION_CODES)} "
                f"({'; '.join(f'{k}: {v}' for k, v in EXCEPTION_CODES.items())})",
            )
        if not isinstance(reason, str) or not reason.strip():
            raise RegistrationError("invalid", "give the reason (e.g. 'amputated at birth', 'bandaged')")
        item = next(i for i in self._plan(state) if position in i.fingers)
        if state.items[item.key].status == "captured":
            raise RegistrationError(
                "invalid",
                f"{item.key} is already captured; an exception for "
                f"{FINGER_NAMES[position]} would contradict it",
            )
        self.store.set_exception(session_id, position, code, reason.strip())
        if all(p in state.exceptions or p == position for p in item.fingers):
            self.store.save_item(session_id, ItemState(item.key, "exception"))
        self._event(session_id, "exception", position=position, code=code)
        return self.view(session_id)

    def complete(self, session_id: str) -> dict[str, Any]:
        state = self._open(session_id)
        pending = [k for k, s in state.items.items() if s.status == "pending"]
        if pending:
            raise RegistrationError(
                "incomplete",
                f"not complete: {', '.join(pending)} still to capture or record as exceptions",
                pending=pending,
            )
        manifest = self._manifest(state, "completed")
        self._queue_manifest(state.id, manifest)
        self.store.set_state(session_id, "completed")
        log.info(
            "registration %s completed: %d captures, %d exceptions",
            session_id,
            len(manifest["captures"]),
            len(manifest["exceptions"]),
        )
        self._event(session_id, "completed")
        return self.view(session_id)

    def cancel(self, session_id: str, reason: str) -> dict[str, Any]:
        state = self._open(session_id)
        if not isinstance(reason, str) or not reason.strip():
            raise RegistrationError("invalid", "give the reason for cancelling")
        # The receiver learns that captures already sent belong to no registration.
        self._queue_manifest(state.id, self._manifest(state, "cancelled", reason.strip()))
        self.store.set_state(session_id, "cancelled", reason.strip())
        self._event(session_id, "cancelled", reason=reason.strip())
        return self.view(session_id)

    def _manifest(self, state: SessionState, outcome: str, reason: str | None = None) -> dict[str, Any]:
        plan = {i.key: i for i in self._plan(state)}
        captures = []
        for key, s in state.items.items():
            if s.status != "captured":
                continue
            item = plan[key]
            captures.append(
                {
                    "id": s.capture_id,
                    "item": key,
                    "modality": item.modality.value,
                    "position": item.position,
                    "fingers": list(item.fingers),
                    "quality": s.quality,
                    "force_captured": s.force_captured,
                    "attempts": s.attempts,
                }
            )
            if s.token_id:
                captures.append(
                    {
                        "id": s.token_id,
                        "item": "face-token",
                        "modality": "face",
                        "position": 0,
                        "fingers": [],
                        "token_of": s.capture_id,
                    }
                )
        kiosk = self.config.kiosk
        return {
            "v": 1,
            "type": "registration",
            "id": state.id,
            "state": outcome,
            "reason": reason,
            "kiosk_id": kiosk.id,
            "site": kiosk.site,
            "operator_id": state.operator_id,
            "applicant_ref": state.applicant_ref,
            "plan": state.plan,
            "created_at": _iso(state.created),
            "closed_at": _iso(time.time()),
            "captures": captures,
            "exceptions": [
                {"position": p, "code": c, "reason": r} for p, (c, r) in sorted(state.exceptions.items())
            ],
        }

    def _queue_manifest(self, session_id: str, manifest: dict[str, Any]) -> None:
        body = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
        kiosk_id = self.config.kiosk.id

        def sealed(seq: int) -> bytes:
            return self.sealer.seal(
                item_id=session_id, kiosk_id=kiosk_id, seq=seq, kind=MANIFEST_KIND, inner=body
            )

        self.queue.put(session_id, MANIFEST_KIND, sealed)

    # --- following a session --------------------------------------------------------------

    def _event(self, session_id: str, kind: str, **fields: Any) -> None:
        with self._events_cond:
            events = self._events.setdefault(session_id, [])
            events.append({"seq": len(events) + 1, "event": kind, "at": time.time(), **fields})
            del events[:-500]  # a long session keeps its last 500 events
            self._events_cond.notify_all()

    def events(self, session_id: str, after: int = 0, wait_s: float = 0.0) -> list[dict[str, Any]]:
        """Events after ``after``; waits up to ``wait_s`` for one (long polling)."""
        self._state(session_id)
        deadline = time.monotonic() + wait_s
        with self._events_cond:
            while True:
                found = [e for e in self._events.get(session_id, []) if e["seq"] > after]
                left = deadline - time.monotonic()
                if found or left <= 0:
                    return found
                self._events_cond.wait(left)

    def _preview(self, session_id: str, item: PlanItem, image: CapturedImage) -> None:
        """A small copy of the latest attempt, in memory only, for the operator's screen."""
        decoded = cv2.imdecode(np.frombuffer(image.image, np.uint8), cv2.IMREAD_UNCHANGED)
        if decoded is None:
            return
        scale = PREVIEW_MAX_PX / max(decoded.shape[:2])
        if scale < 1:
            decoded = cv2.resize(decoded, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        ok, data = cv2.imencode(".jpg", decoded, [cv2.IMWRITE_JPEG_QUALITY, 80])
        if ok:
            with self._events_cond:
                self._previews[(session_id, item.key)] = (data.tobytes(), "image/jpeg")
                while len(self._previews) > 64:
                    self._previews.pop(next(iter(self._previews)))

    def preview(self, session_id: str, item_key: str) -> tuple[bytes, str]:
        self._state(session_id)
        with self._events_cond:
            found = self._previews.get((session_id, item_key))
        if found is None:
            raise RegistrationError(
                "not_found",
                f"no preview of {item_key} in session {session_id} (previews "
                "are kept in memory only, for the latest attempt of each item)",
            )
        return found


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _jpeg_size(jpeg: bytes) -> tuple[int, int]:
    decoded = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_GRAYSCALE)
    return (int(decoded.shape[1]), int(decoded.shape[0])) if decoded is not None else (0, 0)
