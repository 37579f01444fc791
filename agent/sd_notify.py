"""The systemd notify protocol: a few datagrams over $NOTIFY_SOCKET.

No dependency needed: the protocol is one ``sendto`` per message. Outside systemd (no
NOTIFY_SOCKET) every call is a no-op, so the agent runs the same in a terminal.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)


class Notifier:
    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        # "@name" is a socket in the abstract namespace.
        self.address = "\0" + address[1:] if address.startswith("@") else address
        self.watchdog_s = self._watchdog_interval(env)

    @staticmethod
    def _watchdog_interval(env: dict[str, str] | os._Environ[str]) -> float | None:
        usec = env.get("WATCHDOG_USEC")
        pid = env.get("WATCHDOG_PID")
        if not usec or (pid and pid.isdigit() and int(pid) != os.getpid()):
            return None  # no watchdog, or it is meant for another process
        try:
            return int(usec) / 1_000_000
        except ValueError:
            log.warning("ignoring WATCHDOG_USEC=%r: not a number", usec)
            return None

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def send(self, *fields: str) -> bool:
        if not self.address:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                # Never block the main thread: a full socket (nobody reading) drops the line.
                sock.sendto("\n".join(fields).encode(), socket.MSG_DONTWAIT, self.address)
        except BlockingIOError:
            log.debug("systemd notify socket full; dropped %s", fields[0])
            return False
        except OSError as exc:
            log.warning("cannot notify systemd at %s: %s", self.address.replace("\0", "@"), exc)
            return False
        return True

    def ready(self, status: str) -> bool:
        return self.send("READY=1", f"STATUS={status}")

    def status(self, status: str) -> bool:
        return self.send(f"STATUS={status}")

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def stopping(self, status: str) -> bool:
        return self.send("STOPPING=1", f"STATUS={status}")
