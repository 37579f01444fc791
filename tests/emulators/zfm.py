"""Emulated ZhianTec ZFM / R30x / AS608 module (device side), over a pty.

Written from the protocol facts (shared notes, R503 manual), not from drivers/zfm_codec.py:
its packets are built and parsed by the few lines below, so a bug in the driver's codec
cannot be mirrored here. Behaviour:

* packets for another address are ignored (no reply), as real modules do;
* with a non-zero password every command but VfyPwd / handshake is refused (0x21) until
  VfyPwd succeeds; a wrong password answers 0x13;
* GenImg answers "no finger" (0x02) while ``faults.no_finger`` lasts, then takes the image;
* Img2Tz answers the next code queued in ``img2tz_codes`` (0x06 too messy, 0x07 too few
  features), else 0x00;
* UpImage sends the image's upper 4 bits, two pixels a byte, in packets of the configured
  size, the last one with packet id 08.

Run standalone: ``python -m tests.emulators.zfm [--baud 57600] [--password N] ...``; the first
line on stdout is the pty's path.
"""

from __future__ import annotations

import argparse
import os
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

WIDTH, HEIGHT = 256, 288
NAMES = {0x01: "GenImg", 0x02: "Img2Tz", 0x0A: "UpImage", 0x0F: "ReadSysPara", 0x13: "VfyPwd",
         0x1D: "TemplateNum", 0x3C: "ReadProdInfo", 0x40: "Handshake"}


def default_image(seed: int = 0) -> np.ndarray:
    return synthetic_print(seed, WIDTH, HEIGHT, 500)


def reduce(image: np.ndarray) -> np.ndarray:
    """What the host gets back from ``image`` after the 4-bit upload, scaled to 8 bits."""
    return (image >> 4) * 17


def _word(value: int) -> bytes:
    return bytes([(value >> 8) & 0xFF, value & 0xFF])


class ZfmEmulator(PtyDevice):
    name = "zfm"

    def __init__(self, *, image: np.ndarray | None = None, seed: int = 0, address: int = 0xFFFFFFFF,
                 password: int = 0, baud: int = 57600, packet_size: int = 128, product_info: bool = True,
                 library_size: int = 200, link: str | os.PathLike[str] | None = None,
                 pace: bool = False) -> None:
        super().__init__(baud=baud, link=link, pace=pace)
        self.image = default_image(seed) if image is None else image
        if self.image.shape != (HEIGHT, WIDTH):
            raise ValueError(f"the image must be {WIDTH} x {HEIGHT}, got {self.image.shape}")
        self.address = address
        self.password = password
        self.packet_size = packet_size
        self.product_info = product_info
        self.library_size = library_size
        self.serial_number = f"EMU{seed:05d}"
        self.verified = password == 0
        self.has_image = False
        #: Confirmation codes for the next Img2Tz commands (then 0x00).
        self.img2tz_codes: deque[int] = deque()
        self._inbox = bytearray()

    def expected_image(self) -> np.ndarray:
        return reduce(self.image)

    # --- the wire -------------------------------------------------------------------------

    def packet(self, pid: int, content: bytes) -> bytes:
        length = len(content) + 2
        total = pid + (length >> 8) + (length & 0xFF) + sum(content)
        return b"\xef\x01" + self.address.to_bytes(4, "big") + bytes([pid]) + _word(length) + content \
            + _word(total & 0xFFFF)

    def ack(self, code: int, data: bytes = b"") -> None:
        self.send_packet(self.packet(0x07, bytes([code]) + data))

    def received(self, data: bytes) -> None:
        self._inbox += data
        while True:
            start = self._inbox.find(b"\xef\x01")
            if start < 0:
                del self._inbox[:-1]
                return
            del self._inbox[:start]
            if len(self._inbox) < 9:
                return
            length = int.from_bytes(self._inbox[7:9], "big")
            if length < 3 or length > 258:
                del self._inbox[:2]
                continue
            if len(self._inbox) < 9 + length:
                return
            frame = bytes(self._inbox[:9 + length])
            del self._inbox[:9 + length]
            self._frame(frame)

    def _frame(self, frame: bytes) -> None:
        address = int.from_bytes(frame[2:6], "big")
        pid = frame[6]
        content = frame[9:-2]
        if address != self.address:
            self.commands.append("ignored:address")
            return
        if pid != 0x01:
            return
        length = len(content) + 2
        total = (pid + (length >> 8) + (length & 0xFF) + sum(content)) & 0xFFFF
        if total != int.from_bytes(frame[-2:], "big"):
            self.ack(0x01)
            return
        instruction, params = content[0], content[1:]
        self.command_arrived(NAMES.get(instruction, f"0x{instruction:02X}"))
        if not self.verified and instruction not in (0x13, 0x40):
            self.ack(0x21)
            return
        self._execute(instruction, params)

    # --- the module -----------------------------------------------------------------------

    def _execute(self, instruction: int, params: bytes) -> None:
        if instruction == 0x13:  # VfyPwd
            ok = int.from_bytes(params[:4], "big") == self.password
            self.verified = self.verified or ok
            self.ack(0x00 if ok else 0x13)
        elif instruction == 0x40:  # handshake
            self.ack(0x00)
        elif instruction == 0x0F:  # ReadSysPara
            size_code = {32: 0, 64: 1, 128: 2, 256: 3}[self.packet_size]
            self.ack(0x00, _word(0) + _word(0) + _word(self.library_size) + _word(3)
                     + self.address.to_bytes(4, "big") + _word(size_code) + _word(self.baud // 9600))
        elif instruction == 0x3C and self.product_info:  # ReadProdInfo
            self.ack(0x00, b"ZFM-EMU".ljust(16, b"\0") + b"0001" + self.serial_number.encode().ljust(8, b"\0")
                     + bytes([1, 0]) + b"EMU-OPT".ljust(8, b"\0") + _word(WIDTH) + _word(HEIGHT)
                     + _word(512) + _word(self.library_size))
        elif instruction == 0x1D:  # TemplateNum
            self.ack(0x00, _word(0))
        elif instruction == 0x01:  # GenImg
            if self.finger_absent():
                self.ack(0x02)
            else:
                self.has_image = True
                self.ack(0x00)
        elif instruction == 0x02:  # Img2Tz
            code = self.img2tz_codes.popleft() if self.img2tz_codes else 0x00
            self.ack(code if self.has_image else 0x15)
        elif instruction == 0x0A:  # UpImage
            if not self.has_image:
                self.ack(0x15)
                return
            self.ack(0x00)
            self._upload()
        else:
            self.ack(0x01)  # this emulator does not know the instruction

    def _upload(self) -> None:
        high = self.image[:, 0::2] >> 4
        low = self.image[:, 1::2] >> 4
        packed = ((high << 4) | low).astype(np.uint8).tobytes()
        size = self.packet_size
        for offset in range(0, len(packed), size):
            last = offset + size >= len(packed)
            self.send_packet(self.packet(0x08 if last else 0x02, packed[offset:offset + size]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.emulators.zfm",
                                     description="Emulated ZFM / R30x / AS608 fingerprint module on a pty.")
    common_arguments(parser, 57600)
    parser.add_argument("--address", type=lambda v: int(v, 0), default=0xFFFFFFFF,
                        help="module address (default 0xFFFFFFFF)")
    parser.add_argument("--password", type=lambda v: int(v, 0), default=0, help="module password (default 0)")
    parser.add_argument("--packet-size", type=int, choices=(32, 64, 128, 256), default=128)
    args = parser.parse_args(argv)
    image = load_image(args.image, WIDTH, HEIGHT) if args.image else None
    device = ZfmEmulator(image=image, seed=args.seed, address=args.address, password=args.password,
                         baud=args.baud, packet_size=args.packet_size, link=args.link, pace=args.pace)
    apply_fault_arguments(device, args)
    return run_standalone(device, args.unplug_after)


if __name__ == "__main__":
    raise SystemExit(main())
