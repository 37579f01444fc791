"""libfprint's side of the ``libfprint`` driver: one GLib main loop in a thread of its own,
the FPrint.Context it enumerates scanners with, and the devices' async calls made on it.

Why one loop for the process rather than one per device: libfprint attaches its timeouts to
GLib's global default main context (not the thread-default one), so exactly one thread may
run that context, and only its loop may touch libfprint's objects. Every call from the agent's
device threads is marshalled onto it (GLib.idle_add, which is thread safe) and waited for
with a Future; nothing of libfprint's is touched anywhere else.

The loop lives while some driver uses it (``acquire`` / ``release``, counted): the last
release drops the FPrint.Context and ends the thread, so a closed device holds nothing and
the next open enumerates afresh (which is also how a removed device is found again:
libfprint's virtual devices are listed once per context). While the loop runs, the
context's ``device-added`` / ``device-removed`` signals keep ``listed()`` current for
hot-plug.

PyGObject is imported here, in ``acquire``, never at module import, so kiosks without
libfprint never load it; its absence is a PermanentDeviceError naming the packages.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any, TypeVar

from drivers.errors import PermanentDeviceError, TransientDeviceError

log = logging.getLogger(__name__)

T = TypeVar("T")

MISSING = ("libfprint is not usable from this Python ({why}): install Debian's gir1.2-fprint-2.0 "
           "(libfprint itself) and PyGObject below 3.51: python3-gi for Debian's python3, or in a "
           "virtual environment `pip install 'kiosk-agent[libfprint]'` with libgirepository1.0-dev, "
           "libcairo2-dev and pkg-config installed (docs/drivers.md)")
#: Seconds the loop thread gets to start, enumerate, or wind down before that is a fault.
LOOP_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Listed:
    """One scanner in libfprint's list, as plain data any thread may read."""

    key: int
    driver: str  # libfprint's driver id: "elan", "uru4000", "virtual_image"...
    device_id: str
    name: str
    #: Whether libfprint hands out images (FP_DEVICE_FEATURE_CAPTURE); match-on-chip sensors do not.
    capture: bool
    scan_type: str  # "press" or "swipe"


def import_fprint() -> tuple[Any, Any, Any]:
    """(FPrint, GLib, Gio); PermanentDeviceError naming the packages when they are missing."""
    try:
        import gi

        gi.require_version("FPrint", "2.0")
        from gi.repository import FPrint, Gio, GLib
    except (ImportError, ValueError) as exc:  # ValueError: the typelib is not installed
        raise PermanentDeviceError(MISSING.format(why=exc)) from None
    return FPrint, GLib, Gio


class FprintLoop:
    """The loop thread and its context; get one with ``acquire`` and give it back with ``release``."""

    _lock = threading.Lock()
    _current: FprintLoop | None = None
    _users = 0

    def __init__(self) -> None:
        self.FPrint, self.GLib, self.Gio = import_fprint()
        self._loop: Any = None
        self._context: Any = None
        self._devices: dict[int, Any] = {}  # key -> FpDevice; loop thread only
        self._listed: dict[int, Listed] = {}
        self._listed_lock = threading.Lock()
        #: key -> set while libfprint waits for a finger on that scanner (its finger-status).
        self._wanting: dict[int, threading.Event] = {}
        self._next_key = 1
        self._thread = threading.Thread(target=self._run, name="libfprint", daemon=True)

    # --- sharing ---------------------------------------------------------------------------

    @classmethod
    def acquire(cls) -> FprintLoop:
        with cls._lock:
            if cls._current is None:
                loop = cls()
                try:
                    loop._start()
                except BaseException:
                    loop._stop()  # leaves no thread behind
                    raise
                cls._current = loop
            cls._users += 1
            return cls._current

    @classmethod
    def release(cls, loop: FprintLoop) -> None:
        # Stopped under the lock, so that a new loop never starts while this one winds down.
        with cls._lock:
            if cls._current is not loop:
                return
            cls._users -= 1
            if cls._users > 0:
                return
            cls._current = None
            loop._stop()

    @classmethod
    def running(cls) -> FprintLoop | None:
        return cls._current

    # --- the thread ------------------------------------------------------------------------

    def _start(self) -> None:
        started = threading.Event()
        self._loop = self.GLib.MainLoop.new(None, False)  # the global default context: see above

        def ready() -> bool:
            started.set()
            return False  # once

        self.GLib.idle_add(ready)
        self._thread.start()
        if not started.wait(LOOP_TIMEOUT_S):
            raise TransientDeviceError("libfprint's GLib main loop did not start; is another "
                                       "part of this process running GLib's default main context?")
        self.call(self._enumerate, LOOP_TIMEOUT_S)

    def _run(self) -> None:
        self._loop.run()

    def _stop(self) -> None:
        def wind_down() -> bool:
            # libfprint objects are dropped here, in the loop thread, so their finalisers run here.
            self._devices.clear()
            self._context = None
            with self._listed_lock:
                self._listed.clear()
            self._loop.quit()
            return False  # once

        if not self._thread.is_alive():
            return
        self.GLib.idle_add(wind_down)
        self._thread.join(LOOP_TIMEOUT_S)
        if self._thread.is_alive():
            log.error("libfprint's loop thread did not end within %.0f s", LOOP_TIMEOUT_S)

    def call(self, fn: Callable[[], T], timeout_s: float) -> T:
        """Run ``fn`` in the loop thread and return what it returns (or raise what it raises)."""
        if threading.current_thread() is self._thread:
            return fn()
        future: Future[T] = Future()

        def run() -> bool:
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn())
                except BaseException as exc:
                    future.set_exception(exc)
            return False  # once

        self.GLib.idle_add(run)
        try:
            return future.result(timeout_s)
        except FutureTimeout:
            future.cancel()
            raise TransientDeviceError(f"libfprint did not answer within {timeout_s:.0f} s") from None

    def run_async(self, begin: Callable[[Any, Callable[[Any, Any], None]], None],
                  finish: Callable[[Any], T], timeout_s: float, grace_s: float) -> tuple[T | None, bool]:
        """Start an async libfprint call and wait for it: ``begin(cancellable, callback)`` runs in
        the loop thread, ``finish(result)`` in the callback. After ``timeout_s`` it is cancelled and
        given ``grace_s`` more to end. Returns (value, timed_out); libfprint's GLib.Error propagates
        (for a timed-out call: whatever the cancelled call ended with is dropped)."""
        future: Future[T] = Future()
        cancellable = self.Gio.Cancellable.new()

        def done(_source: Any, result: Any) -> None:
            try:
                future.set_result(finish(result))
            except BaseException as exc:
                future.set_exception(exc)

        self.call(lambda: begin(cancellable, done), LOOP_TIMEOUT_S)
        try:
            return future.result(timeout_s), False
        except FutureTimeout:
            pass
        # Cancelled in the loop thread: cancellation handlers run in the thread that cancels.
        self.call(cancellable.cancel, LOOP_TIMEOUT_S)
        try:
            future.result(grace_s)
        except FutureTimeout:
            raise TransientDeviceError(f"libfprint did not end a call {grace_s:.0f} s after it was "
                                       "cancelled") from None
        except Exception as exc:  # the cancellation itself, most likely
            log.debug("cancelled libfprint call ended with %s", exc)
        return None, True

    # --- the device list -------------------------------------------------------------------

    def _enumerate(self) -> None:
        context = self.FPrint.Context.new()
        context.connect("device-added", lambda _ctx, dev: self._added(dev))
        context.connect("device-removed", lambda _ctx, dev: self._removed(dev))
        self._context = context
        context.enumerate()  # emits device-added for what is there
        for dev in context.get_devices():
            if dev not in self._devices.values():
                self._added(dev)

    def _added(self, dev: Any) -> None:
        if dev in self._devices.values():
            return
        key, self._next_key = self._next_key, self._next_key + 1
        self._devices[key] = dev
        scan = dev.get_scan_type()
        entry = Listed(key, dev.get_driver(), dev.get_device_id(), dev.get_name(),
                       bool(dev.has_feature(self.FPrint.DeviceFeature.CAPTURE)),
                       "swipe" if scan == self.FPrint.ScanType.SWIPE else "press")
        with self._listed_lock:
            self._listed[key] = entry
        # libfprint says "removed" at once but drops an open device from its list only once it
        # is closed: hot-plug must hear of it at once.
        dev.connect("notify::removed", lambda d, _spec: self._unlist(key) if d.props.removed else None)
        wanting = self._wanting[key] = threading.Event()
        needed = self.FPrint.FingerStatusFlags.NEEDED
        dev.connect("notify::finger-status",
                    lambda d, _spec: wanting.set() if d.props.finger_status & needed else wanting.clear())
        log.info("libfprint: %s (driver %s, id %s) added", entry.name, entry.driver, entry.device_id)

    def _unlist(self, key: int) -> None:
        with self._listed_lock:
            entry = self._listed.pop(key, None)
        if entry is not None:
            log.info("libfprint: %s (driver %s, id %s) removed", entry.name, entry.driver, entry.device_id)

    def _removed(self, dev: Any) -> None:
        for key, known in list(self._devices.items()):
            if known is dev:
                del self._devices[key]
                self._unlist(key)

    def listed(self) -> list[Listed]:
        """The scanners libfprint lists now; any thread."""
        with self._listed_lock:
            return sorted(self._listed.values(), key=lambda e: e.key)

    def wanting(self, key: int) -> threading.Event:
        """Set while libfprint waits for a finger on the scanner ``key``; any thread."""
        return self._wanting.get(key) or threading.Event()

    def device(self, key: int, *, removed_too: bool = False) -> Any:
        """The FpDevice of ``key`` (loop thread only); None once it is gone (once it was removed,
        unless ``removed_too``: a removed device that is open must still be closed)."""
        dev = self._devices.get(key)
        if dev is not None and dev.props.removed and not removed_too:
            return None
        return dev
