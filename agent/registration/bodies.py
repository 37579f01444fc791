"""The request bodies the local API accepts, as pydantic models: the one place their rules live.

agent/registration/local_api.py validates every body with these models, and
agent/registration/openapi.py puts their JSON Schemas in the OpenAPI document, so what the
document promises is what the API accepts. The rules are those of what comes after the
kiosk: positions the receiver files (agent/formats/positions.py), text an ANSI/NIST-ITL
transaction can carry (printable text in any script: agent/formats/ansi_nist.py writes what
is not 7-bit ASCII as UTF-8, declared in field 1.015).
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    WithJsonSchema,
)
from pydantic_core import PydanticCustomError

from agent.formats.positions import CAPTURE_POSITIONS, FINGERS, position_problem
from agent.registration.plan import EXCEPTION_CODES, ITEM_KEYS

#: Printable text in any script (no C0/C1 control character, which would break or hide in a
#: record; no bidi embedding, override or isolate control, line or paragraph separator or
#: U+FEFF, which make a reference read as another or split it) with at least one non-blank
#: character. JSON Schema's semantics: a search (a trailing newline passes, and is stripped
#: with the rest of the blanks).
_NOT = r"\x00-\x1f\x7f-\x9f\u2028-\u202e\u2066-\u2069\ufeff"
TEXT_PATTERN = rf"^[^{_NOT}]*[^\s{_NOT}][^{_NOT}]*$"
_TEXT = re.compile(TEXT_PATTERN)


def _text(max_length: int, example: str) -> Any:
    def check(value: str) -> str:
        # A lone surrogate (JSON can spell one) is no character: no record could carry it.
        if _TEXT.search(value) is None or not value.encode("utf-8", "surrogatepass").decode(
                "utf-8", "ignore") == value:
            raise PydanticCustomError(
                "text", "must be printable text (no control characters) with at least one character "
                "that is not blank",
            )
        return value

    return Annotated[
        str, Field(min_length=1, max_length=max_length, examples=[example]), AfterValidator(check),
        WithJsonSchema({"type": "string", "minLength": 1, "maxLength": max_length, "pattern": TEXT_PATTERN,
                        "examples": [example]}),
    ]


def _position(allowed: frozenset[int], meaning: str) -> Any:
    def check(value: Any) -> Any:
        # Before pydantic's own int check: true and 6.0 are not positions, whatever Python thinks.
        problem = position_problem(value, allowed)
        if problem is not None:
            raise PydanticCustomError("position", problem)
        return value

    return Annotated[
        int, BeforeValidator(check),
        WithJsonSchema({"type": "integer", "enum": sorted(allowed), "description": meaning}),
    ]


ApplicantRef = _text(128, "APP-2026-0042")
OperatorId = _text(128, "op-17")
Reason = _text(200, "amputated")


#: Query parameters' bounds (local_api.py checks them, openapi.py states them):
#: events after this number (a session has far fewer), a long poll of up to this many seconds,
#: and the live preview's frame rate.
EVENTS_AFTER_MAX = 10**12
EVENTS_WAIT_MAX_S = 60
PREVIEW_FPS = (1, 30)
SESSION_STATES = ("open", "completed", "cancelled")
#: The live preview's `checks`: judge every frame or not.
CHECKS_VALUES = ("0", "1", "true", "false")


class Body(BaseModel):
    # No field the app did not mean (a typo must not pass unseen), and no coercion: 7 is not
    # a string, "7" is not a number.
    model_config = ConfigDict(extra="forbid", strict=True)


class StartSession(Body):
    applicant_ref: ApplicantRef
    operator_id: OperatorId


class CaptureItem(Body):
    #: None: the next pending item.
    item: Literal[ITEM_KEYS] | None = None  # type: ignore[valid-type]


class AddException(Body):
    position: _position(FINGERS, "the missing finger, 1 right thumb .. 10 left little")  # type: ignore[valid-type]
    code: Literal[tuple(EXCEPTION_CODES)]  # type: ignore[valid-type]
    reason: Reason


class Cancel(Body):
    reason: Reason


class SingleCapture(Body):
    position: _position(  # type: ignore[valid-type]
        CAPTURE_POSITIONS, "0 a face or unknown, 1..10 a finger, 13..15 a slap (right four, left four, "
        "both thumbs)"
    ) = 0


class NoBody(Body):
    pass


def parse(model: type[Body], body: dict[str, Any]) -> Any:
    """``body`` as ``model``; ValueError with one message naming each wrong field."""
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise ValueError("; ".join(_message(e) for e in exc.errors(include_url=False))) from None


def _message(error: Any) -> str:
    field = ".".join(str(p) for p in error["loc"]) or "body"
    if error["type"] == "missing":
        return f"{field} is required"
    if error["type"] in ("position", "text"):
        return f"{field} {error['msg']}"
    return f"{field}: {error['msg']}"
