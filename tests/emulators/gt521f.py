"""Emulated ADH-Tech GT-521F32 / GT-521F52 module (device side), over a pty.

Written from the protocol facts (shared notes, datasheet), not from drivers/gt521f_codec.py:
its packets are built and parsed by the few lines below. Behaviour:

* Open answers ACK, and with a non-zero parameter a 24-byte data packet (firmware version,
  ISO area size, 16-byte serial number);
* ChangeBaudRate answers ACK at the old rate, then listens only at the new one;
* the sensor sees nothing while the LED is off: IsPressFinger says "not pressed",
  CaptureFinger answers NACK "finger not pressed", GetRawImage NACK "invalid parameter";
* IsPressFinger answers "not pressed" (parameter 0x1012) while ``faults.no_finger`` lasts;
* CaptureFinger answers the next NACK queued in ``capture_errors`` (0x100C bad finger);
* CheckEnrolled of an id at or above the capacity is an invalid position (0x1003).

``led_log`` records every LED change, so tests can check the LED is on only while capturing.
Run standalone: ``python -m tests.emulators.gt521f [--baud 9600] [--capacity 200] ...``.
"""

from __future__ import annotations

import argparse
import os
import struct
from collections import deque

import numpy as np

from tests.emulators.pty_device import (
    PtyDevice,
    apply_fault_arguments,
    common_arguments,
    load_image,
    run_standalone,
    synthetic_print,
)

WIDTH, HEIGHT = 258, 202
RAW_WIDTH, RAW_HEIGHT = 160, 120
ACK, NACK = 0x30, 0x31
NOT_PRESSED, INVALID_POS, NOT_USED, INVALID_BAUD, NOT_SUPPORTED, INVALID_PARAM = (
    0x1012, 0x1003, 0x1004, 0x1002, 0x100E, 0x1011)
NAMES = {0x01: "Open", 0x02: "Close", 0x04: "ChangeBaudRate", 0x12: "CmosLed", 0x20: "GetEnrollCount",
         0x21: "CheckEnrolled", 0x26: "IsPressFinger", 0x60: "CaptureFinger", 0x62: "GetImage",
         0x63: "GetRawImage"}
RATES = (9600, 19200, 38400, 57600, 115200)


def default_image(seed: int = 0) -> np.ndarray:
    return synthetic_print(seed, WIDTH, HEIGHT, 450)


def default_raw_image(seed: int = 0) -> np.ndarray:
    return synthetic_print(seed, RAW_WIDTH, RAW_HEIGHT, 280)


def _sum16(data: bytes) -> bytes:
    return struct.pack("<H", sum(data) & 0xFFFF)


class Gt521fEmulator(PtyDevice):
    name = "gt521f"

    def __init__(self, *, image: np.ndarray | None = None, raw_image: np.ndarray | None = None,
                 seed: int = 0, baud: int = 9600, capacity: int = 3000,
                 link: str | os.PathLike[str] | None = None, pace: bool = False) -> None:
        super().__init__(baud=baud, link=link, pace=pace)
        self.image = default_image(seed) if image is None else image
        self.raw_image = default_raw_image(seed) if raw_image is None else raw_image
        if self.image.shape != (HEIGHT, WIDTH) or self.raw_image.shape != (RAW_HEIGHT, RAW_WIDTH):
            raise ValueError("images must be 258 x 202 and 160 x 120")
        self.capacity = capacity
        self.firmware = 0x20120807
        self.serial_number = bytes(range(0xA0, 0xB0))
        self.led = False
        self.led_log: list[bool] = []
        self.captured = False
        #: NACK codes for the next CaptureFinger commands (then ACK).
        self.capture_errors: deque[int] = deque()
        self._inbox = bytearray()

    # --- the wire -------------------------------------------------------------------------

    def respond(self, code: int, parameter: int = 0) -> None:
        body = b"\x55\xaa" + struct.pack("<HIH", 1, parameter, code)
        self.send_packet(body + _sum16(body))

    def send_data(self, data: bytes) -> None:
        body = b"\x5a\xa5" + struct.pack("<H", 1) + data
        self.send_packet(body + _sum16(body))

    def received(self, data: bytes) -> None:
        self._inbox += data
        while True:
            start = self._inbox.find(b"\x55\xaa")
            if start < 0:
                del self._inbox[:-1]
                return
            del self._inbox[:start]
            if len(self._inbox) < 12:
                return
            packet = bytes(self._inbox[:12])
            del self._inbox[:12]
            if _sum16(packet[:10]) != packet[10:]:
                self.respond(NACK, 0x1006)  # communication error
                continue
            _device, parameter, command = struct.unpack("<HIH", packet[2:10])
            self.command_arrived(NAMES.get(command, f"0x{command:02X}"))
            self._execute(command, parameter)

    # --- the module -----------------------------------------------------------------------

    def _execute(self, command: int, parameter: int) -> None:
        if command == 0x01:  # Open
            self.respond(ACK)
            if parameter:
                self.send_data(struct.pack("<II", self.firmware, 0x2000) + self.serial_number)
        elif command in (0x02, 0x20):  # Close, GetEnrollCount
            self.respond(ACK)
        elif command == 0x04:  # ChangeBaudRate
            if parameter not in RATES:
                self.respond(NACK, INVALID_BAUD)
                return
            self.respond(ACK)
            self.baud = parameter
        elif command == 0x12:  # CmosLed
            self.led = bool(parameter)
            self.led_log.append(self.led)
            self.respond(ACK)
        elif command == 0x21:  # CheckEnrolled
            self.respond(NACK, INVALID_POS if parameter >= self.capacity else NOT_USED)
        elif command == 0x26:  # IsPressFinger
            pressed = self.led and not self.finger_absent()
            self.respond(ACK, 0 if pressed else NOT_PRESSED)
        elif command == 0x60:  # CaptureFinger
            self._capture_finger()
        elif command == 0x62:  # GetImage
            if not self.captured:
                self.respond(NACK, INVALID_PARAM)
                return
            self.respond(ACK)
            self.send_data(self.image.tobytes())
        elif command == 0x63:  # GetRawImage
            if not self.led:
                self.respond(NACK, INVALID_PARAM)
                return
            self.respond(ACK)
            self.send_data(self.raw_image.tobytes())
        else:
            self.respond(NACK, NOT_SUPPORTED)

    def _capture_finger(self) -> None:
        if not self.led:
            self.respond(NACK, NOT_PRESSED)
        elif self.capture_errors:
            self.respond(NACK, self.capture_errors.popleft())
        else:
            self.captured = True
            self.respond(ACK)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.emulators.gt521f",
                                     description="Emulated GT-521F32 / F52 fingerprint module on a pty.")
    common_arguments(parser, 9600)
    parser.add_argument("--capacity", type=int, choices=(200, 3000), default=3000,
                        help="200 emulates a GT-521F32, 3000 a GT-521F52 (default)")
    args = parser.parse_args(argv)
    image = load_image(args.image, WIDTH, HEIGHT) if args.image else None
    raw = load_image(args.image, RAW_WIDTH, RAW_HEIGHT) if args.image else None
    device = Gt521fEmulator(image=image, raw_image=raw, seed=args.seed, baud=args.baud,
                            capacity=args.capacity, link=args.link, pace=args.pace)
    apply_fault_arguments(device, args)
    return run_standalone(device, args.unplug_after)


if __name__ == "__main__":
    raise SystemExit(main())
