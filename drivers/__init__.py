"""Device drivers and the registry that maps a config's ``driver`` key to its class."""

from __future__ import annotations

from drivers.base import (
    CapturedImage,
    CaptureRequest,
    DeviceInfo,
    Driver,
    DriverConfig,
    Health,
    Modality,
)
from drivers.errors import (
    CaptureRetry,
    DeviceDisconnected,
    DeviceError,
    DriverError,
    PermanentDeviceError,
    TransientDeviceError,
)
from drivers.registry import driver_class, driver_names

__all__ = [
    "CaptureRequest",
    "CaptureRetry",
    "CapturedImage",
    "DeviceDisconnected",
    "DeviceError",
    "DeviceInfo",
    "Driver",
    "DriverConfig",
    "DriverError",
    "Health",
    "Modality",
    "PermanentDeviceError",
    "TransientDeviceError",
    "driver_class",
    "driver_names",
]
