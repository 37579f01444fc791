"""Sealed envelopes: captures signed by the kiosk and encrypted to the central service
before they touch the kiosk's disk.

Two versions (docs/protocol.md, "Sealed envelope"; docs/security.md). Both start::

    b"KAS" | version (1 byte) | header length (4, big-endian) | header (UTF-8 JSON) | ...

The clear header holds only what routing needs (id, kiosk id, sequence number, kind) and
the key material (recipient key id, signer key id, ephemeral public key, nonce). The rest,
the image and every personal field, is inside the ciphertext.

Version 2, what kiosks write: the signature covers the header alone, and the header carries
the size and SHA-256 of what it vouches for (nonce and ciphertext), so signing and checking a
100 KB capture costs one SHA-256 and one Ed25519 over a few hundred bytes, not Ed25519 over
100 KB (which hashes it with SHA-512, twice to sign, once to verify)::

    ... header | signature (64) | ciphertext
    sha256     = SHA-256(nonce (12) || ciphertext (exactly "size" bytes)), in the header
    signature  = Ed25519(kiosk key, CONTEXT_V2 || header)
    key        = HKDF-SHA256(X25519(ephemeral, central public key), info = CONTEXT_V2 || epk || central pub)
    ciphertext = AES-256-GCM(key, nonce, inner envelope, aad = CONTEXT_V2 || routing fields)

The signature is over ciphertext, never plaintext, so the kiosk's public key cannot confirm a
guess of what is inside. The routing fields (kind, id, kiosk id, seq, signer) are also the
ciphertext's associated data, so a holder of another kiosk's key who re-signs a genuine
envelope's ciphertext under a header of its own gets something that does not decrypt.

Version 1, what kiosks wrote before (read by receivers during a rollout, unless
``receiver.accept_envelope_v1`` is off)::

    ... header | AES-256-GCM(key, nonce, Ed25519(CONTEXT_V1 || header || inner) || inner, aad = header)

Each version has its own context string, in the signature and in the key derivation, and
its own ``alg``; the header's ``v`` must equal the frame's version byte. So no version-2
signature verifies as version 1 or back, and a frame relabelled from one version to the
other neither verifies nor decrypts.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
from dataclasses import dataclass, replace
from typing import Any

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from agent.errors import PermanentError
from agent.security.keys import key_id, raw_public
from agent.transport.protocol import HEADER_OFFSET, ProtocolError, frame_version, pack_frame, unpack_frame

MAGIC = b"KAS"
#: The version kiosks write; receivers read both (VERSIONS) unless told to refuse version 1.
VERSION = 2
VERSIONS = (1, 2)
ALGORITHMS = {1: "X25519-HKDF-SHA256-A256GCM+Ed25519",
              2: "X25519-HKDF-SHA256-A256GCM+Ed25519-SHA256"}
ALGORITHM = ALGORITHMS[VERSION]
CONTEXT_V1 = b"kiosk-agent sealed envelope v1\x00"
CONTEXT_V2 = b"kiosk-agent sealed envelope v2\x00"
CONTEXTS = {1: CONTEXT_V1, 2: CONTEXT_V2}
CONTEXT = CONTEXTS[VERSION]
_SIGNATURE_LEN = 64
_NONCE_LEN = 12
MAX_HEADER_BYTES = 4096
_HEX64 = re.compile(r"[0-9a-f]{64}")


class SealError(PermanentError, ValueError):
    """An envelope that cannot be opened or trusted.

    ``authentic`` is True only when the kiosk's signature verified, i.e. the kiosk really
    sent this and its content is at fault; forged or damaged envelopes are not answered,
    so an attacker cannot make a kiosk set its genuine captures aside.
    """

    def __init__(self, message: str, item_id: str | None = None, kiosk_id: str | None = None,
                 authentic: bool = False) -> None:
        super().__init__(message)
        self.item_id = item_id
        self.kiosk_id = kiosk_id
        self.authentic = authentic


class VersionRefused(SealError):
    """A version-1 envelope at a receiver told to read version 2 only: not checked further,
    not answered (the kiosk keeps it and sends it again), counted apart from forgeries."""


@dataclass(frozen=True)
class SealedHeader:
    id: str
    kiosk_id: str
    seq: int
    kind: str
    kid: str
    signer: str
    epk: bytes
    nonce: bytes
    raw: bytes  # the exact header bytes (authenticated)
    version: int = VERSION
    #: Version 2: bytes of ciphertext after the signature, and SHA-256(nonce || ciphertext).
    size: int = 0
    sha256: str = ""


def _derive(version: int, shared: bytes, epk: bytes, recipient: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                info=CONTEXTS[version] + epk + recipient).derive(shared)


def _routing_aad(kind: str, item_id: str, kiosk_id: str, seq: int, signer: str) -> bytes:
    """Version 2's associated data: the context, then each routing field as UTF-8 behind its
    2-byte big-endian length (lengths, so that no two field lists give the same bytes)."""
    fields = (kind, item_id, kiosk_id, str(seq), signer)
    return CONTEXT_V2 + b"".join(len(f.encode()).to_bytes(2, "big") + f.encode() for f in fields)


def payload_digest(nonce: bytes, ciphertext: bytes) -> str:
    """What a version-2 header vouches for: the nonce (always 12 bytes) and the ciphertext
    (exactly the header's ``size``), so neither can be moved, cut or extended."""
    digest = hashlib.sha256(nonce)
    digest.update(ciphertext)
    return digest.hexdigest()


class Sealer:
    """The kiosk side: sign with the kiosk key, encrypt to the central service."""

    def __init__(self, signing_key: Ed25519PrivateKey, recipient: X25519PublicKey,
                 version: int = VERSION) -> None:
        if version not in VERSIONS:
            raise ValueError(f"sealed envelope version {version} does not exist")
        self._signing_key = signing_key
        self._recipient = recipient
        self._recipient_raw = raw_public(recipient)
        self.signer_id = key_id(signing_key.public_key())
        self.recipient_id = key_id(recipient)
        #: 2; 1 only for tests and benchmarks of the rollout (receivers still read it).
        self.version = version

    def seal(self, *, item_id: str, kiosk_id: str, seq: int, kind: str, inner: bytes) -> bytes:
        ephemeral = X25519PrivateKey.generate()
        epk = raw_public(ephemeral.public_key())
        nonce = os.urandom(_NONCE_LEN)
        key = _derive(self.version, ephemeral.exchange(self._recipient), epk, self._recipient_raw)
        fields: dict[str, Any] = {
            "v": self.version, "type": "sealed", "alg": ALGORITHMS[self.version], "kind": kind,
            "id": item_id, "kiosk_id": kiosk_id, "seq": seq, "kid": self.recipient_id,
            "signer": self.signer_id, "epk": base64.b64encode(epk).decode(),
            "nonce": base64.b64encode(nonce).decode(),
        }
        if self.version == 1:
            header = _dumps(fields)
            signature = self._signing_key.sign(CONTEXT_V1 + header + inner)
            return pack_frame(MAGIC, header, AESGCM(key).encrypt(nonce, signature + inner, header), 1)
        aad = _routing_aad(kind, item_id, kiosk_id, seq, self.signer_id)
        ciphertext = AESGCM(key).encrypt(nonce, inner, aad)
        header = _dumps(dict(fields, size=len(ciphertext), sha256=payload_digest(nonce, ciphertext)))
        return pack_frame(MAGIC, header, self._signing_key.sign(CONTEXT_V2 + header) + ciphertext, 2)

    def sign(self, context: bytes, message: bytes) -> bytes:
        """Sign something else the kiosk vouches for (chunk manifests) with the same key.

        Each kind of message has its own context string, so no such signature can pass for
        a sealed envelope's, whose contexts (both versions) are reserved for ``seal``."""
        if not context.endswith(b"\x00") or b"\x00" in context[:-1] or context in CONTEXTS.values():
            raise ValueError("sign needs a context string of its own, ending in its only NUL")
        return self._signing_key.sign(context + message)


def _dumps(fields: dict[str, Any]) -> bytes:
    return json.dumps(fields, separators=(",", ":"), sort_keys=True).encode()


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Two "id" or "seq" keys would mean one thing to this parser and maybe another to the
    # next one reading the same signed bytes: refuse rather than pick one.
    body = dict(pairs)
    if len(body) != len(pairs):
        raise ValueError("a field appears twice")
    return body


def _text(body: dict[str, Any], key: str) -> str:
    value = body[key]
    if not isinstance(value, str):
        raise TypeError(f"{key} must be a string")
    return value


def _where(body: dict[str, Any]) -> tuple[str | None, str | None]:
    """The id and kiosk id of a header being refused, when they are strings."""
    item, kiosk = body.get("id"), body.get("kiosk_id")
    return (item if isinstance(item, str) else None), (kiosk if isinstance(kiosk, str) else None)


def read_header(payload: bytes) -> SealedHeader:
    """Parse the clear header (for routing) without decrypting anything."""
    version = frame_version(payload)
    try:
        if payload[:3] == MAGIC and version not in VERSIONS:
            raise ProtocolError(f"sealed envelope version {version} not supported (this side reads 1 and 2)")
        raw, _ = unpack_frame(payload, MAGIC, "sealed envelope", MAX_HEADER_BYTES, version or 0)
    except ProtocolError as exc:
        hint = "; plaintext captures are never accepted" if "bad magic" in str(exc) else ""
        raise SealError(f"{exc}{hint}") from None
    assert version is not None
    try:
        body: dict[str, Any] = json.loads(raw, object_pairs_hook=_no_duplicates)
        if not isinstance(body, dict):
            raise TypeError("not a JSON object")
        # The header says its version too (version 1 kiosks always wrote "v": 1): a header of
        # one version in the frame of the other is refused first, whatever else it holds.
        claimed = body.get("v", 1 if version == 1 else None)
        if type(claimed) is not int or claimed != version:
            raise SealError(f"sealed header says version {body.get('v')!r} in a version {version} frame",
                            *_where(body))
        seq = body["seq"]
        if type(seq) is not int or not 0 <= seq < 2**63:
            raise TypeError("seq must be a whole number")
        header = SealedHeader(
            id=_text(body, "id"), kiosk_id=_text(body, "kiosk_id"), seq=seq,
            kind=_text(body, "kind"), kid=_text(body, "kid"), signer=_text(body, "signer"),
            epk=base64.b64decode(_text(body, "epk"), validate=True),
            nonce=base64.b64decode(_text(body, "nonce"), validate=True), raw=raw, version=version,
        )
        if version == 2:
            size, sha = body["size"], _text(body, "sha256")
            if type(size) is not int or size < 0 or not _HEX64.fullmatch(sha):
                raise ValueError("size must be a whole number and sha256 64 lower-case hex digits")
            header = replace(header, size=size, sha256=sha)
    except SealError:
        raise
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise SealError(f"sealed header unreadable: {exc}") from None
    where = (header.id, header.kiosk_id)
    if body.get("alg") != ALGORITHMS[version]:
        raise SealError(f"algorithm {body.get('alg')!r} not supported", *where)
    if len(header.epk) != 32 or len(header.nonce) != _NONCE_LEN:
        raise SealError("sealed header has a bad key or nonce length", *where)
    return header


class Opener:
    """The central side: decrypt with the service key, verify against enrolled kiosk keys.

    ``accept_v1`` (``receiver.accept_envelope_v1``): whether version-1 envelopes are still
    read. On during a rollout, since a kiosk's queue keeps what it sealed before its update;
    off once the fleet runs version 2 and their queues have drained."""

    def __init__(self, private_key: X25519PrivateKey, kiosk_keys: dict[str, Ed25519PublicKey],
                 accept_v1: bool = True) -> None:
        self._private = private_key
        self._public_raw = raw_public(private_key.public_key())
        self.key_id = key_id(private_key.public_key())
        self.kiosk_keys = kiosk_keys
        self.accept_v1 = accept_v1

    def open(self, payload: bytes) -> tuple[SealedHeader, bytes]:
        """Return the header and the verified inner envelope, or raise SealError."""
        header = read_header(payload)
        where = (header.id, header.kiosk_id)
        if header.version == 1 and not self.accept_v1:
            raise VersionRefused("sealed envelope version 1 is refused here (receiver.accept_envelope_v1 "
                            "= false); the kiosk keeps it", *where)
        kiosk_key = self.kiosk_keys.get(header.kiosk_id)
        if kiosk_key is None:
            raise SealError(f"kiosk {header.kiosk_id!r} is not enrolled (no key in the kiosk keys "
                            "directory)", *where)
        if header.kid != self.key_id:
            raise SealError(f"sealed to key {header.kid}, this receiver holds {self.key_id}", *where)
        if header.signer != key_id(kiosk_key):
            raise SealError(f"signed by key {header.signer}, kiosk {header.kiosk_id!r} is enrolled "
                            f"with {key_id(kiosk_key)}", *where)
        body = memoryview(payload)[HEADER_OFFSET + len(header.raw):]
        if header.version == 1:
            return header, self._open_v1(header, kiosk_key, body)
        return header, self._open_v2(header, kiosk_key, body)

    def _key(self, header: SealedHeader) -> AESGCM:
        shared = self._private.exchange(X25519PublicKey.from_public_bytes(header.epk))
        return AESGCM(_derive(header.version, shared, header.epk, self._public_raw))

    def _open_v2(self, header: SealedHeader, kiosk_key: Ed25519PublicKey, body: memoryview) -> bytes:
        where = (header.id, header.kiosk_id)
        signature, ciphertext = body[:_SIGNATURE_LEN], body[_SIGNATURE_LEN:]
        if len(signature) != _SIGNATURE_LEN or len(ciphertext) != header.size:
            raise SealError(f"the envelope was truncated or extended: {len(ciphertext)} bytes of "
                            f"ciphertext, the header says {header.size}", *where)
        # Cheapest first, and nothing decrypted before the kiosk's word is checked: a forged
        # envelope costs one short signature check, not a key exchange.
        try:
            kiosk_key.verify(bytes(signature), CONTEXT_V2 + header.raw)
        except InvalidSignature:
            raise SealError(f"bad signature: the header was tampered with or not signed by kiosk "
                            f"{header.kiosk_id!r}'s enrolled key", *where) from None
        if payload_digest(header.nonce, ciphertext) != header.sha256:
            raise SealError("the ciphertext does not match its signed SHA-256: tampered with or "
                            "truncated", *where)
        try:
            return self._key(header).decrypt(
                header.nonce, ciphertext,
                _routing_aad(header.kind, header.id, header.kiosk_id, header.seq, header.signer))
        except (InvalidTag, ValueError):
            # Exactly the bytes the kiosk signed: its own fault (or its key's holder's).
            raise SealError("decryption failed although the kiosk signed these bytes", *where,
                            authentic=True) from None

    def _open_v1(self, header: SealedHeader, kiosk_key: Ed25519PublicKey, body: memoryview) -> bytes:
        where = (header.id, header.kiosk_id)
        try:
            plain = self._key(header).decrypt(header.nonce, bytes(body), header.raw)
        except (InvalidTag, ValueError):
            raise SealError("decryption failed: the envelope was tampered with or truncated",
                            *where) from None
        signature, inner = plain[:_SIGNATURE_LEN], plain[_SIGNATURE_LEN:]
        try:
            kiosk_key.verify(signature, CONTEXT_V1 + header.raw + inner)
        except InvalidSignature:
            raise SealError(f"bad signature: not signed by kiosk {header.kiosk_id!r}'s enrolled key",
                            *where) from None
        return inner
