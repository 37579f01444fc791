"""Taking one registration item: the device to itself, attempts judged, faults of the right kind.

The attempts are the shared loop (agent/capture/attempts.py) with the registration judge
(agent/registration/judging.py) plugged in: it stops at the first image that passes and
otherwise keeps the best. Each attempt is one job on the device's worker thread, so the
request thread can follow it with events and give up on a device that hangs.

One action per device at a time: a second request gets RegistrationError("busy") at once
rather than queueing behind a person who is still at the scanner.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Mapping
from concurrent.futures import TimeoutError as FutureTimeout

from agent.capture.attempts import Kept, Verdict, attempt_capture
from agent.capture.workers import DeviceWorker
from agent.quality.analytics import QualityAnalytics
from agent.registration.errors import RegistrationError, device_fault, device_silent
from agent.registration.feed import SessionFeed
from agent.registration.judging import Judge, Judgement
from agent.registration.plan import PlanItem
from drivers import CapturedImage, CaptureRequest, CaptureRetry, DriverError

#: Seconds added to a device's own capture timeout before the session gives up on it.
DEVICE_GRACE_S = 30.0


class ItemTaker:
    def __init__(
        self, workers: Mapping[str, DeviceWorker], max_attempts: int, judge: Judge, feed: SessionFeed
    ) -> None:
        self.workers = workers
        self.max_attempts = max_attempts
        self.judge = judge
        self.feed = feed
        #: Daily quality aggregates (agent/quality/analytics.py), set by the service; None: off.
        self.analytics: QualityAnalytics | None = None
        self._device_locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()

    @contextlib.contextmanager
    def device(self, device: str) -> Iterator[None]:
        """Hold ``device`` for one action, or fail with "busy" at once."""
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

    def take(
        self, session_id: str, item: PlanItem, expected_fingers: int, exceptions: tuple[int, ...] = (),
        operator: str | None = None,
    ) -> Kept[Judgement]:
        """The kept attempt of ``item``; the caller holds its device (``device``).

        ``exceptions``: the item's fingers recorded as exceptions, told to devices that take a
        whole slap in one request so they do not wait for a finger that is not there.
        ``operator``: who takes it, for the quality analytics (as a pseudonym there).
        """
        worker = self.workers[item.device]
        timeout = worker.driver.config.capture_timeout_s + DEVICE_GRACE_S
        request = CaptureRequest(position=item.position, exceptions=exceptions, session=session_id)

        def take_one() -> CapturedImage:
            return worker.submit(lambda driver: driver.capture(request)).result(timeout=timeout)

        def judge(image: CapturedImage) -> Verdict[Judgement]:
            return self.judge.judge(item, image, expected_fingers)

        try:
            return attempt_capture(
                take_one,
                self.max_attempts,
                judge,
                on_attempt=lambda n: self.feed.event(session_id, "attempt", item=item.key, attempt=n),
                on_retry=lambda n, retry: self.feed.event(
                    session_id, "retry", item=item.key, attempt=n, reason=retry.reason, hint=retry.hint
                ),
                on_judged=lambda n, image, verdict: self._judged(
                    session_id, item, n, image, verdict, operator
                ),
            )
        except CaptureRetry as retry:
            raise RegistrationError(
                "retry",
                f"{item.key}: no usable image in {self.max_attempts} attempts",
                hint=retry.hint or "try again",
                item=item.key,
            ) from None
        except FutureTimeout:
            raise device_silent(item.device, timeout, item=item.key) from None
        except DriverError as exc:
            self.feed.event(session_id, "device_error", item=item.key, error=str(exc))
            raise device_fault(item.device, exc, worker.state == "failed", item=item.key) from None

    def _judged(
        self, session_id: str, item: PlanItem, attempt: int, image: CapturedImage,
        verdict: Verdict[Judgement], operator: str | None = None,
    ) -> None:
        self.feed.keep_preview(session_id, item.key, image)
        if self.analytics is not None and operator is not None:  # every attempt, where it is judged
            self.analytics.record_attempt(operator, item.modality.value, verdict.detail.report)
        self.feed.event(
            session_id,
            "judged",
            item=item.key,
            attempt=attempt,
            score=verdict.score,
            passed=verdict.passed,
            hints=verdict.detail.report.hints(),
        )
