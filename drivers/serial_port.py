"""The serial port under the UART drivers (zfm, gt521f), and their command/reply transactions.

It opens a device path or any pyserial URL (``/dev/ttyUSB0``, ``/dev/kiosk-finger0``,
``socket://host:port``, ``loop://``), reads in short slices so callers keep their own
deadlines, and turns operating-system errors into the driver error tree: a port that is
missing or fails mid-transfer is ``DeviceDisconnected`` (the agent reopens it when it comes
back), a port we may not open is ``PermanentDeviceError`` naming the setting.

``CommandLink.transaction`` is the one retry loop of both families: send, read the reply, and
after a reply that timed out or came back corrupt (``BadReply``) drain the line and send again,
``attempts`` times, then ``NoValidReply``. Errors of the port itself are not retried there:
they reach the driver as they are.

pyserial is imported inside ``SerialLink.open`` so the drivers package imports without it.
"""

from __future__ import annotations

import errno
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, ClassVar, Protocol, TypeVar

from pydantic import Field

from drivers.base import DriverConfig
from drivers.errors import DeviceDisconnected, PermanentDeviceError, TransientDeviceError

log = logging.getLogger(__name__)

#: open() errors that mean "the device is not there (any more)", not "misconfigured".
_GONE = {errno.ENOENT, errno.ENODEV, errno.ENXIO, errno.EIO}
_BUSY = {errno.EAGAIN, errno.EBUSY}
#: How long one read waits for a first byte; callers loop until their own deadline.
READ_SLICE_S = 0.01

T = TypeVar("T")


class NoValidReply(TransientDeviceError):
    """Every attempt at a command timed out or came back corrupt.

    Its own class so that probing can try the next baud rate on exactly this, while a
    vanished port (DeviceDisconnected) still ends the probe at once.
    """


class BadReply(Exception):
    """One attempt failed (timeout, checksum, the module saw a corrupt command): the
    transaction gets back in step and sends the command again."""


class SerialDriverConfig(DriverConfig):
    """Settings every UART scanner takes; each family adds its baud default and its own keys."""

    #: A device path (/dev/ttyUSB0, /dev/serial0, a udev symlink) or a pyserial URL.
    port: str = Field(min_length=1)
    baud: int
    #: Seconds to wait for the reply to one command before resynchronising and sending it again.
    reply_timeout_s: float = Field(1.0, gt=0, le=30)
    #: Seconds to wait for an answer at each baud rate while identifying the module.
    probe_timeout_s: float = Field(0.3, gt=0, le=10)
    #: Attempts per command (and per image upload) on checksum errors and timeouts.
    attempts: int = Field(3, ge=1, le=20)
    #: Seconds between "is a finger there?" polls while waiting for the person.
    poll_interval_s: float = Field(0.1, ge=0, le=5)


def setting(device_id: str, key: str) -> str:
    """The dotted config path an operator must fix, as error messages name it."""
    return f"devices.{device_id}.{key}"


def wire_time_s(nbytes: int, baud: int) -> float:
    """Seconds ``nbytes`` take on an 8N1 line: ten bits per byte (start, 8 data, stop)."""
    return nbytes * 10 / baud


class SerialLink:
    """One open serial port. Not thread-safe: a driver is only ever used from one thread."""

    def __init__(self, device_id: str, port: str, serial_port: Any,
                 io_errors: tuple[type[BaseException], ...], timeout_error: type[BaseException]) -> None:
        self.device_id = device_id
        self.port = port
        self._port = serial_port
        self._io_errors = io_errors
        self._timeout_error = timeout_error

    @classmethod
    def open(cls, device_id: str, port: str, baud: int) -> SerialLink:
        try:
            import serial
        except ImportError:
            raise PermanentDeviceError(
                f"{device_id}: pyserial is not installed (pip install 'pyserial>=3.5')"
            ) from None
        try:
            # exclusive: a second program on the same port would steal half of every reply.
            handle = serial.serial_for_url(port, baudrate=baud, timeout=READ_SLICE_S,
                                           write_timeout=5.0, exclusive=True)
        except ValueError as exc:  # unknown URL scheme or a baud rate the port refuses
            raise PermanentDeviceError(
                f"{device_id}: cannot use port {port!r} at {baud} baud: {exc} "
                f"(check {setting(device_id, 'port')} and {setting(device_id, 'baud')})"
            ) from exc
        except _io_errors(serial) as exc:
            raise _open_error(device_id, port, exc) from exc
        link = cls(device_id, port, handle, _io_errors(serial), serial.SerialTimeoutException)
        link.discard_input()  # whatever the module said before we listened is not ours
        return link

    @property
    def baud(self) -> int:
        return int(self._port.baudrate)

    def set_baud(self, baud: int) -> None:
        with self._errors("setting the baud rate"):
            self._port.baudrate = baud
        self.discard_input()  # bytes received at the old rate are noise at the new one

    def write(self, data: bytes) -> None:
        with self._errors("writing"):
            self._port.write(data)
            self._port.flush()

    def read(self, max_bytes: int) -> bytes:
        """What has arrived, up to ``max_bytes``; waits at most READ_SLICE_S for a first byte."""
        with self._errors("reading"):
            waiting = self._port.in_waiting
            return bytes(self._port.read(max(1, min(max_bytes, waiting))))

    def discard_input(self) -> None:
        with self._errors("flushing input"):
            self._port.reset_input_buffer()

    def drain(self, quiet_s: float, limit_s: float) -> int:
        """Read and drop bytes until the line has been quiet ``quiet_s`` (at most ``limit_s``).

        After a corrupt reply the module may still be sending the rest of it; reading it
        off the line is how we get back in step before sending the next command.
        """
        dropped, deadline = 0, time.monotonic() + limit_s
        last_byte = time.monotonic()
        while time.monotonic() < deadline:
            chunk = self.read(4096)
            now = time.monotonic()
            if chunk:
                dropped += len(chunk)
                last_byte = now
            elif now - last_byte >= quiet_s:
                break
        return dropped

    def close(self) -> None:
        try:
            self._port.close()
        except self._io_errors as exc:
            # Closing a port whose device vanished fails; the handle is released either way.
            log.debug("%s: closing %s: %s", self.device_id, self.port, exc)

    @contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        where = f"{self.device_id}: port {self.port}"
        try:
            yield
        except self._io_errors as exc:
            if isinstance(exc, self._timeout_error):
                raise TransientDeviceError(f"{where}: timed out {doing} (flow control stuck?)") from exc
            # On a USB bridge that was pulled, or a pty whose other side closed, every read
            # and write fails from now on: only closing and reopening the port helps.
            raise DeviceDisconnected(f"{where} failed while {doing}: {exc} (unplugged?)") from exc


class Decoder(Protocol):
    def reset(self) -> None: ...


class CommandLink:
    """Command/reply transactions with one module on a serial port; each family subclasses it
    with its own decoder and reply readers. Not thread-safe, like the port under it."""

    #: After this many bytes' time on the wire without a byte, the line counts as quiet: the
    #: rest of a broken reply has been read off and the next command starts in step.
    quiet_bytes: ClassVar[int]

    def __init__(self, device_id: str, serial: SerialLink, decoder: Decoder) -> None:
        self.device_id = device_id
        self.serial = serial
        self.decoder = decoder

    @property
    def baud(self) -> int:
        return self.serial.baud

    def set_baud(self, baud: int) -> None:
        self.serial.set_baud(baud)
        self.decoder.reset()

    def close(self) -> None:
        self.serial.close()

    def transaction(self, packet: bytes, read_reply: Callable[[float], T], *, what: str, timeout_s: float,
                    attempts: int, drain_limit_s: float, failure: str = "") -> T:
        """Send ``packet`` and return ``read_reply(deadline)``, ``attempts`` times at most.

        After a BadReply the line is drained (at most ``drain_limit_s``: a broken image upload
        may still be arriving) before the next attempt. ``failure`` replaces the default
        "no valid reply to ``what``" in the NoValidReply raised when every attempt failed.
        """
        last = ""
        for attempt in range(1, attempts + 1):
            # A late reply to an earlier command must not be taken for this one's.
            self.serial.discard_input()
            self.decoder.reset()
            self.serial.write(packet)
            try:
                return read_reply(time.monotonic() + timeout_s)
            except BadReply as exc:
                last = str(exc)
                log.debug("%s: %s attempt %d/%d: %s", self.device_id, what, attempt, attempts, exc)
                if attempt < attempts:
                    quiet = max(0.02, wire_time_s(self.quiet_bytes, self.baud))
                    self.serial.drain(quiet, limit_s=drain_limit_s)
                    self.decoder.reset()
        failure = failure or f"no valid reply to {what} at {self.baud} baud after {attempts} attempt(s)"
        raise NoValidReply(f"{self.device_id}: {failure}: {last}")


def _io_errors(serial: Any) -> tuple[type[BaseException], ...]:
    """What pyserial's calls raise when the port fails: its own errors, the OS's, and
    termios.error, which pyserial lets through from tcflush and tcsetattr on a dead tty."""
    errors: tuple[type[BaseException], ...] = (serial.SerialException, OSError)
    try:
        import termios
    except ImportError:  # not a POSIX system: pyserial wraps its errors itself there
        return errors
    return (*errors, termios.error)


def _open_error(device_id: str, port: str, exc: BaseException) -> Exception:
    code = getattr(exc, "errno", None)
    if code is None and exc.args and isinstance(exc.args[0], int):
        code = exc.args[0]  # termios.error carries (errno, text) without an errno attribute
    if code is None and isinstance(exc.__context__, OSError):
        code = exc.__context__.errno
    where = f"{device_id}: port {port}"
    if code in _GONE:
        return DeviceDisconnected(f"{where} is not there (unplugged, or wrong "
                                  f"{setting(device_id, 'port')}?): {exc}")
    if code in (errno.EACCES, errno.EPERM):
        return PermanentDeviceError(
            f"{where}: permission denied; add the service user to group dialout and install "
            f"systemd/61-kiosk-serial.rules, or fix {setting(device_id, 'port')}: {exc}")
    if code in _BUSY or "lock" in str(exc).lower():
        return TransientDeviceError(f"{where} is busy: another program has it open: {exc}")
    return TransientDeviceError(f"{where} cannot be opened: {exc}")
