"""Talking to one U.are.U 4000/4000B/4500 over USB: transfers, their errors, and the register
sequences the capture relies on.

Register reads and writes are vendor control transfers, tried ``attempts`` times on a stall
or a timeout; a stalled interrupt or bulk endpoint is cleared before the error goes up. USB
errors become driver errors here (``fault``): gone is DeviceDisconnected, no access
(EACCES) is PermanentDeviceError, stalls, timeouts and busy are transient. The sequences:
powering the sensor up through the HWSTAT register until the 56AA interrupt, and the
scramble-key exchange through registers 0x33 / 0x34. The driver (drivers/uru4000.py) owns
finding, claiming and the capture itself.
"""

from __future__ import annotations

import errno
import logging
import secrets
import struct
import time
from collections.abc import Callable
from typing import Any

from drivers.errors import DeviceDisconnected, DeviceError, PermanentDeviceError, TransientDeviceError
from drivers.uru4000_codec import (
    CTRL_IN,
    CTRL_OUT,
    EP_DATA,
    EP_INTR,
    FRAME_LENGTH,
    HWSTAT_LOW_POWER,
    HWSTAT_NEEDS_REBOOT,
    IRQ_LENGTH,
    REQUEST,
    Irq,
    Reg,
    irq_type,
)
from drivers.usb_scan import RULES_FILE, usb_port_of

log = logging.getLogger(__name__)

#: Power-up: HWSTAT polls 10 ms apart (the scanner takes a few), then the 56AA interrupt,
#: which sometimes never comes: the whole sequence is tried three times.
POWER_POLLS = 100
POWER_POLL_S = 0.01
SCAN_POWER_TIMEOUT_MS = 300
SCAN_POWER_TRIES = 3


def usb_errno(exc: BaseException) -> int | None:
    return getattr(exc, "errno", None)


class Stalled(TransientDeviceError):
    """The scanner refused a request (USB stall) every time it was asked."""


class ScannerLink:
    """Transfers to one scanner (a pyusb Device), claimed or, for reading registers only, not."""

    def __init__(self, device_id: str, dev: Any, *, attempts: int, transfer_timeout_s: float) -> None:
        self.device_id = device_id
        self.dev = dev
        self.attempts = attempts
        self.transfer_timeout_s = transfer_timeout_s

    # --- registers ------------------------------------------------------------------------

    def read(self, reg: int, length: int, attempts: int | None = None) -> bytes:
        data = self._control(CTRL_IN, reg, length, attempts)
        if len(data) != length:
            raise TransientDeviceError(f"{self.device_id}: register 0x{reg:02X}: {len(data)} of "
                                       f"{length} bytes")
        return bytes(data)

    def write(self, reg: int, data: bytes, attempts: int | None = None) -> None:
        self._control(CTRL_OUT, reg, data, attempts)

    def _control(self, request_type: int, reg: int, data: Any, attempts: int | None) -> Any:
        tries = attempts or self.attempts
        timeout_ms = int(self.transfer_timeout_s * 1000)
        what = f"{'reading' if request_type == CTRL_IN else 'writing'} register 0x{reg:02X}"
        attempt = 1
        while True:
            try:
                return self.dev.ctrl_transfer(request_type, REQUEST, reg, 0, data, timeout_ms)
            except OSError as exc:
                fault = self.fault(exc, what)
                # Stalls, timeouts and busy may pass; gone, no permission and the like do not.
                passing = isinstance(fault, Stalled) or type(fault) is TransientDeviceError
                if not passing or attempt == tries:
                    raise fault from None
                log.debug("%s: %s (attempt %d/%d)", self.device_id, fault, attempt, tries)
                attempt += 1

    # --- endpoints ------------------------------------------------------------------------

    def interrupt(self, timeout_s: float) -> bytes | None:
        """One interrupt packet, or None when none came within ``timeout_s`` (normal)."""
        try:
            data = self.dev.read(EP_INTR, IRQ_LENGTH, max(1, int(timeout_s * 1000)))
        except OSError as exc:
            if usb_errno(exc) == errno.ETIMEDOUT:
                return None
            fault = self.fault(exc, "reading the interrupt endpoint")
            if isinstance(fault, Stalled):
                self._clear_halt(EP_INTR)
            raise fault from None
        return bytes(data)

    def bulk(self) -> bytes:
        """One frame's bytes from the bulk endpoint (checked by the caller)."""
        try:
            return bytes(self.dev.read(EP_DATA, FRAME_LENGTH, int(self.transfer_timeout_s * 1000)))
        except OSError as exc:
            fault = self.fault(exc, "reading the image")
            if isinstance(fault, Stalled):
                self._clear_halt(EP_DATA)
            raise fault from None

    def _clear_halt(self, endpoint: int) -> None:
        try:
            self.dev.clear_halt(endpoint)
        except OSError as exc:
            raise self.fault(exc, f"clearing the stall on endpoint 0x{endpoint:02X}") from None

    def fault(self, exc: OSError, what: str) -> DeviceError:
        """The driver error for a failed USB call while doing ``what``."""
        code = usb_errno(exc)
        where = f"{self.device_id}: {what} on the scanner at {usb_port_of(self.dev)}"
        if code == errno.ENODEV:
            return DeviceDisconnected(f"{where}: the scanner is gone (unplugged?)")
        if code == errno.EACCES:
            return PermanentDeviceError(
                f"{where}: permission denied; install the udev rules {RULES_FILE} "
                "(sudo make install, then unplug and replug the scanner) so group plugdev may use it")
        if code == errno.EPIPE:
            return Stalled(f"{where}: the scanner stalled the request")
        if code == errno.ETIMEDOUT:
            return TransientDeviceError(f"{where}: timed out after {self.transfer_timeout_s} s")
        if code == errno.EBUSY:
            return TransientDeviceError(f"{where}: another program has claimed the scanner")
        return TransientDeviceError(f"{where}: {exc}")

    # --- sequences ------------------------------------------------------------------------

    def power_up(self) -> None:
        """HWSTAT dance until the sensor is powered, then the 56AA interrupt; three tries."""
        for attempt in range(1, SCAN_POWER_TRIES + 1):
            hwstat = self.read(Reg.HWSTAT, 1)[0]
            if hwstat & HWSTAT_NEEDS_REBOOT == HWSTAT_NEEDS_REBOOT:
                hwstat = self._poll_hwstat(hwstat & 0x0F, lambda h: bool(h & 0x01), "reset its power state")
            if not hwstat & HWSTAT_LOW_POWER:
                # Powering up only takes effect from low-power mode: go there first.
                self.write(Reg.HWSTAT, bytes([hwstat | HWSTAT_LOW_POWER]))
            self._poll_hwstat(hwstat & 0x0F, lambda h: not h & HWSTAT_LOW_POWER, "power the sensor up")
            deadline = time.monotonic() + SCAN_POWER_TIMEOUT_MS / 1000
            while (left := deadline - time.monotonic()) > 0:
                packet = self.interrupt(left)
                if packet is not None and irq_type(packet) == Irq.SCAN_POWER_ON:
                    return
            log.debug("%s: no scan-power interrupt (try %d/%d)", self.device_id, attempt, SCAN_POWER_TRIES)
        raise TransientDeviceError(f"{self.device_id}: the scanner did not power its sensor up "
                                   f"(no 56AA interrupt after {SCAN_POWER_TRIES} tries)")

    def _poll_hwstat(self, value: int, done: Callable[[int], bool], what: str) -> int:
        self.write(Reg.HWSTAT, bytes([value]))
        for _ in range(POWER_POLLS):
            hwstat = self.read(Reg.HWSTAT, 1)[0]
            if done(hwstat):
                return hwstat
            time.sleep(POWER_POLL_S)
        raise TransientDeviceError(f"{self.device_id}: the scanner did not {what} "
                                   f"(HWSTAT 0x{hwstat:02X} after {POWER_POLLS} polls)")

    def scramble_key(self, key_number: int) -> int:
        """The scanner's key ``key_number`` (it answers the key XORed with the seed we send);
        Stalled when it refuses the exchange."""
        seed = secrets.randbits(32)
        self.write(Reg.SCRAMBLE_INDEX, struct.pack("<BI", key_number, seed))
        (answer,) = struct.unpack("<I", self.read(Reg.SCRAMBLE_KEY, 4))
        return int(answer) ^ seed
