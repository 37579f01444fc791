"""The receive buffer the UART codecs share: bytes in, noise counted when thrown away."""

from __future__ import annotations


class ByteBuffer:
    """Bytes received but not yet decoded; subclasses decode frames out of ``_buf``."""

    def __init__(self) -> None:
        self._buf = bytearray()
        #: Bytes thrown away as noise so far (for logs and tests).
        self.skipped = 0

    def feed(self, data: bytes) -> None:
        self._buf += data

    def reset(self) -> None:
        """Drop everything buffered (after a resynchronisation), counting it as noise."""
        self.skipped += len(self._buf)
        self._buf.clear()

    @property
    def pending(self) -> int:
        return len(self._buf)
