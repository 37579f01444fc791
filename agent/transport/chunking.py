"""Chunked transfer of large sealed envelopes: the manifest, chunk and chunk-status codec.

Pure functions and values, no I/O: the publisher (kiosk side) and the receiver use them,
and tests pin the exact bytes. Formats (docs/protocol.md, "Chunked transfer")::

    manifest: b"KCM" | version | header length | header (JSON) | Ed25519 signature (64)
              | count x 32-byte SHA-256; signature = kiosk key over MANIFEST_CONTEXT || header || digests
    chunk:    b"KCC" | version | header length | header (JSON) | chunk bytes
    status:   UTF-8 JSON on <prefix>/<kiosk_id>/chunk-status

The per-chunk digests travel as raw bytes in the manifest's body, not as hex in its JSON:
a 10 MB envelope in 16 KB chunks needs 20 KB of digests, which still fits brokers with
small packet limits (hex would need 43 KB). They end the frame, so a receiver finds digest i
at a fixed offset from the end.

A manifest is signed with the kiosk's own key (the one that signs its sealed envelopes), and
a receiver writes nothing for one that does not verify against the key enrolled for the
kiosk named in the topic: otherwise anyone who may publish there could announce a transfer
first, with digests no genuine chunk matches, and lock the genuine capture out. Chunks need
no signature of their own: each must match its digest in the signed manifest.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from agent.transport.protocol import VERSION, ProtocolError, pack_frame, unpack_frame

MANIFEST_MAGIC = b"KCM"
CHUNK_MAGIC = b"KCC"
DIGEST_BYTES = 32
SIGNATURE_BYTES = 64
#: Domain separation: a manifest signature can never pass for a sealed envelope's, or back.
MANIFEST_CONTEXT = b"kiosk-agent chunk manifest v1\x00"
#: Room kept in a chunk's PUBLISH for its frame prefix and JSON header (ids, hashes, index).
CHUNK_HEADER_RESERVE = 512
MAX_CHUNK_HEADER = 4096
MAX_MANIFEST_HEADER = 4096
#: Far above any capture; a manifest claiming more is refused before anything is written.
MAX_CHUNKS = 100_000
#: The largest item a manifest may announce (a receiver reserves disk on its word).
MAX_ITEM_BYTES = 256 * 1024 * 1024
_HEX64 = re.compile(r"[0-9a-f]{64}")
_HEX_NONCE = re.compile(r"(?:[0-9a-f]{32})?")
_KEY_ID = re.compile(r"[0-9a-f]{16}")
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def _dumps(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()


def _header(raw: bytes, what: str) -> dict[str, Any]:
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(f"{what} header is not JSON: {exc}") from None
    if not isinstance(header, dict):
        raise ProtocolError(f"{what} header is not a JSON object")
    return header


def _field(header: dict[str, Any], key: str, kind: type, what: str) -> Any:
    value = header.get(key)
    # bool is an int subclass: a header saying "index": true is malformed, not chunk 1.
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ProtocolError(f"{what} header lacks a valid {key!r}", header.get("id")
                            if isinstance(header.get("id"), str) else None)
    return value


def _checked_id(header: dict[str, Any], what: str) -> str:
    # Ids become file names on the receiver: only the characters a capture id can have.
    value = _field(header, "id", str, what)
    if not _ID.fullmatch(value):
        raise ProtocolError(f"{what} id {value!r} is not a valid item id")
    return value


def _checked_sha(header: dict[str, Any], what: str) -> str:
    value = _field(header, "sha256", str, what)
    if not _HEX64.fullmatch(value):
        raise ProtocolError(f"{what} sha256 is not 64 lower-case hex digits", header.get("id"))
    return value


# --- manifest ------------------------------------------------------------------------------


class ManifestSigner(Protocol):
    """The kiosk's key as the sealer holds it (agent/security/sealing.py Sealer)."""

    signer_id: str

    def sign(self, context: bytes, message: bytes) -> bytes: ...


@dataclass(frozen=True)
class Manifest:
    """What the receiver needs to reassemble and verify one item sent in chunks."""

    id: str
    kiosk_id: str
    seq: int
    kind: str
    size: int
    sha256: str
    chunk_size: int
    digests: tuple[bytes, ...] = field(repr=False)
    #: The kiosk's nonce for this send of the item; the receipt echoes it (receipts.py).
    nonce: str = ""
    #: The id of the kiosk key that signed it ("" until signed).
    signer: str = ""
    #: As received: the signature and the exact bytes it covers (header || digests).
    signature: bytes = field(default=b"", repr=False, compare=False)
    signed: bytes = field(default=b"", repr=False, compare=False)

    @property
    def count(self) -> int:
        return len(self.digests)

    @property
    def key(self) -> str:
        """Names this transfer on the receiver: a manifest for the same id with other
        content (a forgery, a re-sealed item) gets its own folder and disturbs no other."""
        return f"{self.id}-{self.sha256[:16]}"

    def chunk_range(self, index: int) -> tuple[int, int]:
        start = index * self.chunk_size
        return start, min(start + self.chunk_size, self.size)

    def encode(self, signer: ManifestSigner) -> bytes:
        """The manifest signed with the kiosk's key (Ed25519 is deterministic: the same
        manifest always encodes to the same bytes)."""
        header = _dumps({"v": VERSION, "type": "chunk-manifest", "id": self.id, "kiosk_id": self.kiosk_id,
                         "seq": self.seq, "kind": self.kind, "size": self.size, "sha256": self.sha256,
                         "chunk_size": self.chunk_size, "count": self.count, "nonce": self.nonce,
                         "signer": signer.signer_id})
        digests = b"".join(self.digests)
        return pack_frame(MANIFEST_MAGIC, header, signer.sign(MANIFEST_CONTEXT, header + digests) + digests)

    def signed_by(self, key: Ed25519PublicKey) -> bool:
        """The manifest, as received, carries ``key``'s signature."""
        try:
            key.verify(self.signature, MANIFEST_CONTEXT + self.signed)
        except InvalidSignature:
            return False
        return True

    @classmethod
    def decode(cls, payload: bytes) -> Manifest:
        raw, body = unpack_frame(payload, MANIFEST_MAGIC, "chunk manifest", MAX_MANIFEST_HEADER)
        what = "chunk manifest"
        header = _header(raw, what)
        if header.get("type") != "chunk-manifest":
            raise ProtocolError("not a chunk manifest header")
        item_id = _checked_id(header, what)
        size = _field(header, "size", int, what)
        chunk_size = _field(header, "chunk_size", int, what)
        count = _field(header, "count", int, what)
        if not 1 <= size <= MAX_ITEM_BYTES or chunk_size < 1 or not 1 <= count <= MAX_CHUNKS:
            raise ProtocolError(f"chunk manifest {item_id}: size (at most {MAX_ITEM_BYTES}), chunk_size "
                                f"and count (at most {MAX_CHUNKS}) must be positive", item_id)
        if count != -(-size // chunk_size):
            raise ProtocolError(f"chunk manifest {item_id}: {count} chunks of {chunk_size} bytes cannot "
                                f"hold {size} bytes", item_id)
        if len(body) != count * DIGEST_BYTES + SIGNATURE_BYTES:
            raise ProtocolError(f"chunk manifest {item_id}: {len(body)} bytes of signature and digests "
                                f"for {count} chunks", item_id)
        nonce, signer = header.get("nonce", ""), header.get("signer")
        if not isinstance(nonce, str) or not _HEX_NONCE.fullmatch(nonce):
            raise ProtocolError(f"chunk manifest {item_id}: bad nonce", item_id)
        if not isinstance(signer, str) or not _KEY_ID.fullmatch(signer):
            raise ProtocolError(f"chunk manifest {item_id}: unsigned (no signer key id)", item_id)
        signature, digests = body[:SIGNATURE_BYTES], body[SIGNATURE_BYTES:]
        return cls(id=item_id, kiosk_id=_field(header, "kiosk_id", str, what),
                   seq=_field(header, "seq", int, what), kind=_field(header, "kind", str, what),
                   size=size, sha256=_checked_sha(header, what), chunk_size=chunk_size,
                   digests=tuple(digests[i:i + DIGEST_BYTES] for i in range(0, len(digests), DIGEST_BYTES)),
                   nonce=nonce, signer=signer, signature=signature, signed=raw + digests)


def make_manifest(item_id: str, kiosk_id: str, seq: int, kind: str, payload: bytes,
                  chunk_size: int, nonce: str = "") -> Manifest:
    if chunk_size < 1:
        raise ValueError("chunk_size must be positive")
    digests = tuple(hashlib.sha256(payload[i:i + chunk_size]).digest()
                    for i in range(0, len(payload), chunk_size))
    return Manifest(id=item_id, kiosk_id=kiosk_id, seq=seq, kind=kind, size=len(payload),
                    sha256=hashlib.sha256(payload).hexdigest(), chunk_size=chunk_size, digests=digests,
                    nonce=nonce)


def manifest_size(payload_size: int, chunk_size: int) -> int:
    """Upper bound of an encoded manifest's size, to check it fits the broker's limit."""
    return CHUNK_HEADER_RESERVE + -(-payload_size // chunk_size) * DIGEST_BYTES + SIGNATURE_BYTES


# --- chunk -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Chunk:
    id: str
    kiosk_id: str
    #: The whole item's SHA-256 (hex): ties the chunk to one manifest.
    sha256: str
    index: int
    count: int
    data: bytes = field(repr=False)

    def encode(self) -> bytes:
        header = {"v": VERSION, "type": "chunk", "id": self.id, "kiosk_id": self.kiosk_id,
                  "sha256": self.sha256, "index": self.index, "count": self.count}
        return pack_frame(CHUNK_MAGIC, _dumps(header), self.data)

    @classmethod
    def decode(cls, payload: bytes) -> Chunk:
        raw, body = unpack_frame(payload, CHUNK_MAGIC, "chunk", MAX_CHUNK_HEADER)
        header = _header(raw, "chunk")
        if header.get("type") != "chunk":
            raise ProtocolError("not a chunk header")
        item_id = _checked_id(header, "chunk")
        index = _field(header, "index", int, "chunk")
        count = _field(header, "count", int, "chunk")
        if not 0 <= index < count:
            raise ProtocolError(f"chunk index {index} outside 0..{count - 1}", item_id)
        return cls(id=item_id, kiosk_id=_field(header, "kiosk_id", str, "chunk"),
                   sha256=_checked_sha(header, "chunk"), index=index, count=count, data=body)


def chunk_of(manifest: Manifest, payload: bytes, index: int) -> Chunk:
    start, end = manifest.chunk_range(index)
    return Chunk(manifest.id, manifest.kiosk_id, manifest.sha256, index, manifest.count,
                 payload[start:end])


def chunk_ok(manifest: Manifest, chunk: Chunk) -> bool:
    """The chunk belongs to this manifest and its bytes hash to the manifest's digest."""
    if (chunk.id, chunk.sha256, chunk.count) != (manifest.id, manifest.sha256, manifest.count):
        return False
    start, end = manifest.chunk_range(chunk.index)
    return (len(chunk.data) == end - start
            and hashlib.sha256(chunk.data).digest() == manifest.digests[chunk.index])


def chunk_size_for(max_packet: int, topic: str, configured: int, payload_size: int,
                   publish_overhead: int) -> int | None:
    """The chunk size to use for a payload, or None when it goes as one message.

    ``configured`` is uplink.chunk_bytes (0: chunk only when the broker's limit requires it).
    """
    single = payload_size + len(topic) + publish_overhead
    fits_broker = single <= max_packet
    if fits_broker and (configured <= 0 or payload_size <= configured):
        return None
    limit = max_packet - publish_overhead - len(topic) - CHUNK_HEADER_RESERVE
    size = min(configured, limit) if configured > 0 else limit
    if size < 1:
        raise ValueError(f"the broker's maximum packet size ({max_packet} bytes) leaves no room for a chunk")
    return size


# --- chunk status --------------------------------------------------------------------------

StatusState = Literal["partial", "complete", "unknown"]


def to_ranges(indexes: Iterable[int]) -> list[list[int]]:
    """[0, 1, 2, 5, 7, 8] -> [[0, 2], [5, 5], [7, 8]] (inclusive ranges: short on the wire)."""
    out: list[list[int]] = []
    for i in sorted(set(indexes)):
        if out and out[-1][1] == i - 1:
            out[-1][1] = i
        else:
            out.append([i, i])
    return out


def from_ranges(ranges: Any, count: int) -> set[int]:
    if not isinstance(ranges, list):
        raise ProtocolError("ranges must be a list of [first, last] pairs")
    out: set[int] = set()
    for pair in ranges:
        if (not isinstance(pair, list) or len(pair) != 2
                or not all(isinstance(v, int) and not isinstance(v, bool) for v in pair)
                or not 0 <= pair[0] <= pair[1] < count):
            raise ProtocolError(f"bad chunk range {pair!r} for {count} chunks")
        out.update(range(pair[0], pair[1] + 1))
    return out


@dataclass(frozen=True)
class ChunkStatus:
    """The receiver's answer to a manifest (and to a bad or unexpected chunk).

    ``partial``: it holds the chunks in ``have`` (verified, on disk); ``bad`` lists chunks
    that failed their hash and must be sent again. ``complete``: the item is stored (its
    receipt is sent again too). ``unknown``: a chunk came for a transfer it has no manifest
    for; the kiosk sends the manifest again.
    """

    id: str
    sha256: str
    state: StatusState
    count: int = 0
    have: frozenset[int] = frozenset()
    bad: frozenset[int] = frozenset()
    receiver: str = ""

    def encode(self) -> bytes:
        body: dict[str, Any] = {"v": VERSION, "id": self.id, "sha256": self.sha256, "state": self.state,
                                "count": self.count, "have": to_ranges(self.have)}
        if self.bad:
            body["bad"] = sorted(self.bad)
        body["receiver"] = self.receiver
        return json.dumps(body, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, payload: bytes) -> ChunkStatus:
        try:
            body = json.loads(payload)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ProtocolError(f"chunk status is not JSON: {exc}") from None
        if not isinstance(body, dict):
            raise ProtocolError("chunk status is not a JSON object")
        state = body.get("state")
        if state not in ("partial", "complete", "unknown"):
            raise ProtocolError(f"chunk status has unknown state {state!r}")
        count = _field(body, "count", int, "chunk status")
        bad = body.get("bad", [])
        if not isinstance(bad, list) or not all(isinstance(b, int) and 0 <= b < count for b in bad):
            raise ProtocolError("chunk status 'bad' must list chunk indexes")
        return cls(id=_checked_id(body, "chunk status"), sha256=_checked_sha(body, "chunk status"),
                   state=state, count=count, have=frozenset(from_ranges(body.get("have", []), count)),
                   bad=frozenset(bad), receiver=str(body.get("receiver", "")))
