"""The local HTTP API that the kiosk's registration application calls (docs/local-api.md).

JSON over HTTP on a loopback address (or a Unix socket), served by the standard library's
threading HTTP server: each request runs on its own thread and may block (a capture waits
for the person); device work still goes through each device's worker thread, and
agent/registration/service.py allows one action per device at a time. Every request on every
endpoint must come from the registration app: its token (or, on a Unix socket, its uid or
gid), the API's own Host, nothing a browser page sends (agent/registration/access.py).

Errors are JSON too: ``{"error": {"code": "...", "message": "..."}}`` with a status that
says whose fault it is and whether waiting helps (400 bad request, 401/403 not the
registration app, 404 unknown, 405 not a method of that path, 409 busy or wrong state,
422 the person must try again, 503 device or agent unavailable for now: retry
later; 500 a device failed for good, ``device_failed``: its config or hardware must change).
"""

from __future__ import annotations

import logging
import os
import socketserver
import threading
from concurrent.futures import TimeoutError as FutureTimeout
from http.server import ThreadingHTTPServer
from typing import Any

from agent.capture.workers import DeviceWorker
from agent.registration.access import Access, TokenFileError, read_token
from agent.registration.bodies import (
    CHECKS_VALUES,
    EVENTS_AFTER_MAX,
    EVENTS_WAIT_MAX_S,
    PREVIEW_FPS,
    SESSION_STATES,
    AddException,
    Body,
    Cancel,
    CaptureItem,
    NoBody,
    SingleCapture,
    StartSession,
    parse,
)
from agent.registration.http import ApiError, Raw, Request, Stream, UnixHTTPServer, make_handler, route
from agent.registration.service import RegistrationError, RegistrationService
from agent.runtime import Runtime
from agent.transport.telemetry import snapshot

log = logging.getLogger(__name__)

STATUS = {
    "not_found": 404,
    "invalid": 400,
    "busy": 409,
    "closed": 409,
    "conflict": 409,
    "incomplete": 409,
    # An enrolment rule (agent/registration/gates.py) holds: the answer names each rule.
    "blocked": 409,
    "retry": 422,
    "device": 503,
    "unavailable": 503,
    # Not 503: retrying cannot help until someone changes the device's config or hardware.
    "device_failed": 500,
}


class LocalApi:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.config = runtime.config.local_api
        self.server: socketserver.BaseServer | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self.address = ""
        #: Why the API is not serving (it stays off; the agent goes on capturing), or None.
        self.error: str | None = None

    # --- life cycle ---------------------------------------------------------------------

    def start(self) -> None:
        cfg = self.config
        where = str(cfg.unix_socket or f"{cfg.host}:{cfg.port}")
        try:
            # An API without its credential would answer any page in the kiosk's browser: off.
            token = read_token(cfg.token_file) if cfg.token_file is not None else None
        except TokenFileError as exc:
            return self._unavailable(where, f"{exc}; the local API stays off until then", str(exc))
        access = Access(token, cfg.allowed_uids, cfg.allowed_gids)
        handler = make_handler(self, LocalApi, _error_answer, access.check)
        try:
            if cfg.unix_socket is not None:
                cfg.unix_socket.unlink(missing_ok=True)
                self.server = UnixHTTPServer(str(cfg.unix_socket), handler)
                os.chmod(cfg.unix_socket, 0o660)
                self.address = f"unix:{cfg.unix_socket}"
            else:
                self.server = ThreadingHTTPServer((cfg.host, cfg.port), handler)
                host, port = self.server.server_address[:2]
                access.listening_on([cfg.host, host], port)
                self.address = f"http://{host}:{port}"
        except OSError as exc:
            self.server = None
            return self._unavailable(
                where,
                f"local API cannot listen on {where}: {exc.strerror or exc}; the registration app "
                "cannot reach the agent until local_api.port (or unix_socket) is fixed",
                str(exc),
            )
        self.server.daemon_threads = True  # type: ignore[attr-defined]
        self._thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.2}, name="local-api", daemon=True
        )
        self._thread.start()
        log.info("local API listening on %s", self.address)

    def _unavailable(self, where: str, message: str, error: str) -> None:
        # The agent keeps capturing and delivering; the registration app cannot reach it.
        self.error = message
        log.error("%s", message)
        self.runtime.events.emit("local_api_unavailable", address=where, error=error)

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

    def _registrations(self) -> RegistrationService:
        reg = self.runtime.registration_service()
        if reg is None or self.runtime.reloading:
            raise ApiError(503, "unavailable", "the agent is restarting its components; try again shortly")
        return reg

    def _worker(self, name: str) -> DeviceWorker:
        workers = self.runtime.device_workers()
        worker = workers.get(name)
        if worker is None:
            raise ApiError(404, "not_found", f"no device {name!r}; devices: {', '.join(sorted(workers))}")
        return worker

    # --- endpoints ----------------------------------------------------------------------

    @route("GET", "/v1/devices")
    def list_devices(self, req: Request) -> Any:
        return {"devices": [w.status().as_dict() for w in self.runtime.device_workers().values()]}

    @route("GET", "/v1/status")
    def status(self, req: Request) -> Any:
        snap = snapshot(self.runtime)
        counters = self.runtime.deliveries()
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
        body = _body(req, StartSession)
        return 201, self._registrations().start(body.applicant_ref, body.operator_id)

    @route("GET", "/v1/sessions", query=("state",))
    def list_sessions(self, req: Request) -> Any:
        state = req.choice("state", SESSION_STATES)
        return {"sessions": self._registrations().sessions(state)}

    @route("GET", "/v1/sessions/{session}")
    def get_session(self, req: Request) -> Any:
        return self._registrations().view(req.params["session"])

    @route("GET", "/v1/sessions/{session}/central")
    def central_status(self, req: Request) -> Any:
        # Kept beyond the session's erasure (agent/registration/central_status.py), so the
        # app can follow a registration the kiosk no longer holds anything personal of.
        self._registrations()  # 503 while restarting
        central = self.runtime.central_status()
        found = central.view(req.params["session"]) if central is not None else None
        if found is None:
            raise ApiError(404, "not_found", f"no registration {req.params['session']!r} on this kiosk")
        return found

    @route("POST", "/v1/sessions/{session}/capture")
    def capture_item(self, req: Request) -> Any:
        return self._registrations().capture(req.params["session"], _body(req, CaptureItem).item)

    @route("POST", "/v1/sessions/{session}/exceptions")
    def add_exception(self, req: Request) -> Any:
        body = _body(req, AddException)
        return self._registrations().add_exception(
            req.params["session"], body.position, body.code, body.reason
        )

    @route("POST", "/v1/sessions/{session}/complete")
    def complete(self, req: Request) -> Any:
        _body(req, NoBody)
        return self._registrations().complete(req.params["session"])

    @route("POST", "/v1/sessions/{session}/cancel")
    def cancel(self, req: Request) -> Any:
        return self._registrations().cancel(req.params["session"], _body(req, Cancel).reason)

    @route("GET", "/v1/sessions/{session}/events", query=("after", "wait"))
    def events(self, req: Request) -> Any:
        after = int(req.number("after", 0, 0, EVENTS_AFTER_MAX, integer=True))
        wait = req.number("wait", 0, 0, EVENTS_WAIT_MAX_S)
        return {"events": self._registrations().events(req.params["session"], after, wait)}

    @route("GET", "/v1/sessions/{session}/items/{item}/preview")
    def item_preview(self, req: Request) -> Any:
        data, content_type = self._registrations().preview(req.params["session"], req.params["item"])
        return Raw(data, content_type)

    @route("GET", "/v1/captures/{capture}")
    def capture_result(self, req: Request) -> Any:
        return self._registrations().result(req.params["capture"])

    @route("POST", "/v1/devices/{device}/capture")
    def single_capture(self, req: Request) -> Any:
        position = _body(req, SingleCapture).position
        self._worker(req.params["device"])
        return self._registrations().single_capture(req.params["device"], position)

    @route("GET", "/v1/devices/{device}/preview.jpg")
    def preview_frame(self, req: Request) -> Any:
        jpeg, _ = self._frame(req.params["device"], judge=False)
        return Raw(jpeg, "image/jpeg")

    @route("GET", "/v1/devices/{device}/checks")
    def live_checks(self, req: Request) -> Any:
        _, report = self._frame(req.params["device"], judge=True)
        return report

    @route("GET", "/v1/devices/{device}/preview.mjpeg", query=("fps", "checks"))
    def preview_stream(self, req: Request) -> Any:
        fps = req.number("fps", self.config.preview_fps, *PREVIEW_FPS)
        judge = req.choice("checks", CHECKS_VALUES) in ("1", "true")
        self._frame(req.params["device"], judge=False)  # fail before the stream starts
        return Stream(lambda: self._frame(req.params["device"], judge=judge), fps, self._stopping)

    @route("GET", "/v1/openapi.json")
    def openapi(self, req: Request) -> Any:
        from agent.registration.openapi import spec

        return spec()

    def _frame(self, device: str, judge: bool) -> tuple[bytes, dict[str, Any] | None]:
        import cv2

        worker = self._worker(device)
        try:
            frame = worker.submit(lambda driver: driver.preview()).result(timeout=5)
        except NotImplementedError:
            # A finger scanner: nothing to wait for, and no fault of the device (drivers/base.py).
            raise ApiError(404, "not_found", f"device {device} has no live preview; only cameras have one") \
                from None
        except FutureTimeout:
            raise ApiError(503, "device", f"device {device} is busy or not answering") from None
        except Exception as exc:
            raise ApiError(503, "device", f"device {device}: {exc}") from None
        report = self._registrations().live_face_checks(frame) if judge else None
        ok, data = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 80])
        if not ok:
            raise ApiError(503, "device", "cannot encode the preview frame")
        return data.tobytes(), report


def _body(req: Request, model: type[Body]) -> Any:
    """The request's body, checked against ``model`` (agent/registration/bodies.py)."""
    raw = req.json(tuple(model.model_fields))
    try:
        return parse(model, raw)
    except ValueError as exc:
        raise ApiError(400, "invalid", str(exc)) from None


def _error_answer(exc: Exception) -> tuple[int, dict[str, Any]] | None:
    if isinstance(exc, RegistrationError):
        status = STATUS.get(exc.code, 503 if exc.transient else 400)
        return status, {"code": exc.code, "message": exc.message, **exc.detail}
    return None
