"""Signed commands: the envelope an operator signs and the checks a kiosk makes before obeying.

A command is one UTF-8 JSON object::

    {"v": 1, "id": "<request id>", "kiosk": "<kiosk id>", "name": "config.set",
     "args": {...}, "operator": "alice", "issued_at": 1764380000.0,
     "expires_at": 1764380300.0, "nonce": "<32 hex>", "reply_to": "<topic, MQTT 3.1.1 only>",
     "sig": "<base64 Ed25519 signature>"}

The signature covers every other field (canonical JSON: sorted keys, no spaces) behind a
context string, so a command signed for one kiosk or one command name is worthless for
another. The kiosk checks, in order: shape, operator known, signature, kiosk id and name
match the topic, time window (with clock skew), role, then nonce (remembered until expiry,
so a replay is refused even after a restart). Every refusal is a ``CommandError`` whose
code the reply carries.
"""

from __future__ import annotations

import base64
import json
import os
import time
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from agent.clock.watch import clock_hint
from agent.errors import AgentError

VERSION = 1
CONTEXT = b"kiosk-agent command v1\n"
MAX_COMMAND_BYTES = 64 * 1024

#: Error codes a reply can carry (docs/remote-management.md).
CODES = ("bad_request", "unknown_command", "unauthenticated", "forbidden", "expired", "replayed",
         "invalid_args", "busy", "timeout", "failed", "rolled_back")

#: Each role's commands; a role also holds every command of the roles before it.
ROLE_ORDER = ("viewer", "operator", "admin")


#: Codes whose command may succeed when sent again later, unchanged.
TRANSIENT_CODES = frozenset({"busy", "timeout"})


class CommandError(AgentError):
    """A command refused or failed; ``code`` goes into the reply (docs/remote-management.md)."""

    def __init__(self, code: str, message: str, request_id: str | None = None) -> None:
        assert code in CODES, code
        super().__init__(message, transient=code in TRANSIENT_CODES)
        self.code = code
        self.message = message
        self.request_id = request_id


@dataclass(frozen=True)
class Operator:
    name: str
    key: Ed25519PublicKey
    roles: frozenset[str]

    def may(self, required_role: str) -> bool:
        needed = ROLE_ORDER.index(required_role)
        return any(ROLE_ORDER.index(r) >= needed for r in self.roles)


@dataclass(frozen=True)
class Command:
    id: str
    kiosk: str
    name: str
    args: dict[str, Any]
    operator: str
    issued_at: float
    expires_at: float
    nonce: str
    reply_to: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _canonical(body: dict[str, Any]) -> bytes:
    return CONTEXT + json.dumps(body, sort_keys=True, separators=(",", ":"),
                                ensure_ascii=False).encode()


def sign_command(key: Ed25519PrivateKey, *, operator: str, kiosk: str, name: str,
                 args: dict[str, Any] | None = None, ttl_s: float = 300.0,
                 request_id: str | None = None, reply_to: str | None = None,
                 now: float | None = None) -> bytes:
    """The operator's side: a signed command ready to publish."""
    from agent.capture.ids import uuid7

    issued = time.time() if now is None else now
    body: dict[str, Any] = {
        "v": VERSION, "id": request_id or str(uuid7()), "kiosk": kiosk, "name": name,
        "args": args or {}, "operator": operator, "issued_at": issued, "expires_at": issued + ttl_s,
        "nonce": os.urandom(16).hex(),
    }
    if reply_to:
        body["reply_to"] = reply_to
    body["sig"] = base64.b64encode(key.sign(_canonical(body))).decode()
    return json.dumps(body, separators=(",", ":")).encode()


def parse_unverified(payload: bytes) -> dict[str, Any]:
    """The JSON object, for finding a reply address even when the command is refused."""
    if len(payload) > MAX_COMMAND_BYTES:
        raise CommandError("bad_request", f"command is {len(payload)} bytes; the limit is "
                                          f"{MAX_COMMAND_BYTES}")
    try:
        body = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise CommandError("bad_request", f"command is not UTF-8 JSON: {exc}") from None
    if not isinstance(body, dict):
        raise CommandError("bad_request", "command must be a JSON object")
    return body


def request_id_of(body: dict[str, Any]) -> str | None:
    rid = body.get("id")
    return rid if isinstance(rid, str) and 0 < len(rid) <= 128 else None


def verify_command(body: dict[str, Any], *, kiosk_id: str, topic_name: str,
                   operators: dict[str, Operator], skew_s: float, max_ttl_s: float,
                   now: float | None = None) -> tuple[Command, Operator]:
    """Check everything but role and nonce; CommandError says what is wrong."""
    rid = request_id_of(body)

    def bad(code: str, message: str) -> CommandError:
        return CommandError(code, message, rid)

    if body.get("v") != VERSION:
        raise bad("bad_request", f"command version {body.get('v')!r} not supported (expected {VERSION})")
    if rid is None:
        raise bad("bad_request", "id must be a string of 1-128 characters")
    sig = body.get("sig")
    if not isinstance(sig, str):
        raise bad("unauthenticated", "command is not signed (no 'sig')")
    name = body.get("operator")
    operator = operators.get(name) if isinstance(name, str) else None
    if operator is None:
        raise bad("unauthenticated", f"operator {name!r} is not listed in this kiosk's remote.operators")
    unsigned = {k: v for k, v in body.items() if k != "sig"}
    try:
        operator.key.verify(base64.b64decode(sig, validate=True), _canonical(unsigned))
    except (InvalidSignature, ValueError, TypeError):
        raise bad("unauthenticated", f"signature does not verify with operator {name}'s key") from None
    # Signed from here on: the fields are the operator's, but still checked for shape.
    try:
        command = Command(
            id=rid, kiosk=_text(body, "kiosk"), name=_text(body, "name"), args=_args(body),
            operator=name, issued_at=_number(body, "issued_at"), expires_at=_number(body, "expires_at"),
            nonce=_text(body, "nonce"), reply_to=body.get("reply_to") if isinstance(body.get("reply_to"), str)
            else None)
    except ValueError as exc:
        raise bad("bad_request", str(exc)) from None
    if command.kiosk != kiosk_id:
        raise bad("unauthenticated", f"command is addressed to kiosk {command.kiosk!r}, not {kiosk_id!r}")
    if command.name != topic_name:
        raise bad("bad_request", f"command name {command.name!r} does not match its topic ({topic_name!r})")
    if not 16 <= len(command.nonce) <= 128:
        raise bad("bad_request", "nonce must be 16-128 characters")
    now = time.time() if now is None else now
    if command.expires_at - command.issued_at > max_ttl_s:
        raise bad("expired", f"command asks to live {command.expires_at - command.issued_at:.0f} s; "
                             f"this kiosk accepts at most {max_ttl_s:.0f} s (remote.max_ttl_s)")
    if command.issued_at > now + skew_s:
        raise bad("expired", f"command issued {command.issued_at - now:.0f} s in the future; check the "
                             "clocks of the operator's machine and the kiosk" + clock_hint())
    if now > command.expires_at + skew_s:
        raise bad("expired", f"command expired {now - command.expires_at:.0f} s ago" + clock_hint())
    return command, operator


def _text(body: dict[str, Any], key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value:
        raise ValueError(f"{key} must be a non-empty string")
    return value


def _number(body: dict[str, Any], key: str) -> float:
    value = body.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        raise ValueError(f"{key} must be a number (seconds since the epoch)")
    return float(value)


def _args(body: dict[str, Any]) -> dict[str, Any]:
    args = body.get("args", {})
    if not isinstance(args, dict):
        raise ValueError("args must be a JSON object")
    return args
