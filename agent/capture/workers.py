"""One named worker thread per device.

Drivers block (serial reads, USB transfers, camera frames); each device gets its own thread
so a slow or hung device never holds up another, and a driver is never called from two
threads at once. Work reaches a device as a job (a function of the driver) and comes back
as a Future. A device that fails is closed and marked offline; it is reopened, with
backoff, by the next job or by the idle retry, so the agent keeps running without it.
"""

from __future__ import annotations

import functools
import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from agent.guard import log_and_continue
from agent.transport.backoff import Backoff
from drivers import DeviceDisconnected, DeviceInfo, Driver, PermanentDeviceError, TransientDeviceError

log = logging.getLogger(__name__)

T = TypeVar("T")
DeviceState = Literal["starting", "online", "offline", "failed", "stopped"]


@dataclass(frozen=True)
class DeviceStatus:
    name: str
    driver: str
    modality: str
    state: DeviceState
    model: str
    serial: str
    error: str

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class DeviceWorker:
    def __init__(self, name: str, driver: Driver, *, reopen_min_s: float = 1.0,
                 reopen_max_s: float = 30.0) -> None:
        self.name = name
        self.driver = driver
        self.state: DeviceState = "starting"
        self.info: DeviceInfo | None = None
        self.error = ""
        # A None future marks hot-plug news (device_present) rather than a job for the driver.
        self._jobs: queue.Queue[tuple[Callable[[Driver], Any], Future[Any] | None] | None] = queue.Queue()
        self._backoff = Backoff(reopen_min_s, reopen_max_s)
        self._next_reopen = 0.0
        self._first_open_done = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"device-{name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Finish the job in hand, fail the queued ones, close the device."""
        self._jobs.put(None)
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            log.error("device %s did not stop within %.0f s (driver stuck?)", self.name, timeout_s)

    def submit(self, job: Callable[[Driver], T]) -> Future[T]:
        future: Future[T] = Future()
        self._jobs.put((job, future))
        return future

    def device_present(self, present: bool, detail: str = "") -> None:
        """Hot-plug news (agent/capture/hotplug.py), acted on in the device thread, which owns the driver.

        Gone: offline at once (not failed: it may come back). Back: reopened at once rather than
        at the next backoff step, even from failed, since replugging is how people fix a scanner.
        """
        self._jobs.put((functools.partial(self._presence_changed, present, detail), None))

    def status(self) -> DeviceStatus:
        info = self.info
        return DeviceStatus(self.name, self.driver.name, self.driver.modality.value, self.state,
                            info.model if info else "", info.serial if info else "", self.error)

    # --- the thread ---------------------------------------------------------------------

    def wait_first_open(self, timeout_s: float) -> bool:
        """Wait until the first attempt to open the device has ended (either way)."""
        return self._first_open_done.wait(timeout_s)

    def _run(self) -> None:
        self._ensure_open()
        self._first_open_done.set()
        while True:
            try:
                entry = self._jobs.get(timeout=self._idle_wait())
            except queue.Empty:
                self._ensure_open()  # idle retry, so status shows the device back when it is
                continue
            if entry is None:
                break
            job, future = entry
            if future is None:
                job(self.driver)
                continue
            if not future.set_running_or_notify_cancel():
                continue
            self._run_job(job, future)
        self._fail_queued()
        self._close()
        self.state = "stopped"

    def _idle_wait(self) -> float | None:
        if self.state == "offline":
            return max(0.05, self._next_reopen - time.monotonic())
        return None

    def _presence_changed(self, present: bool, detail: str, driver: Driver) -> None:
        if not present:
            self._went_offline(DeviceDisconnected(detail or "unplugged"))
            return
        if self.state == "online":
            return
        if self.state == "failed":
            self.state = "offline"
        self._backoff.reset()
        self._ensure_open(force=True)

    def _run_job(self, job: Callable[[Driver], Any], future: Future[Any]) -> None:
        if not self._ensure_open(force=True):
            # A failed device stays failed until its config or hardware changes: say so, so
            # callers do not tell the person to wait for it.
            kind = PermanentDeviceError if self.state == "failed" else TransientDeviceError
            future.set_exception(kind(f"device {self.name} is {self.state}: {self.error}"))
            return
        try:
            result = job(self.driver)
        except TransientDeviceError as exc:
            self._went_offline(exc)
            future.set_exception(exc)
        except PermanentDeviceError as exc:
            self._failed(exc)
            future.set_exception(exc)
        except BaseException as exc:  # a job's own error (queue full, bug): hand it back
            future.set_exception(exc)
        else:
            future.set_result(result)

    def _ensure_open(self, force: bool = False) -> bool:
        if self.state == "online":
            return True
        if self.state == "failed":
            return False
        if not force and time.monotonic() < self._next_reopen:
            return False
        try:
            self.info = self.driver.open()
        except TransientDeviceError as exc:
            self._went_offline(exc)
            return False
        except PermanentDeviceError as exc:
            self._failed(exc)
            return False
        except Exception as exc:  # a driver bug must not kill the device thread
            log.exception("device %s: unexpected error while opening", self.name)
            self._went_offline(exc)
            return False
        self.state = "online"
        self.error = ""
        self._backoff.reset()
        log.info("device %s online: %s serial %s", self.name, self.info.model, self.info.serial)
        return True

    def _went_offline(self, exc: Exception) -> None:
        if self.state != "offline":
            log.warning("device %s offline: %s; will reopen it", self.name, exc)
        self.state = "offline"
        self.error = str(exc)
        self._close()
        self._next_reopen = time.monotonic() + self._backoff.next_delay()

    def _failed(self, exc: Exception) -> None:
        log.error("device %s failed and will not be retried until its config is fixed: %s",
                  self.name, exc)
        self.state = "failed"
        self.error = str(exc)
        self._close()

    def _close(self) -> None:
        with log_and_continue(log, "closing device %s failed", self.name):
            self.driver.close()

    def _fail_queued(self) -> None:
        while True:
            try:
                entry = self._jobs.get_nowait()
            except queue.Empty:
                return
            if entry is not None and entry[1] is not None and entry[1].set_running_or_notify_cancel():
                entry[1].set_exception(TransientDeviceError(f"device {self.name} is stopping"))
