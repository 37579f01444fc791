"""Find UART fingerprint modules: probe serial ports with every serial driver.

Probing is read-only (each driver's ``probe()``), but it does send bytes: only the usual
places a scanner sits are tried by default (USB bridges, the Pi's UART), plus what the
caller adds. A port held by another program (the running agent) is reported busy, not
disturbed, because the drivers open ports exclusively.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from drivers.base import DeviceInfo
from drivers.errors import DeviceDisconnected, DeviceError, PermanentDeviceError
from drivers.registry import driver_class, driver_names

DEFAULT_PATTERNS = ("/dev/ttyUSB*", "/dev/ttyACM*", "/dev/ttyAMA*", "/dev/serial0")


@dataclass(frozen=True)
class ScanResult:
    port: str
    #: The driver whose module answered; None when none did.
    driver: str | None
    info: DeviceInfo | None
    #: Why nothing answered, per driver tried (or why the module that answered cannot be used).
    error: str = ""

    def as_dict(self) -> dict[str, Any]:
        info = self.info
        return {"port": self.port, "driver": self.driver, "found": info is not None,
                "model": info.model if info else "", "serial": info.serial if info else "",
                "firmware": info.firmware if info else "", "details": dict(info.extra) if info else {},
                "error": self.error}


def serial_drivers() -> list[str]:
    """Registered drivers that talk over a serial port."""
    return driver_names("serial")


def candidate_ports(extra: Iterable[str] = (), patterns: Iterable[str] = DEFAULT_PATTERNS) -> list[str]:
    """The ports to probe: what ``patterns`` match, then ``extra``, each device only once."""
    found: list[str] = []
    for pattern in patterns:
        found += sorted(glob.glob(pattern))
    found += list(extra)
    ports, seen = [], set()
    for port in found:
        # /dev/serial0 is a symlink to ttyAMA0 or ttyS0: probe the device, not each name.
        key = port if "://" in port else os.path.realpath(port)
        if key not in seen:
            seen.add(key)
            ports.append(port)
    return ports


def scan_port(port: str, drivers: Iterable[str], probe_timeout_s: float = 0.3) -> ScanResult:
    errors = []
    for name in drivers:
        cls = driver_class(name)
        config = cls.config_model.model_validate(
            {"driver": name, "port": port, "probe_timeout_s": probe_timeout_s})
        driver = cls("scan", config)
        try:
            info = driver.probe()
        except DeviceDisconnected as exc:
            return ScanResult(port, None, None, str(exc))  # the port itself is not there
        except PermanentDeviceError as exc:
            # A module that answered and refused us (password), or a port we may not open:
            # either way no other driver will do better.
            return ScanResult(port, name, None, str(exc))
        except DeviceError as exc:
            errors.append(f"{name}: {exc}")
            continue
        finally:
            driver.close()
        return ScanResult(port, name, info)
    return ScanResult(port, None, None, "; ".join(errors) or "no serial drivers")


def scan(ports: Iterable[str], drivers: Iterable[str] | None = None,
         probe_timeout_s: float = 0.3) -> list[ScanResult]:
    names = list(drivers) if drivers is not None else serial_drivers()
    return [scan_port(port, names, probe_timeout_s) for port in ports]
