"""The local HTTP API that the kiosk's registration application calls (docs/local-api.md).

JSON over HTTP on a loopback address (or a Unix socket), served by the standard library's
threading HTTP server: each request runs on its own thread and may block (a capture waits
for the person); device work still goes through each device's worker thread, and
agent/registration/service.py allows one action per device at a time. No authentication: only
processes on the kiosk itself can reach it.

Errors are JSON too: ``{"error": {"code": "...", "message": "..."}}`` with a 4xx status
that says whose fault it is (400 bad request, 404 unknown, 409 busy or wrong state, 422 the
person must try again, 503 device or agent unavailable).
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import socketserver
import threading
import time
from collections.abc import Callable
from concurrent.futures import TimeoutError as FutureTimeout
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from agent.registration.service import RegistrationError

if TYPE_CHECKING:
    from agent.daemon import Agent

log = logging.getLogger(__name__)

MAX_BODY = 64 * 1024
STATUS = {
    "not_found": 404,
    "invalid": 400,
    "busy": 409,
    "closed": 409,
    "incomplete": 409,
    "retry": 422,
    "device": 503,
    "unavailable": 503,
}


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, **detail: Any) -> None:
        super().__init__(message)
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


class LocalApi:
    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.config = agent.config.local_api
        self.server: socketserver.BaseServer | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self.address = ""

    # --- life cycle ---------------------------------------------------------------------

    def start(self) -> None:
        handler = _make_handler(self)
        cfg = self.config
        try:
            if cfg.unix_socket is not None:
                cfg.unix_socket.unlink(missing_ok=True)
                self.server = _UnixHTTPServer(str(cfg.unix_socket), handler)
                os.chmod(cfg.unix_socket, 0o660)
                self.address = f"unix:{cfg.unix_socket}"
            else:
                self.server = ThreadingHTTPServer((cfg.host, cfg.port), handler)
                host, port = self.server.server_address[:2]
                self.address = f"http://{host}:{port}"
        except OSError as exc:
            # The agent keeps capturing and delivering; the registration app cannot reach it.
            where = cfg.unix_socket or f"{cfg.host}:{cfg.port}"
            log.error(
                "local API cannot listen on %s: %s; the registration app cannot reach the agent "
                "until local_api.port (or unix_socket) is fixed",
                where,
                exc.strerror or exc,
            )
            self.agent.events.emit("local_api_unavailable", address=str(where), error=str(exc))
            self.server = None
            return
        self.server.daemon_threads = True  # type: ignore[attr-defined]
        self._thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.2}, name="local-api", daemon=True
        )
        self._thread.start()
        log.info("local API listening on %s", self.address)

    def stop(self) -> None:
        self._stopping.set()
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            if self.config.unix_socket is not None:
                self.config.unix_socket.unlink(missing_ok=True)
        if self._thread is not None:
            self._thread.join(10)

    # --- helpers ------------------------------------------------------------------------

    def _registrations(self):  # type: ignore[no-untyped-def]
        reg = self.agent.registrations
        if reg is None or self.agent.reloading:
            raise ApiError(503, "unavailable", "the agent is restarting its components; try again shortly")
        return reg

    def _worker(self, name: str):  # type: ignore[no-untyped-def]
        worker = self.agent.workers.get(name)
        if worker is None:
            raise ApiError(
                404, "not_found", f"no device {name!r}; devices: {', '.join(sorted(self.agent.workers))}"
            )
        return worker

    # --- endpoints ----------------------------------------------------------------------

    @route("GET", "/v1/devices")
    def list_devices(self, req: Request) -> Any:
        return {"devices": [w.status().as_dict() for w in self.agent.workers.values()]}

    @route("GET", "/v1/status")
    def status(self, req: Request) -> Any:
        from agent.transport.telemetry import snapshot

        snap = snapshot(self.agent)
        counters = self.agent.publisher.counters if self.agent.publisher else None
        return {
            "queue": snap["queue"],
            "connection": snap["connection"],
            "devices": snap["devices"],
            "uploads": {
                "published": counters.published,
                "acknowledged": counters.acknowledged,
                "rejected": counters.rejected,
            }
            if counters
            else None,
            "backlog_drain_estimate_s": snap["backlog_drain_estimate_s"],
        }

    @route("POST", "/v1/sessions")
    def start_session(self, req: Request) -> Any:
        body = req.json()
        return 201, self._registrations().start(body.get("applicant_ref"), body.get("operator_id"))

    @route("GET", "/v1/sessions")
    def list_sessions(self, req: Request) -> Any:
        state = (req.query.get("state") or [None])[0]
        if state not in (None, "open", "completed", "cancelled"):
            raise ApiError(400, "invalid", "state must be open, completed or cancelled")
        return {"sessions": self._registrations().sessions(state)}

    @route("GET", "/v1/sessions/{session}")
    def get_session(self, req: Request) -> Any:
        return self._registrations().view(req.params["session"])

    @route("POST", "/v1/sessions/{session}/capture")
    def capture_item(self, req: Request) -> Any:
        item = req.json().get("item")
        if item is not None and not isinstance(item, str):
            raise ApiError(400, "invalid", "item must be an item key such as 'finger-2' or 'face'")
        return self._registrations().capture(req.params["session"], item)

    @route("POST", "/v1/sessions/{session}/exceptions")
    def add_exception(self, req: Request) -> Any:
        body = req.json()
        return self._registrations().add_exception(
            req.params["session"], body.get("position"), body.get("code"), body.get("reason")
        )

    @route("POST", "/v1/sessions/{session}/complete")
    def complete(self, req: Request) -> Any:
        return self._registrations().complete(req.params["session"])

    @route("POST", "/v1/sessions/{session}/cancel")
    def cancel(self, req: Request) -> Any:
        return self._registrations().cancel(req.params["session"], req.json().get("reason"))

    @route("GET", "/v1/sessions/{session}/events")
    def events(self, req: Request) -> Any:
        after = int(req.number("after", 0, 0, 1e12))
        wait = req.number("wait", 0, 0, 60)
        return {"events": self._registrations().events(req.params["session"], after, wait)}

    @route("GET", "/v1/sessions/{session}/items/{item}/preview")
    def item_preview(self, req: Request) -> Any:
        data, content_type = self._registrations().preview(req.params["session"], req.params["item"])
        return _Raw(data, content_type)

    @route("GET", "/v1/captures/{capture}")
    def capture_result(self, req: Request) -> Any:
        return self._registrations().result(req.params["capture"])

    @route("POST", "/v1/devices/{device}/capture")
    def single_capture(self, req: Request) -> Any:
        body = req.json()
        position = body.get("position", 0)
        if not isinstance(position, int) or not 0 <= position <= 15:
            raise ApiError(400, "invalid", "position must be 0..10 (a finger), 13..15 (a slap) or 0 (a face)")
        self._worker(req.params["device"])
        return self._registrations().single_capture(req.params["device"], position)

    @route("GET", "/v1/devices/{device}/preview.jpg")
    def preview_frame(self, req: Request) -> Any:
        jpeg, _ = self._frame(req.params["device"], judge=False)
        return _Raw(jpeg, "image/jpeg")

    @route("GET", "/v1/devices/{device}/checks")
    def live_checks(self, req: Request) -> Any:
        _, report = self._frame(req.params["device"], judge=True)
        return report

    @route("GET", "/v1/devices/{device}/preview.mjpeg")
    def preview_stream(self, req: Request) -> Any:
        fps = req.number("fps", self.config.preview_fps, 1, 30)
        judge = (req.query.get("checks") or ["0"])[0] in ("1", "true")
        self._frame(req.params["device"], judge=False)  # fail before the stream starts
        return _Stream(lambda: self._frame(req.params["device"], judge=judge), fps, self._stopping)

    @route("GET", "/v1/openapi.json")
    def openapi(self, req: Request) -> Any:
        from agent.registration.openapi import spec

        return spec()

    def _frame(self, device: str, judge: bool) -> tuple[bytes, dict[str, Any] | None]:
        import cv2

        worker = self._worker(device)
        try:
            frame = worker.submit(lambda driver: driver.preview()).result(timeout=5)
        except FutureTimeout:
            raise ApiError(503, "device", f"device {device} is busy or not answering") from None
        except Exception as exc:
            raise ApiError(503, "device", f"device {device}: {exc}") from None
        report = self._registrations().live_face_checks(frame) if judge else None
        ok, data = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 80])
        if not ok:
            raise ApiError(503, "device", "cannot encode the preview frame")
        return data.tobytes(), report


class _Raw:
    def __init__(self, data: bytes, content_type: str) -> None:
        self.data, self.content_type = data, content_type


class _Stream:
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


class _UnixHTTPServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


def _make_handler(api: LocalApi) -> type[BaseHTTPRequestHandler]:
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
                return self._json(
                    exc.status, {"error": {"code": exc.code, "message": exc.message, **exc.detail}}
                )
            except RegistrationError as exc:
                return self._json(
                    STATUS.get(exc.code, 400),
                    {"error": {"code": exc.code, "message": exc.message, **exc.detail}},
                )
            except Exception as exc:  # a bug must answer 500, not hang the app
                log.exception("local API %s %s failed", method, url.path)
                return self._json(
                    500, {"error": {"code": "internal", "message": f"{type(exc).__name__}: {exc}"}}
                )
            if isinstance(result, _Stream):
                self.close_connection = True
                return result.write(self)
            if isinstance(result, _Raw):
                return self._send(200, result.data, result.content_type)
            status, body = result if isinstance(result, tuple) else (200, result)
            return self._json(status, body)

        def _find(self, method: str, path: str) -> tuple[Callable[..., Any], dict[str, str]]:
            allowed = []
            for m, regex, name, _ in ROUTES:
                match = regex.match(path)
                if match:
                    if m == method:
                        return getattr(LocalApi, name), match.groupdict()
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
