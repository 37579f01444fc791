"""The chunk manifest, chunk and chunk-status codec (agent/transport/chunking.py): exact bytes, refusals."""

from __future__ import annotations

import hashlib
import json
import tracemalloc

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from agent.security.sealing import Sealer
from agent.transport.chunking import (
    CHUNK_HEADER_RESERVE,
    MAX_CHUNKS,
    Chunk,
    ChunkRanges,
    ChunkStatus,
    Manifest,
    chunk_of,
    chunk_ok,
    chunk_size_for,
    from_ranges,
    make_manifest,
    manifest_size,
    max_status_size,
    parse_ranges,
    to_ranges,
)
from agent.transport.protocol import ProtocolError

ID = "0190f0aa-0000-7000-8000-000000000001"
PAYLOAD = b"abcdefghij"  # 10 bytes in chunks of 4: "abcd", "efgh", "ij"
TOTAL = hashlib.sha256(PAYLOAD).hexdigest()
NONCE = "00112233445566778899aabbccddeeff"
# Fixed keys: Ed25519 is deterministic, so the signed manifest has golden bytes too.
KIOSK_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
SEALER = Sealer(KIOSK_KEY, X25519PrivateKey.from_private_bytes(bytes(range(32, 64))).public_key())


def manifest() -> Manifest:
    return make_manifest(ID, "van-07", 42, "capture", PAYLOAD, 4, NONCE)


def test_manifest_golden_bytes() -> None:
    header = (
        b'{"chunk_size":4,"count":3,"id":"0190f0aa-0000-7000-8000-000000000001","kind":"capture",'
        b'"kiosk_id":"van-07","nonce":"00112233445566778899aabbccddeeff","seq":42,'
        b'"sha256":"72399361da6a7754fec986dca5b7cbaf1c810a28ded4abaf56b2106d06cb78b0",'
        b'"signer":"56475aa75463474c","size":10,"type":"chunk-manifest","v":1}'
    )
    digests = b"".join(hashlib.sha256(part).digest() for part in (b"abcd", b"efgh", b"ij"))
    signature = bytes.fromhex(
        "1024f7566044bd660295676de8460aa7e13b4bfbb072571ad222d084e2675322"
        "967b9b4f93e3480841987162a3c9b415ed428e65258e1247023c95b90ca5100f")
    assert signature == KIOSK_KEY.sign(b"kiosk-agent chunk manifest v1\x00" + header + digests)
    expected = b"KCM\x01" + len(header).to_bytes(4, "big") + header + signature + digests
    assert TOTAL == "72399361da6a7754fec986dca5b7cbaf1c810a28ded4abaf56b2106d06cb78b0"
    assert manifest().encode(SEALER) == expected
    assert len(expected) == 8 + len(header) + 64 + 3 * 32
    decoded = Manifest.decode(expected)
    assert decoded == Manifest(**{**manifest().__dict__, "signer": SEALER.signer_id})
    assert decoded.signed_by(KIOSK_KEY.public_key())


def test_manifest_signature_binds_the_kiosk_key_and_every_byte() -> None:
    raw = manifest().encode(SEALER)
    other = Ed25519PrivateKey.generate()
    assert not Manifest.decode(raw).signed_by(other.public_key())
    forged = Sealer(other, X25519PrivateKey.generate().public_key())
    assert not Manifest.decode(manifest().encode(forged)).signed_by(KIOSK_KEY.public_key())
    # One digest changed after signing: the signature no longer holds.
    tampered = raw[:-1] + bytes([raw[-1] ^ 1])
    assert not Manifest.decode(tampered).signed_by(KIOSK_KEY.public_key())
    # The sealed envelope's signing context is the sealer's own: sign() refuses it.
    with pytest.raises(ValueError):
        SEALER.sign(b"kiosk-agent sealed envelope v1\x00", b"x")


def test_chunk_golden_bytes() -> None:
    chunk = chunk_of(manifest(), PAYLOAD, 2)
    header = (
        b'{"count":3,"id":"0190f0aa-0000-7000-8000-000000000001","index":2,"kiosk_id":"van-07",'
        b'"sha256":"72399361da6a7754fec986dca5b7cbaf1c810a28ded4abaf56b2106d06cb78b0","type":"chunk","v":1}'
    )
    assert chunk.encode() == b"KCC\x01" + len(header).to_bytes(4, "big") + header + b"ij"
    assert Chunk.decode(chunk.encode()) == chunk
    assert chunk_ok(manifest(), chunk)


def test_status_golden_bytes_and_round_trip() -> None:
    status = ChunkStatus(ID, TOTAL, "partial", 10, frozenset({0, 1, 2, 5, 7, 8}), frozenset({3}), "r1")
    assert status.encode() == (
        b'{"v":1,"id":"0190f0aa-0000-7000-8000-000000000001",'
        b'"sha256":"72399361da6a7754fec986dca5b7cbaf1c810a28ded4abaf56b2106d06cb78b0",'
        b'"state":"partial","count":10,"have":[[0,2],[5,5],[7,8]],"bad":[3],"receiver":"r1"}'
    )
    assert ChunkStatus.decode(status.encode()) == status


def test_chunks_reassemble_to_the_payload() -> None:
    payload = bytes(range(256)) * 1000 + b"tail"
    m = make_manifest(ID, "k1", 1, "capture", payload, 4096)
    assert m.count == -(-len(payload) // 4096)
    chunks = [chunk_of(m, payload, i) for i in range(m.count)]
    assert all(chunk_ok(m, Chunk.decode(c.encode())) for c in chunks)
    assert b"".join(c.data for c in chunks) == payload


def test_corrupted_or_foreign_chunk_is_not_ok() -> None:
    good = chunk_of(manifest(), PAYLOAD, 1)
    flipped = Chunk(good.id, good.kiosk_id, good.sha256, 1, 3, b"efgX")
    assert not chunk_ok(manifest(), flipped)
    short = Chunk(good.id, good.kiosk_id, good.sha256, 1, 3, b"efg")
    assert not chunk_ok(manifest(), short)
    other_transfer = Chunk(good.id, good.kiosk_id, "0" * 64, 1, 3, b"efgh")
    assert not chunk_ok(manifest(), other_transfer)
    wrong_slot = Chunk(good.id, good.kiosk_id, good.sha256, 0, 3, b"efgh")
    assert not chunk_ok(manifest(), wrong_slot)


def _manifest_with(**changes: object) -> bytes:
    raw = manifest().encode(SEALER)
    header_len = int.from_bytes(raw[4:8], "big")
    header = json.loads(raw[8:8 + header_len])
    header.update(changes)
    new = json.dumps(header).encode()
    return raw[:4] + len(new).to_bytes(4, "big") + new + raw[8 + header_len:]


@pytest.mark.parametrize("payload, message", [
    (b"KCC\x01\x00\x00\x00\x02{}", "bad magic"),
    (b"KCM\x02\x00\x00\x00\x02{}", "version 2 not supported"),
    (b"KCM", "too short"),
    (_manifest_with(count=4), "cannot hold"),
    (_manifest_with(id="../../etc/x"), "not a valid item id"),
    (_manifest_with(sha256="XYZ"), "64 lower-case hex"),
    (_manifest_with(size=0), "must be positive"),
    (_manifest_with(seq="1"), "'seq'"),
    (manifest().encode(SEALER)[:-1], "bytes of signature and digests for 3 chunks"),
    (_manifest_with(signer=None), "unsigned"),
    (_manifest_with(nonce="zz"), "bad nonce"),
])
def test_bad_manifests_are_refused_with_a_reason(payload: bytes, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        Manifest.decode(payload)


def test_bad_chunks_and_statuses_are_refused() -> None:
    raw = chunk_of(manifest(), PAYLOAD, 0).encode().replace(b'"index":0', b'"index":7')
    raw = raw[:4] + (int.from_bytes(raw[4:8], "big")).to_bytes(4, "big") + raw[8:]
    with pytest.raises(ProtocolError, match="outside 0..2"):
        Chunk.decode(raw)
    with pytest.raises(ProtocolError, match="unknown state"):
        ChunkStatus.decode(b'{"id":"a","sha256":"' + TOTAL.encode() + b'","state":"done","count":1}')
    with pytest.raises(ProtocolError, match="bad chunk range"):
        ChunkStatus.decode(json.dumps({"id": "a", "sha256": TOTAL, "state": "partial", "count": 3,
                                       "have": [[2, 5]]}).encode())
    with pytest.raises(ProtocolError, match="not JSON"):
        ChunkStatus.decode(b"\xff")


def test_ranges() -> None:
    assert to_ranges([8, 0, 1, 2, 5, 7, 2]) == [[0, 2], [5, 5], [7, 8]]
    assert to_ranges([]) == []
    assert from_ranges([[0, 2], [5, 5]], 6) == {0, 1, 2, 5}
    with pytest.raises(ProtocolError):
        from_ranges([[3, 1]], 6)
    with pytest.raises(ProtocolError):
        from_ranges([[True, 1]], 6)


def test_chunk_size_choice() -> None:
    topic = "kiosk/van-07/chunks"
    # Fits the broker and below chunk_bytes: one message.
    assert chunk_size_for(1_000_000, topic, 131072, 100_000, 16) is None
    # Above chunk_bytes: chunks of chunk_bytes.
    assert chunk_size_for(1_000_000, topic, 131072, 300_000, 16) == 131072
    # chunk_bytes 0: chunks only when the broker's limit requires, as large as it allows.
    assert chunk_size_for(1_000_000, topic, 0, 900_000, 16) is None
    limit = 20_000 - 16 - len(topic) - CHUNK_HEADER_RESERVE
    assert chunk_size_for(20_000, topic, 0, 90_000, 16) == limit
    assert chunk_size_for(20_000, topic, 131072, 90_000, 16) == limit
    assert chunk_size_for(20_000, topic, 4096, 90_000, 16) == 4096
    with pytest.raises(ValueError, match="leaves no room"):
        chunk_size_for(400, topic, 0, 90_000, 16)
    assert manifest_size(90_000, 4096) == CHUNK_HEADER_RESERVE + 64 + 22 * 32
    big = make_manifest(ID, "van-07", 1, "capture", bytes(90_000), 4096, NONCE)
    assert len(big.encode(SEALER)) <= manifest_size(90_000, 4096)
    # A chunk at the chosen size really fits the broker's limit.
    m = make_manifest(ID, "van-07", 1, "capture", bytes(90_000), limit)
    assert len(chunk_of(m, bytes(90_000), 0).encode()) + len(topic) + 16 <= 20_000


def _status(**changes: object) -> bytes:
    body: dict[str, object] = {"v": 1, "id": ID, "sha256": TOTAL, "state": "partial", "count": 3,
                               "have": [[0, 1]], "receiver": "r1"}
    body.update(changes)
    return json.dumps(body).encode()


def test_a_status_is_ranges_never_a_set_of_its_count() -> None:
    # The red-team bomb: 200 bytes naming six million chunks (and the same at 10**9).
    for count in (6_000_000, 10**9):
        with pytest.raises(ProtocolError, match=f"outside 0..{MAX_CHUNKS}"):
            ChunkStatus.decode(_status(count=count, have=[[0, count - 1]]))
    # At the largest count allowed, the whole range stays one pair: no memory per index.
    tracemalloc.start()
    try:
        status = ChunkStatus.decode(_status(count=MAX_CHUNKS, have=[[0, MAX_CHUNKS - 1]]))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024, peak
    assert status.have == ChunkRanges(((0, MAX_CHUNKS - 1),)) and len(status.have) == MAX_CHUNKS
    assert 0 in status.have and MAX_CHUNKS - 1 in status.have and MAX_CHUNKS not in status.have


def test_status_ranges_are_bounded_and_merged() -> None:
    with pytest.raises(ProtocolError, match="4 chunk ranges for 3 chunks"):
        ChunkStatus.decode(_status(have=[[0, 0]] * 4))
    with pytest.raises(ProtocolError, match="'bad'"):
        ChunkStatus.decode(_status(bad=[0, 0, 0, 0]))
    with pytest.raises(ProtocolError, match="'bad'"):
        ChunkStatus.decode(_status(bad=[True]))
    assert parse_ranges([[2, 2], [0, 1]], 3) == ChunkRanges(((0, 2),))
    assert parse_ranges([[0, 1], [1, 1]], 3) == ChunkRanges(((0, 1),))
    ranges = ChunkRanges.of([0, 1, 2, 5, 7, 8])
    assert [i for i in range(10) if i in ranges] == [0, 1, 2, 5, 7, 8] == list(ranges)
    assert ChunkStatus(ID, TOTAL, "partial", 10, frozenset({5, 6})).have == ChunkRanges(((5, 6),))


def test_a_kiosk_reads_only_statuses_about_its_own_transfer() -> None:
    m = manifest()
    assert ChunkStatus.decode_for(m, _status()) == ChunkStatus(ID, TOTAL, "partial", 3, frozenset({0, 1}),
                                                               receiver="r1")
    assert ChunkStatus.decode_for(m, _status(sha256="0" * 64, count=6_000_000)) is None
    assert ChunkStatus.decode_for(m, _status(id="other", have="not even ranges")) is None
    with pytest.raises(ProtocolError, match="counts 6000000 chunks, its manifest 3"):
        ChunkStatus.decode_for(m, _status(count=6_000_000, have=[[0, 5_999_999]]))
    # Larger than any status about 3 chunks can be: not even parsed.
    padded = _status(receiver="x" * max_status_size(3))
    with pytest.raises(ProtocolError, match="bytes for a transfer of 3 chunks"):
        ChunkStatus.decode_for(m, padded)


def test_the_largest_genuine_status_fits_its_size_bound() -> None:
    count = MAX_CHUNKS
    every_other = ChunkStatus(ID, TOTAL, "partial", count, frozenset(range(0, count, 2)),
                              frozenset(range(1, count, 2)), receiver="r" * 128)
    assert len(every_other.encode()) <= max_status_size(count)
