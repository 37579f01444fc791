"""What goes wrong in a registration, as the registration app must hear it.

Each ``RegistrationError`` has a ``code`` the local API turns into an HTTP status, and the
agent's ``transient`` flag (agent/errors.py): whether trying the same call again later can
succeed. A device fault is one of two codes, because the app must tell the operator two
different things: ``device`` (unplugged, not answering: retry this item when it is back) and
``device_failed`` (wrong config, unsupported hardware: no retry helps until someone changes
the setting or the scanner the message names).
"""

from __future__ import annotations

from typing import Any

from agent.errors import AgentError
from drivers import DriverError, PermanentDeviceError

#: Codes for which the same call can succeed later without anyone changing anything.
TRANSIENT_CODES = frozenset({"busy", "retry", "device"})


class RegistrationError(AgentError):
    """``code``: not_found, invalid, busy, closed, incomplete, conflict (the session's state does
    not allow it), retry, device, device_failed, blocked (an enrolment rule refuses new sessions: detail
    ``rules`` lists each with what to do)."""

    def __init__(self, code: str, message: str, **detail: Any) -> None:
        super().__init__(message, transient=code in TRANSIENT_CODES)
        self.code = code
        self.message = message
        self.detail = detail


def device_fault(device: str, exc: DriverError, failed: bool, **detail: Any) -> RegistrationError:
    """The error for a fault of ``device`` during a capture.

    ``failed``: the device's worker has marked it failed. A failed device answers every later
    capture with a plain "device is failed" error; it is still the permanent fault it was.
    """
    if failed or isinstance(exc, PermanentDeviceError):
        return RegistrationError(
            "device_failed",
            f"device {device} has failed and retrying will not help: {exc}. Fix its settings "
            f"([devices.{device}]) or replace the hardware, then replug it or restart the agent; "
            "nothing already captured is lost",
            **detail,
        )
    return RegistrationError(
        "device",
        f"device {device}: {exc}; nothing already captured is lost, retry this item when the device is back",
        **detail,
    )


def device_silent(device: str, waited_s: float, **detail: Any) -> RegistrationError:
    """The device took longer than its own timeout and more: hung, or its thread is stuck."""
    return RegistrationError(
        "device",
        f"device {device} did not answer within {waited_s:.0f} s; nothing already captured is lost",
        **detail,
    )
