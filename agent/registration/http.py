"""The local API's HTTP plumbing: routes, requests, raw and streamed answers, the Unix
socket server, and a request handler that maps errors to JSON answers.

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
#: An application error -> (HTTP status, error body), or None when it is not one.
ErrorAnswer = Callable[[Exception], "tuple[int, dict[str, Any]] | None"]


class ApiError(AgentError):
    """An answer other than 2xx; 503 (and 409 busy) may succeed when asked again later."""

    def __init__(self, status: int, code: str, message: str, **detail: Any) -> None:
        super().__init__(message, transient=status == 503 or code == "busy")
        self.status, self.code, self.message, self.detail = status, code, message, detail


Handler = Callable[["Request"], Any]
ROUTES: list[tuple[str, re.Pattern[str], str, str]] = []  # (method, regex, handler name, path template)


def route(method: str, pattern: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    parts = re.split(r"\{(\w+)\}", pattern)  # literal, name, literal, name, ...
    regex = re.compile(
        "^" + "".join(re.escape(p) if i % 2 == 0 else f"(?P<{p}>[^/]+)" for i, p in enumerate(parts)) + "$"
    )

    def register(fn: Callable[..., Any]) -> Callable[..., Any]:
        ROUTES.append((method, regex, fn.__name__, pattern))
        return fn

    return register


class Request:
    def __init__(self, handler: BaseHTTPRequestHandler, params: dict[str, str], query: dict[str, list[str]]):
        self.handler = handler
        self.params = params
        self.query = query

    def json(self) -> dict[str, Any]:
        length = int(self.handler.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            raise ApiError(413, "invalid", f"request body is {length} bytes; the limit is {MAX_BODY}")
        raw = self.handler.rfile.read(length) if length else b""
        if not raw:
            return {}
        try:
            body = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ApiError(400, "invalid", f"request body is not JSON: {exc}") from None
        if not isinstance(body, dict):
            raise ApiError(400, "invalid", "request body must be a JSON object")
        return body

    def number(self, name: str, default: float, low: float, high: float) -> float:
        values = self.query.get(name)
        if not values:
            return default
        try:
            value = float(values[0])
        except ValueError:
            raise ApiError(400, "invalid", f"query parameter {name} must be a number") from None
        if not low <= value <= high:
            raise ApiError(400, "invalid", f"query parameter {name} must be between {low:g} and {high:g}")
        return value


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
            try:
                handler.wfile.write(head.encode() + b"\r\n" + jpeg + b"\r\n")
                handler.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                return
            next_at += self.period
            self.stopping.wait(max(0.0, next_at - time.monotonic()))


class UnixHTTPServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


def make_handler(api: Any, endpoints: type, error_answer: ErrorAnswer) -> type[BaseHTTPRequestHandler]:
    """A request handler that dispatches to ``endpoints``' @route methods, called on ``api``.

    ``error_answer`` turns an application error into (status, error body), or None when it
    is not one of its errors (then: 500 "internal", logged with its traceback)."""
    class RequestHandler(BaseHTTPRequestHandler):
        server_version = "kiosk-agent"
        protocol_version = "HTTP/1.1"

        def address_string(self) -> str:  # a Unix socket peer has no address
            return self.client_address[0] if isinstance(self.client_address, tuple) else "unix"

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("local API %s: " + format, self.address_string(), *args)

        def do_GET(self) -> None:
            self._dispatch("GET")

        def do_POST(self) -> None:
            self._dispatch("POST")

        def do_PUT(self) -> None:
            self._dispatch("PUT")

        def do_DELETE(self) -> None:
            self._dispatch("DELETE")

        def _dispatch(self, method: str) -> None:
            url = urlsplit(self.path)
            try:
                fn, params = self._find(method, url.path)
                result = fn(api, Request(self, params, parse_qs(url.query)))
            except ApiError as exc:
                body = {"code": exc.code, "message": exc.message, **exc.detail}
                return self._json(exc.status, {"error": body})
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
                raise ApiError(405, "invalid", f"{method} is not allowed on {path}; use {', '.join(allowed)}")
            raise ApiError(404, "not_found", f"no endpoint {path}; see /v1/openapi.json")

        def _json(self, status: int, body: Any) -> None:
            self._send(status, json.dumps(body, default=str).encode(), "application/json")

        def _send(self, status: int, data: bytes, content_type: str) -> None:
            try:
                self.send_response(
                    status, HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else ""
                )
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the app went away; nothing to tell it

    return RequestHandler


def unix_request(path: str, method: str, url: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    """A tiny client for the Unix-socket variant (tests, scripts)."""
    import http.client

    class _Conn(http.client.HTTPConnection):
        def connect(self) -> None:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.connect(path)

    conn = _Conn("localhost")
    data = json.dumps(body).encode() if body is not None else None
    conn.request(method, url, body=data, headers={"Content-Type": "application/json"} if data else {})
    resp = conn.getresponse()
    payload = resp.read()
    conn.close()
    return resp.status, json.loads(payload) if payload else None
