"""The local API's HTTP plumbing: routes, requests, raw and streamed answers, the Unix
socket server, and a request handler that maps errors to JSON answers.

Request bodies are framed strictly: only a plain decimal Content-Length up to MAX_BODY, no
Transfer-Encoding, JSON nested at most MAX_DEPTH deep. Anything else is a 4xx before a byte
of the body is read, and the connection is closed after any answer that left a body unread,
so its bytes are never taken for the next request.

Standard library only (http.server): the API serves one registration app on loopback or
a Unix socket, a few requests a second, so a framework would add weight and nothing else.
"""

from __future__ import annotations

import json
import logging
import re
import socket
import socketserver
import threading
import time
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlsplit

from agent.errors import AgentError

log = logging.getLogger(__name__)

MAX_BODY = 64 * 1024
#: Our bodies are flat objects; json.loads recurses once per level, so deep nesting is refused first.
MAX_DEPTH = 16
#: Seconds a connection may sit idle or stall mid-request before it is dropped.
IDLE_TIMEOUT_S = 60
#: An application error -> (HTTP status, error body), or None when it is not one.
ErrorAnswer = Callable[[Exception], "tuple[int, dict[str, Any]] | None"]


class ApiError(AgentError):
    """An answer other than 2xx; 503 (and 409 busy) may succeed when asked again later."""

    def __init__(
        self, status: int, code: str, message: str, *, headers: dict[str, str] | None = None, **detail: Any
    ) -> None:
        super().__init__(message, transient=status == 503 or code == "busy")
        self.status, self.code, self.message, self.detail = status, code, message, detail
        self.headers = headers or {}


Handler = Callable[["Request"], Any]
ROUTES: list[tuple[str, re.Pattern[str], str, str]] = []  # (method, regex, handler name, path template)
#: The query parameters each handler takes; any other is refused (a typo must not pass unseen).
QUERY: dict[str, tuple[str, ...]] = {}


def route(
    method: str, pattern: str, query: tuple[str, ...] = ()
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    parts = re.split(r"\{(\w+)\}", pattern)  # literal, name, literal, name, ...
    regex = re.compile(
        "^" + "".join(re.escape(p) if i % 2 == 0 else f"(?P<{p}>[^/]+)" for i, p in enumerate(parts)) + "$"
    )

    def register(fn: Callable[..., Any]) -> Callable[..., Any]:
        ROUTES.append((method, regex, fn.__name__, pattern))
        QUERY[fn.__name__] = query
        return fn

    return register


def body_length(handler: BaseHTTPRequestHandler) -> int:
    """The request body's length, from one plain decimal Content-Length of at most MAX_BODY."""
    if handler.headers.get_all("Transfer-Encoding"):
        # A chunked body has no length to check before reading; the app always knows its length.
        raise ApiError(411, "invalid", "Transfer-Encoding is not accepted; send the body with Content-Length")
    values = handler.headers.get_all("Content-Length") or []
    if not values:
        return 0
    # int() would take "-1", "+5", " 7" or "1_0"; a negative length once read the whole stream.
    if len(values) != 1 or not re.fullmatch(r"[0-9]{1,18}", values[0].strip()):
        raise ApiError(400, "invalid", f"Content-Length must be one decimal number of bytes, not {values}")
    length = int(values[0])
    if length > MAX_BODY:
        raise ApiError(413, "invalid", f"request body is {length} bytes; the limit is {MAX_BODY}")
    return length


def _too_deep(raw: bytes) -> bool:
    """Whether the JSON text nests arrays or objects deeper than MAX_DEPTH (strings skipped)."""
    if raw.count(b"[") + raw.count(b"{") <= MAX_DEPTH:
        return False
    depth, in_string, escaped = 0, False, False
    for byte in raw:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            if depth > MAX_DEPTH:
                return True
        elif byte in (0x5D, 0x7D):  # ] }
            depth -= 1
    return False


def _query(text: str, known: tuple[str, ...]) -> dict[str, list[str]]:
    # Blank values kept: "?state=" is a wrong state, not no state.
    query = parse_qs(text, keep_blank_values=True)
    unknown = sorted(set(query) - set(known))
    if unknown:
        raise ApiError(400, "invalid", f"unknown query parameter {', '.join(unknown)}; known: "
                       f"{', '.join(known) or 'none'}")
    return query


class Request:
    def __init__(
        self,
        handler: BaseHTTPRequestHandler,
        params: dict[str, str],
        query: dict[str, list[str]],
        length: int,
    ) -> None:
        self.handler = handler
        self.params = params
        self.query = query
        self.length = length
        #: Whether the body was read off the connection (else the connection must be closed).
        self.consumed = length == 0

    def json(self, fields: tuple[str, ...]) -> dict[str, Any]:
        """The body: a JSON object with no fields but ``fields`` ({} when there is no body)."""
        try:
            raw = self.handler.rfile.read(self.length) if self.length else b""
        except TimeoutError:
            raw = b""  # stalled mid-body: answered below, and the connection closed
        if len(raw) < self.length:
            raise ApiError(400, "invalid", f"request body ended after {len(raw)} of {self.length} bytes")
        self.consumed = True
        if not raw:
            return {}
        if _too_deep(raw):
            raise ApiError(400, "invalid", f"request body nests deeper than {MAX_DEPTH} levels")
        try:
            body = json.loads(raw)
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            # ValueError covers JSONDecodeError and integers beyond Python's digit limit.
            raise ApiError(400, "invalid", f"request body is not JSON: {exc}") from None
        if not isinstance(body, dict):
            raise ApiError(400, "invalid", "request body must be a JSON object")
        unknown = sorted(set(body) - set(fields))
        if unknown:
            known = ", ".join(fields) or "none: send no body"
            raise ApiError(400, "invalid", f"unknown field {', '.join(unknown)}; fields: {known}")
        return body

    def number(self, name: str, default: float, low: float, high: float, integer: bool = False) -> float:
        values = self.query.get(name)
        if not values:
            return default
        kind = "a whole number" if integer else "a number"
        try:
            value = int(values[0]) if integer else float(values[0])
        except ValueError:
            raise ApiError(400, "invalid", f"query parameter {name} must be {kind}") from None
        if not low <= value <= high:
            raise ApiError(400, "invalid", f"query parameter {name} must be between {low:g} and {high:g}")
        return value

    def choice(self, name: str, allowed: tuple[str, ...]) -> str | None:
        values = self.query.get(name)
        if not values:
            return None
        if values[0] not in allowed:
            raise ApiError(400, "invalid", f"query parameter {name} must be one of {', '.join(allowed)}")
        return values[0]


class Raw:
    """A response body that is not JSON (an image)."""

    def __init__(self, data: bytes, content_type: str) -> None:
        self.data, self.content_type = data, content_type


class Stream:
    """multipart/x-mixed-replace MJPEG: what <img src=...> shows as live video."""

    BOUNDARY = "kiosk-frame"

    def __init__(
        self,
        next_frame: Callable[[], tuple[bytes, dict[str, Any] | None]],
        fps: float,
        stopping: threading.Event,
    ) -> None:
        self.next_frame, self.period, self.stopping = next_frame, 1 / fps, stopping

    def write(self, handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={self.BOUNDARY}")
        handler.send_header("Cache-Control", "no-store")
        handler.end_headers()
        next_at = time.monotonic()
        while not self.stopping.is_set():
            try:
                jpeg, report = self.next_frame()
            except ApiError:
                break  # device gone: end the stream; the app reconnects
            head = f"--{self.BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n"
            if report is not None:
                head += (
                    f"X-Face-Score: {report['score']}\r\nX-Face-Passed: {str(report['passed']).lower()}\r\n"
                )
                # What the operator says now, as a JSON array (ASCII-escaped, so a header can
                # carry it): the app shows it under the live picture as it changes.
                head += f"X-Face-Hints: {json.dumps(report.get('hints', []))}\r\n"
            try:
                handler.wfile.write(head.encode() + b"\r\n" + jpeg + b"\r\n")
                handler.wfile.flush()
            except (BrokenPipeError, ConnectionResetError, TimeoutError):
                return  # the app went away or stopped reading
            next_at += self.period
            self.stopping.wait(max(0.0, next_at - time.monotonic()))


class UnixHTTPServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


def make_handler(
    api: Any, endpoints: type, error_answer: ErrorAnswer, check: Callable[[BaseHTTPRequestHandler], None]
) -> type[BaseHTTPRequestHandler]:
    """A request handler that dispatches to ``endpoints``' @route methods, called on ``api``.

    ``check`` runs first on every request, whatever its path or method, and raises ApiError
    to refuse it (agent/registration/access.py). ``error_answer`` turns an application error
    into (status, error body), or None when it is not one of its errors (then: 500
    "internal", logged with its traceback)."""
    class RequestHandler(BaseHTTPRequestHandler):
        server_version = "kiosk-agent"
        protocol_version = "HTTP/1.1"
        timeout = IDLE_TIMEOUT_S
        _request: Request | None = None

        def address_string(self) -> str:  # a Unix socket peer has no address
            return self.client_address[0] if isinstance(self.client_address, tuple) else "unix"

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("local API %s: " + format, self.address_string(), *args)

        def __getattr__(self, name: str) -> Any:
            # http.server looks up do_<METHOD> and answers an HTML 501 where there is none.
            # Every method (TRACE, HEAD, a CORS preflight's OPTIONS, made-up ones) takes the same
            # path instead: the access checks, then JSON, 405 with Allow where the path has no
            # such route. A preflight never gets an Access-Control-Allow-* header.
            if name.startswith("do_"):
                return lambda: self._dispatch(name[3:])
            raise AttributeError(name)

        def _dispatch(self, method: str) -> None:
            url = urlsplit(self.path)
            self._request = None
            try:
                check(self)
                length = body_length(self)
                fn, params = self._find(method, url.path)
                self._request = Request(self, params, _query(url.query, QUERY[fn.__name__]), length)
                result = fn(api, self._request)
            except ApiError as exc:
                body = {"code": exc.code, "message": exc.message, **exc.detail}
                return self._json(exc.status, {"error": body}, exc.headers)
            except Exception as exc:
                answer = error_answer(exc)
                if answer is None:  # a bug must answer 500, not hang the app
                    log.exception("local API %s %s failed", method, url.path)
                    answer = 500, {"code": "internal", "message": f"{type(exc).__name__}: {exc}"}
                return self._json(answer[0], {"error": answer[1]})
            if isinstance(result, Stream):
                self.close_connection = True
                return result.write(self)
            if isinstance(result, Raw):
                return self._send(200, result.data, result.content_type)
            status, body = result if isinstance(result, tuple) else (200, result)
            return self._json(status, body)

        def _find(self, method: str, path: str) -> tuple[Callable[..., Any], dict[str, str]]:
            allowed = []
            for m, regex, name, _ in ROUTES:
                match = regex.match(path)
                if match:
                    if m == method:
                        return getattr(endpoints, name), match.groupdict()
                    allowed.append(m)
            if allowed:
                raise ApiError(
                    405, "invalid", f"{method} is not allowed on {path}; use {', '.join(allowed)}",
                    headers={"Allow": ", ".join(allowed)},
                )
            raise ApiError(404, "not_found", f"no endpoint {path}; see /v1/openapi.json")

        def _body_left(self) -> bool:
            """Whether a request body may still be on the wire: its bytes must not be read as a request."""
            if self._request is not None and self._request.consumed:
                return False
            return bool(self.headers.get_all("Content-Length") or self.headers.get_all("Transfer-Encoding"))

        def _json(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
            self._send(status, json.dumps(body, default=str).encode(), "application/json", headers)

        def _send(
            self, status: int, data: bytes, content_type: str, headers: dict[str, str] | None = None
        ) -> None:
            try:
                self.send_response(
                    status, HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else ""
                )
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Cache-Control", "no-store")
                # No browser may take an answer (it echoes paths) for a page of this origin.
                self.send_header("X-Content-Type-Options", "nosniff")
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                if self._body_left():
                    self.send_header("Connection", "close")  # send_header also marks it to close
                self.end_headers()
                if self.command != "HEAD":  # its answer has headers only, or the client desyncs
                    self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError, TimeoutError):
                pass  # the app went away; nothing to tell it

    return RequestHandler


def unix_request(
    path: str, method: str, url: str, body: dict[str, Any] | None = None, token: str | None = None
) -> tuple[int, Any]:
    """A tiny client for the Unix-socket variant (tests, scripts); ``token``: the bearer token,
    unless local_api.allowed_uids/gids let this process in."""
    import http.client

    class _Conn(http.client.HTTPConnection):
        def connect(self) -> None:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.connect(path)

    conn = _Conn("localhost")
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json"} if data else {}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    conn.request(method, url, body=data, headers=headers)
    resp = conn.getresponse()
    payload = resp.read()
    conn.close()
    return resp.status, json.loads(payload) if payload else None
