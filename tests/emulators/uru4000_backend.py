"""Emulated DigitalPersona U.are.U 4000 / 4000B / 4500 scanners on an emulated USB bus.

``EmulatedBus`` is a pyusb backend (``usb.backend.IBackend``): pass it to
``usb.core.find(backend=...)`` (or to the driver's ``backend``) and pyusb sees the scanners
plugged into it, with their device, configuration, interface and endpoint descriptors, string
descriptors (serial number) and transfers. ``plug`` and ``unplug`` change the bus at any time,
from any thread.

Each ``EmulatedScanner`` speaks the protocol from the shared notes (section 3), written here
from those facts and not from drivers/uru4000_codec.py, so a bug in the driver's codec cannot
be mirrored:

* registers through vendor request 0x04 (0xC0 read, 0x40 write): HWSTAT, MODE, device info,
  the scramble index / key pair; anything else stalls, as does a malformed request;
* power: writing HWSTAT without bit 7 powers the sensor up only from low-power mode (bit 7
  set); bit 7 then reads clear after a few polls and the 56AA interrupt follows. From the
  confused state 0x84 only the reboot write (low bits, wait for bit 0) gets out;
* MODE 0x10 waits for the finger: the 0101 interrupt comes after ``no_finger_polls`` empty
  interrupt reads; MODE 0x20 makes one frame ready on the bulk endpoint: 64-byte header, then
  the rows, ridges bright (inverted), rotated by 180 degrees on the 4000 (not on the 4000B);
* scrambled frames use the notes' block flags with a 32-bit LFSR key stream per key number;
  the key exchange answers ``key ^ seed``.

Faults: stalls and timeouts on control or bulk transfers, unplug in the middle of a frame,
the fatal 0800 interrupt (after which frames are empty until the sensor is powered up again),
no finger for N polls, scrambled frames (decodable, or with flags nobody can decode), a
refused key exchange, permission denied on open, short frames.
"""

from __future__ import annotations

import errno
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import numpy as np
import usb.backend
import usb.core

from tests.emulators.pty_device import synthetic_print

VENDOR = 0x05BA
WIDTH, HEIGHT = 384, 290
HEADER = 64
#: Timeouts are real but short: a test that waits out a 5 s transfer timeout learns nothing more.
MAX_WAIT_S = 0.05
PRODUCTS = {0x000A: "U.are.U 4500 Fingerprint Reader", 0x0007: "U.are.U 4000 Fingerprint Reader",
            0x0008: "U.are.U 4000 Keyboard Fingerprint Reader"}
#: Block plans (flags, lines). The scrambled one has a clear block and a key change in it.
PLAIN_BLOCKS = ((0x00, 145), (0x00, 145))
SCRAMBLED_BLOCKS = ((0x02, 100), (0x00, 50), (0x82, 80), (0x02, 60))
UNDECODABLE_BLOCKS = ((0x06, 145), (0x00, 145))


def default_image(seed: int = 4) -> np.ndarray:
    """A print as a person would see it (dark ridges), full sensor size."""
    return synthetic_print(seed, WIDTH, HEIGHT, 512)


def gradient_image() -> np.ndarray:
    """Every row and column different, so a wrong flip or row order cannot go unnoticed."""
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH]
    return ((x * 7 + y * 3 + (x * y) % 11) % 256).astype(np.uint8)


# --- the scanner's key stream, bit by bit --------------------------------------------------

_TAP_BITS = (0, 2, 3, 6, 10, 12, 19, 22, 25, 28, 31)  # 0x9248144D, bit positions
_OUT_BITS = (4, 8, 11, 14, 18, 21, 24, 29)


def _step(key: int) -> int:
    parity = 0
    for bit in _TAP_BITS:
        parity ^= (key >> bit) & 1
    return (key >> 1) | (parity << 31)


def _out(key: int) -> int:
    return sum(((key >> bit) & 1) << n for n, bit in enumerate(_OUT_BITS))


def _usb_error(code: int, text: str) -> usb.core.USBError:
    if code == errno.ETIMEDOUT:
        return usb.core.USBTimeoutError(text, -7, errno.ETIMEDOUT)
    return usb.core.USBError(text, None, code)


@dataclass
class Faults:
    stall_control: int = 0  # the next N control transfers stall
    stall_bulk: int = 0  # the next N image reads stall (the endpoint halts until cleared)
    timeout_bulk: int = 0  # the next N image reads time out
    timeout_control: int = 0
    unplug_mid_frame: bool = False  # the next image read: the scanner vanishes halfway
    fatal_interrupts: int = 0  # the next N finger waits get 0800 instead of 0101
    #: Empty interrupt reads before the finger lands; None: never.
    no_finger_polls: int | None = 0
    short_frames: int = 0  # the next N frames stop after half their rows
    refuse_key_exchange: bool = False
    permission_denied: bool = False
    #: Block plan of every frame; SCRAMBLED_BLOCKS or UNDECODABLE_BLOCKS scramble.
    blocks: tuple[tuple[int, int], ...] = PLAIN_BLOCKS


@dataclass
class EmulatedScanner:
    product_id: int = 0x000A
    serial: str = "EMU0001"
    image: np.ndarray = field(default_factory=default_image)
    bus: int = 1
    port_numbers: tuple[int, ...] = (1, 4)
    faults: Faults = field(default_factory=Faults)
    #: HWSTAT after plugging in: low power (0x80), or 0x84 for the confused power state.
    hwstat: int = 0x80

    def __post_init__(self) -> None:
        if self.image.shape != (HEIGHT, WIDTH):
            raise ValueError(f"the image must be {WIDTH} x {HEIGHT}, got {self.image.shape}")
        self.power_on_hwstat = self.hwstat
        self.address = 0
        self.mode = 0x00
        self.plugged = False
        self.interrupts: deque[int] = deque()
        self.powering = 0  # HWSTAT reads left until bit 7 clears
        self.rebooting = 0
        self.dead = False  # after 0800: frames are empty until the next power-up
        self.finger_polls = 0
        self.frame: bytes | None = None
        self.bulk_halted = False
        self.claimed_by: object | None = None
        self.secret_keys = {n: (0x1F2E3D4C * (n + 3) + 0x5A) & 0xFFFFFFFF for n in range(256)}
        self.key_number = 7
        self.exchange: tuple[int, int] | None = None
        self.frames_sent = 0
        self.key_exchanges = 0
        self.power_ups = 0
        self.log: list[str] = []
        self.lock = threading.RLock()

    @property
    def flipped(self) -> bool:
        return self.product_id != 0x000A

    # --- what the driver should deliver ----------------------------------------------------

    def sensor_rows(self) -> np.ndarray:
        """The rows as the sensor reads them: inverted, and upside down on the 4000."""
        rows = 255 - self.image.astype(np.int16)
        if self.flipped:
            rows = rows[::-1, ::-1]
        return rows.astype(np.uint8)

    def expected_image(self) -> np.ndarray:
        """``image``, except that a scrambled block loses its last byte (it reads as 0)."""
        rows = self.sensor_rows().copy()
        end = 0
        for flags, lines in self.faults.blocks:
            end += lines
            if flags & 0x02:
                rows[end - 1, WIDTH - 1] = 0
        out = 255 - rows.astype(np.int16)
        if self.flipped:
            out = out[::-1, ::-1]
        return np.ascontiguousarray(out.astype(np.uint8))

    # --- descriptors ----------------------------------------------------------------------

    def device_descriptor(self) -> SimpleNamespace:
        return SimpleNamespace(
            bLength=18, bDescriptorType=1, bcdUSB=0x0200, bDeviceClass=0, bDeviceSubClass=0,
            bDeviceProtocol=0, bMaxPacketSize0=64, idVendor=VENDOR, idProduct=self.product_id,
            bcdDevice=0x0104, iManufacturer=1, iProduct=2, iSerialNumber=3 if self.serial else 0,
            bNumConfigurations=1, address=self.address, bus=self.bus,
            port_number=self.port_numbers[-1], port_numbers=self.port_numbers, speed=2)

    @staticmethod
    def config_descriptor() -> SimpleNamespace:
        return SimpleNamespace(bLength=9, bDescriptorType=2, wTotalLength=32, bNumInterfaces=1,
                               bConfigurationValue=1, iConfiguration=0, bmAttributes=0xA0, bMaxPower=50,
                               extra_descriptors=[])

    @staticmethod
    def interface_descriptor() -> SimpleNamespace:
        return SimpleNamespace(bLength=9, bDescriptorType=4, bInterfaceNumber=0, bAlternateSetting=0,
                               bNumEndpoints=2, bInterfaceClass=0xFF, bInterfaceSubClass=0xFF,
                               bInterfaceProtocol=0xFF, iInterface=0, extra_descriptors=[])

    @staticmethod
    def endpoint_descriptor(index: int) -> SimpleNamespace:
        address, attributes, interval = ((0x81, 0x03, 1), (0x82, 0x02, 0))[index]
        return SimpleNamespace(bLength=7, bDescriptorType=5, bEndpointAddress=address,
                               bmAttributes=attributes, wMaxPacketSize=64, bInterval=interval, bRefresh=0,
                               bSynchAddress=0, extra_descriptors=[])

    def string(self, index: int) -> bytes:
        if index == 0:
            return bytes([4, 3, 0x09, 0x04])  # LANGID: US English
        text = {1: "DigitalPersona, Inc.", 2: PRODUCTS[self.product_id], 3: self.serial}.get(index)
        if text is None:
            raise _usb_error(errno.EPIPE, "no such string")
        data = text.encode("utf-16-le")
        return bytes([2 + len(data), 3]) + data

    # --- control requests -----------------------------------------------------------------

    def control(self, request_type: int, request: int, value: int, index: int,
                data: bytes | int) -> bytes | int:
        """OUT: ``data`` is the payload, returns its length; IN: ``data`` is wLength."""
        if request_type == 0x80 and request == 0x06 and value >> 8 == 3:
            assert isinstance(data, int)
            return self.string(value & 0xFF)[:data]
        if request != 0x04 or index != 0 or request_type not in (0x40, 0xC0):
            raise _usb_error(errno.EPIPE, "stall: unknown request")
        if self.faults.timeout_control:
            self.faults.timeout_control -= 1
            time.sleep(MAX_WAIT_S)
            raise _usb_error(errno.ETIMEDOUT, "timeout")
        if self.faults.stall_control:
            self.faults.stall_control -= 1
            raise _usb_error(errno.EPIPE, "stall")
        if request_type == 0x40:
            assert isinstance(data, bytes)
            self.log.append(f"write {value:02X} {data.hex()}")
            self.write_register(value, data)
            return len(data)
        assert isinstance(data, int)
        self.log.append(f"read {value:02X} {data}")
        return self.read_register(value, data)

    def write_register(self, reg: int, data: bytes) -> None:
        if reg == 0x07 and len(data) == 1:
            self._write_hwstat(data[0])
        elif reg == 0x4E and len(data) == 1:
            self._set_mode(data[0])
        elif reg == 0x33 and len(data) == 5 and not self.faults.refuse_key_exchange:
            self.exchange = (data[0], int.from_bytes(data[1:5], "little"))
        else:
            raise _usb_error(errno.EPIPE, f"stall: write of {len(data)} bytes to {reg:02X}")

    def read_register(self, reg: int, length: int) -> bytes:
        if reg == 0x07 and length == 1:
            return bytes([self._read_hwstat()])
        if reg == 0xF0 and length == 16:
            return bytes([0x00, 0x00, 0x00, 0x00, 0x01, 0x04, 0, 0, 0, 0, 0x00, 0x23, 0, 0, 0, 0])
        if reg == 0x34 and length == 4 and self.exchange is not None:
            number, seed = self.exchange
            self.exchange = None
            self.key_exchanges += 1
            return (self.secret_keys[number] ^ seed).to_bytes(4, "little")
        raise _usb_error(errno.EPIPE, f"stall: read of {length} bytes from {reg:02X}")

    def _write_hwstat(self, value: int) -> None:
        if self.hwstat & 0x84 == 0x84:
            # Confused: only the reboot write (low bits) gets out, with bit 0 after a while.
            if not value & 0xF0:
                self.rebooting = 2
            return
        if value & 0x80:
            self.hwstat = value
            self.mode = 0x00
        elif self.hwstat & 0x80:
            self.powering = 2  # bit 7 clears after this many reads, then 56AA
            self.hwstat = 0x80 | value
        # Without bit 7, from full power: nothing happens, as on the scanner.

    def _read_hwstat(self) -> int:
        if self.rebooting:
            self.rebooting -= 1
            if not self.rebooting:
                self.hwstat = 0x81
        elif self.powering:
            self.powering -= 1
            if not self.powering:
                self.hwstat &= 0x7F
                self.dead = False
                self.power_ups += 1
                self.interrupts.append(0x56AA)
        return self.hwstat

    def _set_mode(self, mode: int) -> None:
        if self.hwstat & 0x80 and mode in (0x10, 0x20):
            raise _usb_error(errno.EPIPE, "stall: sensor not powered")
        self.mode = mode
        if mode == 0x10:
            self.finger_polls = 0
        elif mode == 0x20:
            self.frame = self._frame()

    # --- interrupts and frames ------------------------------------------------------------

    def interrupt(self) -> bytes | None:
        if not self.interrupts and self.mode == 0x10:
            limit = self.faults.no_finger_polls
            if limit is not None and self.finger_polls >= limit:
                if self.faults.fatal_interrupts:
                    self.faults.fatal_interrupts -= 1
                    self.dead = True
                    self.interrupts.append(0x0800)
                else:
                    self.interrupts.append(0x0101)
                self.mode = 0x00  # one interrupt per wait
            else:
                self.finger_polls += 1
        if not self.interrupts:
            return None
        return self.interrupts.popleft().to_bytes(2, "big") + bytes(62)

    def _frame(self) -> bytes:
        if self.dead:
            return bytes(HEADER)  # what follows a fatal interrupt: a header saying 0 lines
        blocks = self.faults.blocks
        lines = sum(n for _, n in blocks)
        header = bytearray(HEADER)
        header[4:6] = lines.to_bytes(2, "little")
        header[6] = self.key_number
        for i, (flags, n) in enumerate(blocks):
            header[16 + 2 * i] = flags
            header[17 + 2 * i] = n
        rows = bytearray(self.sensor_rows()[:lines].tobytes())
        if any(flags & 0x02 for flags, _ in blocks):
            rows = self._scramble(rows, blocks)
        frame = bytes(header) + bytes(rows)
        if self.faults.short_frames:
            self.faults.short_frames -= 1
            frame = frame[:HEADER + lines // 2 * WIDTH]
        return frame

    def _scramble(self, rows: bytearray, blocks: tuple[tuple[int, int], ...]) -> bytearray:
        number = self.key_number
        key = self.secret_keys[number]
        out = bytearray(rows)
        start = 0
        for flags, lines in blocks:
            if flags & 0x80:
                number += 1
                key = self.secret_keys[number]
            size = lines * WIDTH
            if flags & 0x06 == 0x02:
                # Byte i travels one place late, XORed with the stream byte of step i.
                for i in range(size - 1):
                    out[start + i + 1] = rows[start + i] ^ _out(key)
                    key = _step(key)
                out[start] = 0xA5
                key = _step(key)
            elif flags & 0x06 == 0:
                for _ in range(size):
                    key = _step(key)
            start += size
        return out

    def bulk_read(self, length: int) -> bytes:
        if self.bulk_halted:
            raise _usb_error(errno.EPIPE, "stall: endpoint halted")
        if self.faults.stall_bulk:
            self.faults.stall_bulk -= 1
            self.bulk_halted = True
            raise _usb_error(errno.EPIPE, "stall")
        if self.faults.timeout_bulk or self.frame is None:
            if self.faults.timeout_bulk:
                self.faults.timeout_bulk -= 1
            time.sleep(MAX_WAIT_S)
            raise _usb_error(errno.ETIMEDOUT, "timeout")
        frame, self.frame = self.frame, None
        self.frames_sent += 1
        return frame[:length]


class _Handle:
    def __init__(self, scanner: EmulatedScanner) -> None:
        self.scanner = scanner


class EmulatedBus(usb.backend.IBackend):
    """A USB bus with U.are.U scanners on it; the pyusb backend the tests inject."""

    def __init__(self, *scanners: EmulatedScanner) -> None:
        self.lock = threading.RLock()
        self.scanners: list[EmulatedScanner] = []
        #: Raised by every listing while set: no USB access at all.
        self.fail_enumeration: OSError | None = None
        self._next_address = 2
        for scanner in scanners:
            self.plug(scanner)

    def plug(self, scanner: EmulatedScanner) -> EmulatedScanner:
        with self.lock:
            scanner.address = self._next_address  # a new address on every plug, as on a real bus
            self._next_address += 1
            scanner.plugged = True
            scanner.hwstat, scanner.mode, scanner.claimed_by = scanner.power_on_hwstat, 0x00, None
            scanner.interrupts.clear()
            scanner.frame, scanner.bulk_halted, scanner.dead, scanner.powering = None, False, False, 0
            self.scanners.append(scanner)
        return scanner

    def unplug(self, scanner: EmulatedScanner) -> None:
        with self.lock:
            scanner.plugged = False
            if scanner in self.scanners:
                self.scanners.remove(scanner)

    # --- enumeration and descriptors --------------------------------------------------------

    def enumerate_devices(self) -> list[EmulatedScanner]:
        with self.lock:
            if self.fail_enumeration is not None:
                raise self.fail_enumeration
            return list(self.scanners)

    def get_device_descriptor(self, dev: EmulatedScanner) -> SimpleNamespace:
        return dev.device_descriptor()

    def get_configuration_descriptor(self, dev: EmulatedScanner, config: int) -> SimpleNamespace:
        if config != 0:
            raise IndexError(config)
        return dev.config_descriptor()

    def get_interface_descriptor(self, dev: EmulatedScanner, intf: int, alt: int,
                                 config: int) -> SimpleNamespace:
        if (config, intf, alt) != (0, 0, 0):
            raise IndexError((config, intf, alt))
        return dev.interface_descriptor()

    def get_endpoint_descriptor(self, dev: EmulatedScanner, ep: int, intf: int, alt: int,
                                config: int) -> SimpleNamespace:
        if (config, intf, alt) != (0, 0, 0) or ep not in (0, 1):
            raise IndexError((config, intf, alt, ep))
        return dev.endpoint_descriptor(ep)

    # --- handles -------------------------------------------------------------------------------

    def _live(self, handle: _Handle) -> EmulatedScanner:
        if not handle.scanner.plugged:
            raise _usb_error(errno.ENODEV, "No such device (it may have been disconnected)")
        return handle.scanner

    def open_device(self, dev: EmulatedScanner) -> _Handle:
        with self.lock:
            if not dev.plugged:
                raise _usb_error(errno.ENODEV, "No such device (it may have been disconnected)")
            if dev.faults.permission_denied:
                raise _usb_error(errno.EACCES, "Access denied (insufficient permissions)")
            return _Handle(dev)

    def close_device(self, dev_handle: _Handle) -> None:
        with self.lock:
            if dev_handle.scanner.claimed_by is dev_handle:
                dev_handle.scanner.claimed_by = None

    def get_configuration(self, dev_handle: _Handle) -> int:
        self._live(dev_handle)
        return 1

    def set_configuration(self, dev_handle: _Handle, config_value: int) -> None:
        self._live(dev_handle)

    def set_interface_altsetting(self, dev_handle: _Handle, intf: int, altsetting: int) -> None:
        self._live(dev_handle)

    def claim_interface(self, dev_handle: _Handle, intf: int) -> None:
        with self.lock:
            scanner = self._live(dev_handle)
            if scanner.claimed_by not in (None, dev_handle):
                raise _usb_error(errno.EBUSY, "Resource busy")
            scanner.claimed_by = dev_handle

    def release_interface(self, dev_handle: _Handle, intf: int) -> None:
        with self.lock:
            if dev_handle.scanner.claimed_by is dev_handle:
                dev_handle.scanner.claimed_by = None

    def is_kernel_driver_active(self, dev_handle: _Handle, intf: int) -> bool:
        return False

    # --- transfers --------------------------------------------------------------------------

    def ctrl_transfer(self, dev_handle: _Handle, bmRequestType: int, bRequest: int, wValue: int,  # noqa: N803
                      wIndex: int, data: Any, timeout: int) -> int:
        with self.lock:
            scanner = self._live(dev_handle)
            with scanner.lock:
                if bmRequestType & 0x80:
                    answer = scanner.control(bmRequestType, bRequest, wValue, wIndex, len(data))
                    assert isinstance(answer, bytes)
                    data[:len(answer)] = type(data)(data.typecode, answer)
                    return len(answer)
                result = scanner.control(bmRequestType, bRequest, wValue, wIndex, bytes(data))
                assert isinstance(result, int)
                return result

    def intr_read(self, dev_handle: _Handle, ep: int, intf: int, buff: Any, timeout: int) -> int:
        with self.lock:
            scanner = self._live(dev_handle)
            self._check_claimed(scanner, dev_handle)
            packet = scanner.interrupt()
        if packet is None:
            time.sleep(min(timeout / 1000, MAX_WAIT_S))
            raise _usb_error(errno.ETIMEDOUT, "Operation timed out")
        n = min(len(buff), len(packet))
        buff[:n] = type(buff)(buff.typecode, packet[:n])
        return n

    def bulk_read(self, dev_handle: _Handle, ep: int, intf: int, buff: Any, timeout: int) -> int:
        with self.lock:
            scanner = self._live(dev_handle)
            self._check_claimed(scanner, dev_handle)
            if scanner.faults.unplug_mid_frame and scanner.frame is not None:
                scanner.faults.unplug_mid_frame = False
                self.unplug(scanner)
                raise _usb_error(errno.ENODEV, "No such device (it may have been disconnected)")
        with scanner.lock:
            frame = scanner.bulk_read(len(buff))
        buff[:len(frame)] = type(buff)(buff.typecode, frame)
        return len(frame)

    def clear_halt(self, dev_handle: _Handle, ep: int) -> None:
        with self.lock:
            self._live(dev_handle).bulk_halted = False

    @staticmethod
    def _check_claimed(scanner: EmulatedScanner, dev_handle: _Handle) -> None:
        if scanner.claimed_by is not dev_handle:
            raise _usb_error(errno.EBUSY, "interface not claimed")
