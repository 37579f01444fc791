"""Time-ordered unique ids (UUIDv7, RFC 9562).

Python gains uuid.uuid7 only in 3.14; these few lines give the same layout on 3.11.
A per-process counter in the random bits keeps ids from one process strictly increasing
even within one millisecond, so sorting ids sorts captures by creation time.

Ids travel in envelopes and become file names on the central side, so is_item_id is the
one definition of what a capture or registration id may look like (exactly what uuid7()
makes); the receiver checks every id against it before it touches the file system.
"""

from __future__ import annotations

import os
import re
import threading
import time
import uuid

#: The canonical text of a UUIDv7 (lower-case hex, version 7, RFC 9562 variant): nothing
#: else, so no id can hold a separator, "..", a NUL or an absolute path.
ITEM_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")

_lock = threading.Lock()
_last_ms = 0
_counter = 0


def uuid7() -> str:
    global _last_ms, _counter
    with _lock:
        ms = time.time_ns() // 1_000_000
        if ms <= _last_ms:
            # Same millisecond (or the clock stepped back): keep order by counting up.
            ms = _last_ms
            _counter += 1
            if _counter > 0xFFF:
                ms += 1
                _counter = 0
        else:
            _counter = int.from_bytes(os.urandom(2), "big") & 0x3FF
        _last_ms = ms
        counter = _counter
    rand = int.from_bytes(os.urandom(8), "big") & 0x3FFF_FFFF_FFFF_FFFF
    value = (ms & 0xFFFF_FFFF_FFFF) << 80
    value |= 0x7 << 76  # version 7
    value |= counter << 64
    value |= 0b10 << 62  # RFC 4122 variant
    value |= rand
    return str(uuid.UUID(int=value))


def is_item_id(value: object) -> bool:
    """True when value is an id as uuid7() makes them (str only; fullmatch: no trailing newline)."""
    return isinstance(value, str) and ITEM_ID.fullmatch(value) is not None
