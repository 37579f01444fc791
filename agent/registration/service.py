"""Registration sessions: one person, ten fingers (or 4-4-2 slaps) and a face, taken by an
operator through the kiosk's registration app (agent/registration/local_api.py).

A session follows a capture plan (agent/registration/plan.py). Each item gets up to
``registration.max_attempts`` attempts, every one judged on the kiosk
(agent/registration/taking.py, agent/registration/judging.py); the best is kept, flagged
``force_captured`` when none passed, and sealed into the durable queue at once
(agent/registration/keeping.py), so a crash mid-session loses nothing already captured.
The session's bookkeeping is in agent/registration/store.py, so an interrupted session can
be resumed or cancelled after a restart. Missing, amputated or bandaged fingers are
exceptions with a reason. Completing the session queues a manifest listing every capture
and exception (agent/registration/manifest.py); the receiver reports the registration
complete, and writes its ANSI/NIST-ITL transaction, only when all of them have arrived.

This module is the session's life cycle and the face the local API calls. Threads: the
calls block (a capture waits for the person) and run on the local API's request threads;
device work goes through each device's worker thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from agent.capture.ids import uuid7
from agent.capture.service import CaptureService
from agent.capture.workers import DeviceWorker
from agent.config import KioskConfig
from agent.formats.config import FormatsConfig
from agent.formats.positions import FINGERS, position_problem
from agent.quality.analytics import open_analytics
from agent.quality.config import QualityConfig
from agent.registration.approval import REJECT_REASONS, Approvals
from agent.registration.config import RegistrationConfig
from agent.registration.erasure import erase_delivered
from agent.registration.errors import RegistrationError
from agent.registration.feed import SessionFeed
from agent.registration.gates import Gates
from agent.registration.judging import Judge
from agent.registration.keeping import Keeper
from agent.registration.manifest import build_manifest, iso_time, queue_manifest
from agent.registration.plan import EXCEPTION_CODES, FINGER_NAMES, PlanItem, plan_items, single_item
from agent.registration.store import ItemState, SessionState, SessionStore
from agent.registration.taking import ItemTaker
from agent.security.sealing import Sealer
from agent.transport.durable_queue import DurableQueue
from drivers import Modality

__all__ = ["RegistrationError", "RegistrationService"]

log = logging.getLogger(__name__)


class RegistrationService:
    def __init__(
        self,
        config: RegistrationConfig,
        *,
        kiosk: KioskConfig,
        quality: QualityConfig,
        formats: FormatsConfig,
        capture: CaptureService,
        queue: DurableQueue,
        sealer: Sealer,
        workers: Mapping[str, DeviceWorker],
    ) -> None:
        self.reg = config
        self.kiosk = kiosk
        self.queue = queue
        self.sealer = sealer
        self.workers = workers
        assert config.store_path is not None  # AgentConfig resolves it from kiosk.state_dir
        self.store = SessionStore(config.store_path)
        self.feed = SessionFeed()
        self.judge = Judge(config, quality)
        self.taker = ItemTaker(workers, config.max_attempts, self.judge, self.feed)
        self.keeper = Keeper(capture, formats, self.store, self.feed)
        #: Daily quality aggregates of session items, operators as pseudonyms (docs/finger-quality.md).
        self.analytics = open_analytics(quality.analytics, config.store_path.parent)
        self.taker.analytics = self.keeper.analytics = self.analytics
        self.keeper.context = self.capture_context
        #: One complete or cancel at a time: a retried complete racing the first must find the
        #: session completed, not queue a second manifest.
        self._closing = threading.Lock()
        #: Rules that refuse new sessions (agent/registration/gates.py); components add theirs.
        self.gates = Gates()
        #: Fields other components add to every manifest (name -> reader), read as each capture
        #: is kept (``capture_context``) and when the session closes: a van's position and clock.
        self.manifest_fields: dict[str, Callable[[], Any]] = {}
        #: Supervisor approval (agent/registration/approval.py): while True, captures and
        #: manifests are committed held, and go out only once a supervisor approves.
        self.approval_required = False
        self.approvals = Approvals(config.store_path.parent / "approvals.db")
        #: Called after held items are released (the publisher rewinds to pick them up).
        self.on_release: Callable[[], None] = lambda: None

    def capture_context(self) -> dict[str, Any]:
        """When and where a capture is kept: the manifest's per-capture ``taken``."""
        return {"at": iso_time(time.time()), **self._manifest_extra()}

    def _manifest_extra(self) -> dict[str, Any]:
        extra: dict[str, Any] = {}
        for name, read in self.manifest_fields.items():
            try:
                extra[name] = read()
            except Exception as exc:  # noqa: BLE001 - a broken reader must not lose the registration
                log.error("manifest field %s could not be read: %s", name, type(exc).__name__)
                extra[name] = {"error": type(exc).__name__}
        return extra

    def close(self) -> None:
        self.store.close()
        if self.analytics is not None:
            self.analytics.close()
        self.approvals.close()

    def erase_delivered(self) -> int:
        """Erase the closed sessions the central side has all of (agent/registration/erasure.py)."""
        erased = erase_delivered(self.store, self.queue)
        if erased:
            log.info("erased %d registration sessions the central side has received", len(erased))
        return len(erased)

    # --- sessions -----------------------------------------------------------------------

    def start(self, applicant_ref: str, operator_id: str) -> dict[str, Any]:
        for name, value in (("applicant_ref", applicant_ref), ("operator_id", operator_id)):
            if not isinstance(value, str) or not value.strip() or len(value) > 128:
                raise RegistrationError("invalid", f"{name} must be 1-128 characters")
        refusals = self.gates.refusals()
        if refusals:
            raise RegistrationError(
                "blocked",
                "new registrations are stopped on this kiosk: "
                + "; ".join(f"{r.message} ({r.action})" for r in refusals),
                rules=[r.as_dict() for r in refusals],
            )
        items = self._plan()
        for device in {i.device for i in items}:
            if device not in self.workers:
                setting = next(s for s in ("face_device", "iris_device", "finger_device")
                               if getattr(self.reg, s) == device or s == "finger_device")
                raise RegistrationError(
                    "invalid",
                    f"registration.{setting} is {device!r}, which is not a "
                    f"configured, enabled device ({', '.join(sorted(self.workers)) or 'none'})",
                )
        session_id = uuid7()
        self.store.create(
            session_id, applicant_ref.strip(), operator_id.strip(), self.reg.plan, self.reg.face,
            [i.key for i in items],
        )
        # Not the operator id: it is personal data, sealed at rest and erased once delivered,
        # and the journal keeps lines for months (and diagnostics hands them to support).
        log.info("registration %s started (%s)", session_id, self.reg.plan)
        self.feed.event(session_id, "started", plan=self.reg.plan)
        for warning in self.gates.warnings():  # e.g. outside the assigned area (docs/vans.md)
            self.feed.event(session_id, "warning", **warning)
        return self.view(session_id)

    def view(self, session_id: str) -> dict[str, Any]:
        state = self._state(session_id)
        items = []
        for item in self._plan(state):
            s = state.items[item.key]
            items.append(
                {
                    **item.as_dict(),
                    "status": s.status,
                    "capture_id": s.capture_id,
                    "token_id": s.token_id,
                    "quality": s.quality,
                    "force_captured": s.force_captured,
                    "attempts": s.attempts,
                    "excepted_fingers": [p for p in item.fingers if p in state.exceptions],
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
            "created_at": iso_time(state.created),
            "updated_at": iso_time(state.updated),
            "items": items,
            "pending": pending,
            "next": pending[0] if pending else None,
            "exceptions": [
                {"position": p, "finger": FINGER_NAMES[p], "code": c, "reason": r}
                for p, (c, r) in sorted(state.exceptions.items())
            ],
            # What the central side says of it (agent/registration/central_status.py).
            "central": self.store.central(state.id),
            # What the officer must know while the person is there (agent/registration/gates.py).
            "warnings": self.gates.warnings() if state.state == "open" else [],
        }

    def sessions(self, state: str | None = None) -> list[dict[str, Any]]:
        views = []
        for sid in self.store.list_ids(state):
            try:
                views.append(self.view(sid))
            except RegistrationError as exc:
                if exc.code != "not_found":
                    raise  # not_found: erased (delivered) since the list was read; not listed
        return views

    # --- capture ------------------------------------------------------------------------

    def capture(self, session_id: str, item_key: str | None = None) -> dict[str, Any]:
        """Take one plan item (the next pending one by default): attempts, judge, keep the best."""
        state = self._open(session_id)
        item = self._item(state, item_key)
        expected = [p for p in item.fingers if p not in state.exceptions]
        if item.modality is Modality.FINGER and not expected:
            raise RegistrationError("conflict", f"every finger of {item.key} is recorded as an exception")
        with self.taker.device(item.device):
            excepted = tuple(p for p in item.fingers if p in state.exceptions)
            kept = self.taker.take(session_id, item, len(expected), excepted, operator=state.operator_id)
            result = self.keeper.keep_item(state, item, kept, len(expected), held=self.approval_required)
        # What the app captures next, as in the session's own view (null: complete it now).
        return {**result, "next": self._next(self._state(session_id))}

    def single_capture(self, device: str, position: int) -> dict[str, Any]:
        """One capture outside any session (the app's "test the scanner" button, enrolment of staff)."""
        item = single_item(device, self.workers[device].driver.modality, position)
        with self.taker.device(device):
            kept = self.taker.take("single", item, len(item.fingers))
        return self.keeper.keep_single(device, position, kept)

    def result(self, capture_id: str) -> dict[str, Any]:
        found = self.feed.result(capture_id)
        if found is None:
            raise RegistrationError(
                "not_found",
                f"no recent capture {capture_id!r} (results of the last 256 captures are kept in memory)",
            )
        return found

    def live_face_checks(self, frame: np.ndarray) -> dict[str, Any]:
        """The face checks of one preview frame, shown beside the live preview."""
        return self.judge.live_face_checks(frame)

    # --- exceptions, completion, cancellation -----------------------------------------------

    def add_exception(self, session_id: str, position: int, code: str, reason: str) -> dict[str, Any]:
        state = self._open(session_id)
        problem = position_problem(position, FINGERS)
        if problem is not None:
            raise RegistrationError("invalid", f"position {problem}")
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
                "conflict",
                f"{item.key} is already captured; an exception for "
                f"{FINGER_NAMES[position]} would contradict it",
            )
        self.store.set_exception(session_id, position, code, reason.strip())
        if self.analytics is not None and position not in state.exceptions:  # not a corrected reason
            self.analytics.record_exception(state.operator_id, code)
        if all(p in state.exceptions or p == position for p in item.fingers):
            self.store.save_item(session_id, ItemState(item.key, "exception"))
        self.feed.event(session_id, "exception", position=position, code=code)
        return self.view(session_id)

    def complete(self, session_id: str) -> dict[str, Any]:
        with self._closing:
            return self._complete(session_id)

    def _complete(self, session_id: str) -> dict[str, Any]:
        state = self._state(session_id)
        if state.state == "completed":
            # A retry (the app timed out waiting for the first answer): the same answer again,
            # and no second manifest.
            return self.view(session_id)
        state = self._open(session_id)
        pending = [k for k, s in state.items.items() if s.status == "pending"]
        if pending:
            raise RegistrationError(
                "incomplete",
                f"not complete: {', '.join(pending)} still to capture or record as exceptions",
                pending=pending,
            )
        manifest = build_manifest(state, self._plan(state), self.kiosk, "completed",
                                  extra=self._manifest_extra())
        hold = self.approval_required
        if hold:  # first: a crash before the manifest leaves an open session, completed again
            self.approvals.awaiting(session_id)
        queue_manifest(self.queue, self.sealer, self.kiosk.id, state.id, manifest, held=hold)
        if not hold:
            self._release(state)  # captures held under the policy before it was turned off
        self.store.set_state(session_id, "completed")
        self.feed.drop_previews(session_id)
        log.info(
            "registration %s completed: %d captures, %d exceptions",
            session_id, len(manifest["captures"]), len(manifest["exceptions"]),
        )
        self.feed.event(session_id, "completed")
        return self.view(session_id)

    def cancel(self, session_id: str, reason: str) -> dict[str, Any]:
        with self._closing:
            return self._cancel(session_id, reason)

    def _cancel(self, session_id: str, reason: str) -> dict[str, Any]:
        state = self._open(session_id)
        if not isinstance(reason, str) or not reason.strip():
            raise RegistrationError("invalid", "give the reason for cancelling")
        # The receiver learns that captures already sent belong to no registration.
        manifest = build_manifest(state, self._plan(state), self.kiosk, "cancelled", reason.strip(),
                                  extra=self._manifest_extra())
        queue_manifest(self.queue, self.sealer, self.kiosk.id, state.id, manifest)
        # Held captures go out as before approval existed: the cancel manifest tells the
        # central side they belong to no registration (approval is for completed ones).
        self._release(state)
        self.store.set_state(session_id, "cancelled", reason.strip())
        self.feed.drop_previews(session_id)
        self.feed.event(session_id, "cancelled", reason=reason.strip())
        return self.view(session_id)

    # --- supervisor approval (agent/registration/approval.py) -------------------------------

    def approve(self, session_id: str, supervisor: str) -> dict[str, Any]:
        """Release a held registration for upload; ``supervisor`` is recorded as who decided."""
        with self._closing:
            state = self._awaiting(session_id)
            if not self.approvals.decide(session_id, "approved", supervisor):
                raise RegistrationError("conflict", f"registration {session_id} was decided meanwhile")
            released = self._release(state)
        log.info("registration %s approved by a supervisor: %d items released", session_id, released)
        return self.approvals.get(session_id) or {}

    def reject(self, session_id: str, supervisor: str, reason: str) -> dict[str, Any]:
        """Keep a held registration on the kiosk for the audit; it is never sent."""
        if reason not in REJECT_REASONS:
            raise RegistrationError("invalid", f"reason must be one of {', '.join(REJECT_REASONS)}")
        with self._closing:
            state = self._awaiting(session_id)
            if not self.approvals.decide(session_id, "rejected", supervisor, reason):
                raise RegistrationError("conflict", f"registration {session_id} was decided meanwhile")
            withheld = self.queue.withhold(self._item_ids(state))
        log.warning("registration %s rejected by a supervisor (%s): %d items withheld",
                    session_id, reason, withheld)
        return self.approvals.get(session_id) or {}

    def _awaiting(self, session_id: str) -> SessionState:
        state = self._state(session_id)
        decision = self.approvals.get(session_id)
        if state.state != "completed" or decision is None or decision["state"] != "awaiting":
            raise RegistrationError(
                "conflict", f"registration {session_id} does not await approval "
                f"({decision['state'] if decision else state.state})")
        return state

    def _item_ids(self, state: SessionState) -> list[str]:
        """The queue ids of a session: its captures, face tokens and manifest."""
        ids = [state.id]
        for item in state.items.values():
            ids += [i for i in (item.capture_id, item.token_id) if i]
        return ids

    def _release(self, state: SessionState) -> int:
        released = self.queue.release(self._item_ids(state))
        if released:
            self.on_release()
        return released

    # --- following a session --------------------------------------------------------------

    def events(self, session_id: str, after: int = 0, wait_s: float = 0.0) -> list[dict[str, Any]]:
        """Events after ``after``; waits up to ``wait_s`` for one (long polling)."""
        self._state(session_id)
        return self.feed.events(session_id, after, wait_s)

    def preview(self, session_id: str, item_key: str) -> tuple[bytes, str]:
        state = self._state(session_id)
        if state.state != "open":
            # The operator's screen has moved on to the next applicant; this one's images are
            # in the sealed queue, and a rogue operator must not page back through them.
            raise RegistrationError(
                "closed",
                f"session {session_id} is {state.state}: previews of an ended session are not served",
            )
        found = self.feed.preview(session_id, item_key)
        if found is None:
            raise RegistrationError(
                "not_found",
                f"no preview of {item_key} in session {session_id} (previews "
                "are kept in memory only, for the latest attempt of each item)",
            )
        return found

    # --- the session's state ----------------------------------------------------------------

    def _plan(self, state: SessionState | None = None) -> list[PlanItem]:
        plan = state.plan if state else self.reg.plan
        face = state.face if state else self.reg.face
        return plan_items(plan, face, self.reg.finger_device, self.reg.face_device, self.reg.iris_device)

    def _item(self, state: SessionState, item_key: str | None) -> PlanItem:
        """The plan item ``item_key`` names, or the next pending one."""
        plan = {i.key: i for i in self._plan(state)}
        if item_key is None:
            item_key = self._next(state)
            if item_key is None:
                raise RegistrationError(
                    "conflict", "every item is captured or an exception; complete the session"
                )
        item = plan.get(item_key)
        if item is None:
            # A well-formed key (bodies.ITEM_KEYS) of another plan: the session exists, its plan
            # has no such item (not 404: that would say the session is not there).
            raise RegistrationError(
                "conflict", f"no item {item_key!r} in this session's plan; items: {', '.join(plan)}"
            )
        return item

    def _next(self, state: SessionState) -> str | None:
        """The first pending item in plan order, or None when every item is done."""
        return next((i.key for i in self._plan(state) if state.items[i.key].status == "pending"), None)

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
