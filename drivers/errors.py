"""The driver error tree.

Three kinds of failure need three different reactions from the capture session:

* ``CaptureRetry``: the person in front of the kiosk can fix it (no finger, press harder,
  look at the camera). The operator is shown ``hint``; nothing is wrong with the device.
* ``TransientDeviceError``: the device misbehaved in a way that may pass (timeout,
  checksum error, unplugged). The agent retries with backoff and marks the device offline
  while it lasts.
* ``PermanentDeviceError``: retrying will not help until someone changes the config or the
  hardware (wrong password, unsupported model). The message names the setting to fix.
"""

from __future__ import annotations


class DriverError(Exception):
    """Base of every error a driver raises."""


class CaptureRetry(DriverError):
    """A capture the person can retry; ``hint`` is what the operator says to them."""

    def __init__(self, reason: str, hint: str) -> None:
        super().__init__(f"{reason}: {hint}")
        self.reason = reason
        self.hint = hint


class DeviceError(DriverError):
    """A fault of the device itself, not of the person using it."""


class TransientDeviceError(DeviceError):
    """May pass by itself: retry with backoff."""


class DeviceDisconnected(TransientDeviceError):
    """The device vanished (unplugged, port gone); reopen when it returns."""


class PermanentDeviceError(DeviceError):
    """Will not pass by retrying: the config or the hardware must change."""


class ImplausibleResolution(PermanentDeviceError):
    """A finger image that declares no resolution, or one no fingerprint scanner has: a
    record with it would mislead every matcher (drivers/base.py ``FINGER_PPI``)."""
