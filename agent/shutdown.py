"""Stop signals (SIGTERM, SIGINT) from the first moment of the process.

systemd may stop a unit that is still starting, and an operator may press Ctrl-C while the
agent imports its libraries (about 0.4 s on the 2-core development machine; more on a
Raspberry Pi with a cold SD card).
Python's default for SIGTERM kills the process, which systemd reports as a failure and
which skips the orderly stop. So the command line installs these handlers before it
imports anything heavy, and the daemon checks the stop event ``install()`` returns between
its start-up steps and stops cleanly, exit 0, whenever the signal came. Standard library only, on purpose.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

_stop = threading.Event()
_installed = False
_received = ""


def install() -> threading.Event:
    """Route SIGTERM and SIGINT to the stop event (idempotent); returns the event.

    Only on the main thread (where Python delivers signals): elsewhere, for example an
    agent started inside a test, the event is returned without touching the handlers.
    """
    global _installed
    if not _installed and threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, _on_signal)
        _installed = True
    return _stop


def _on_signal(signum: int, frame: FrameType | None) -> None:
    global _received
    _received = signal.Signals(signum).name
    _stop.set()


def received() -> str:
    """The name of the stop signal that arrived ("SIGTERM"), or "" if none did."""
    return _received
