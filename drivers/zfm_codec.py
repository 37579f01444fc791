"""Wire format of the ZhianTec ZFM / R30x / R503 / AS608 family: packets, checksums and
resynchronisation. Pure (bytes in, packets out, no I/O), so it is tested against the
datasheet's golden bytes rather than only against our own emulator.

A packet, multi-byte fields big-endian::

    EF 01 | address (4) | packet id (1) | length (2) | content (length - 2) | checksum (2)

``length`` counts the content and the checksum; the checksum is the 16-bit sum of the packet
id, both length bytes and the content, overflow dropped. Example (the R503 manual, VfyPwd
with password 0): ``EF01 FFFFFFFF 01 0007 13 00000000 001B``.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

import numpy as np

from drivers.byte_buffer import ByteBuffer

HEADER = b"\xef\x01"
_PREFIX = 9  # header 2 + address 4 + packet id 1 + length 2
DEFAULT_ADDRESS = 0xFFFFFFFF
DEFAULT_PASSWORD = 0
#: The largest content the module sends (packet-size code 3); a longer length is noise.
MAX_CONTENT = 256

#: The image buffer, and what travels over the UART: 4 bits a pixel, two pixels a byte.
IMAGE_WIDTH = 256
IMAGE_HEIGHT = 288
IMAGE_BYTES = IMAGE_WIDTH * IMAGE_HEIGHT // 2


class PacketId(enum.IntEnum):
    COMMAND = 0x01
    DATA = 0x02  # more data packets follow
    ACK = 0x07
    END = 0x08  # the last data packet


class Instruction(enum.IntEnum):
    GEN_IMG = 0x01
    IMG2TZ = 0x02
    UP_IMAGE = 0x0A
    READ_SYS_PARA = 0x0F
    VFY_PWD = 0x13
    TEMPLATE_NUM = 0x1D
    READ_PROD_INFO = 0x3C
    HANDSHAKE = 0x40


class Code(enum.IntEnum):
    """Confirmation codes, the first content byte of an acknowledgement."""

    OK = 0x00
    PACKET_ERROR = 0x01
    NO_FINGER = 0x02
    CAPTURE_FAILED = 0x03
    TOO_MESSY = 0x06
    TOO_FEW_FEATURES = 0x07
    UPLOAD_IMAGE_FAILED = 0x0F
    WRONG_PASSWORD = 0x13
    NO_VALID_IMAGE = 0x15
    BAD_ADDRESS = 0x20
    VERIFY_PASSWORD_FIRST = 0x21


CODE_TEXT: dict[int, str] = {
    0x00: "ok", 0x01: "packet receive error", 0x02: "no finger", 0x03: "capture failed",
    0x06: "image too messy", 0x07: "too few features", 0x08: "no match", 0x09: "not found",
    0x0A: "merge failed", 0x0B: "address out of range", 0x0C: "read error",
    0x0D: "upload template error", 0x0E: "cannot receive following packets",
    0x0F: "upload image failed", 0x10: "delete failed", 0x11: "clear failed",
    0x13: "wrong password", 0x15: "no valid primary image", 0x18: "flash write error",
    0x1A: "bad register", 0x20: "bad address", 0x21: "must verify password first",
}


def code_text(code: int) -> str:
    return CODE_TEXT.get(code, f"unknown code 0x{code:02X}")


@dataclass(frozen=True)
class Packet:
    address: int
    pid: int
    content: bytes


@dataclass(frozen=True)
class Corrupt:
    """A packet that failed its checksum; the decoder has skipped past its header."""

    address: int
    pid: int
    expected: int
    received: int


def checksum(pid: int, content: bytes) -> int:
    length = len(content) + 2
    return (pid + (length >> 8) + (length & 0xFF) + sum(content)) & 0xFFFF


def encode(address: int, pid: int, content: bytes) -> bytes:
    if len(content) > MAX_CONTENT:
        raise ValueError(f"content of {len(content)} bytes exceeds {MAX_CONTENT}")
    return (HEADER + struct.pack(">IBH", address, pid, len(content) + 2) + content
            + struct.pack(">H", checksum(pid, content)))


def command(address: int, instruction: int, params: bytes = b"") -> bytes:
    return encode(address, PacketId.COMMAND, bytes([instruction]) + params)


def verify_password(address: int, password: int) -> bytes:
    return command(address, Instruction.VFY_PWD, struct.pack(">I", password))


def img2tz(address: int, buffer_id: int = 1) -> bytes:
    return command(address, Instruction.IMG2TZ, bytes([buffer_id]))


class PacketDecoder(ByteBuffer):
    """Turns a byte stream into packets, skipping garbage and corrupt packets.

    ``feed`` appends bytes; ``next`` returns the next Packet, a Corrupt notice, or None when
    more bytes are needed. After a bad checksum only the header's first byte is dropped, so a
    real packet swallowed by a false header (a dropped byte, noise that looks like EF 01) is
    still found on the rescan.
    """

    def next(self) -> Packet | Corrupt | None:
        while True:
            start = self._buf.find(HEADER)
            if start < 0:
                # Keep a trailing EF: it may be the first half of the next header.
                keep = 1 if self._buf[-1:] == HEADER[:1] else 0
                self._skip(len(self._buf) - keep)
                return None
            self._skip(start)
            if len(self._buf) < _PREFIX:
                return None
            address, pid, length = struct.unpack(">IBH", self._buf[2:_PREFIX])
            if pid not in PacketId._value2member_map_ or not 2 < length <= MAX_CONTENT + 2:
                self._skip(1)  # not a header after all
                continue
            end = _PREFIX + length
            if len(self._buf) < end:
                return None
            content = bytes(self._buf[_PREFIX:end - 2])
            (received,) = struct.unpack(">H", self._buf[end - 2:end])
            expected = checksum(pid, content)
            if received != expected:
                self._skip(1)
                return Corrupt(address, pid, expected, received)
            del self._buf[:end]
            return Packet(address, pid, content)

    def _skip(self, n: int) -> None:
        if n:
            self.skipped += n
            del self._buf[:n]


@dataclass(frozen=True)
class SysPara:
    """The ReadSysPara reply: the module's persistent settings."""

    status: int
    system_id: int
    library_size: int
    security_level: int
    address: int
    packet_size: int  # bytes of content per data packet
    baud: int

    @classmethod
    def parse(cls, data: bytes) -> SysPara:
        if len(data) < 16:
            raise ValueError(f"ReadSysPara reply has {len(data)} bytes, expected 16")
        status, system_id, library, level, address, size_code, baud_n = struct.unpack(
            ">HHHHIHH", data[:16])
        return cls(status, system_id, library, level, address, 32 << min(size_code, 3), 9600 * baud_n)


@dataclass(frozen=True)
class ProductInfo:
    """The ReadProdInfo reply (R503 and newer firmware)."""

    model: str
    batch: str
    serial: str
    hardware: str
    sensor: str
    sensor_width: int
    sensor_height: int
    template_size: int
    database_size: int

    @classmethod
    def parse(cls, data: bytes) -> ProductInfo:
        if len(data) < 46:
            raise ValueError(f"ReadProdInfo reply has {len(data)} bytes, expected 46")
        model, batch, serial, hw_main, hw_sub, sensor, width, height, tsize, dbsize = struct.unpack(
            ">16s4s8sBB8sHHHH", data[:46])

        def text(raw: bytes) -> str:
            return raw.rstrip(b"\0 ").decode("ascii", "replace")

        return cls(text(model), text(batch), text(serial), f"{hw_main}.{hw_sub}", text(sensor),
                   width, height, tsize, dbsize)


def unpack_image(data: bytes, width: int = IMAGE_WIDTH, height: int = IMAGE_HEIGHT) -> np.ndarray:
    """The uploaded image as 8-bit greyscale: each 4-bit nibble times 17 (0x0 -> 0, 0xF -> 255).

    Two horizontally adjacent pixels share a byte, the left one in the high nibble.
    """
    if len(data) != width * height // 2:
        raise ValueError(f"image data has {len(data)} bytes, expected {width * height // 2}")
    packed = np.frombuffer(data, dtype=np.uint8)
    pixels = np.empty(packed.size * 2, dtype=np.uint8)
    pixels[0::2] = packed >> 4
    pixels[1::2] = packed & 0x0F
    return (pixels * 17).reshape(height, width)
