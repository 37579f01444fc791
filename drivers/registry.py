"""Maps the ``driver`` key of a ``[devices.NAME]`` table to its driver class.

Entries are import paths, not classes, so that one driver's hardware library (pyusb,
OpenCV) is imported only when a device actually uses that driver.
"""

from __future__ import annotations

import importlib

from drivers.base import Driver

_DRIVERS: dict[str, str] = {
    "sim-finger": "drivers.sim_finger:SimFingerDriver",
    "sim-camera": "drivers.sim_camera:SimCameraDriver",
    "opencv": "drivers.opencv_camera:OpenCvCameraDriver",
    "zfm": "drivers.zfm:ZfmDriver",
    "gt521f": "drivers.gt521f:Gt521fDriver",
    "uru4000": "drivers.uru4000:Uru4000Driver",
}


def driver_names() -> list[str]:
    return sorted(_DRIVERS)


def driver_class(name: str) -> type[Driver]:
    """Return the class registered as ``name``; KeyError names the known drivers."""
    try:
        target = _DRIVERS[name]
    except KeyError:
        raise KeyError(
            f"unknown driver {name!r}; known drivers: {', '.join(driver_names())}"
        ) from None
    module_name, _, class_name = target.partition(":")
    return getattr(importlib.import_module(module_name), class_name)
