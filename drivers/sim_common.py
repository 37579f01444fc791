"""What the simulated devices share: config, open state and a script of faults.

Tests and demos script faults ("no-finger", "timeout", "disconnect", ...) one per capture
attempt, from the config or at run time with ``inject``; an empty script means "ok".
A "disconnect" leaves the device unplugged until it is closed and opened again, as a real
device that vanished and came back would be.
"""

from __future__ import annotations

import threading
import time
import zlib
from collections import deque
from collections.abc import Iterable
from typing import ClassVar

import cv2
import numpy as np
from pydantic import Field

from drivers.base import DeviceInfo, Driver, DriverConfig, Health
from drivers.errors import DeviceDisconnected, PermanentDeviceError, TransientDeviceError


class SimConfig(DriverConfig):
    """Settings both simulators take; each adds its image size and its own fault names."""

    #: Different seeds simulate different people (and give the device another serial).
    seed: int = Field(0, ge=0)
    #: Simulated seconds for the person to get into place, per capture attempt.
    capture_delay_s: float = Field(0.0, ge=0)


class SimDevice(Driver):
    """Base of the simulated drivers: open/unplugged state and the fault script.

    A subclass's ``capture`` calls ``_begin_capture`` first, then handles the faults that
    are its own (no finger, no face) and otherwise produces an image.
    """

    vendor = "kiosk-agent simulator"
    config: SimConfig
    model: ClassVar[str]
    #: The fault names this device understands, "ok" included.
    fault_names: ClassVar[frozenset[str]]

    def __init__(self, device_id: str, config: SimConfig, faults: Iterable[str]) -> None:
        super().__init__(device_id, config)
        self._lock = threading.Lock()  # inject() is called from threads other than the worker
        self._faults: deque[str] = deque()
        self.inject(*faults)
        self._open = False
        self._unplugged = False

    def inject(self, *faults: str) -> None:
        """Append faults to the script; each one is used up by one capture attempt."""
        unknown = [fault for fault in faults if fault not in self.fault_names]
        if unknown:
            raise ValueError(f"unknown fault(s) {', '.join(map(repr, unknown))}; "
                             f"{self.name} knows {', '.join(sorted(self.fault_names))}")
        with self._lock:
            self._faults.extend(faults)

    def pending_faults(self) -> list[str]:
        """The faults not used yet, next first."""
        with self._lock:
            return list(self._faults)

    def _next_fault(self) -> str:
        with self._lock:
            return self._faults.popleft() if self._faults else "ok"

    @property
    def serial(self) -> str:
        key = f"{self.device_id}:{self.config.seed}".encode()
        return f"SIM-{zlib.crc32(key):08X}"

    def probe(self) -> DeviceInfo:
        return DeviceInfo(driver=self.name, model=self.model, serial=self.serial, firmware="sim-1",
                          extra={"simulated": True})

    def open(self) -> DeviceInfo:
        info = self.probe()
        self._open = True
        self._unplugged = False  # plugged back in
        return info

    def close(self) -> None:
        self._open = False

    def health(self) -> Health:
        if self._unplugged:
            return Health(False, "disconnected")
        if not self._open:
            return Health(False, "not open")
        return Health(True)

    def _begin_capture(self) -> str:
        """Check the device state, wait for the person, take the next fault from the script.

        Raises the device-level faults itself and returns the others ("ok" included).
        """
        if self._unplugged:
            raise DeviceDisconnected(f"{self.device_id}: simulated device is unplugged")
        if not self._open:
            raise TransientDeviceError(f"{self.device_id}: device not open")
        if self.config.capture_delay_s:
            time.sleep(self.config.capture_delay_s)
        fault = self._next_fault()
        if fault == "timeout":
            raise TransientDeviceError(f"{self.device_id}: simulated timeout waiting for the device")
        if fault == "disconnect":
            self._unplugged = True
            raise DeviceDisconnected(f"{self.device_id}: simulated device unplugged")
        if fault == "broken":
            raise PermanentDeviceError(f"{self.device_id}: simulated hardware fault; replace the device")
        return fault


def encode(image: np.ndarray, extension: str, params: list[int] | None = None) -> bytes:
    """``image`` encoded by OpenCV as ``extension`` (".png", ".jpg")."""
    ok, data = cv2.imencode(extension, image, params or [])
    if not ok:  # OpenCV reports this by return value; only a build without the codec fails
        raise PermanentDeviceError(f"this OpenCV build cannot encode {extension} images")
    return data.tobytes()
