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
from bisect import bisect_right
from collections.abc import Iterable, Iterator
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
#: Far above any capture; a manifest claiming more is refused before anything is written,
#: and a chunk status claiming more before its ranges are read.
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
#: A status's bytes beyond its index lists (id, hash, state, receiver name, JSON punctuation).
STATUS_OVERHEAD = 4096
#: Bytes per chunk a status may spend on its index lists at most: a pair "[a, b], " per
#: range (at most one range per two chunks) and "i, " per bad index, six digits each.
STATUS_BYTES_PER_CHUNK = 24


def max_status_size(count: int) -> int:
    """The largest status a receiver can send about a transfer of ``count`` chunks."""
    return STATUS_OVERHEAD + STATUS_BYTES_PER_CHUNK * count


def to_ranges(indexes: Iterable[int]) -> list[list[int]]:
    """[0, 1, 2, 5, 7, 8] -> [[0, 2], [5, 5], [7, 8]] (inclusive ranges: short on the wire)."""
    if isinstance(indexes, ChunkRanges):
        return [list(span) for span in indexes.spans]
    out: list[list[int]] = []
    for i in sorted(set(indexes)):
        if out and out[-1][1] == i - 1:
            out[-1][1] = i
        else:
            out.append([i, i])
    return out


@dataclass(frozen=True)
class ChunkRanges:
    """Chunk indexes as sorted, disjoint, inclusive ranges: [[0, 5999999]] stays one pair.

    A status is decoded into these, never into a set of its indexes: its ``count`` and its
    ranges are the word of whoever published it, and a 200-byte status expanded into a set
    took 800 MB on the MQTT thread. Membership is a binary search; only a transfer whose chunk
    count the kiosk chose itself walks the indexes (chunk_sender.py).
    """

    spans: tuple[tuple[int, int], ...] = ()

    @classmethod
    def of(cls, indexes: Iterable[int]) -> ChunkRanges:
        return cls(tuple((first, last) for first, last in to_ranges(indexes)))

    def __contains__(self, index: object) -> bool:
        at = bisect_right(self.spans, index, key=lambda span: span[0]) - 1
        return at >= 0 and self.spans[at][1] >= index  # type: ignore[operator]

    def __len__(self) -> int:
        return sum(last - first + 1 for first, last in self.spans)

    def __bool__(self) -> bool:
        return bool(self.spans)

    def __iter__(self) -> Iterator[int]:
        for first, last in self.spans:
            yield from range(first, last + 1)


def parse_ranges(ranges: Any, count: int) -> ChunkRanges:
    """Wire ranges (``[[first, last], ...]``, inclusive) within ``count`` chunks; overlapping or
    unsorted ones are merged. Costs the number of ranges, never the indexes they cover."""
    if not isinstance(ranges, list):
        raise ProtocolError("ranges must be a list of [first, last] pairs")
    if len(ranges) > count:
        # Disjoint ranges cannot outnumber the chunks: a longer list only costs work.
        raise ProtocolError(f"{len(ranges)} chunk ranges for {count} chunks")
    for pair in ranges:
        if (not isinstance(pair, list) or len(pair) != 2
                or not all(isinstance(v, int) and not isinstance(v, bool) for v in pair)
                or not 0 <= pair[0] <= pair[1] < count):
            raise ProtocolError(f"bad chunk range {pair!r} for {count} chunks")
    merged: list[tuple[int, int]] = []
    for first, last in sorted(ranges):
        if merged and first <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], last))
        else:
            merged.append((first, last))
    return ChunkRanges(tuple(merged))


def from_ranges(ranges: Any, count: int) -> set[int]:
    """The indexes of wire ranges as a set: only for a ``count`` the caller chose itself
    (a status's own count is the sender's word; ChunkStatus keeps ChunkRanges)."""
    return set(parse_ranges(ranges, count))


def _status_body(payload: bytes) -> dict[str, Any]:
    try:
        body = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(f"chunk status is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ProtocolError("chunk status is not a JSON object")
    return body


@dataclass(frozen=True)
class ChunkStatus:
    """The receiver's answer to a manifest (and to a bad or unexpected chunk).

    ``partial``: it holds the chunks in ``have`` (verified, on disk); ``bad`` lists chunks
    that failed their hash and must be sent again. ``complete``: the item is stored (its
    receipt is sent again too). ``unknown``: a chunk came for a transfer it has no manifest
    for; the kiosk sends the manifest again.

    ``have`` and ``bad`` are ChunkRanges; a set of indexes given here (as the receiver
    builds them) is turned into ranges.
    """

    id: str
    sha256: str
    state: StatusState
    count: int = 0
    have: ChunkRanges = ChunkRanges()
    bad: ChunkRanges = ChunkRanges()
    receiver: str = ""

    def __post_init__(self) -> None:
        for name in ("have", "bad"):
            value = getattr(self, name)
            if not isinstance(value, ChunkRanges):
                object.__setattr__(self, name, ChunkRanges.of(value))

    def encode(self) -> bytes:
        body: dict[str, Any] = {"v": VERSION, "id": self.id, "sha256": self.sha256, "state": self.state,
                                "count": self.count, "have": to_ranges(self.have)}
        if self.bad:
            body["bad"] = list(self.bad)
        body["receiver"] = self.receiver
        return json.dumps(body, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, payload: bytes) -> ChunkStatus:
        """Any well-formed status, its count at most MAX_CHUNKS. The kiosk decodes with
        ``decode_for`` instead: only statuses about its own transfer."""
        return cls._from_body(_status_body(payload))

    @classmethod
    def decode_for(cls, manifest: Manifest, payload: bytes) -> ChunkStatus | None:
        """The status if it is about ``manifest``'s transfer, None if it names another.

        Checked in order of cost, so a status for another transfer (or a forged flood) costs
        no more than its JSON, itself bounded by the size a status about this transfer can
        have: the id and hash first, then the count must be the manifest's own.
        """
        if len(payload) > max_status_size(manifest.count):
            raise ProtocolError(f"chunk status of {len(payload)} bytes for a transfer of "
                                f"{manifest.count} chunks (at most {max_status_size(manifest.count)})")
        body = _status_body(payload)
        if (body.get("id"), body.get("sha256")) != (manifest.id, manifest.sha256):
            return None
        if body.get("count") != manifest.count:
            raise ProtocolError(f"chunk status for {manifest.id} counts {body.get('count')!r} chunks, "
                                f"its manifest {manifest.count}", manifest.id)
        return cls._from_body(body)

    @classmethod
    def _from_body(cls, body: dict[str, Any]) -> ChunkStatus:
        state = body.get("state")
        if state not in ("partial", "complete", "unknown"):
            raise ProtocolError(f"chunk status has unknown state {state!r}")
        count = _field(body, "count", int, "chunk status")
        if not 0 <= count <= MAX_CHUNKS:
            raise ProtocolError(f"chunk status count {count} outside 0..{MAX_CHUNKS}")
        bad = body.get("bad", [])
        if (not isinstance(bad, list) or len(bad) > count
                or not all(isinstance(b, int) and not isinstance(b, bool) and 0 <= b < count for b in bad)):
            raise ProtocolError("chunk status 'bad' must list chunk indexes")
        return cls(id=_checked_id(body, "chunk status"), sha256=_checked_sha(body, "chunk status"),
                   state=state, count=count, have=parse_ranges(body.get("have", []), count),
                   bad=ChunkRanges.of(bad), receiver=str(body.get("receiver", "")))
