"""The OpenAPI 3.1 document of the local API (served at /v1/openapi.json, copied to
docs/openapi.json by `make openapi`; a test keeps both in step with the routes)."""

from __future__ import annotations

from typing import Any

from agent import __version__


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
        (404, "no such session, item, capture or device"),
        (409, "busy (one action per device), or the session is closed or incomplete"),
        (422, "the person must try again: no usable image in every attempt"),
        (500, "device_failed: the device failed for good, its config or hardware must change "
              "(the message names what); internal: a bug"),
        (503, "device, unavailable: the device or the agent is unavailable for now; retry later"),
    )
}
#: Only where a request has a body.
BODY_ERRORS = {
    "411": _json(_ref("Error"), "Transfer-Encoding (chunked) is refused: send Content-Length"),
    "413": _json(_ref("Error"), "request body over 64 KiB"),
}

SESSION_PARAM = {"name": "session", "in": "path", "required": True, "schema": {"type": "string"}}
DEVICE_PARAM = {"name": "device", "in": "path", "required": True, "schema": {"type": "string"}}


def _op(
    summary: str,
    ok: dict[str, Any],
    *,
    params: list[dict[str, Any]] | None = None,
    body: dict[str, Any] | None = None,
    status: str = "200",
    errors: dict[str, Any] | None = None,
) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "responses": {status: ok, **ERRORS, **(errors or {})}}
    if params:
        op["parameters"] = params
    if body is not None:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
        op["responses"].update(BODY_ERRORS)
    return op


def _obj(props: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": props, "additionalProperties": False}
    if required:
        schema["required"] = required
    return schema


def spec() -> dict[str, Any]:
    string, integer = {"type": "string"}, {"type": "integer"}
    ref = {"type": "string", "minLength": 1, "maxLength": 128, "pattern": "\\S"}  # not blank
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
                    body=_obj({"applicant_ref": ref, "operator_id": ref}, ["applicant_ref", "operator_id"]),
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
                            "schema": {"enum": ["open", "completed", "cancelled"]},
                        }
                    ],
                ),
            },
            "/v1/sessions/{session}": {
                "get": _op("One session", _json(_ref("Session")), params=[SESSION_PARAM])
            },
            "/v1/sessions/{session}/capture": {
                "post": _op(
                    "Capture one plan item (the next pending one unless `item` is given); blocks until done",
                    _json(_ref("CaptureResult")),
                    params=[SESSION_PARAM],
                    body=_obj({"item": string}),
                )
            },
            "/v1/sessions/{session}/exceptions": {
                "post": _op(
                    "Record a missing finger: XX amputated, UP unable to print",
                    _json(_ref("Session")),
                    params=[SESSION_PARAM],
                    body=_obj(
                        {
                            "position": {"type": "integer", "minimum": 1, "maximum": 10},
                            "code": {"enum": ["XX", "UP"]},
                            "reason": string,
                        },
                        ["position", "code", "reason"],
                    ),
                )
            },
            "/v1/sessions/{session}/complete": {
                "post": _op(
                    "Complete the session: queues its manifest (409 lists pending items)",
                    _json(_ref("Session")),
                    params=[SESSION_PARAM],
                )
            },
            "/v1/sessions/{session}/cancel": {
                "post": _op(
                    "Cancel the session",
                    _json(_ref("Session")),
                    params=[SESSION_PARAM],
                    body=_obj({"reason": string}, ["reason"]),
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
                            "schema": {"type": "integer", "minimum": 0},
                        },
                        {
                            "name": "wait",
                            "in": "query",
                            "required": False,
                            "schema": {"type": "number", "minimum": 0, "maximum": 60},
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
                    errors={"410": _json(_ref("Error"), "gone: the session has ended; no previews")},
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
                    body=_obj({"position": {"type": "integer", "minimum": 0, "maximum": 15}}),
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
                    "X-Face-Score and X-Face-Passed headers",
                    {"description": "MJPEG stream", "content": {"multipart/x-mixed-replace": {}}},
                    params=[
                        DEVICE_PARAM,
                        {
                            "name": "fps",
                            "in": "query",
                            "required": False,
                            "schema": {"type": "number", "minimum": 1, "maximum": 30},
                        },
                        {
                            "name": "checks",
                            "in": "query",
                            "required": False,
                            "schema": {"enum": ["0", "1", "true", "false"]},
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
                                        "gone",
                                        "busy",
                                        "closed",
                                        "incomplete",
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
                        "score": integer,
                        "passed": {"type": "boolean"},
                        "assessor": string,
                        "checks": {"type": "array", "items": _ref("Check")},
                        "hints": {"type": "array", "items": string},
                    },
                },
                "CaptureResult": {
                    "type": "object",
                    "properties": {
                        "capture_id": string,
                        "item": string,
                        "attempts": integer,
                        "force_captured": {"type": "boolean"},
                        "quality": _ref("QualityReport"),
                    },
                },
                "Session": {
                    "type": "object",
                    "properties": {
                        "id": string,
                        "applicant_ref": string,
                        "operator_id": string,
                        "plan": string,
                        "state": {"enum": ["open", "completed", "cancelled"]},
                        "items": {"type": "array", "items": {"type": "object"}},
                        "pending": {"type": "array", "items": string},
                        "next": {"type": ["string", "null"]},
                        "exceptions": {"type": "array", "items": {"type": "object"}},
                    },
                },
            }
        },
    }
