"""What the simulated devices share: open state and a script of faults.

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
from typing import ClassVar

from drivers.base import DeviceInfo, Driver, DriverConfig, Health
from drivers.errors import DeviceDisconnected, TransientDeviceError


class SimDevice(Driver):
    """Base of the simulated drivers; subclasses produce the image in ``_image``."""

    model: ClassVar[str]

    def __init__(self, device_id: str, config: DriverConfig) -> None:
        super().__init__(device_id, config)
        self._lock = threading.Lock()  # inject() is called from other threads
        self._faults: deque[str] = deque(getattr(config, "faults", []))
        self._open = False
        self._unplugged = False

    def inject(self, *faults: str) -> None:
        """Append faults to the script (each is used by one capture attempt)."""
        allowed = self._allowed_faults()
        for fault in faults:
            if fault not in allowed:
                raise ValueError(f"unknown fault {fault!r}; one of {', '.join(sorted(allowed))}")
        with self._lock:
            self._faults.extend(faults)

    def _allowed_faults(self) -> set[str]:
        annotation = type(self.config).model_fields["faults"].annotation
        return set(annotation.__args__[0].__args__)  # list[Literal[...]]

    def _next_fault(self) -> str:
        with self._lock:
            return self._faults.popleft() if self._faults else "ok"

    @property
    def serial(self) -> str:
        seed = getattr(self.config, "seed", 0)
        return f"SIM-{zlib.crc32(f'{self.device_id}:{seed}'.encode()):08X}"

    def probe(self) -> DeviceInfo:
        return DeviceInfo(driver=self.name, model=self.model, serial=self.serial, firmware="sim-1")

    def open(self) -> DeviceInfo:
        self._open = True
        self._unplugged = False
        return self.probe()

    def close(self) -> None:
        self._open = False

    def health(self) -> Health:
        if self._unplugged:
            return Health(False, "disconnected")
        return Health(self._open, "" if self._open else "not open")

    def _begin_capture(self) -> str:
        """Check the device state and take the next scripted fault; returns the fault."""
        if self._unplugged:
            raise DeviceDisconnected(f"{self.device_id}: simulated device is unplugged")
        if not self._open:
            raise TransientDeviceError(f"{self.device_id}: device not open")
        delay = getattr(self.config, "capture_delay_s", 0.0)
        if delay:
            time.sleep(delay)
        fault = self._next_fault()
        if fault == "timeout":
            raise TransientDeviceError(f"{self.device_id}: simulated timeout waiting for the device")
        if fault == "disconnect":
            self._unplugged = True
            raise DeviceDisconnected(f"{self.device_id}: simulated device unplugged")
        return fault
