"""Sealed envelopes: captures signed by the kiosk and encrypted to the central service
before they touch the kiosk's disk.

Layout (see docs/protocol.md and docs/security.md)::

    b"KAS" | version (1) | header length (4, big-endian) | header (UTF-8 JSON) | ciphertext

The clear header holds only what routing needs (id, kiosk id, sequence number, kind) and
the key material (recipient key id, signer key id, ephemeral public key, nonce). The rest,
the image and every personal field, is inside the ciphertext:

* signature = Ed25519(kiosk key, CONTEXT || header || inner envelope)
* key = HKDF-SHA256(X25519(ephemeral, central public key), info = CONTEXT || epk || central pub)
* ciphertext = AES-256-GCM(key, nonce, signature || inner envelope, aad = header)

The header is authenticated twice (GCM's AAD and the signature), so a capture cannot be
re-labelled to another kiosk or id. A fresh ephemeral key per envelope gives every capture
its own AES key.
"""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from agent.errors import PermanentError
from agent.security.keys import key_id, raw_public
from agent.transport.protocol import HEADER_OFFSET, VERSION, ProtocolError, pack_frame, unpack_frame

MAGIC = b"KAS"
ALGORITHM = "X25519-HKDF-SHA256-A256GCM+Ed25519"
CONTEXT = b"kiosk-agent sealed envelope v1\x00"
_SIGNATURE_LEN = 64
MAX_HEADER_BYTES = 4096


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


def _derive(shared: bytes, epk: bytes, recipient: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                info=CONTEXT + epk + recipient).derive(shared)


class Sealer:
    """The kiosk side: sign with the kiosk key, encrypt to the central service."""

    def __init__(self, signing_key: Ed25519PrivateKey, recipient: X25519PublicKey) -> None:
        self._signing_key = signing_key
        self._recipient = recipient
        self._recipient_raw = raw_public(recipient)
        self.signer_id = key_id(signing_key.public_key())
        self.recipient_id = key_id(recipient)

    def seal(self, *, item_id: str, kiosk_id: str, seq: int, kind: str, inner: bytes) -> bytes:
        ephemeral = X25519PrivateKey.generate()
        epk = raw_public(ephemeral.public_key())
        nonce = os.urandom(12)
        header = json.dumps({
            "v": VERSION, "type": "sealed", "alg": ALGORITHM, "kind": kind, "id": item_id,
            "kiosk_id": kiosk_id, "seq": seq, "kid": self.recipient_id, "signer": self.signer_id,
            "epk": base64.b64encode(epk).decode(), "nonce": base64.b64encode(nonce).decode(),
        }, separators=(",", ":"), sort_keys=True).encode()
        signature = self._signing_key.sign(CONTEXT + header + inner)
        key = _derive(ephemeral.exchange(self._recipient), epk, self._recipient_raw)
        ciphertext = AESGCM(key).encrypt(nonce, signature + inner, header)
        return pack_frame(MAGIC, header, ciphertext)

    def sign(self, context: bytes, message: bytes) -> bytes:
        """Sign something else the kiosk vouches for (chunk manifests) with the same key.

        Each kind of message has its own context string, so no such signature can pass for
        a sealed envelope's, whose context is reserved for ``seal``."""
        if not context.endswith(b"\x00") or context == CONTEXT:
            raise ValueError("sign needs a context string of its own, ending in NUL")
        return self._signing_key.sign(context + message)


def read_header(payload: bytes) -> SealedHeader:
    """Parse the clear header (for routing) without decrypting anything."""
    try:
        raw, _ = unpack_frame(payload, MAGIC, "sealed envelope", MAX_HEADER_BYTES)
    except ProtocolError as exc:
        hint = "; plaintext captures are never accepted" if "bad magic" in str(exc) else ""
        raise SealError(f"{exc}{hint}") from None
    try:
        body: dict[str, Any] = json.loads(raw)
        header = SealedHeader(
            id=str(body["id"]), kiosk_id=str(body["kiosk_id"]), seq=int(body["seq"]),
            kind=str(body["kind"]), kid=str(body["kid"]), signer=str(body["signer"]),
            epk=base64.b64decode(body["epk"], validate=True),
            nonce=base64.b64decode(body["nonce"], validate=True), raw=raw,
        )
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise SealError(f"sealed header unreadable: {exc}") from None
    if body.get("alg") != ALGORITHM:
        raise SealError(f"algorithm {body.get('alg')!r} not supported", header.id, header.kiosk_id)
    if len(header.epk) != 32 or len(header.nonce) != 12:
        raise SealError("sealed header has a bad key or nonce length", header.id, header.kiosk_id)
    return header


class Opener:
    """The central side: decrypt with the service key, verify against enrolled kiosk keys."""

    def __init__(self, private_key: X25519PrivateKey, kiosk_keys: dict[str, Ed25519PublicKey]) -> None:
        self._private = private_key
        self._public_raw = raw_public(private_key.public_key())
        self.key_id = key_id(private_key.public_key())
        self.kiosk_keys = kiosk_keys

    def open(self, payload: bytes) -> tuple[SealedHeader, bytes]:
        """Return the header and the verified inner envelope, or raise SealError."""
        header = read_header(payload)
        where = (header.id, header.kiosk_id)
        kiosk_key = self.kiosk_keys.get(header.kiosk_id)
        if kiosk_key is None:
            raise SealError(f"kiosk {header.kiosk_id!r} is not enrolled (no key in the kiosk keys "
                            "directory)", *where)
        if header.kid != self.key_id:
            raise SealError(f"sealed to key {header.kid}, this receiver holds {self.key_id}", *where)
        if header.signer != key_id(kiosk_key):
            raise SealError(f"signed by key {header.signer}, kiosk {header.kiosk_id!r} is enrolled "
                            f"with {key_id(kiosk_key)}", *where)
        ciphertext = payload[HEADER_OFFSET + len(header.raw):]
        try:
            shared = self._private.exchange(X25519PublicKey.from_public_bytes(header.epk))
            key = _derive(shared, header.epk, self._public_raw)
            plain = AESGCM(key).decrypt(header.nonce, ciphertext, header.raw)
        except (InvalidTag, ValueError):
            raise SealError("decryption failed: the envelope was tampered with or truncated",
                            *where) from None
        signature, inner = plain[:_SIGNATURE_LEN], plain[_SIGNATURE_LEN:]
        try:
            kiosk_key.verify(signature, CONTEXT + header.raw + inner)
        except InvalidSignature:
            raise SealError(f"bad signature: not signed by kiosk {header.kiosk_id!r}'s enrolled key",
                            *where) from None
        return header, inner
