"""Hot-plug: notice scanners and serial ports appearing and disappearing.

Polling, not a udev monitor: every ``period_s`` the monitor lists the recognised USB scanners
(drivers/usb_scan.py, by the ids in drivers/registry.py's table, which imports no driver) and
checks that each configured serial port path exists. pyudev is not a dependency, and a listing
every two seconds costs a few descriptor reads; the price is that a change is seen up to one
period late.

What changes:

* a configured device whose scanner or port disappears is marked offline at once (not failed:
  the agent keeps running), and one that reappears is reopened at once instead of at its next
  backoff step (``DeviceWorker.device_present``);
* every change is handed to ``on_event`` as a dict (see ``event``), also for recognised USB
  scanners no device is configured for, and logged at INFO.

The first listing is the baseline: what is there at start is not news. Both listings are
injectable (``usb_scan``, ``path_exists``) so the tests drive the monitor with an emulated USB
bus and ptys. Devices on a network URL (``socket://``) and simulated devices are not watched. A
driver whose library follows its devices itself (drivers/libfprint.py) answers ``present()``:
True, False, or None while it watches nothing; the monitor acts on its changes the same way.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Mapping
from typing import Any

from agent.capture.workers import DeviceWorker
from agent.guard import log_and_continue
from drivers.usb_scan import UsbEnumerator, UsbScanner, UsbUnavailable

log = logging.getLogger(__name__)

DEFAULT_PERIOD_S = 2.0

Event = dict[str, Any]


def event(bus: str, change: str, devices: list[str], **details: Any) -> Event:
    """``{"event": "device_added" | "device_removed", "bus": "usb" | "serial", "devices":
    [configured names it belongs to, possibly none], ...details}``; USB details: driver, model,
    usb_id, usb_port, serial; serial details: port. No time stamp: the daemon's event bus
    stamps what it publishes."""
    return {"event": f"device_{change}", "bus": bus, "devices": devices, **details}


def _serial_path(config: Any) -> str | None:
    port = getattr(config, "port", None)
    # A URL (socket://, rfc2217://) has no local path that could appear or vanish.
    return port if isinstance(port, str) and port.startswith("/") else None


class HotplugMonitor:
    def __init__(self, workers: Mapping[str, DeviceWorker], *, period_s: float | None = None,
                 on_event: Callable[[Event], None] | None = None,
                 usb_scan: Callable[[], list[UsbScanner]] | None = None,
                 path_exists: Callable[[str], bool] = os.path.exists) -> None:
        self.workers = workers
        self.period_s = period_s if period_s is not None else DEFAULT_PERIOD_S
        self.on_event = on_event
        self._usb_scan = usb_scan if usb_scan is not None else UsbEnumerator().scan
        self._path_exists = path_exists
        self._usb: dict[tuple[int, int, int, int], UsbScanner] | None = None
        self._ports: dict[str, bool] = {}
        self._present: dict[str, bool] = {}
        self._usb_problem = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def watched(self) -> bool:
        """Whether any configured device is a USB scanner, sits on a serial port path, or is
        followed by its own library (a driver with ``present()``)."""
        return any(w.driver.usb_ids or _serial_path(w.driver.config)
                   or callable(getattr(w.driver, "present", None)) for w in self.workers.values())

    def start(self) -> None:
        self.poll()  # the baseline, before the agent reports itself ready
        self._thread = threading.Thread(target=self._loop, name="hotplug", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.period_s + 5)

    def _loop(self) -> None:
        while not self._stop.wait(self.period_s):
            # One bad listing must not end hot-plug for the agent's lifetime.
            with log_and_continue(log, "hot-plug: listing devices failed"):
                self.poll()

    # --- one round ----------------------------------------------------------------------

    def poll(self) -> list[Event]:
        """List everything once; act on and report what changed since the last time."""
        events = self._poll_usb() + self._poll_serial()
        for name, worker in self.workers.items():
            present = self._is_present(worker)
            if present is None:
                continue
            before = self._present.get(name)
            self._present[name] = present
            if before is not None and before != present:
                log.info("hot-plug: device %s %s", name, "is back" if present else "was unplugged")
                worker.device_present(present, "" if present else "unplugged (hot-plug)")
        for item in events:
            log.info("hot-plug event: %s", item)
            if self.on_event is not None:
                # The publisher's problem must not stop hot-plug.
                with log_and_continue(log, "hot-plug: the event callback failed"):
                    self.on_event(item)
        return events

    def _poll_usb(self) -> list[Event]:
        if not any(w.driver.usb_ids for w in self.workers.values()) and self.on_event is None:
            return []
        try:
            found = {s.identity: s for s in self._usb_scan()}
        except UsbUnavailable as exc:
            if str(exc) != self._usb_problem:
                # Only worth a warning when a configured device is a USB scanner.
                wanted = any(w.driver.usb_ids for w in self.workers.values())
                level = logging.WARNING if wanted else logging.INFO
                log.log(level, "hot-plug: USB scanners are not watched: %s", exc)
                self._usb_problem = str(exc)
            return []
        self._usb_problem = ""
        before, self._usb = self._usb, found
        if before is None:
            return []
        added = [found[k] for k in found.keys() - before.keys()]
        removed = [before[k] for k in before.keys() - found.keys()]
        return ([self._usb_event("added", s) for s in added]
                + [self._usb_event("removed", s) for s in removed])

    def _usb_event(self, change: str, scanner: UsbScanner) -> Event:
        devices = [name for name, w in self.workers.items() if self._usb_match(w, scanner)]
        return event("usb", change, devices, driver=scanner.driver, model=scanner.model,
                     usb_id=scanner.usb_id, usb_port=scanner.usb_port, serial=scanner.serial)

    @staticmethod
    def _usb_match(worker: DeviceWorker, scanner: UsbScanner) -> bool:
        driver = worker.driver
        matches = getattr(driver, "usb_matches", None)
        if matches is not None:
            return bool(matches(scanner))
        return (scanner.vendor_id, scanner.product_id) in driver.usb_ids

    def _poll_serial(self) -> list[Event]:
        events = []
        paths = {p for w in self.workers.values() if (p := _serial_path(w.driver.config))}
        for path in sorted(paths):
            exists = self._path_exists(path)
            before = self._ports.get(path)
            self._ports[path] = exists
            if before is not None and before != exists:
                devices = [n for n, w in self.workers.items() if _serial_path(w.driver.config) == path]
                events.append(event("serial", "added" if exists else "removed", devices, port=path))
        return events

    def _is_present(self, worker: DeviceWorker) -> bool | None:
        """Present, absent, or None when not watched (or USB cannot be listed)."""
        # A driver whose library follows its own devices (libfprint) says so itself.
        own = getattr(worker.driver, "present", None)
        if callable(own):
            return own()
        path = _serial_path(worker.driver.config)
        if path is not None:
            return self._ports.get(path)
        if worker.driver.usb_ids and self._usb is not None and not self._usb_problem:
            return any(self._usb_match(worker, s) for s in self._usb.values())
        return None
