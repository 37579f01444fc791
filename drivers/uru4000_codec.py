"""DigitalPersona U.are.U 4000 / 4000B / 4500: the pure part of the protocol.

Register and mode numbers, interrupt types, the capture frame (a 64-byte header, then up to
290 rows of 384 bytes in blocks), the block descrambler and the final image (inverted, and
turned 180 degrees on the models whose sensor is mounted that way). No USB here: bytes in,
arrays out, so it is tested against hand-made frames. Facts from the shared device notes
(section 3), which come from the libfprint ``uru4000`` driver.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

#: Product ids whose frames arrive rotated by 180 degrees: the 4000's sensor is mounted the
#: other way up from the 4000B/4500's. (The ids and model names: drivers/registry.py.)
FLIPPED_PRODUCTS = frozenset({0x0007, 0x0008})

EP_INTR = 0x81
EP_DATA = 0x82
INTERFACE_CLASS = (0xFF, 0xFF, 0xFF)
#: bRequest of every register access; wValue is the register, wIndex 0.
REQUEST = 0x04
CTRL_IN = 0xC0  # vendor, device to host
CTRL_OUT = 0x40  # vendor, host to device
IRQ_LENGTH = 64
DEVICE_INFO_LENGTH = 16

WIDTH = 384
HEIGHT = 290
HEADER_LENGTH = 64
FRAME_LENGTH = HEADER_LENGTH + WIDTH * HEIGHT
PPI = 512


class Reg(enum.IntEnum):
    HWSTAT = 0x07
    SCRAMBLE_INDEX = 0x33
    SCRAMBLE_KEY = 0x34
    MODE = 0x4E
    DEVICE_INFO = 0xF0


class Mode(enum.IntEnum):
    AWAIT_FINGER_ON = 0x10
    AWAIT_FINGER_OFF = 0x12
    CAPTURE = 0x20
    OFF = 0x70
    READY = 0x80


class Irq(enum.IntEnum):
    SCAN_POWER_ON = 0x56AA
    FINGER_ON = 0x0101
    FINGER_OFF = 0x0200
    #: The scanner's own fault report; the next frame is usually empty.
    FATAL = 0x0800


#: HWSTAT bit 7: low-power mode. Bits 7 and 2 together: a confused power state that needs the
#: reboot loop before the normal power-up works.
HWSTAT_LOW_POWER = 0x80
HWSTAT_NEEDS_REBOOT = 0x84


class BlockFlag(enum.IntFlag):
    CHANGE_KEY = 0x80
    NO_KEY_UPDATE = 0x04
    ENCRYPTED = 0x02
    NOT_PRESENT = 0x01


def irq_type(packet: bytes) -> int:
    """The interrupt's type: its first two bytes, big-endian."""
    if len(packet) < 2:
        raise ValueError(f"interrupt packet of {len(packet)} bytes")
    return struct.unpack(">H", bytes(packet[:2]))[0]


class FrameError(ValueError):
    """The frame cannot be an image: short, or its header contradicts its length."""


@dataclass(frozen=True)
class Block:
    flags: int
    lines: int


@dataclass(frozen=True)
class FrameHeader:
    #: Rows the scanner actually sent after the header (rows of absent blocks are not sent).
    num_lines: int
    key_number: int
    blocks: tuple[Block, ...]

    @classmethod
    def parse(cls, data: bytes) -> FrameHeader:
        if len(data) < HEADER_LENGTH:
            raise FrameError(f"frame of {len(data)} bytes, shorter than its {HEADER_LENGTH}-byte header")
        num_lines, key_number = struct.unpack_from("<HB", data, 4)
        pairs = struct.unpack_from("30B", data, 16)
        blocks = []
        for flags, lines in zip(pairs[::2], pairs[1::2], strict=True):
            if lines == 0:  # the table ends at the first empty entry
                break
            blocks.append(Block(flags, lines))
        return cls(num_lines, key_number, tuple(blocks))

    @property
    def scrambled(self) -> bool:
        return any(b.flags & BlockFlag.ENCRYPTED for b in self.blocks)

    def check(self, length: int) -> None:
        """Raise FrameError unless ``length`` bytes can hold what the header describes."""
        if self.num_lines == 0:
            raise FrameError("empty frame (0 lines)")
        if self.num_lines > HEIGHT:
            raise FrameError(f"header claims {self.num_lines} lines; the sensor has {HEIGHT}")
        if length < HEADER_LENGTH + self.num_lines * WIDTH:
            raise FrameError(f"frame of {length} bytes, header promises {self.num_lines} lines "
                             f"({HEADER_LENGTH + self.num_lines * WIDTH} bytes)")
        present = sum(b.lines for b in self.blocks if not b.flags & BlockFlag.NOT_PRESENT)
        if present < self.num_lines:
            raise FrameError(f"block table covers {present} of the {self.num_lines} lines sent")


# --- descrambling ------------------------------------------------------------------------

#: Taps of the 32-bit key's linear feedback shift register.
_TAPS = 0x9248144D
#: Key bits that make up the XOR byte, least significant output bit first.
_XOR_BITS = (4, 8, 11, 14, 18, 21, 24, 29)


def next_key(key: int) -> int:
    """One LFSR step: the parity of the tapped bits enters at the top as the key shifts right."""
    feedback = (key & _TAPS).bit_count() & 1
    return (feedback << 31) | (key >> 1)


def skip_key(key: int, steps: int) -> int:
    for _ in range(steps):
        key = next_key(key)
    return key


def descramble(data: bytearray, start: int, length: int, key: int) -> int:
    """Descramble ``data[start:start + length]`` in place; return the key after the block.

    The scanner sends each scrambled byte one position late, XORed with a byte of the key
    stream, so byte i comes from byte i + 1; the block's last byte is lost (it reads as 0).
    """
    taps = _TAPS
    for i in range(start, start + length - 1):
        # _XOR_BITS gathered into one byte, unrolled: this loop runs once per pixel.
        xor = (((key >> 4) & 1) | ((key >> 7) & 2) | ((key >> 9) & 4) | ((key >> 11) & 8)
               | ((key >> 14) & 16) | ((key >> 16) & 32) | ((key >> 18) & 64) | ((key >> 22) & 128))
        key = (((key & taps).bit_count() & 1) << 31) | (key >> 1)
        data[i] = data[i + 1] ^ xor
    data[start + length - 1] = 0
    return next_key(key)


class KeyNeeded(Exception):
    """Descrambling needs the key for ``key_number`` (a key exchange with the scanner)."""

    def __init__(self, key_number: int) -> None:
        super().__init__(f"key {key_number} needed")
        self.key_number = key_number


class UnsupportedScrambling(Exception):
    """A block whose scrambling this codec does not know how to undo."""


def decode_blocks(header: FrameHeader, data: bytearray, get_key: Callable[[int], int]) -> None:
    """Descramble the frame's rows (``data`` after the header) in place.

    ``get_key(key_number)`` returns the 32-bit key the scanner used for that key number; a
    block flagged CHANGE_KEY switches to the next key number from that block on. Unscrambled
    blocks still advance the key stream, as the scanner does.
    """
    key_number = header.key_number
    key = get_key(key_number)
    done = 0
    for index, block in enumerate(header.blocks):
        if done >= header.num_lines:
            break
        if block.flags & BlockFlag.CHANGE_KEY:
            key_number = (key_number + 1) & 0xFF
            key = get_key(key_number)
        length = block.lines * WIDTH
        mode = block.flags & (BlockFlag.NO_KEY_UPDATE | BlockFlag.ENCRYPTED)
        if mode == BlockFlag.ENCRYPTED:
            if block.flags & BlockFlag.NOT_PRESENT:
                raise UnsupportedScrambling(f"block {index} is flagged both scrambled and not sent")
            key = descramble(data, done * WIDTH, length, key)
        elif mode == 0:
            key = skip_key(key, length)
        elif mode & BlockFlag.ENCRYPTED:
            # Scrambled without a key update: no description of this mode exists; guessing
            # would hand on noise as a fingerprint.
            raise UnsupportedScrambling(f"block {index} has flags 0x{block.flags:02X} "
                                        "(scrambled without key update)")
        if not block.flags & BlockFlag.NOT_PRESENT:
            done += block.lines


def assemble(header: FrameHeader, rows: bytes | bytearray) -> np.ndarray:
    """The sensor's 290 x 384 rows, as sent (not inverted): an absent block repeats the rows
    that follow it, as the vendor's driver shows them; rows past the table stay 0."""
    sent = np.frombuffer(bytes(rows[:header.num_lines * WIDTH]), dtype=np.uint8).reshape(-1, WIDTH)
    out = np.zeros((HEIGHT, WIDTH), dtype=np.uint8)
    to = src = 0
    for block in header.blocks:
        if src >= header.num_lines or to >= HEIGHT:
            break
        n = min(block.lines, HEIGHT - to, header.num_lines - src)
        out[to:to + n] = sent[src:src + n]
        if not block.flags & BlockFlag.NOT_PRESENT:
            src += block.lines
        to += block.lines
    return out


def to_image(raw: np.ndarray, flip: bool) -> np.ndarray:
    """Ridges dark on light, the right way up: the sensor reports ridges bright."""
    image = 255 - raw
    return np.ascontiguousarray(image[::-1, ::-1]) if flip else image


def parse_device_info(data: bytes) -> str:
    """The two version words of register 0xF0 (hardware and firmware, order undocumented)."""
    if len(data) < DEVICE_INFO_LENGTH:
        return ""
    return f"{data[10]:02x}{data[11]:02x}/{data[4]:02x}{data[5]:02x}"
