"""Trust checks of the MOSIP SBI: signed tokens (RFC 7515 JWS) and the capture hash chain.

Every signed block of an SBI response (device info, digital ID, each capture's ``data``) is a
compact JWS whose header carries ``alg`` RS256 and ``x5c``, the signer's certificate. The
specification says the first ``x5c`` certificate is the device's (or its secure chip's), issued
by the device provider (or the FTM provider), and that any further certificates are ignored:
so the leaf must be issued directly by one of the certificates this kiosk was configured to
trust, and be valid now. Nothing else the device sends is taken as a root of trust.

PyJWT checks the signature and refuses any algorithm but RS256 (so ``alg: none`` and
algorithm confusion cannot pass); the certificate checks are ours, with cryptography.

The hash chain (SBI 0.9.5, registration capture): ``hash`` of a capture is
HEX(SHA-256(previousHash + HEX(SHA-256(bioValue bytes)))), the two hashes joined as upper-case
hex text; the first capture of a session chains from HEX(SHA-256(b"")). See docs/drivers.md.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import rsa

#: The only algorithm the specification names for SBI signatures.
ALGORITHMS = ("RS256",)
#: A device key below this size is refused (the specification asks for >= 2048-bit RSA).
MIN_RSA_BITS = 2048
#: A token larger than this is refused before it is parsed (a capture of ten 500 ppi fingers
#: as lossless JPEG 2000 is a few MB; a stream of junk must not cost memory).
MAX_TOKEN_BYTES = 24 * 1024 * 1024
MAX_X5C = 4
_B64URL = re.compile(r"[A-Za-z0-9_-]*")
_B64STD = re.compile(r"[A-Za-z0-9+/]*={0,2}")
EMPTY_HASH = hashlib.sha256(b"").hexdigest().upper()
_HEX_HASH = re.compile(r"[0-9A-F]{64}")


class SignatureRefused(ValueError):
    """A token whose signature, algorithm or certificate does not verify; says which."""


@dataclass(frozen=True)
class Verified:
    payload: bytes
    certificate: x509.Certificate

    def json(self) -> dict[str, Any]:
        return parse_json_object(self.payload, "signed payload")


def b64url_decode(text: str, what: str) -> bytes:
    """Strict base64url (RFC 4648 section 5, padding optional): anything else is refused."""
    if not isinstance(text, str) or not _B64URL.fullmatch(text.rstrip("=")):
        raise ValueError(f"{what} is not base64url text")
    stripped = text.rstrip("=")
    if len(stripped) % 4 == 1:
        raise ValueError(f"{what} has an impossible base64url length")
    return base64.urlsafe_b64decode(stripped + "=" * (-len(stripped) % 4))


def parse_json_object(data: bytes, what: str, max_depth: int = 16) -> dict[str, Any]:
    """``data`` as a JSON object nested at most ``max_depth`` deep; ValueError otherwise."""
    try:
        value = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"{what} is not JSON ({type(exc).__name__})") from None
    if not isinstance(value, dict):
        raise ValueError(f"{what} is not a JSON object")
    check_depth(value, max_depth, what)
    return value


def check_depth(value: Any, max_depth: int, what: str) -> None:
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > max_depth:
            raise ValueError(f"{what} nests deeper than {max_depth} levels")
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        stack.extend((child, depth + 1) for child in children)


def load_trusted(paths: Sequence[Path]) -> list[x509.Certificate]:
    """The device-provider (or FTM root) certificates in the PEM files ``paths``."""
    trusted: list[x509.Certificate] = []
    for path in paths:
        try:
            certs = x509.load_pem_x509_certificates(Path(path).read_bytes())
        except (OSError, ValueError) as exc:
            raise ValueError(f"trusted certificate file {path}: {exc}") from None
        for cert in certs:
            try:
                ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
            except x509.ExtensionNotFound:
                ca = False
            if not ca:
                raise ValueError(f"trusted certificate file {path}: {cert.subject.rfc4514_string()} "
                                 "is not a CA certificate (basicConstraints CA:TRUE)")
            trusted.append(cert)
    return trusted


def _within(cert: x509.Certificate, now: datetime, what: str) -> None:
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        # Judged by this kiosk's clock (drivers cannot ask the agent whether it trusts it):
        # the date it used is named, so a wrong clock shows as the cause.
        raise SignatureRefused(
            f"{what} certificate {cert.subject.rfc4514_string()} is not valid now (valid "
            f"{cert.not_valid_before_utc:%Y-%m-%d} to {cert.not_valid_after_utc:%Y-%m-%d}; this kiosk's "
            f"clock says {now:%Y-%m-%d %H:%M} UTC: if that is wrong, the clock is the cause, not the "
            "device: set the date and time)")


def _leaf(header: dict[str, Any]) -> x509.Certificate:
    chain = header.get("x5c")
    if isinstance(chain, str):  # some device services send one certificate, not a list
        chain = [chain]
    if not isinstance(chain, list) or not 1 <= len(chain) <= MAX_X5C:
        raise SignatureRefused("the token carries no x5c certificate")
    first = chain[0]
    if not isinstance(first, str) or not _B64STD.fullmatch(first):
        raise SignatureRefused("the x5c certificate is not base64 text")
    try:
        return x509.load_der_x509_certificate(base64.b64decode(first, validate=True))
    except (ValueError, binascii.Error):
        raise SignatureRefused("the x5c certificate is not a DER X.509 certificate") from None


def check_certificate(leaf: x509.Certificate, trusted: Sequence[x509.Certificate],
                      now: datetime | None = None) -> x509.Certificate:
    """The trusted certificate that issued ``leaf``; SignatureRefused when none did."""
    now = now or datetime.now(UTC)
    key = leaf.public_key()
    if not isinstance(key, rsa.RSAPublicKey) or key.key_size < MIN_RSA_BITS:
        raise SignatureRefused(f"the signing key is not RSA of at least {MIN_RSA_BITS} bits")
    for issuer in trusted:
        try:
            leaf.verify_directly_issued_by(issuer)
        except (ValueError, TypeError, InvalidSignature):
            continue
        _within(issuer, now, "the trusted")
        _within(leaf, now, "the device's")
        return issuer
    raise SignatureRefused(
        f"the signing certificate {leaf.subject.rfc4514_string()} (issuer "
        f"{leaf.issuer.rfc4514_string()}) was not issued by any trusted device-provider certificate")


def verify_jws(token: Any, trusted: Sequence[x509.Certificate], now: datetime | None = None) -> Verified:
    """The payload of the compact JWS ``token``, once its signature and signer are trusted."""
    import jwt  # PyJWT; imported here so the drivers package imports without it

    if not isinstance(token, str) or len(token) > MAX_TOKEN_BYTES:
        raise SignatureRefused("the signed block is not a compact JWS of acceptable size")
    if token.count(".") != 2:
        raise SignatureRefused("the block is not signed (a compact JWS has three parts)")
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError as exc:
        raise SignatureRefused(f"the JWS header does not parse: {exc}") from None
    if header.get("alg") not in ALGORITHMS:
        raise SignatureRefused(f"the JWS algorithm {header.get('alg')!r} is refused; only RS256")
    leaf = _leaf(header)
    check_certificate(leaf, trusted, now)
    try:
        decoded = jwt.api_jws.PyJWS().decode_complete(token, key=leaf.public_key(),
                                                      algorithms=list(ALGORITHMS))
    except jwt.PyJWTError as exc:
        raise SignatureRefused(f"the JWS signature does not verify ({type(exc).__name__})") from None
    return Verified(decoded["payload"], leaf)


def next_hash(previous: str, bio_value: bytes) -> str:
    """The chain hash of a capture of ``bio_value`` that follows ``previous``."""
    current = hashlib.sha256(bio_value).hexdigest().upper()
    return hashlib.sha256((previous + current).encode("ascii")).hexdigest().upper()


def is_hash(text: Any) -> bool:
    return isinstance(text, str) and bool(_HEX_HASH.fullmatch(text.upper()))
