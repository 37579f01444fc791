"""The HTTP side of the MOSIP SBI: its own methods (MOSIPDISC, MOSIPDINFO, RCAPTURE, STREAM) on
127.0.0.1, every answer bounded in size and time.

The device service is hostile input: a compromised service on the kiosk could answer slowly,
endlessly or with a redirect to elsewhere. So each call has one deadline for the whole answer
(not only per read), a byte limit read before anything is parsed, no redirect is followed (a
3xx is an error) and only loopback addresses are ever contacted.
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import time
from dataclasses import dataclass
from typing import Any

from drivers.errors import PermanentDeviceError, TransientDeviceError

#: Sent in the EXT header, as the specification asks of the calling application.
APP_NAME = "kiosk-agent"
_CHUNK = 64 * 1024
JPEG_SOI, JPEG_EOI = b"\xff\xd8", b"\xff\xd9"


class SbiUnreachable(TransientDeviceError):
    """Nothing answers on the port (the service is stopped or restarting)."""


class SbiTimeout(TransientDeviceError):
    """The service did not finish its answer before the deadline."""


class SbiProtocolError(PermanentDeviceError):
    """An answer that breaks the specification (size, status, JSON): the service is refused."""


def check_loopback(host: str) -> str:
    try:
        if not ipaddress.ip_address(host).is_loopback:
            raise ValueError
    except ValueError:
        raise ValueError(f"host {host!r} must be a loopback IP address (the SBI binds 127.0.0.1)") from None
    return host


@dataclass(frozen=True)
class SbiEndpoint:
    host: str
    port: int

    def _connect(self, deadline: float, method: str, path: str,
                 body: bytes | None) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        left = deadline - time.monotonic()
        if left <= 0:
            raise SbiTimeout(f"SBI {method} on port {self.port}: no time left")
        conn = http.client.HTTPConnection(self.host, self.port, timeout=left)
        headers = {"EXT": APP_NAME, "Content-Type": "application/json", "Accept": "application/json"}
        try:
            conn.request(method, path, body=body, headers=headers)
            return conn, conn.getresponse()
        except ConnectionRefusedError:
            conn.close()
            raise SbiUnreachable(f"no SBI device service on port {self.port}") from None
        except TimeoutError:
            conn.close()
            raise SbiTimeout(f"SBI {method} on port {self.port} timed out") from None
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise SbiUnreachable(f"SBI {method} on port {self.port} failed: {type(exc).__name__}") from None

    def call(self, method: str, path: str, body: dict[str, Any] | None, timeout_s: float,
             max_bytes: int) -> Any:
        """The JSON answer of one request; the whole answer must arrive within ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        data = json.dumps(body).encode() if body is not None else None
        conn, response = self._connect(deadline, method, path, data)
        try:
            if response.status != 200:
                raise SbiProtocolError(f"SBI {method} on port {self.port} answered HTTP {response.status}; "
                                       "redirects and errors are not followed")
            raw = self._read(response, deadline, max_bytes, method)
        finally:
            response.close()
            conn.close()
        try:
            return json.loads(raw)
        except (ValueError, RecursionError):
            raise SbiProtocolError(
                f"SBI {method} on port {self.port} answered with something not JSON") from None

    def _read(self, response: http.client.HTTPResponse, deadline: float, max_bytes: int,
              method: str) -> bytes:
        declared = response.getheader("Content-Length")
        if declared is not None and declared.isdigit() and int(declared) > max_bytes:
            raise SbiProtocolError(
                f"SBI {method} answer of {declared} bytes exceeds the {max_bytes}-byte limit")
        parts, size = [], 0
        while True:
            self._left(deadline, method, response)
            try:
                part = response.read1(_CHUNK)
            except TimeoutError:
                raise SbiTimeout(f"SBI {method} on port {self.port} stalled mid-answer") from None
            except (OSError, http.client.HTTPException) as exc:
                raise SbiUnreachable(
                    f"SBI {method} on port {self.port} broke off: {type(exc).__name__}") from None
            if not part:
                return b"".join(parts)
            size += len(part)
            if size > max_bytes:
                raise SbiProtocolError(f"SBI {method} answer exceeds the {max_bytes}-byte limit")
            parts.append(part)

    def _left(self, deadline: float, method: str, response: http.client.HTTPResponse) -> None:
        left = deadline - time.monotonic()
        if left <= 0:
            raise SbiTimeout(f"SBI {method} on port {self.port} did not finish in time")
        if response.fp is not None and hasattr(response.fp, "raw"):
            sock = getattr(response.fp.raw, "_sock", None)
            if sock is not None:
                sock.settimeout(left)

    def stream_frame(self, body: dict[str, Any], timeout_s: float, max_bytes: int) -> bytes:
        """The first complete JPEG frame of the STREAM answer (an M-JPEG multipart body)."""
        deadline = time.monotonic() + timeout_s
        conn, response = self._connect(deadline, "STREAM", "/stream", json.dumps(body).encode())
        try:
            if response.status != 200:
                raise SbiProtocolError(f"SBI STREAM on port {self.port} answered HTTP {response.status}")
            buf = b""
            while True:
                self._left(deadline, "STREAM", response)
                try:
                    part = response.read1(_CHUNK)
                except TimeoutError:
                    raise SbiTimeout(f"SBI STREAM on port {self.port} sent no frame in time") from None
                if not part:
                    raise SbiUnreachable(f"SBI STREAM on port {self.port} ended before a whole frame")
                buf += part
                start = buf.find(JPEG_SOI)
                end = buf.find(JPEG_EOI, start + 2) if start >= 0 else -1
                if end >= 0:
                    return buf[start:end + 2]
                if len(buf) > max_bytes:
                    raise SbiProtocolError(f"SBI STREAM frame exceeds the {max_bytes}-byte limit")
        finally:
            response.close()
            conn.close()
