"""Sealed envelopes, version 2 (a signed header carrying the ciphertext's SHA-256) beside
version 1 (a signature over the whole capture), against version confusion and forgery.

Attackers: a thief of the central decryption key (can open and re-encrypt, has no kiosk
key), a holder of another kiosk's key, a holder of this kiosk's key sending what no honest
kiosk writes, and a plain broker client that relabels, cuts or extends what it relays. The
first half drives the real Opener directly; the second runs a real Receiver on mosquitto
(tests/support/hostile.py), single messages and chunks. docs/security.md, "Envelope versions".
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from agent.security import sealing
from agent.security.keys import key_id, raw_public
from agent.security.sealing import Opener, Sealer, SealError, VersionRefused, read_header
from agent.transport.chunking import chunk_of
from agent.transport.protocol import HEADER_OFFSET, pack_frame
from devtools.broker import MosquittoBroker
from tests.support.hostile import KIOSK_A, manifest_for, record, rig, sealed_capture

INNER = b"KAE\x01" + os.urandom(100_000)  # a capture envelope's size; the Opener does not parse it


class Parties:
    def __init__(self) -> None:
        self.central = X25519PrivateKey.generate()
        self.key_a, self.key_b = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
        self.opener = Opener(self.central, {"a": self.key_a.public_key(), "b": self.key_b.public_key()})

    def sealer(self, version: int = 2, key: Ed25519PrivateKey | None = None) -> Sealer:
        return Sealer(key or self.key_a, self.central.public_key(), version=version)

    def seal(self, version: int = 2, kiosk_id: str = "a", inner: bytes = INNER) -> bytes:
        sealer = self.sealer(version)
        return sealer.seal(item_id="id-1", kiosk_id=kiosk_id, seq=7, kind="capture", inner=inner)


@pytest.fixture
def p() -> Parties:
    return Parties()


def split(sealed: bytes) -> tuple[int, dict[str, Any], bytes]:
    """(version byte, header fields, body after the header)."""
    header = read_header(sealed)
    return sealed[3], json.loads(header.raw), sealed[HEADER_OFFSET + len(header.raw):]


def signed_v2(key: Ed25519PrivateKey, fields: dict[str, Any], ciphertext: bytes, *, raw: bytes | None = None,
              context: bytes = sealing.CONTEXT_V2, version: int = 2) -> bytes:
    """A version-2 frame as a key holder can make it: any header, signed under ``context``."""
    header = raw if raw is not None else json.dumps(fields, separators=(",", ":"), sort_keys=True).encode()
    return pack_frame(sealing.MAGIC, header, key.sign(context + header) + ciphertext, version)


def key_of(p: Parties, fields: dict[str, Any]) -> AESGCM:
    """The AES key of an envelope, as whoever holds the central private key derives it (the
    derivation is docs/protocol.md's, written out here, not the module's)."""
    epk = base64.b64decode(fields["epk"])
    shared = p.central.exchange(X25519PublicKey.from_public_bytes(epk))
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF
    info = sealing.CONTEXTS[fields["v"]] + epk + raw_public(p.central.public_key())
    return AESGCM(HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(shared))


def routing_aad(fields: dict[str, Any]) -> bytes:
    parts = (fields["kind"], fields["id"], fields["kiosk_id"], str(fields["seq"]), fields["signer"])
    return sealing.CONTEXT_V2 + b"".join(len(f.encode()).to_bytes(2, "big") + f.encode() for f in parts)


# --- the Opener ------------------------------------------------------------------------------


def test_kiosks_write_version_2_and_receivers_read_both(p: Parties) -> None:
    v2, v1 = p.seal(), p.seal(version=1)
    assert v2[3] == 2 and v1[3] == 1
    version, fields, body = split(v2)
    assert fields["v"] == 2 and fields["size"] == len(body) - 64
    assert fields["sha256"] == hashlib.sha256(base64.b64decode(fields["nonce"]) + body[64:]).hexdigest()
    for sealed, version in ((v2, 2), (v1, 1)):
        header, inner = p.opener.open(sealed)
        assert inner == INNER and header.version == version and (header.id, header.seq) == ("id-1", 7)
    assert INNER[4:1000] not in v2, "the capture stays encrypted"


def test_a_thief_of_the_central_key_cannot_put_other_content_under_the_kiosks_signature(p: Parties) -> None:
    """The central key opens every envelope and can encrypt anything under the same key; only
    the signed hash of the ciphertext stops it passing its own image off as the kiosk's (in
    version 1 the signature covered the plaintext)."""
    _, fields, body = split(p.seal())
    signature, ciphertext = body[:64], body[64:]
    aes, nonce = key_of(p, fields), base64.b64decode(fields["nonce"])
    assert aes.decrypt(nonce, ciphertext, routing_aad(fields)) == INNER  # the thief reads it
    forged_inner = b"KAE\x01" + os.urandom(len(INNER) - 4)  # same length: `size` still agrees
    forged = aes.encrypt(nonce, forged_inner, routing_aad(fields))
    header = json.dumps(fields, separators=(",", ":"), sort_keys=True).encode()
    with pytest.raises(SealError, match="does not match its signed SHA-256") as info:
        p.opener.open(pack_frame(sealing.MAGIC, header, signature + forged, 2))
    assert not info.value.authentic


def test_another_kiosks_key_cannot_re_sign_a_genuine_ciphertext(p: Parties) -> None:
    """Kiosk B's key signs A's ciphertext under a header of its own naming B (hash and size
    are right): the routing fields are the ciphertext's associated data, so it does not open."""
    _, fields, body = split(p.seal(kiosk_id="a"))
    stolen = dict(fields, kiosk_id="b", signer=key_id(p.key_b.public_key()))
    with pytest.raises(SealError, match="decryption failed"):
        p.opener.open(signed_v2(p.key_b, stolen, body[64:]))
    # The same ciphertext under its genuine routing still opens: only the relabelling failed.
    assert p.opener.open(signed_v2(p.key_a, fields, body[64:]))[1] == INNER


@pytest.mark.parametrize("field,value", [("id", "id-2"), ("seq", 8), ("kind", "registration")])
def test_a_key_holder_cannot_move_a_ciphertext_to_another_id_seq_or_kind(p: Parties, field: str,
                                                                         value: Any) -> None:
    _, fields, body = split(p.seal())
    with pytest.raises(SealError, match="decryption failed"):
        p.opener.open(signed_v2(p.key_a, dict(fields, **{field: value}), body[64:]))


@pytest.mark.parametrize("change", ["cut", "extended", "flipped", "nonce", "signature"])
def test_a_relay_cannot_cut_extend_or_alter_a_version_2_envelope(p: Parties, change: str) -> None:
    sealed = p.seal()
    _, fields, body = split(sealed)
    header = sealed[HEADER_OFFSET:len(sealed) - len(body)]
    if change == "cut":
        sealed = sealed[:-1]
    elif change == "extended":
        sealed = sealed + b"\x00"
    elif change == "flipped":
        sealed = sealed[:-500] + bytes([sealed[-500] ^ 1]) + sealed[-499:]
    elif change == "nonce":  # another nonce in the header: the signature no longer covers it
        other = base64.b64encode(os.urandom(12)).decode()
        sealed = pack_frame(sealing.MAGIC, header.replace(fields["nonce"].encode(), other.encode()), body, 2)
    else:
        sealed = pack_frame(sealing.MAGIC, header, bytes([body[0] ^ 1]) + body[1:], 2)
    expected = {"cut": "truncated or extended", "extended": "truncated or extended",
                "flipped": "tampered", "nonce": "bad signature", "signature": "bad signature"}[change]
    with pytest.raises(SealError, match=expected) as info:
        p.opener.open(sealed)
    assert not info.value.authentic


@pytest.mark.parametrize("direction", ["2 as 1", "1 as 2"])
def test_a_frame_relabelled_to_the_other_version_does_not_open(p: Parties, direction: str) -> None:
    sealed = p.seal(version=2 if direction == "2 as 1" else 1)
    relabelled = sealed[:3] + bytes([1 if direction == "2 as 1" else 2]) + sealed[4:]
    with pytest.raises(SealError, match="says version") as info:
        p.opener.open(relabelled)
    assert not info.value.authentic


def test_a_header_claiming_the_other_version_is_refused_even_when_signed(p: Parties) -> None:
    """A key holder's version-2 frame whose header says v 1 (and v1's alg), hash and signature
    right: refused on the header, before anything trusts it."""
    _, fields, body = split(p.seal())
    for claim in ({"v": 1}, {"v": 1, "alg": sealing.ALGORITHMS[1]}, {"v": True}, {"v": "2"}):
        with pytest.raises(SealError):
            p.opener.open(signed_v2(p.key_a, dict(fields, **claim), body[64:]))
    # A version-1 frame whose header claims 2 is refused on the header too.
    raw = read_header(p.seal(version=1)).raw.replace(b'"v":1', b'"v":2')
    with pytest.raises(SealError, match="says version 2 in a version 1 frame"):
        read_header(pack_frame(sealing.MAGIC, raw, b"\x00" * 100, 1))


def test_a_signature_under_one_versions_context_never_verifies_under_the_other(p: Parties) -> None:
    _, fields, body = split(p.seal())
    with pytest.raises(SealError, match="bad signature"):
        p.opener.open(signed_v2(p.key_a, fields, body[64:], context=sealing.CONTEXT_V1))
    assert p.opener.open(signed_v2(p.key_a, fields, body[64:], context=sealing.CONTEXT_V2))[1] == INNER
    # The kiosk's key signs chunk manifests through Sealer.sign: never under an envelope's context.
    for context in (sealing.CONTEXT_V1, sealing.CONTEXT_V2, b"kiosk-agent sealed envelope v2\x00x\x00"):
        with pytest.raises(ValueError):
            p.sealer().sign(context, b"header")


def test_a_header_naming_a_field_twice_is_refused(p: Parties) -> None:
    """One parser takes the first "kiosk_id", another the last: refused, whoever signed it."""
    _, fields, body = split(p.seal(kiosk_id="a"))
    header = json.dumps(fields, separators=(",", ":"), sort_keys=True).encode()
    twice = header.replace(b'"kiosk_id":"a"', b'"kiosk_id":"b","kiosk_id":"a"')
    assert twice != header
    with pytest.raises(SealError, match="appears twice"):
        p.opener.open(signed_v2(p.key_a, {}, body[64:], raw=twice))


def test_a_receiver_told_to_refuse_version_1_refuses_it_before_using_any_key(p: Parties) -> None:
    strict = Opener(p.central, {}, accept_v1=False)  # not even enrolled: refused for its version first
    with pytest.raises(VersionRefused, match="accept_envelope_v1"):
        strict.open(p.seal(version=1))
    strict.kiosk_keys = p.opener.kiosk_keys
    assert strict.open(p.seal())[1] == INNER


# --- a real receiver on mosquitto -----------------------------------------------------------


def test_the_receiver_stores_both_versions_and_answers_each_for_its_bytes(tmp_path: Path,
                                                                          broker: MosquittoBroker) -> None:
    with rig(tmp_path, broker) as r:
        a = r.sealers[KIOSK_A]
        old = Sealer(a._signing_key, a._recipient, version=1)  # what a kiosk sealed before its update
        caps = [record(KIOSK_A, seq=1), record(KIOSK_A, seq=2)]
        envelopes = [sealed_capture(old, caps[0]), sealed_capture(a, caps[1])]
        for envelope in envelopes:
            r.send(KIOSK_A, envelope)
        receipts = [r.wire.receipt(c.id) for c in caps]
    assert [x["status"] for x in receipts] == ["stored", "stored"]
    assert [x["sha256"] for x in receipts] == [hashlib.sha256(e).hexdigest() for e in envelopes]
    assert r.receiver.counters.envelopes_v1 == 1 and r.receiver.counters.unauthenticated == 0
    for c in caps:
        assert (r.out / KIOSK_A / f"{c.id}.png").read_bytes() == c.image


def test_refusing_version_1_keeps_it_on_the_kiosk_until_allowed_again(tmp_path: Path,
                                                                      broker: MosquittoBroker) -> None:
    out = tmp_path / "out"
    with rig(tmp_path, broker, out, accept_envelope_v1=False) as r:
        a = r.sealers[KIOSK_A]
        old_capture, new_capture = record(KIOSK_A, seq=1), record(KIOSK_A, seq=2)
        old = sealed_capture(Sealer(a._signing_key, a._recipient, version=1), old_capture)
        r.send(KIOSK_A, old)
        r.send(KIOSK_A, old[:3] + b"\x02" + old[4:])  # relabelled as version 2 by a relay
        r.send(KIOSK_A, sealed_capture(a, new_capture))
        assert r.wire.receipt(new_capture.id)["status"] == "stored"
        r.settle()
        counters = r.receiver.counters
        assert r.wire.receipts_for(old_capture.id) == [], "no receipt: the kiosk keeps it"
        assert (counters.envelopes_v1_refused, counters.unauthenticated, counters.envelopes_v1) == (1, 1, 0)
        assert not (out / KIOSK_A / f"{old_capture.id}.png").exists()
    # Setting turned back on (a kiosk not yet drained): the kiosk's resend of the same bytes is stored.
    with rig(tmp_path, broker, out) as r:
        r.send(KIOSK_A, old)
        assert r.wire.receipt(old_capture.id)["sha256"] == hashlib.sha256(old).hexdigest()
    assert (out / KIOSK_A / f"{old_capture.id}.png").read_bytes() == old_capture.image


@pytest.mark.parametrize("version", [2, 1])
def test_chunked_transfer_carries_either_version_and_the_setting_holds_there_too(
        tmp_path: Path, broker: MosquittoBroker, version: int) -> None:
    capture = record(KIOSK_A, image=os.urandom(300_000), seq=3)
    with rig(tmp_path, broker, accept_envelope_v1=False) as r:
        a = r.sealers[KIOSK_A]
        sealed = sealed_capture(Sealer(a._signing_key, a._recipient, version=version), capture)
        manifest = manifest_for(KIOSK_A, sealed, 64 * 1024, seq=3)
        manifest = type(manifest)(**{**manifest.__dict__, "id": capture.id})
        r.send(KIOSK_A, manifest.encode(a), "chunks")
        for index in range(manifest.count):
            r.send(KIOSK_A, chunk_of(manifest, sealed, index).encode(), "chunks")
        r.settle()
        if version == 2:
            assert r.wire.receipt(capture.id)["sha256"] == manifest.sha256
            assert r.receiver.counters.reassembled == 1
        else:
            assert r.wire.receipts_for(capture.id) == [] and r.receiver.counters.envelopes_v1_refused == 1
