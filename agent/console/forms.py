"""The console's HTTP framing: what every request must be before any page sees it, and
how every answer is sent (agent/console/server.py has the pages and actions).

- ``Host`` must be one of the console's own names;
- a ``POST`` must not come from another origin (``Origin``, ``Sec-Fetch-Site``), and its
  form must carry the expected CSRF token (compared in constant time);
- a form is ``application/x-www-form-urlencoded``, one plain ``Content-Length`` of at most
  ``MAX_FORM`` bytes, no chunked bodies, each field once;
- every answer carries a strict Content-Security-Policy, no framing, no sniffing, no cache.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
import ssl
from http import HTTPStatus
from http.cookies import CookieError, SimpleCookie
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs

log = logging.getLogger(__name__)

#: The largest form the console accepts; its biggest (sign-in) is a few hundred bytes.
MAX_FORM = 4096
#: Seconds a connection may sit idle or stall mid-request before it is dropped.
IDLE_TIMEOUT_S = 30
#: No inline script or style, nothing from elsewhere, no framing, forms only to ourselves.
CSP = ("default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self'; connect-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")


class Refused(Exception):
    """A request answered with an error page (or JSON for figures.json); nothing changed."""

    def __init__(self, status: int, key: str, **values: Any) -> None:
        super().__init__(key)
        self.status, self.key, self.values = status, key, values


class Redirect(Exception):
    def __init__(self, location: str) -> None:
        super().__init__(location)
        self.location = location


class FormHandler(BaseHTTPRequestHandler):
    server_version = "kiosk-console"
    protocol_version = "HTTP/1.1"
    timeout = IDLE_TIMEOUT_S
    #: Under TLS: Secure cookies, HSTS, an https Origin.
    tls = False
    _cookies_out: list[str]
    #: Whether the request's body was read off the connection (else it is closed after the answer).
    _form_read = False

    def allowed_hosts(self) -> set[str]:
        raise NotImplementedError

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("console %s: " + format, self.client_address[0], *args)

    def _check_host(self) -> None:
        if self.headers.get("Host", "").lower() not in self.allowed_hosts():
            raise Refused(403, "error.host")

    def _check_origin(self) -> None:
        origin = self.headers.get("Origin")
        scheme = "https" if self.tls else "http"
        if origin is not None and origin != f"{scheme}://{self.headers.get('Host', '').lower()}":
            raise Refused(403, "error.cross_site")
        if self.headers.get("Sec-Fetch-Site", "same-origin") not in ("same-origin", "none"):
            raise Refused(403, "error.cross_site")

    def _length(self) -> int:
        if self.headers.get_all("Transfer-Encoding"):
            raise Refused(411, "error.chunked")
        values = self.headers.get_all("Content-Length") or []
        if not values:
            return 0
        if len(values) != 1 or not re.fullmatch(r"[0-9]{1,12}", values[0].strip()):
            raise Refused(400, "error.bad_request")
        return int(values[0])

    def _no_body(self) -> None:
        if self._length():
            raise Refused(400, "error.bad_request")
        self._form_read = True

    def _form(self) -> dict[str, str]:
        length = self._length()
        if length > MAX_FORM:
            raise Refused(413, "error.too_large", size=length, limit=MAX_FORM)
        ctype = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if length and ctype != "application/x-www-form-urlencoded":
            raise Refused(415, "error.bad_request")
        try:
            raw = self.rfile.read(length) if length else b""
        except TimeoutError:
            raw = b""
        if len(raw) < length:
            raise Refused(400, "error.bad_request")
        self._form_read = True
        fields = parse_qs(raw.decode("utf-8", "strict"), keep_blank_values=True, max_num_fields=12,
                          strict_parsing=bool(raw))
        if any(len(v) != 1 for v in fields.values()):
            raise Refused(400, "error.bad_request")
        return {k: v[0] for k, v in fields.items()}

    def _drain(self) -> None:
        """Read a small body left unread by a refusal: closing on unread bytes makes the
        kernel reset the connection, and the browser then shows its own error (or retries)
        instead of the console's refusal. A large or unframed one is not read: closed."""
        if self._form_read:
            return
        try:
            length = self._length()
        except Refused:
            return
        if 0 < length <= MAX_FORM:
            try:
                self._form_read = len(self.rfile.read(length)) == length
            except (TimeoutError, OSError):
                pass

    def _cookie(self, name: str) -> str | None:
        jar = SimpleCookie()
        try:
            jar.load(self.headers.get("Cookie", ""))
        except CookieError:
            return None
        morsel = jar.get(name)
        return morsel.value if morsel else None

    def _set_cookie(self, name: str, value: str, max_age: int | None = None) -> None:
        parts = [f"{name}={value}", "Path=/", "HttpOnly", "SameSite=Strict"]
        if self.tls:
            parts.append("Secure")
        if max_age is not None:
            parts.append(f"Max-Age={max_age}")
        self._cookies_out.append("; ".join(parts))

    def _check_csrf(self, form: dict[str, str], expected: str | None) -> None:
        if not expected or not hmac.compare_digest(form.get("csrf", "").encode(), expected.encode()):
            raise Refused(403, "error.csrf")

    def _redirect(self, location: str) -> None:
        self._send(303, b"", "text/plain; charset=utf-8", {"Location": location})

    def _html(self, status: int, page: str) -> None:
        self._send(status, page.encode(), "text/html; charset=utf-8")

    def _json(self, status: int, body: Any) -> None:
        self._send(status, json.dumps(body).encode(), "application/json")

    def _send(self, status: int, data: bytes, ctype: str, headers: dict[str, str] | None = None,
              cache: bool = False) -> None:
        try:
            self.send_response(status, HTTPStatus(status).phrase)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Cache-Control", "max-age=300" if cache else "no-store")
            self.send_header("Content-Security-Policy", CSP)
            self.send_header("X-Content-Type-Options", "nosniff")
            self.send_header("X-Frame-Options", "DENY")
            # Not no-referrer: under it Chromium sends "Origin: null" with the console's own
            # forms, which the origin check must refuse.
            self.send_header("Referrer-Policy", "same-origin")
            if self.tls:
                self.send_header("Strict-Transport-Security", "max-age=31536000")
            for cookie in self._cookies_out:
                self.send_header("Set-Cookie", cookie)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            if not self._form_read:
                self.send_header("Connection", "close")  # an unread body must not pass for a request
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError, TimeoutError, ssl.SSLError):
            pass
