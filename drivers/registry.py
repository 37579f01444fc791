"""Every driver's static metadata: its class's import path, its bus, the USB ids it recognises.

Plain data, so that listing USB scanners, hot-plug and choosing the drivers to probe serial
ports with read it without importing any driver: one driver's hardware library (pyusb,
OpenCV) is imported only when a device actually uses that driver. tests/drivers/test_registry.py
checks that each entry agrees with its class.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

from drivers.base import Driver

#: How a driver reaches its device: ``serial`` drivers probe serial ports (``devices scan``),
#: ``usb`` drivers are found by vendor and product id; ``local-service`` drivers talk to a vendor's
#: device service on the kiosk (MOSIP SBI on 127.0.0.1); ``libfprint`` drivers reach scanners
#: through libfprint, which finds them (USB ids included) itself.
Bus = Literal["serial", "usb", "camera", "simulated", "local-service", "libfprint"]


@dataclass(frozen=True)
class DriverEntry:
    #: "module:Class", imported on first use.
    target: str
    bus: Bus
    #: (vendor id, product id) -> model name, of every USB device the driver recognises.
    #: systemd/60-kiosk-agent.rules must grant access to each (tests/drivers/test_uru4000.py).
    usb_models: Mapping[tuple[int, int], str] = field(default_factory=dict)


DRIVERS: Mapping[str, DriverEntry] = MappingProxyType({
    "sim-finger": DriverEntry("drivers.sim_finger:SimFingerDriver", "simulated"),
    "sim-camera": DriverEntry("drivers.sim_camera:SimCameraDriver", "simulated"),
    "opencv": DriverEntry("drivers.opencv_camera:OpenCvCameraDriver", "camera"),
    "zfm": DriverEntry("drivers.zfm:ZfmDriver", "serial"),
    "gt521f": DriverEntry("drivers.gt521f:Gt521fDriver", "serial"),
    "sbi": DriverEntry("drivers.sbi:SbiDriver", "local-service"),
    "sbi-face": DriverEntry("drivers.sbi:SbiFaceDriver", "local-service"),
    "sbi-iris": DriverEntry("drivers.sbi_iris:SbiIrisDriver", "local-service"),
    "libfprint": DriverEntry("drivers.libfprint:LibfprintDriver", "libfprint"),
    "uru4000": DriverEntry("drivers.uru4000:Uru4000Driver", "usb", {
        (0x05BA, 0x000A): "U.are.U 4000B/4500",
        (0x05BA, 0x0007): "U.are.U 4000",
        (0x05BA, 0x0008): "U.are.U 4000 (keyboard)",
    }),
})


def driver_names(bus: Bus | None = None) -> list[str]:
    """The registered drivers (those on ``bus`` only, when given), sorted."""
    return sorted(name for name, entry in DRIVERS.items() if bus is None or entry.bus == bus)


def driver_entry(name: str) -> DriverEntry:
    """The entry registered as ``name``; KeyError names the known drivers."""
    try:
        return DRIVERS[name]
    except KeyError:
        raise KeyError(
            f"unknown driver {name!r}; known drivers: {', '.join(driver_names())}"
        ) from None


def driver_class(name: str) -> type[Driver]:
    """Import and return the class registered as ``name``; KeyError names the known drivers."""
    module_name, _, class_name = driver_entry(name).target.partition(":")
    cls: type[Driver] = getattr(importlib.import_module(module_name), class_name)
    return cls


def known_usb_ids() -> dict[tuple[int, int], tuple[str, str]]:
    """(vendor id, product id) -> (driver name, model) of every recognised USB device."""
    return {usb_id: (name, model)
            for name, entry in DRIVERS.items() for usb_id, model in entry.usb_models.items()}
