"""Test certificates for the SBI emulator: a device provider's CA and a device key it issued,
made fresh in each test run (nothing secret is stored in the repository), and the JWS signing
the specification asks of a device (RS256, the device certificate in ``x5c``)."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID


def _name(text: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Test Device Provider"),
                      x509.NameAttribute(NameOID.COMMON_NAME, text)])


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@dataclass
class DevicePki:
    ca_key: rsa.RSAPrivateKey
    ca_cert: x509.Certificate
    device_key: rsa.RSAPrivateKey
    device_cert: x509.Certificate

    @classmethod
    def make(cls, name: str = "provider", device_valid_days: tuple[int, int] = (-1, 30)) -> DevicePki:
        """A CA and a device certificate valid from ``device_valid_days[0]`` to ``[1]`` days from now."""
        now = datetime.now(UTC)
        ca_key = _key()
        ca_cert = (
            x509.CertificateBuilder().subject_name(_name(f"{name} CA")).issuer_name(_name(f"{name} CA"))
            .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=2)).not_valid_after(now + timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(ca_key, hashes.SHA256()))
        device_key = _key()
        start, end = device_valid_days
        device_cert = (
            x509.CertificateBuilder().subject_name(_name(f"{name} device")).issuer_name(ca_cert.subject)
            .public_key(device_key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now + timedelta(days=start) - timedelta(hours=1))
            .not_valid_after(now + timedelta(days=end))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(ca_key, hashes.SHA256()))
        return cls(ca_key, ca_cert, device_key, device_cert)

    def write_ca(self, path: Path) -> Path:
        path.write_bytes(self.ca_cert.public_bytes(serialization.Encoding.PEM))
        return path

    def sign(self, payload: dict[str, Any] | bytes, alg: str = "RS256") -> str:
        """A compact JWS of ``payload`` by the device key, its certificate in ``x5c``."""
        import jwt

        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        x5c = [base64.b64encode(self.device_cert.public_bytes(serialization.Encoding.DER)).decode()]
        if alg == "none":  # what a forger sends: no signature at all
            header = {"alg": "none", "typ": "JWT", "x5c": x5c}
            return f"{_b64(json.dumps(header).encode())}.{_b64(data)}."
        return jwt.api_jws.PyJWS().encode(data, self.device_key, algorithm=alg,
                                          headers={"typ": "JWT", "x5c": x5c})


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned(payload: dict[str, Any]) -> str:
    """The base64url payload alone, as discovery carries the digital ID."""
    return _b64(json.dumps(payload).encode())


def tamper(token: str) -> str:
    """``token`` with one byte of its signature changed."""
    head, body, sig = token.split(".")
    raw = bytearray(base64.urlsafe_b64decode(sig + "=" * (-len(sig) % 4)))
    raw[len(raw) // 2] ^= 0x01
    return f"{head}.{body}.{_b64(bytes(raw))}"
