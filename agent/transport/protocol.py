"""The wire protocol between kiosks and the central side (see docs/protocol.md).

A capture travels as one binary envelope, so an image costs its own size on the wire
(base64 would add a third)::

    b"KAE" | version (1 byte) | header length (4 bytes, big-endian) | header (UTF-8 JSON) | image

Each send puts the sealed envelope in a transmission frame that names the send (its nonce).
Receipts are signed frames (agent/transport/receipts.py); status messages are small UTF-8
JSON documents. Envelopes too large for one message travel in chunks
(agent/transport/chunking.py).
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
from dataclasses import dataclass
from typing import Any, Literal

from agent.capture.record import CaptureRecord
from agent.errors import PermanentError
from agent.formats.positions import CAPTURE_POSITIONS, position_problem
from drivers import Modality

MAGIC = b"KAE"
VERSION = 1
_PREFIX = struct.Struct(">3sBI")
#: Where a frame's header starts (after magic, version and header length).
HEADER_OFFSET = _PREFIX.size
MAX_HEADER_BYTES = 64 * 1024
IMAGE_FORMATS = frozenset({"png", "jpeg", "wsq", "jp2l"})  # jp2l: JPEG 2000 lossless (agent/formats/jp2.py)


# Permanent: the same bytes never parse however often they are read; the sender must change.
# A ValueError too, for callers that treat it as bad input (``except ValueError``).
class ProtocolError(PermanentError, ValueError):
    """A message that does not follow the protocol; the text says what is wrong.

    ``item_id`` is the capture id when it could be read, so a receipt can still name it.
    """

    def __init__(self, message: str, item_id: str | None = None) -> None:
        super().__init__(message)
        self.item_id = item_id


@dataclass(frozen=True)
class Topics:
    """Topic names for one kiosk (or '+' for a receiver serving many)."""

    prefix: str
    kiosk_id: str

    def _t(self, leaf: str) -> str:
        return f"{self.prefix}/{self.kiosk_id}/{leaf}"

    @property
    def captures(self) -> str:
        return self._t("captures")

    @property
    def receipts(self) -> str:
        return self._t("receipts")

    @property
    def status(self) -> str:
        return self._t("status")

    @property
    def telemetry(self) -> str:
        return self._t("telemetry")

    @property
    def events(self) -> str:
        return self._t("events")

    @property
    def chunks(self) -> str:
        """Chunk manifests and chunks of captures too large for one message (agent/transport/chunking.py)."""
        return self._t("chunks")

    @property
    def chunk_status(self) -> str:
        """The receiver's answer to a manifest: which chunks it holds, which were bad."""
        return self._t("chunk-status")

    @property
    def registration_status(self) -> str:
        """The central side's signed word on a whole registration (agent/transport/receipts.py)."""
        return self._t("registration-status")

    @property
    def registration_query(self) -> str:
        """The kiosk asks for the central status of registrations it has no final word on."""
        return self._t("registration-query")

    def kiosk_of(self, topic: str) -> str:
        """The kiosk id level of a topic under this prefix."""
        parts = topic.split("/")
        prefix_len = len(self.prefix.split("/"))
        if len(parts) != prefix_len + 2:
            raise ProtocolError(f"topic {topic!r} is not <prefix>/<kiosk_id>/<leaf>")
        return parts[prefix_len]


# --- captures ----------------------------------------------------------------------------


def pack_frame(magic: bytes, header: bytes, body: bytes, version: int = VERSION) -> bytes:
    """magic (3) | version (1) | header length (4, big-endian) | header | body."""
    return _PREFIX.pack(magic, version, len(header)) + header + body


def frame_version(payload: bytes) -> int | None:
    """The version byte of a frame, or None when there is none (too short)."""
    return payload[3] if len(payload) >= _PREFIX.size else None


def unpack_frame(payload: bytes, magic: bytes, name: str, max_header: int,
                 version: int = VERSION) -> tuple[bytes, bytes]:
    """Split a frame made by pack_frame into (header, body); ProtocolError names what is wrong.

    ``version`` is the one version the caller reads this frame as: a frame of another version
    is refused here, never parsed with the wrong layout (sealed envelopes have two)."""
    if len(payload) < _PREFIX.size:
        raise ProtocolError(f"{name} too short ({len(payload)} bytes)")
    found, found_version, header_len = _PREFIX.unpack_from(payload)
    if found != magic:
        raise ProtocolError(f"not a {name} (bad magic)")
    if found_version != version:
        raise ProtocolError(f"{name} version {found_version} not supported (this side reads {version})")
    if header_len > max_header or _PREFIX.size + header_len > len(payload):
        raise ProtocolError(f"{name} header length {header_len} does not fit")
    end = _PREFIX.size + header_len
    return bytes(payload[_PREFIX.size:end]), bytes(payload[end:])


def encode_capture(record: CaptureRecord) -> bytes:
    header = dict(record.metadata(), v=VERSION, type="capture")
    return pack_frame(MAGIC, json.dumps(header, separators=(",", ":"), sort_keys=True).encode(),
                      record.image)


def decode_capture(payload: bytes) -> CaptureRecord:
    """Parse and verify an envelope; ProtocolError says what is wrong with a bad one."""
    header_bytes, image = unpack_frame(payload, MAGIC, "capture envelope", MAX_HEADER_BYTES)
    try:
        header = json.loads(header_bytes)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(f"header is not JSON: {exc}") from None
    return _record_from_header(header, image)


#: Bounds of a capture header's numbers: JSON numbers are unbounded (1e400 parses as inf, and
#: int(inf) raised OverflowError past every handler), and an impossible size must be refused
#: here rather than written into a record. The formats bound sizes more tightly.
MAX_DIMENSION = 100_000
MAX_PPI = 10_000


def _bounded(header: dict[str, Any], key: str, low: int, high: int) -> int:
    """An integer field within [low, high]: not a bool, not a float, not a string."""
    value = header[key]
    if type(value) is not int:
        raise ProtocolError(f"header field {key!r} must be an integer, not {type(value).__name__}")
    if not low <= value <= high:
        raise ProtocolError(f"header field {key!r} is {value}, outside {low}..{high}")
    return value


def _record_from_header(header: Any, image: bytes) -> CaptureRecord:
    if not isinstance(header, dict) or header.get("type") != "capture":
        raise ProtocolError("header is not a capture header")
    try:
        record = CaptureRecord(
            id=_str(header, "id"),
            kiosk_id=_str(header, "kiosk_id"),
            site=str(header.get("site", "")),
            operator_id=header.get("operator_id"),
            device_id=_str(header, "device_id"),
            driver=_str(header, "driver"),
            device_serial=str(header.get("device_serial", "")),
            modality=Modality(header["modality"]),
            # Checked below, strictly (agent/formats/positions.py): int() took true and 6.5.
            position=header["position"],
            captured_at=_str(header, "captured_at"),
            image_format=_str(header, "image_format"),
            width=_bounded(header, "width", 1, MAX_DIMENSION),
            height=_bounded(header, "height", 1, MAX_DIMENSION),
            ppi=_bounded(header, "ppi", 0, MAX_PPI),  # 0: a camera frame has none
            image_sha256=_str(header, "image_sha256"),
            quality=None if header.get("quality") is None else _bounded(header, "quality", 0, 100),
            quality_detail=dict(header.get("quality_detail") or {}),
            image=image,
            seq=_bounded(header, "seq", 0, 2**63 - 1),
            registration=_registration(header.get("registration")),
        )
    except KeyError as exc:
        raise ProtocolError(f"header lacks {exc.args[0]!r}") from None
    except (TypeError, ValueError) as exc:
        raise ProtocolError(f"header has a bad value: {exc}") from None
    if record.image_format not in IMAGE_FORMATS:
        raise ProtocolError(f"image_format {record.image_format!r} not one of "
                            f"{sorted(IMAGE_FORMATS)}", record.id)
    problem = position_problem(record.position, CAPTURE_POSITIONS)
    if problem is not None:
        raise ProtocolError(f"position {problem}", record.id)
    if header.get("image_size") != len(image):
        raise ProtocolError(f"image is {len(image)} bytes, header says "
                            f"{header.get('image_size')}", record.id)
    if hashlib.sha256(image).hexdigest() != record.image_sha256:
        raise ProtocolError("image SHA-256 does not match the header "
                            "(corrupted in transit or storage)", record.id)
    return record


def _registration(value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("id"), str):
        raise ValueError("registration must be an object with an id")
    return value


def _str(header: dict[str, Any], key: str) -> str:
    value = header[key]
    if not isinstance(value, str) or not value:
        raise ValueError(f"{key} must be a non-empty string")
    return value


# --- transmission frame ------------------------------------------------------------------

SEND_MAGIC = b"KAT"
#: Bytes a transmission frame adds around a sealed envelope, at most.
SEND_OVERHEAD = 128
_NONCE = re.compile(r"[0-9a-f]{32}")


def frame_send(sealed: bytes, nonce: str) -> bytes:
    """What goes on ``…/captures``: the sealed envelope behind a header naming this send.

    The envelope was sealed once, before it touched the disk, and cannot change; the nonce
    is fresh for each time the item is put in flight, and the receipt must echo it
    (agent/transport/receipts.py), so a receipt for an earlier send does not count."""
    header = json.dumps({"nonce": nonce, "type": "send"}, separators=(",", ":"), sort_keys=True)
    return pack_frame(SEND_MAGIC, header.encode(), sealed)


def open_send(payload: bytes) -> tuple[str, bytes]:
    """(nonce, sealed envelope) of a message on ``…/captures``; a bare sealed envelope (a tool,
    an older kiosk) has no nonce: "", and a receipt for it deletes nothing on a kiosk."""
    if payload[:3] != SEND_MAGIC:
        return "", payload
    raw, sealed = unpack_frame(payload, SEND_MAGIC, "transmission frame", SEND_OVERHEAD)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(f"transmission frame header is not JSON: {exc}") from None
    nonce = header.get("nonce") if isinstance(header, dict) else None
    if not isinstance(nonce, str) or not _NONCE.fullmatch(nonce):
        raise ProtocolError("transmission frame lacks a valid nonce (32 lower-case hex digits)")
    return nonce, sealed


# --- presence ----------------------------------------------------------------------------


def status_payload(state: Literal["online", "offline"], **fields: Any) -> bytes:
    return json.dumps({"v": VERSION, "state": state, **fields}, separators=(",", ":")).encode()


# --- registration query ------------------------------------------------------------------

#: Registrations one query may name (a receiver answers each with a signed status).
MAX_QUERY_IDS = 64
#: Bytes of a query at most: 64 ids of 36 characters and the JSON around them.
MAX_QUERY_BYTES = 4096


def registration_query(ids: list[str]) -> bytes:
    """What a kiosk publishes on ``…/registration-query``: the registrations it asks about."""
    if not 0 < len(ids) <= MAX_QUERY_IDS:
        raise ValueError(f"a query names 1 to {MAX_QUERY_IDS} registrations, not {len(ids)}")
    return json.dumps({"v": VERSION, "type": "registration-query", "ids": ids},
                      separators=(",", ":")).encode()


def parse_registration_query(payload: bytes) -> list[str]:
    """The ids a query names (strings; the receiver checks each before it names a file)."""
    if len(payload) > MAX_QUERY_BYTES:
        raise ProtocolError(f"registration query of {len(payload)} bytes (at most {MAX_QUERY_BYTES})")
    try:
        query = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(f"registration query is not JSON: {exc}") from None
    ids = query.get("ids") if isinstance(query, dict) and query.get("type") == "registration-query" else None
    if not (isinstance(ids, list) and 0 < len(ids) <= MAX_QUERY_IDS and all(isinstance(i, str) for i in ids)):
        raise ProtocolError(f"registration query must list 1 to {MAX_QUERY_IDS} registration ids")
    return list(dict.fromkeys(ids))
