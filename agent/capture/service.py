"""Captures: from a device's image to a durably queued record.

``CaptureService.capture`` runs on the device's worker thread: it asks the driver for an
image (retrying when the person can fix the problem: agent/capture/attempts.py), wraps it in
a capture record and commits it to the durable queue. Only when the commit returns does the
capture count as taken. ``ContinuousCapture`` drives captures by itself for demos and soak
tests; in production the registration application requests them.
"""

from __future__ import annotations

import datetime
import logging
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, replace
from itertools import cycle
from typing import Any

from agent.capture.attempts import attempt_capture
from agent.capture.config import CaptureConfig
from agent.capture.record import new_record
from agent.capture.workers import DeviceWorker
from agent.config import KioskConfig
from agent.guard import log_and_continue
from agent.security.sealing import Sealer
from agent.transport.durable_queue import DurableQueue, QueueError
from agent.transport.protocol import encode_capture
from drivers import CapturedImage, CaptureRequest, CaptureRetry, Driver, DriverError, Modality

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CaptureOutcome:
    id: str
    seq: int
    device: str
    position: int
    attempts: int
    size: int


class CaptureService:
    def __init__(self, kiosk: KioskConfig, config: CaptureConfig, queue: DurableQueue,
                 workers: dict[str, DeviceWorker], sealer: Sealer) -> None:
        self.kiosk = kiosk
        self.config = config
        self.queue = queue
        self.sealer = sealer
        self.workers = workers
        self._lock = threading.Lock()
        self.captured = 0
        self.refused = 0
        #: Captures committed since local midnight (telemetry).
        self.day = datetime.date.today()
        self.captured_today = 0

    def capture(self, device: str, position: int = 0) -> Future[CaptureOutcome]:
        worker = self.workers[device]
        return worker.submit(lambda driver: self._capture_on_device(device, driver, position))

    def _capture_on_device(self, device: str, driver: Driver, position: int) -> CaptureOutcome:
        max_attempts = self.config.max_attempts

        def retried(attempt: int, retry: CaptureRetry) -> None:
            log.info("device %s attempt %d/%d: %s (tell the person: %s)",
                     device, attempt, max_attempts, retry.reason, retry.hint)

        kept = attempt_capture(lambda: driver.capture(CaptureRequest(position=position)), max_attempts,
                               on_retry=retried)
        return self.commit(device, kept.image, kept.attempts)

    def commit(self, device: str, image: CapturedImage, attempt: int, *,
               operator_id: str | None = None, registration: dict[str, Any] | None = None,
               held: bool = False) -> CaptureOutcome:
        """Seal and durably queue one image from ``device``; any thread may call it. ``held``:
        kept out of the send order until released (a registration awaiting approval)."""
        kiosk = self.kiosk
        worker = self.workers[device]
        record = new_record(
            image, kiosk_id=kiosk.id, site=kiosk.site, operator_id=operator_id or kiosk.operator_id,
            device_id=device, driver=worker.driver.name,
            device_serial=worker.info.serial if worker.info else "", registration=registration,
        )

        def sealed(seq: int) -> bytes:
            # Signed and encrypted before it reaches the disk: the queue never holds plaintext.
            inner = encode_capture(replace(record, seq=seq))
            return self.sealer.seal(item_id=record.id, kiosk_id=kiosk.id, seq=seq, kind="capture",
                                    inner=inner)

        try:
            seq = self.queue.put(record.id, "capture", sealed, held=held)
        except QueueError:
            with self._lock:
                self.refused += 1
            raise
        with self._lock:
            self.captured += 1
            today = datetime.date.today()
            if today != self.day:
                self.day, self.captured_today = today, 0
            self.captured_today += 1
        log.debug("capture %s committed (seq %d, %d bytes)", record.id, seq, record.image_size)
        return CaptureOutcome(record.id, seq, device, image.position, attempt, record.image_size)


class ContinuousCapture:
    """Captures from every enabled device in turn at ``capture.rate_per_s`` (0: flat out)."""

    def __init__(self, service: CaptureService) -> None:
        self.service = service
        self.config = service.config
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="capture-continuous", daemon=True)
        self.errors = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop asking for captures; the capture in hand finishes and is committed."""
        self._stop.set()
        self._thread.join(timeout_s)

    @property
    def done(self) -> bool:
        return not self._thread.is_alive()

    def _run(self) -> None:
        devices = [n for n, w in self.service.workers.items() if w.driver.config.enabled]
        if not devices:
            log.warning("continuous capture: no enabled devices")
            return
        positions = {n: cycle(self.config.finger_positions or [0]) for n in devices}
        interval = 1.0 / self.config.rate_per_s if self.config.rate_per_s > 0 else 0.0
        limit = self.config.max_captures
        next_at = time.monotonic()
        # One capture at a time, waited for: failed captures do not count towards the limit.
        for device in cycle(devices):
            if self._stop.is_set() or (limit and self.service.captured >= limit):
                return
            if interval:
                delay = next_at - time.monotonic()
                if delay > 0 and self._stop.wait(delay):
                    return
                next_at = max(next_at + interval, time.monotonic() - interval)
            worker = self.service.workers[device]
            position = next(positions[device]) if worker.driver.modality is Modality.FINGER else 0
            self._wait(self.service.capture(device, position), device)

    def _wait(self, future: Future[CaptureOutcome], device: str) -> None:
        with log_and_continue(log, "continuous capture from %s failed unexpectedly", device):
            try:
                future.result()
                self.errors = 0
                return
            except (DriverError, QueueError) as exc:
                log.warning("continuous capture from %s failed: %s", device, exc)
        self.errors += 1
        # Do not spin on a device that is offline or a queue that is full.
        self._stop.wait(min(1.0, 0.05 * self.errors))
