"""The OpenAPI 3.1 document of the local API (served at /v1/openapi.json, copied to
docs/openapi.json by `make openapi`; a test keeps both in step with the routes)."""

from __future__ import annotations

from typing import Any

from agent import __version__
from agent.registration.bodies import (
    CHECKS_VALUES,
    EVENTS_AFTER_MAX,
    EVENTS_WAIT_MAX_S,
    PREVIEW_FPS,
    SESSION_STATES,
    AddException,
    Cancel,
    CaptureItem,
    SingleCapture,
    StartSession,
)
from drivers import Modality

#: The request bodies' schemas come from the models the API validates them with.
BODIES = {m.__name__: m.model_json_schema() for m in (StartSession, CaptureItem, AddException, Cancel,
                                                       SingleCapture)}


#: `quality` has this one shape wherever the API shows one: the score.
SCORE = {"type": "integer", "minimum": 0, "maximum": 100, "description": "quality score 0..100"}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


ERRORS = {
    str(code): _json(_ref("Error"), text)
    for code, text in (
        (400, "bad request: the message says what is wrong"),
        (401, "unauthorized: no token, or the wrong one (Authorization: Bearer <local_api.token_file>)"),
        (403, "forbidden: a browser page (Origin, Sec-Fetch-Site), a Host that is not this API's, "
              "or a Unix socket peer not in allowed_uids/allowed_gids"),
        (404, "no such session, item, capture or device; no such endpoint"),
        (409, "busy (one action per device); the session is closed or incomplete; conflict: the "
              "session's state does not allow it (the message says why)"),
        (411, "Transfer-Encoding (chunked) is refused: send Content-Length"),
        (413, "request body over 64 KiB"),
        (422, "the person must try again: no usable image in every attempt"),
        (500, "device_failed: the device failed for good, its config or hardware must change "
              "(the message names what); internal: a bug"),
        (503, "device, unavailable: the device or the agent is unavailable for now; retry later"),
    )
}
#: Any other method on a path (TRACE, HEAD, OPTIONS, PATCH, ...): JSON, with the methods it takes.
ERRORS["405"] = {
    **_json(_ref("Error"), "this path does not take that method; Allow lists the ones it takes"),
    "headers": {"Allow": {"required": True, "schema": {"type": "string"}, "description": "e.g. GET, POST"}},
}

SESSION_PARAM = {"name": "session", "in": "path", "required": True, "schema": {"type": "string"}}
DEVICE_PARAM = {"name": "device", "in": "path", "required": True, "schema": {"type": "string"}}


def _op(
    summary: str,
    ok: dict[str, Any],
    *,
    params: list[dict[str, Any]] | None = None,
    body: str | None = None,
    body_required: bool = True,
    status: str = "200",
    errors: dict[str, Any] | None = None,
) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "responses": {status: ok, **ERRORS, **(errors or {})}}
    if params:
        op["parameters"] = params
    if body is not None:
        schema = {"application/json": {"schema": _ref(body)}}
        op["requestBody"] = {"required": body_required, "content": schema}
    return op


def _obj(props: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": props, "additionalProperties": False}
    if required:
        schema["required"] = required
    return schema


def spec() -> dict[str, Any]:
    string, integer = {"type": "string"}, {"type": "integer"}
    jpeg = {
        "description": "JPEG image",
        "content": {"image/jpeg": {"schema": {"type": "string", "format": "binary"}}},
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "kiosk-agent local API",
            "version": __version__,
            "description": "For the kiosk's registration application, on loopback or a Unix socket. "
            "Every endpoint, this document included, needs the app's bearer token (or, on the Unix "
            "socket, an allowed uid or gid) and refuses browser pages. See docs/local-api.md.",
        },
        "security": [{"bearer": []}],
        "paths": {
            "/v1/devices": {
                "get": _op(
                    "Devices and their states",
                    _json(_obj({"devices": {"type": "array", "items": _ref("Device")}})),
                )
            },
            "/v1/status": {"get": _op("Queue, upload and connection status", _json({"type": "object"}))},
            "/v1/sessions": {
                "post": _op(
                    "Start a registration session",
                    _json(_ref("Session"), "created"),
                    body="StartSession",
                    status="201",
                ),
                "get": _op(
                    "List sessions",
                    _json(_obj({"sessions": {"type": "array", "items": _ref("Session")}})),
                    params=[
                        {
                            "name": "state",
                            "in": "query",
                            "required": False,
                            "schema": {"enum": list(SESSION_STATES)},
                        }
                    ],
                ),
            },
            "/v1/sessions/{session}": {
                "get": _op("One session", _json(_ref("Session")), params=[SESSION_PARAM])
            },
            "/v1/sessions/{session}/central": {
                "get": _op("What the central side says of the registration; also after the session "
                           "was erased", _json(_ref("CentralStatus")), params=[SESSION_PARAM])
            },
            "/v1/sessions/{session}/capture": {
                "post": _op(
                    "Capture one plan item (the next pending one unless `item` is given); blocks until done",
                    _json(_ref("CaptureResult")),
                    params=[SESSION_PARAM],
                    body="CaptureItem",
                    body_required=False,
                )
            },
            "/v1/sessions/{session}/exceptions": {
                "post": _op(
                    "Record a missing finger: XX amputated, UP unable to print",
                    _json(_ref("Session")),
                    params=[SESSION_PARAM],
                    body="AddException",
                )
            },
            "/v1/sessions/{session}/complete": {
                "post": _op(
                    "Complete the session: queues its manifest (409 lists pending items); "
                    "completing a completed session answers the same again",
                    _json(_ref("Session")),
                    params=[SESSION_PARAM],
                )
            },
            "/v1/sessions/{session}/cancel": {
                "post": _op(
                    "Cancel the session",
                    _json(_ref("Session")),
                    params=[SESSION_PARAM],
                    body="Cancel",
                )
            },
            "/v1/sessions/{session}/events": {
                "get": _op(
                    "Follow a session: events after `after`, waiting up to `wait` seconds (long polling)",
                    _json(_obj({"events": {"type": "array", "items": {"type": "object"}}})),
                    params=[
                        SESSION_PARAM,
                        {
                            "name": "after",
                            "in": "query",
                            "required": False,
                            "schema": {"type": "integer", "minimum": 0, "maximum": EVENTS_AFTER_MAX},
                        },
                        {
                            "name": "wait",
                            "in": "query",
                            "required": False,
                            "schema": {"type": "number", "minimum": 0, "maximum": EVENTS_WAIT_MAX_S},
                        },
                    ],
                )
            },
            "/v1/sessions/{session}/items/{item}/preview": {
                "get": _op(
                    "The latest attempt's image of an item, downscaled (open sessions only)",
                    jpeg,
                    params=[
                        SESSION_PARAM,
                        {"name": "item", "in": "path", "required": True, "schema": string},
                    ],
                )
            },
            "/v1/captures/{capture}": {
                "get": _op(
                    "A recent capture's quality result",
                    _json(_ref("CaptureResult")),
                    params=[{"name": "capture", "in": "path", "required": True, "schema": string}],
                )
            },
            "/v1/devices/{device}/capture": {
                "post": _op(
                    "One capture outside a session",
                    _json(_ref("CaptureResult")),
                    params=[DEVICE_PARAM],
                    body="SingleCapture",
                    body_required=False,
                )
            },
            "/v1/devices/{device}/preview.jpg": {
                "get": _op("One live camera frame", jpeg, params=[DEVICE_PARAM])
            },
            "/v1/devices/{device}/checks": {
                "get": _op(
                    "Face checks of one live frame", _json(_ref("QualityReport")), params=[DEVICE_PARAM]
                )
            },
            "/v1/devices/{device}/preview.mjpeg": {
                "get": _op(
                    "Live camera preview (multipart/x-mixed-replace MJPEG); with checks=1 each part carries "
                    "X-Face-Score, X-Face-Passed and X-Face-Hints (a JSON array of the failed checks' "
                    "hints) headers",
                    {"description": "MJPEG stream", "content": {"multipart/x-mixed-replace": {}}},
                    params=[
                        DEVICE_PARAM,
                        {
                            "name": "fps",
                            "in": "query",
                            "required": False,
                            "schema": {
                                "type": "number", "minimum": PREVIEW_FPS[0], "maximum": PREVIEW_FPS[1]
                            },
                        },
                        {
                            "name": "checks",
                            "in": "query",
                            "required": False,
                            "schema": {"enum": list(CHECKS_VALUES)},
                        },
                    ],
                )
            },
            "/v1/openapi.json": {"get": _op("This document", _json({"type": "object"}))},
        },
        "components": {
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "The token in local_api.token_file (over the Unix socket, an "
                    "allowed uid or gid will do instead)",
                }
            },
            "schemas": {
                **BODIES,
                "Error": _obj(
                    {
                        "error": {
                            "type": "object",
                            "required": ["code", "message"],
                            "properties": {
                                "code": {
                                    "enum": [
                                        "invalid",
                                        "unauthorized",
                                        "forbidden",
                                        "not_found",
                                        "busy",
                                        "closed",
                                        "incomplete",
                                        "conflict",
                                        "retry",
                                        "device",
                                        "device_failed",
                                        "unavailable",
                                        "internal",
                                    ]
                                },
                                "message": string,
                            },
                        }
                    },
                    ["error"],
                ),
                "Device": {
                    "type": "object",
                    "properties": {
                        "name": string,
                        "driver": string,
                        "modality": string,
                        "state": string,
                        "model": string,
                        "serial": string,
                        "error": string,
                    },
                },
                "Check": {
                    "type": "object",
                    "properties": {
                        "name": string,
                        "value": {"type": ["number", "null"]},
                        "threshold": string,
                        "passed": {"type": "boolean"},
                        "hint": string,
                        "note": string,
                    },
                },
                "QualityReport": {
                    "type": "object",
                    "properties": {
                        "modality": string,
                        "score": SCORE,
                        "passed": {"type": "boolean"},
                        "assessor": string,
                        "checks": {"type": "array", "items": _ref("Check")},
                        "hints": {"type": "array", "items": string},
                    },
                },
                "CaptureResult": {
                    "type": "object",
                    "required": ["capture_id", "attempts", "quality", "report"],
                    "properties": {
                        "capture_id": string,
                        "session": string,
                        "item": string,
                        "token_id": {"type": ["string", "null"], "description": "the face's ISO token image"},
                        "attempts": integer,
                        "force_captured": {"type": "boolean"},
                        "quality": SCORE,
                        "report": _ref("QualityReport"),
                        "expected_fingers": {"type": ["integer", "null"]},
                        "next": {
                            "type": ["string", "null"],
                            "description": "the session's next pending item after this capture "
                            "(null: complete the session); in a session capture's answer only",
                        },
                        "device": {"type": "string", "description": "a capture outside a session"},
                        "position": {"type": "integer", "description": "a capture outside a session"},
                        "passed": {"type": "boolean", "description": "a capture outside a session"},
                    },
                },
                "Item": {
                    "type": "object",
                    "properties": {
                        "key": {"type": "string"},
                        "modality": {"enum": [m.value for m in Modality]},
                        "position": {"type": "integer"},
                        "fingers": {"type": "array", "items": integer},
                        "device": string,
                        "name": string,
                        "status": {"enum": ["pending", "captured", "exception"]},
                        "capture_id": {"type": ["string", "null"]},
                        "token_id": {"type": ["string", "null"]},
                        "quality": {"anyOf": [SCORE, {"type": "null"}]},
                        "force_captured": {"type": "boolean"},
                        "attempts": integer,
                        "excepted_fingers": {"type": "array", "items": integer},
                        "failed_checks": {"type": "array", "items": string},
                        "hints": {"type": "array", "items": string},
                    },
                },
                "Session": {
                    "type": "object",
                    "properties": {
                        "id": string,
                        "applicant_ref": string,
                        "operator_id": string,
                        "plan": string,
                        "state": {"enum": list(SESSION_STATES)},
                        "items": {"type": "array", "items": _ref("Item")},
                        "pending": {"type": "array", "items": string},
                        "next": {"type": ["string", "null"]},
                        "exceptions": {"type": "array", "items": {"type": "object"}},
                        "central": _ref("CentralStatus"),
                        "warnings": {
                            "type": "array",
                            "description": "what the officer must know while the person is there "
                            "(open sessions only): e.g. rule outside_area, the kiosk outside its "
                            "assigned area with position.area.outside = \"flag\" (docs/vans.md)",
                            "items": _obj({"rule": string, "message": string, "action": string,
                                           "distance_m": {"type": "number"}}, ["rule", "message", "action"]),
                        },
                    },
                },
                # What the central side last said of a registration (agent/registration/central_status.py).
                "CentralStatus": _obj({
                    "state": {"enum": ["unknown", "complete", "incomplete", "failed", "cancelled"]},
                    "missing": {"type": "array", "items": _obj({
                        "item": string, "position": integer, "capture_id": string})},
                    "reason": {"type": ["object", "null"], "properties": {
                        "code": string, "message": string, "attempts": integer,
                        "retry_at": {"type": ["string", "null"]}}},
                    "updated_at": {"type": ["string", "null"]},
                }, ["state", "missing", "reason", "updated_at"]),
            }
        },
    }
