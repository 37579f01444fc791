"""Wire format of the ADH-Tech GT-521F32 / GT-521F52: command, response and data packets.
Pure (bytes in, packets out, no I/O), tested against the datasheet's golden bytes.

All fields little-endian::

    command / response (12 bytes): 55 AA | device id (2) | parameter (4) | code (2) | checksum (2)
    data:                          5A A5 | device id (2) | data (n)                 | checksum (2)

The checksum is the 16-bit sum of every byte before it. A response's code is 0x30 (ACK, the
result in the parameter) or 0x31 (NACK, an error code in the parameter). A data packet
carries no length: the command that asked for it tells how long it is. Example (datasheet):
Open with parameter 0 is ``55 AA 01 00 00 00 00 00 01 00 01 01``.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from drivers.byte_buffer import ByteBuffer

COMMAND_START = b"\x55\xaa"
DATA_START = b"\x5a\xa5"
PACKET_SIZE = 12
DEVICE_ID = 0x0001

#: GetImage: the processed image; GetRawImage: a quarter-size live camera frame.
IMAGE_WIDTH, IMAGE_HEIGHT = 258, 202
RAW_WIDTH, RAW_HEIGHT = 160, 120
#: Open with a non-zero parameter answers with this much device information.
OPEN_INFO_SIZE = 24


class Command(enum.IntEnum):
    OPEN = 0x01
    CLOSE = 0x02
    CHANGE_BAUD = 0x04
    CMOS_LED = 0x12
    GET_ENROLL_COUNT = 0x20
    CHECK_ENROLLED = 0x21
    IS_PRESS_FINGER = 0x26
    CAPTURE_FINGER = 0x60
    GET_IMAGE = 0x62
    GET_RAW_IMAGE = 0x63


ACK = 0x30
NACK = 0x31


class Error(enum.IntEnum):
    """NACK parameters."""

    TIMEOUT = 0x1001
    INVALID_BAUD = 0x1002
    INVALID_POS = 0x1003
    IS_NOT_USED = 0x1004
    IS_ALREADY_USED = 0x1005
    COMM_ERR = 0x1006
    VERIFY_FAILED = 0x1007
    IDENTIFY_FAILED = 0x1008
    DB_IS_FULL = 0x1009
    DB_IS_EMPTY = 0x100A
    TURN_ERR = 0x100B
    BAD_FINGER = 0x100C
    ENROLL_FAILED = 0x100D
    NOT_SUPPORTED = 0x100E
    DEV_ERR = 0x100F
    CAPTURE_CANCELED = 0x1010
    INVALID_PARAM = 0x1011
    FINGER_IS_NOT_PRESSED = 0x1012


ERROR_TEXT: dict[int, str] = {
    0x1001: "timeout", 0x1002: "invalid baud rate", 0x1003: "invalid position",
    0x1004: "position not used", 0x1005: "position already used", 0x1006: "communication error",
    0x1007: "verify failed", 0x1008: "identify failed", 0x1009: "database full",
    0x100A: "database empty", 0x100B: "enrolment order wrong", 0x100C: "bad finger",
    0x100D: "enrolment failed", 0x100E: "not supported", 0x100F: "device error",
    0x1010: "capture cancelled", 0x1011: "invalid parameter", 0x1012: "finger not pressed",
}


def error_text(code: int) -> str:
    return ERROR_TEXT.get(code, f"unknown error 0x{code:04X}")


def checksum(data: bytes) -> int:
    return sum(data) & 0xFFFF


def encode_command(command: int, parameter: int = 0, device_id: int = DEVICE_ID) -> bytes:
    body = COMMAND_START + struct.pack("<HIH", device_id, parameter & 0xFFFFFFFF, command)
    return body + struct.pack("<H", checksum(body))


def encode_data(data: bytes, device_id: int = DEVICE_ID) -> bytes:
    body = DATA_START + struct.pack("<H", device_id) + data
    return body + struct.pack("<H", checksum(body))


@dataclass(frozen=True)
class Response:
    device_id: int
    parameter: int
    code: int

    @property
    def ack(self) -> bool:
        return self.code == ACK


@dataclass(frozen=True)
class Data:
    device_id: int
    data: bytes


@dataclass(frozen=True)
class Corrupt:
    """A packet that failed its checksum; the decoder has skipped past its start code."""

    kind: str  # "response" or "data"
    expected: int
    received: int


class PacketDecoder(ByteBuffer):
    """Finds response and data packets in a byte stream, skipping garbage.

    The caller says what it expects next (``next_response`` or ``next_data(n)``), because a
    data packet's length is known only from the command that asked for it, and a data packet
    must not be scanned over as noise while a response is looked for (or the reverse).
    """

    def next_response(self) -> Response | Corrupt | None:
        while True:
            if not self._find(COMMAND_START) or len(self._buf) < PACKET_SIZE:
                return None
            device_id, parameter, code = struct.unpack("<HIH", self._buf[2:10])
            (received,) = struct.unpack("<H", self._buf[10:12])
            expected = checksum(self._buf[:10])
            if received != expected:
                self._skip(1)
                return Corrupt("response", expected, received)
            if code not in (ACK, NACK):
                self._skip(1)  # a well-summed packet that is no response: a command echo, noise
                continue
            del self._buf[:PACKET_SIZE]
            return Response(device_id, parameter, code)

    def next_data(self, size: int) -> Data | Corrupt | None:
        total = 4 + size + 2
        if not self._find(DATA_START) or len(self._buf) < total:
            return None
        (received,) = struct.unpack("<H", self._buf[total - 2:total])
        expected = checksum(self._buf[:total - 2])
        if received != expected:
            self._skip(1)
            return Corrupt("data", expected, received)
        (device_id,) = struct.unpack("<H", self._buf[2:4])
        data = bytes(self._buf[4:4 + size])
        del self._buf[:total]
        return Data(device_id, data)

    def _find(self, start: bytes) -> bool:
        """Drop bytes before ``start``; True when the buffer now begins with it."""
        at = self._buf.find(start)
        if at < 0:
            keep = 1 if self._buf[-1:] == start[:1] else 0
            self._skip(len(self._buf) - keep)
            return False
        self._skip(at)
        return True

    def _skip(self, n: int) -> None:
        if n:
            self.skipped += n
            del self._buf[:n]


@dataclass(frozen=True)
class OpenInfo:
    """The data packet Open answers with when asked for device information."""

    firmware: int
    iso_area_max_size: int
    serial: bytes

    @classmethod
    def parse(cls, data: bytes) -> OpenInfo:
        if len(data) != OPEN_INFO_SIZE:
            raise ValueError(f"Open info has {len(data)} bytes, expected {OPEN_INFO_SIZE}")
        firmware, iso_area = struct.unpack("<II", data[:8])
        return cls(firmware, iso_area, bytes(data[8:24]))

    @property
    def serial_hex(self) -> str:
        return self.serial.hex().upper()
