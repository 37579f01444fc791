"""How an MQTT link's thread sleeps between turns without polling (agent/transport/mqtt_link.py).

The thread waits in select() on paho's socket and on a socket pair of its own: a byte from the
broker, or a byte any other thread writes with ``wake()``, ends the wait at once; otherwise it
ends at the earliest time the link's handler asked for (``wake_at``) or after the idle wait.
Kept apart from the link because it is the one piece that other threads touch, and its rules
(coalesced wake-ups, non-blocking ends, TLS bytes select() cannot see) stand on their own.
"""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Callable


class Wakeup:
    """The wake-up socket pair and the select() that sleeps on it and on paho's socket."""

    def __init__(self) -> None:
        # Made by open() and closed by close(), so a link never started holds no descriptors.
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._woken = False
        self._due = float("inf")

    def open(self) -> None:
        # Non-blocking both ends: a full pair means a wake-up is already pending, all it takes.
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._woken = False

    def wake(self) -> None:
        """Start the next loop turn now (any thread; cheap, coalesced)."""
        wake_w = self._wake_w
        if self._woken or wake_w is None:
            return  # a byte is already on its way (not yet read), or no thread to wake
        self._woken = True
        try:
            wake_w.send(b"\0")
        except (BlockingIOError, OSError):
            pass  # full (a wake-up is pending) or closed (stopped)

    def wake_at(self, when: float) -> None:
        """Ask for a loop turn no later than ``when`` (time.monotonic()); link thread only."""
        self._due = min(self._due, when)

    def sleep(self, sock: socket.socket | None, want_write: Callable[[], bool], idle_wait_s: float) -> None:
        """Until traffic on ``sock``, a wake-up, the earliest asked-for time or ``idle_wait_s``."""
        if sock is None:
            return
        if hasattr(sock, "pending") and sock.pending() > 0:
            return  # TLS bytes already decrypted: select() would not see them
        now = time.monotonic()
        timeout = max(0.0, min(idle_wait_s, self._due - now))
        self._due = float("inf")
        wlist = [sock] if want_write() else []
        try:
            readable, _, _ = select.select([sock, self._wake_r] if self._wake_r else [sock], wlist, [],
                                           timeout)
        except (OSError, ValueError, TypeError):
            return  # a socket closed under us: paho's loop() reports the lost connection
        if self._wake_r in readable:
            self._drain()

    def _drain(self) -> None:
        # Cleared before reading: a wake() after this point writes a new byte.
        self._woken = False
        try:
            while self._wake_r is not None and self._wake_r.recv(4096):
                pass
        except (BlockingIOError, OSError):
            pass

    def close(self) -> None:
        wake_r, wake_w, self._wake_r, self._wake_w = self._wake_r, self._wake_w, None, None
        for end in (wake_r, wake_w):
            if end is not None:
                end.close()
