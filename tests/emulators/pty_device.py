"""The device side of a serial protocol over a pty, with the faults a real line has.

A pty gives the driver a real device path that pyserial opens like /dev/ttyUSB0. The
emulator holds both ends: it reads and writes the master, and keeps the slave open too so
the pty survives the driver closing and reopening it. Unplugging closes both, after which
the driver's reads and writes fail as they do when a USB bridge is pulled.

A pty has no physical baud rate, but the master sees the slave's termios, so the emulator
reads the rate the driver set and treats bytes sent at any other rate than its own as line
noise, as a module would; that is what lets probing's baud search be tested.

Faults (``Faults``) apply to packets the emulator sends: corrupt a checksum, drop a byte,
delay, deliver bytes one at a time; plus "no finger for N polls" and "unplug when command X
arrives". Subclasses implement ``received`` (parse commands) with their own small encoder,
independent of the driver's codec, so a bug shared by both cannot hide.
"""

from __future__ import annotations

import argparse
import array
import fcntl
import functools
import logging
import os
import select
import signal
import struct
import sys
import termios
import threading
import time
import tty
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import cv2
import numpy as np

from drivers.fingerprint_synth import synthesize

log = logging.getLogger(__name__)

_RATES = (1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200, 230400, 460800, 921600)
_SPEEDS = {getattr(termios, f"B{rate}"): rate for rate in _RATES if hasattr(termios, f"B{rate}")}
_BOTHER = 0o010000  # Linux: the rate is in termios2's c_ospeed, not in a B constant
_TCGETS2 = 0x802C542A  # asm-generic ioctl number (x86-64, arm64)


@dataclass
class Faults:
    """What goes wrong next. Counters are used up as packets are sent (or polls answered)."""

    #: Corrupt the checksum of the next N packets sent.
    corrupt: int = 0
    #: Drop one byte from the middle of each of the next N packets sent.
    drop: int = 0
    #: Send this many packets untouched before ``corrupt`` / ``drop`` apply (aim at the middle
    #: of an image upload).
    skip_packets: int = 0
    #: Wait ``delay_s`` before each of the next ``delay_count`` packets.
    delay_s: float = 0.0
    delay_count: int = 0
    #: Deliver the next N bytes one at a time, each only once the reader has taken the last.
    byte_by_byte: int = 0
    #: The finger is absent for the next N "is a finger there?" polls.
    no_finger: int = 0
    #: Unplug (close the pty) when a command of this name arrives, before answering it.
    unplug_on: str | None = None


class Unplugged(Exception):
    """Raised inside the serving loop to close the pty."""


class _Stopped(Exception):
    """The emulator was stopped while it was writing."""


@functools.lru_cache(maxsize=8)
def synthetic_print(seed: int, width: int, height: int, ppi: int) -> np.ndarray:
    """A synthetic fingerprint (cached: tests start many emulators with the same one)."""
    image = synthesize(seed, width, height, ppi)
    image.flags.writeable = False
    return image


def load_image(path: str | os.PathLike[str], width: int, height: int) -> np.ndarray:
    """A greyscale image file, resized to the size the protocol sends."""
    image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if image is None:
        raise SystemExit(f"cannot read image {path}")
    if image.shape != (height, width):
        image = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
    return image


class PtyDevice:
    """Serves one emulated device on a pty, on a thread (``start``) or in the caller's."""

    name = "device"

    def __init__(self, *, baud: int, link: str | os.PathLike[str] | None = None, pace: bool = False) -> None:
        #: The rate the emulated module listens at; bytes at another rate are noise to it.
        self.baud = baud
        self.link = Path(link) if link is not None else None
        #: Send no faster than the real line would (baud / 10 bytes a second).
        self.pace = pace
        self.faults = Faults()
        self.lock = threading.Lock()
        #: Every command received, by name, in order (tests check what a probe sent).
        self.commands: list[str] = []
        self.noise_bytes = 0
        self.path = ""
        self._master = -1
        self._slave = -1
        self._stop = threading.Event()
        self._close_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.unplugged = threading.Event()

    # --- life cycle -----------------------------------------------------------------------

    def open_pty(self) -> str:
        master, slave = os.openpty()
        tty.setraw(slave)  # no echo, no line editing, no CR/LF translation: bytes as they are
        os.set_blocking(master, False)
        self._master, self._slave = master, slave
        self.path = os.ttyname(slave)
        if self.link is not None:
            tmp = self.link.with_name(self.link.name + ".tmp")
            tmp.unlink(missing_ok=True)
            os.symlink(self.path, tmp)
            os.replace(tmp, self.link)  # re-pointed in one step, as udev does
        return self.path

    @property
    def port(self) -> str:
        """What a driver should open: the symlink when there is one, else the pty."""
        return str(self.link) if self.link is not None else self.path

    def start(self) -> Self:
        self.open_pty()
        self._thread = threading.Thread(target=self.serve, name=f"emu-{self.name}", daemon=True)
        self._thread.start()
        return self

    def request_stop(self) -> None:
        """Ask the serving loop to end (safe from a signal handler or a timer)."""
        self._stop.set()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        self._close()

    def unplug(self) -> None:
        """Close the pty now, as pulling the USB bridge would."""
        self.stop()

    def __enter__(self) -> Self:
        if self._thread is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def inject(self, **faults: Any) -> None:
        with self.lock:
            for key, value in faults.items():
                if not hasattr(self.faults, key):
                    raise ValueError(f"unknown fault {key!r}")
                setattr(self.faults, key, value)

    # --- serving --------------------------------------------------------------------------

    def serve(self) -> None:
        try:
            while not self._stop.is_set():
                readable, _, _ = select.select([self._master], [], [], 0.02)
                if not readable:
                    continue
                try:
                    data = os.read(self._master, 65536)
                except BlockingIOError:
                    continue
                if not self._baud_matches():
                    self._noise(data)
                    continue
                self.received(data)
        except (Unplugged, _Stopped) as exc:
            log.debug("%s emulator: %s", self.name, type(exc).__name__)
        finally:
            self._close()

    def received(self, data: bytes) -> None:
        raise NotImplementedError

    def command_arrived(self, name: str) -> None:
        """Log a command; unplug instead of answering when the fault says so."""
        self.commands.append(name)
        with self.lock:
            unplug = self.faults.unplug_on == name
            if unplug:
                self.faults.unplug_on = None
        if unplug:
            raise Unplugged(name)

    def finger_absent(self) -> bool:
        """Use up one "no finger" poll if any are left."""
        with self.lock:
            if self.faults.no_finger > 0:
                self.faults.no_finger -= 1
                return True
        return False

    def send_packet(self, packet: bytes) -> None:
        """Send one packet, through whatever faults are armed."""
        with self.lock:
            f = self.faults
            delay = 0.0
            if f.delay_count > 0:
                f.delay_count -= 1
                delay = f.delay_s
            if f.skip_packets > 0:
                f.skip_packets -= 1
            elif f.corrupt > 0:
                f.corrupt -= 1
                packet = packet[:-1] + bytes([packet[-1] ^ 0x5A])
            elif f.drop > 0:
                f.drop -= 1
                middle = len(packet) // 2
                packet = packet[:middle] + packet[middle + 1:]
            single = min(f.byte_by_byte, len(packet))
            f.byte_by_byte -= single
        if delay and self._stop.wait(delay):
            raise _Stopped()
        if single:
            for i in range(single):
                self._write(packet[i:i + 1])
                self._wait_taken()
            packet = packet[single:]
        self._write(packet)

    def _write(self, data: bytes) -> None:
        start = time.monotonic()
        pos = 0
        while pos < len(data):
            if self._stop.is_set():
                raise _Stopped()
            step = 64 if self.pace else 65536
            try:
                pos += os.write(self._master, data[pos:pos + step])
            except BlockingIOError:
                # The reader is not keeping up (or the port is closed): wait, but stay stoppable.
                select.select([], [self._master], [], 0.02)
                continue
            if self.pace:
                ahead = start + pos * 10 / self.baud - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)

    def _wait_taken(self, limit_s: float = 0.005) -> None:
        # The bytes the reader has not taken yet sit in the slave's input queue.
        deadline = time.monotonic() + limit_s
        count = array.array("i", [0])
        while time.monotonic() < deadline:
            fcntl.ioctl(self._slave, termios.FIONREAD, count)
            if count[0] == 0:
                return
            time.sleep(0.0001)

    def _baud_matches(self) -> bool:
        rate = self.line_baud()
        return rate is None or rate == self.baud

    def line_baud(self) -> int | None:
        """The rate the driver set on the port; None if it cannot be read."""
        speed = termios.tcgetattr(self._master)[5]
        if speed in _SPEEDS:
            return _SPEEDS[speed]
        if speed == _BOTHER:
            try:
                raw = fcntl.ioctl(self._master, _TCGETS2, bytes(44))
            except OSError as exc:
                log.debug("TCGETS2 failed: %s", exc)
                return None
            return int(struct.unpack_from("I", raw, 40)[0])
        return None

    def _noise(self, data: bytes) -> None:
        # At the wrong rate the module sees framing errors and answers with nothing sensible.
        self.noise_bytes += len(data)
        self._write(b"\x00\xf8"[: max(1, min(2, len(data) // 8))])

    def _close(self) -> None:
        # Called by the serving thread when it ends and by stop(): the lock makes it once.
        with self._close_lock:
            if self._master < 0:
                return
            os.close(self._master)
            os.close(self._slave)
            self._master = self._slave = -1
            self.unplugged.set()


# --- standalone ----------------------------------------------------------------------------


def common_arguments(parser: argparse.ArgumentParser, default_baud: int) -> None:
    add = parser.add_argument
    add("--baud", type=int, default=default_baud, help=f"the module's rate (default {default_baud})")
    add("--link", metavar="PATH", help="also make a symlink to the pty at PATH")
    add("--seed", type=int, default=0, help="synthetic fingerprint seed (default 0)")
    add("--image", metavar="FILE", help="serve this greyscale image instead")
    add("--pace", action="store_true", help="send no faster than the real line would")
    add("--corrupt", type=int, default=0, metavar="N", help="corrupt the next N packets' checksums")
    add("--drop", type=int, default=0, metavar="N", help="drop a byte from the next N packets")
    add("--skip-packets", type=int, default=0, metavar="N",
        help="send N packets untouched before --corrupt / --drop apply")
    add("--delay", type=float, default=0.0, metavar="S", help="delay packets by S seconds")
    add("--delay-count", type=int, default=0, metavar="N", help="how many packets --delay applies to")
    add("--byte-by-byte", type=int, default=0, metavar="N", help="deliver the next N bytes one at a time")
    add("--no-finger", type=int, default=0, metavar="N", help="no finger for the first N polls")
    add("--unplug-on", metavar="COMMAND", help="close the pty when this command arrives")
    add("--unplug-after", type=float, metavar="S", help="close the pty after S seconds")


def apply_fault_arguments(device: PtyDevice, args: argparse.Namespace) -> None:
    device.inject(corrupt=args.corrupt, drop=args.drop, skip_packets=args.skip_packets,
                  delay_s=args.delay, delay_count=args.delay_count, byte_by_byte=args.byte_by_byte,
                  no_finger=args.no_finger, unplug_on=args.unplug_on)


def run_standalone(device: PtyDevice, unplug_after: float | None) -> int:
    """Print the pty's path, serve until SIGTERM / SIGINT (or the unplug), exit 0."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    path = device.open_pty()
    print(path, flush=True)
    if device.link is not None:
        print(f"{device.name} emulator: {device.link} -> {path}", file=sys.stderr, flush=True)

    signal.signal(signal.SIGTERM, lambda *_: device.request_stop())
    signal.signal(signal.SIGINT, lambda *_: device.request_stop())
    if unplug_after is not None:
        timer = threading.Timer(unplug_after, device.request_stop)
        timer.daemon = True
        timer.start()
    device.serve()
    print(f"{device.name} emulator: closed {path} after {len(device.commands)} commands",
          file=sys.stderr, flush=True)
    return 0
