"""The agent's error tree, mirroring drivers/errors.py.

Every error of the agent's own says which of two reactions it needs:

* transient (``TransientError``): it may pass by itself (a full disk that drains, a broker
  that comes back, a device being replugged). Retry later; report it meanwhile.
* permanent (``PermanentError``): retrying will not help until a person changes something
  (the config, a key file, the input, the hardware). The message names what to change.

The third kind, what the person in front of the kiosk can fix by trying again (no finger,
look at the camera), is ``drivers.CaptureRetry``: it comes from the devices.
"""

from __future__ import annotations


class AgentError(Exception):
    """Base of the agent's errors. ``transient`` tells callers whether retrying later can help;
    a subclass fixes it, or an instance sets it when one class covers both kinds."""

    transient: bool = False

    def __init__(self, *args: object, transient: bool | None = None) -> None:
        super().__init__(*args)
        if transient is not None:
            self.transient = transient


class TransientError(AgentError):
    """May pass by itself: retry later."""

    transient = True


class PermanentError(AgentError):
    """Will not pass by retrying: a person must change the config, the input or the hardware."""

    transient = False
