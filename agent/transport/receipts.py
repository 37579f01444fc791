"""Receipts: the central service's signed word about a capture it received.

A receipt makes a kiosk delete a capture (``stored``, ``duplicate``) or set it aside
(``rejected``), so it must provably come from the central service and name exactly what
that service received. This module is the one definition of the format, for every way
receipts travel: a message on ``<prefix>/<kiosk_id>/receipts`` (one receipt or a batch),
and a file of receipts carried back on removable media (docs/protocol.md, "Receipts")::

    b"KAR" | version (1) | header length (4, big-endian) | header (UTF-8 JSON) | signature (64)

* signature = Ed25519(central receipt-signing key, CONTEXT || header bytes)
* header = {"type": "receipts", "kid": <signing key id>, "kiosk_id": <the kiosk>,
  "issued_at": <UTC>, "receipts": [<entry>, ...]}
* entry = {"id", "status", "sha256", "nonce", "receiver", "reason" (rejected only)}

The frame's version byte is the format's only version: the header carries none of its own.
The signature covers the header's exact bytes, so neither side canonicalises JSON. Frames
delimit themselves, so a file of receipts is one or more frames back to back.

The same frame and key carry the central side's word on a whole registration, a
*registration status* (type ``registration-status``, its own signing context; end of this
module): complete, or incomplete with what is missing, or failed and why.

What a verified receipt is *for* (in flight, hash, nonce) the kiosk decides
(agent/transport/receipt_gate.py), and whether a status is about one of its registrations
and newer than the last (agent/registration/central_status.py); this module only proves who
said it, to which kiosk.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from agent.security.keys import key_id
from agent.transport.protocol import ProtocolError, pack_frame, unpack_frame

MAGIC = b"KAR"
#: Domain separation: no other signature of the central key (or any key) can pass for receipts.
CONTEXT = b"kiosk-agent receipts v1\x00"
SIGNATURE_BYTES = 64
#: A batch of MAX_RECEIPTS entries with long reasons still fits.
MAX_HEADER_BYTES = 1024 * 1024
MAX_RECEIPTS = 1000
#: Reasons are for a person reading the kiosk's log; a receiver's exception text is cut here.
MAX_REASON = 500
STATUSES = ("stored", "duplicate", "rejected")
_PREFIX = struct.Struct(">3sBI")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_NONCE = re.compile(r"[0-9a-f]{0,64}")
_KID = re.compile(r"[0-9a-f]{16}")

ReceiptStatus = Literal["stored", "duplicate", "rejected"]
#: Why receipts were refused, as counters and events name it.
RefusalReason = Literal["malformed", "unknown_key", "bad_signature", "wrong_kiosk",
                        "not_in_flight", "hash_mismatch", "stale_nonce"]


class ReceiptError(ProtocolError):
    """Receipts that must not be acted on. ``reason`` is a short code for counters and events;
    the text says what was wrong, for the log."""

    def __init__(self, reason: RefusalReason, message: str, item_id: str | None = None) -> None:
        super().__init__(message, item_id)
        self.reason: RefusalReason = reason


@dataclass(frozen=True)
class Receipt:
    """The central side's answer for one item (capture or registration manifest).

    ``stored`` and ``duplicate`` both mean "safe here, delete your copy"; ``rejected`` means
    the item will never be accepted as sent (the kiosk keeps it aside for support).
    ``sha256`` is the hex SHA-256 of the sealed envelope the receiver got: the kiosk holds
    exactly those bytes in its queue and can compare without decrypting anything (it cannot
    decrypt: it only has the central public key). ``nonce`` echoes the kiosk's nonce for that
    send (transmission frame or signed chunk manifest), so a receipt for an earlier send of
    the same bytes does not count for a later one; "" when the envelope came without one.
    """

    id: str
    status: ReceiptStatus
    receiver: str = ""
    reason: str = ""
    sha256: str = ""
    nonce: str = ""

    @property
    def settled(self) -> bool:
        return self.status in ("stored", "duplicate")

    def entry(self) -> dict[str, Any]:
        body: dict[str, Any] = {"id": self.id, "status": self.status, "sha256": self.sha256,
                                "nonce": self.nonce, "receiver": self.receiver}
        if self.reason:
            body["reason"] = self.reason[:MAX_REASON]
        return body

    @classmethod
    def from_entry(cls, value: Any) -> Receipt:
        """One entry of a verified header; ReceiptError("malformed") names what is wrong."""
        if not isinstance(value, dict):
            raise ReceiptError("malformed", "a receipt entry is not a JSON object")
        item_id = value.get("id")
        if not isinstance(item_id, str) or not 0 < len(item_id) <= 128:
            raise ReceiptError("malformed", "a receipt entry lacks a valid 'id'")
        status, sha256, nonce = value.get("status"), value.get("sha256"), value.get("nonce", "")
        if status not in STATUSES:
            raise ReceiptError("malformed", f"receipt for {item_id}: unknown status {status!r}", item_id)
        if not isinstance(sha256, str) or not _HEX64.fullmatch(sha256):
            raise ReceiptError("malformed", f"receipt for {item_id}: sha256 is not 64 lower-case hex "
                               "digits", item_id)
        if not isinstance(nonce, str) or not _NONCE.fullmatch(nonce):
            raise ReceiptError("malformed", f"receipt for {item_id}: bad nonce", item_id)
        receiver, reason = value.get("receiver", ""), value.get("reason", "")
        if not isinstance(receiver, str) or not isinstance(reason, str):
            raise ReceiptError("malformed", f"receipt for {item_id}: receiver and reason must be text",
                               item_id)
        return cls(item_id, status, receiver[:128], reason[:MAX_REASON], sha256, nonce)

    def record(self) -> bytes:
        """What a receiver keeps to answer the same item again later (a chunked transfer's
        ``.done`` file): unsigned, since each answer is signed for its own send."""
        return json.dumps(self.entry(), separators=(",", ":"), sort_keys=True).encode()

    @classmethod
    def from_record(cls, raw: bytes, item_id: str, sha256: str, nonce: str) -> Receipt:
        """A kept receipt, for a new send of the same bytes (its hash and nonce). Also reads
        what receivers kept before receipts were signed (no hash, no nonce)."""
        try:
            kept = json.loads(raw)
            return cls.from_entry({**kept, "id": item_id, "sha256": sha256, "nonce": nonce})
        except (UnicodeDecodeError, json.JSONDecodeError, TypeError) as exc:
            raise ReceiptError("malformed", f"kept receipt for {item_id} unreadable: {exc}",
                               item_id) from None


class ReceiptSigner:
    """The central side: sign receipts for one kiosk with the receipt-signing key."""

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key
        self.key_id = key_id(key.public_key())

    def sign(self, kiosk_id: str, receipts: Sequence[Receipt], issued_at: datetime | None = None) -> bytes:
        """One frame holding ``receipts`` (1..MAX_RECEIPTS), all for ``kiosk_id``."""
        if not 0 < len(receipts) <= MAX_RECEIPTS:
            raise ValueError(f"a receipt frame holds 1 to {MAX_RECEIPTS} receipts, not {len(receipts)}")
        header = json.dumps({
            "type": "receipts", "kid": self.key_id, "kiosk_id": kiosk_id, "issued_at": _utc(issued_at),
            "receipts": [r.entry() for r in receipts],
        }, separators=(",", ":"), sort_keys=True).encode()
        if len(header) > MAX_HEADER_BYTES:
            raise ValueError(f"receipt header of {len(header)} bytes; send fewer receipts per frame")
        return pack_frame(MAGIC, header, self._key.sign(CONTEXT + header))

    def sign_status(self, kiosk_id: str, status: RegistrationStatus,
                    issued_at: datetime | None = None) -> bytes:
        """One frame: a registration's central ``status`` for ``kiosk_id`` (below)."""
        return _sign_status(self._key, self.key_id, kiosk_id, status, issued_at)


def _utc(when: datetime | None) -> str:
    """UTC with milliseconds and ``Z`` (now by default)."""
    when = (when or datetime.now(UTC)).astimezone(UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


def verify_receipts(data: bytes, trusted: Mapping[str, Ed25519PublicKey], kiosk_id: str) -> list[Receipt]:
    """The receipts in ``data`` (one frame, or several back to back as in a file), each signed
    by a key in ``trusted`` (key id -> public key) and addressed to ``kiosk_id``.

    All or nothing: any frame that is malformed, signed by an unknown key, badly signed or
    addressed to another kiosk raises ReceiptError, and none of ``data`` counts.
    """
    receipts: list[Receipt] = []
    offset = 0
    if not data:
        raise ReceiptError("malformed", "empty receipts message")
    while offset < len(data):
        frame_receipts, offset = _verify_frame(data, offset, trusted, kiosk_id)
        receipts.extend(frame_receipts)
    return receipts


def _verify_frame(data: bytes, offset: int, trusted: Mapping[str, Ed25519PublicKey],
                  kiosk_id: str) -> tuple[list[Receipt], int]:
    header, end = _open_signed(data, offset, CONTEXT, trusted, kiosk_id, _header)
    return [Receipt.from_entry(e) for e in header["receipts"]], end


def _open_signed(data: bytes, offset: int, context: bytes, trusted: Mapping[str, Ed25519PublicKey],
                 kiosk_id: str, parse: Callable[[bytes], dict[str, Any]]) -> tuple[dict[str, Any], int]:
    """The header of the signed frame at ``offset`` (receipts or a registration status) and
    where the frame ends; ReceiptError unless a trusted key signed it for ``kiosk_id``."""
    # Only this frame's bytes are sliced off: a file of many frames is read in linear time.
    header_len = _PREFIX.unpack_from(data, offset)[2] if len(data) - offset >= _PREFIX.size else 0
    frame = data[offset:offset + _PREFIX.size + header_len + SIGNATURE_BYTES]
    try:
        header_bytes, rest = unpack_frame(frame, MAGIC, "receipts frame", MAX_HEADER_BYTES)
    except ProtocolError as exc:
        raise ReceiptError("malformed", str(exc)) from None
    if len(rest) < SIGNATURE_BYTES:
        raise ReceiptError("malformed", "receipts frame truncated (no whole signature)")
    signature = rest[:SIGNATURE_BYTES]
    header = parse(header_bytes)
    kid = header["kid"]
    key = trusted.get(kid)
    if key is None:
        raise ReceiptError("unknown_key", f"{header['type']} signed by key {kid}, which this kiosk does not "
                           f"trust (trusted: {', '.join(sorted(trusted)) or 'none'}; security.receipt_keys)")
    try:
        key.verify(signature, context + header_bytes)
    except InvalidSignature:
        raise ReceiptError("bad_signature", f"{header['type']} claim key {kid} but its signature does not "
                           "verify (forged or altered)") from None
    if header["kiosk_id"] != kiosk_id:
        raise ReceiptError("wrong_kiosk", f"{header['type']} addressed to kiosk {header['kiosk_id']!r}, "
                           f"this is {kiosk_id!r}")
    return header, offset + _PREFIX.size + len(header_bytes) + SIGNATURE_BYTES


def _header(raw: bytes) -> dict[str, Any]:
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ReceiptError("malformed", f"receipts header is not JSON: {exc}") from None
    if not isinstance(header, dict) or header.get("type") != "receipts":
        raise ReceiptError("malformed", "not a receipts header")
    if not isinstance(header.get("kid"), str) or not _KID.fullmatch(header["kid"]):
        raise ReceiptError("malformed", "receipts header lacks a valid 'kid'")
    if not isinstance(header.get("kiosk_id"), str):
        raise ReceiptError("malformed", "receipts header lacks 'kiosk_id'")
    entries = header.get("receipts")
    if not isinstance(entries, list) or not 0 < len(entries) <= MAX_RECEIPTS:
        raise ReceiptError("malformed", f"receipts header must list 1 to {MAX_RECEIPTS} receipts")
    return header


# --- registration status ------------------------------------------------------------------
# The central side's word on a whole registration (complete, or incomplete and why), in the
# receipts' frame, signed by the same key under a context of its own: neither signature can
# pass for the other, and a file of receipts holding a status frame is refused whole.

STATUS_CONTEXT = b"kiosk-agent registration status v1\x00"
STATUS_TYPE = "registration-status"
#: complete: transaction written; incomplete: manifest here, parts missing; failed: every
#: part here, building it failed (retried); cancelled: the kiosk cancelled it; unknown: no
#: manifest has arrived.
CENTRAL_STATES = ("complete", "incomplete", "failed", "cancelled", "unknown")
#: A status is small (at most 64 missing parts): a kiosk reads no more than this.
MAX_STATUS_BYTES = 16 * 1024
MAX_MISSING = 64
MAX_SEQ = 2**63 - 1
_CODE = re.compile(r"[a-z][a-z0-9-]{0,31}")


@dataclass(frozen=True)
class MissingPart:
    item: str  # the plan item ("finger-3", "slap-right", "face")
    position: int  # ANSI/NIST finger or slap position, 0 for a face
    id: str  # the capture id the manifest lists


@dataclass(frozen=True)
class FailureReason:
    """Why building a registration failed: a fixed code and text, nothing from the data."""

    code: str
    message: str
    attempts: int = 0
    retry_at: str | None = None


@dataclass(frozen=True)
class RegistrationStatus:
    """The central state of one registration. ``seq`` orders the statuses of a registration:
    a kiosk keeps the highest it accepted and refuses any not above it."""

    id: str
    state: str
    seq: int
    missing: tuple[MissingPart, ...] = ()
    reason: FailureReason | None = None
    #: Written files of a complete registration: {"name", "sha256", "bytes"} each.
    files: tuple[dict[str, Any], ...] = ()

    def document(self) -> dict[str, Any]:
        return {"id": self.id, "state": self.state, "seq": self.seq,
                "missing": [vars(m) for m in self.missing],
                "reason": vars(self.reason) if self.reason else None, "files": list(self.files)}

    @classmethod
    def from_document(cls, doc: Any) -> RegistrationStatus:
        """ReceiptError("malformed") for anything a receiver does not send."""
        if not isinstance(doc, dict):
            raise ReceiptError("malformed", "registration status is not a JSON object")
        reg_id, state, seq = doc.get("id"), doc.get("state"), doc.get("seq")
        if not isinstance(reg_id, str) or not 0 < len(reg_id) <= 128:
            raise ReceiptError("malformed", "registration status lacks a valid 'id'")
        if state not in CENTRAL_STATES:
            raise ReceiptError("malformed", f"registration status: unknown state {state!r}", reg_id)
        if not _whole(seq, 1, MAX_SEQ):
            raise ReceiptError("malformed", "registration status: seq must be a whole number >= 1", reg_id)
        missing, reason, files = doc.get("missing", []), doc.get("reason"), doc.get("files", [])
        if not isinstance(missing, list) or len(missing) > MAX_MISSING or not all(
                isinstance(m, dict) and _text(m.get("item"), 32) and _whole(m.get("position"), 0, 15)
                and _text(m.get("id"), 128) for m in missing):
            raise ReceiptError("malformed", "registration status: bad 'missing' list", reg_id)
        if reason is not None and not (
                isinstance(reason, dict) and isinstance(reason.get("code"), str)
                and _CODE.fullmatch(reason["code"]) and _text(reason.get("message"), 200)
                and _whole(reason.get("attempts", 0), 0, 1 << 31)
                and (reason.get("retry_at") is None or _text(reason["retry_at"], 40))):
            raise ReceiptError("malformed", "registration status: bad 'reason'", reg_id)
        if not isinstance(files, list) or len(files) > 4 or not all(
                isinstance(f, dict) and _text(f.get("name"), 160) and isinstance(f.get("sha256"), str)
                and _HEX64.fullmatch(f["sha256"]) and _whole(f.get("bytes"), 0, MAX_SEQ) for f in files):
            raise ReceiptError("malformed", "registration status: bad 'files' list", reg_id)
        return cls(reg_id, state, seq,
                   tuple(MissingPart(m["item"], m["position"], m["id"]) for m in missing),
                   FailureReason(reason["code"], reason["message"], reason.get("attempts", 0),
                                 reason.get("retry_at")) if reason else None,
                   tuple({"name": f["name"], "sha256": f["sha256"], "bytes": f["bytes"]} for f in files))


def _whole(value: Any, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _text(value: Any, most: int) -> bool:
    return isinstance(value, str) and 0 < len(value) <= most


def _sign_status(key: Ed25519PrivateKey, kid: str, kiosk_id: str, status: RegistrationStatus,
                 issued_at: datetime | None) -> bytes:
    header = json.dumps({"type": STATUS_TYPE, "kid": kid, "kiosk_id": kiosk_id,
                         "issued_at": _utc(issued_at), **status.document()},
                        separators=(",", ":"), sort_keys=True).encode()
    if _PREFIX.size + len(header) + SIGNATURE_BYTES > MAX_STATUS_BYTES:
        raise ValueError(f"registration status of {len(header)} bytes is over the limit")
    return pack_frame(MAGIC, header, key.sign(STATUS_CONTEXT + header))


def verify_registration_status(data: bytes, trusted: Mapping[str, Ed25519PublicKey],
                               kiosk_id: str) -> RegistrationStatus:
    """The status in ``data`` (exactly one frame), signed by a trusted key for ``kiosk_id``;
    ReceiptError (malformed, unknown_key, bad_signature, wrong_kiosk) otherwise. Whether it is
    about a registration of this kiosk's and newer than the last is the kiosk's to decide."""
    if not data or len(data) > MAX_STATUS_BYTES:
        raise ReceiptError("malformed", f"registration status of {len(data)} bytes (1 to "
                           f"{MAX_STATUS_BYTES} expected)")
    header, end = _open_signed(data, 0, STATUS_CONTEXT, trusted, kiosk_id, _status_header)
    if end != len(data):
        raise ReceiptError("malformed", "bytes after the registration status frame")
    return RegistrationStatus.from_document(header)


def _status_header(raw: bytes) -> dict[str, Any]:
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ReceiptError("malformed", f"registration status header is not JSON: {exc}") from None
    if not isinstance(header, dict) or header.get("type") != STATUS_TYPE:
        raise ReceiptError("malformed", "not a registration status header")
    if not isinstance(header.get("kid"), str) or not _KID.fullmatch(header["kid"]):
        raise ReceiptError("malformed", "registration status header lacks a valid 'kid'")
    if not isinstance(header.get("kiosk_id"), str):
        raise ReceiptError("malformed", "registration status header lacks 'kiosk_id'")
    return header
