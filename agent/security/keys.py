"""Key files: the kiosk's Ed25519 signing key, the central service's X25519 key pair and its
Ed25519 receipt-signing key pair (receipts let a kiosk delete a capture: docs/security.md).

Keys are PEM files (PKCS#8 private, SubjectPublicKeyInfo public) written with the
``cryptography`` package. Private keys are created with mode 0600 from the first byte
(``O_EXCL``, umask-proof), and never overwritten: a kiosk that lost its key must be
enrolled again, which is a decision for a person, not for a command.
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from agent.errors import PermanentError

#: The central receipt-signing key's file name when no path is configured: beside the
#: central encryption key (receiver.central_private_key), as `keys init --central` makes both.
RECEIPT_KEY_NAME = "receipt-signing.key"


class KeyFileError(PermanentError):
    """A key file that is missing, unreadable or of the wrong type; the text says which."""


def raw_public(key: Ed25519PublicKey | X25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(key: Ed25519PublicKey | X25519PublicKey) -> str:
    """Short id that travels in envelopes: 16 hex digits of the key's SHA-256."""
    return hashlib.sha256(raw_public(key)).hexdigest()[:16]


def fingerprint(key: Ed25519PublicKey | X25519PublicKey) -> str:
    """What a person compares when enrolling a key: SHA256:<base64>, as OpenSSH shows it."""
    digest = hashlib.sha256(raw_public(key)).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def public_pem(key: Ed25519PublicKey | X25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def _write_private(path: Path, pem: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise KeyFileError(f"{path} already exists; refusing to overwrite a key (move it away first "
                        "if you really mean to replace it, then enrol the new public key)") from None
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
        fh.flush()
        os.fsync(fh.fileno())


def _write_public(path: Path, pem: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(pem)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def _private_pem(key: Ed25519PrivateKey | X25519PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def create_signing_key(path: Path) -> Ed25519PublicKey:
    """A new kiosk key pair: private key at ``path`` (0600), public key beside it (.pub)."""
    key = Ed25519PrivateKey.generate()
    _write_private(path, _private_pem(key))
    _write_public(public_path(path), public_pem(key.public_key()))
    return key.public_key()


def create_encryption_key(path: Path) -> X25519PublicKey:
    """A new central service key pair (X25519) for sealing captures to it."""
    key = X25519PrivateKey.generate()
    _write_private(path, _private_pem(key))
    _write_public(public_path(path), public_pem(key.public_key()))
    return key.public_key()


def public_path(private_path: Path) -> Path:
    return private_path.with_name(private_path.name + ".pub")


def _read(path: Path, what: str, setting: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise KeyFileError(f"{setting}: {what} {path} not found; create it with `kiosk-agent keys init`"
                        f"{' --central' if 'central' in what else ''} or fix the path") from None
    except PermissionError:
        raise KeyFileError(f"{setting}: cannot read {what} {path}: permission denied "
                        "(run as the kiosk user, or fix the owner)") from None


def load_signing_key(path: Path, setting: str = "security.kiosk_key") -> Ed25519PrivateKey:
    key = _load_private(_read(path, "kiosk private key", setting), path, setting)
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{setting}: {path} is not an Ed25519 private key")
    return key


def load_receipt_signing_key(path: Path, setting: str = "receiver.receipt_signing_key") -> Ed25519PrivateKey:
    """The central service's receipt-signing key: what it signs lets a kiosk delete a capture."""
    key = _load_private(_read(path, "central receipt-signing private key", setting), path, setting)
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{setting}: {path} is not an Ed25519 private key")
    return key


def load_decryption_key(path: Path, setting: str = "receiver.central_private_key") -> X25519PrivateKey:
    key = _load_private(_read(path, "central private key", setting), path, setting)
    if not isinstance(key, X25519PrivateKey):
        raise KeyFileError(f"{setting}: {path} is not an X25519 private key")
    return key


def _load_private(data: bytes, path: Path, setting: str):  # type: ignore[no-untyped-def]
    try:
        return serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"{setting}: {path} is not a readable PEM private key ({exc})") from None


def load_public(path: Path, setting: str, kind: type) -> Ed25519PublicKey | X25519PublicKey:
    data = _read(path, "public key", setting)
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError as exc:
        raise KeyFileError(f"{setting}: {path} is not a readable PEM public key ({exc})") from None
    if not isinstance(key, kind):
        name = kind.__name__.removesuffix("PublicKey")
        raise KeyFileError(f"{setting}: {path} is not an {name} public key")
    return key


def load_encryption_public(path: Path, setting: str = "security.central_public_key") -> X25519PublicKey:
    return load_public(path, setting, X25519PublicKey)  # type: ignore[return-value]


def load_receipt_keys(paths: Sequence[Path],
                      setting: str = "security.receipt_keys") -> dict[str, Ed25519PublicKey]:
    """The central receipt-signing public keys a kiosk trusts, by key id (the ``kid`` a
    receipt names). More than one while the central service rotates its key."""
    if not paths:
        raise KeyFileError(f"{setting}: no key listed; without one no receipt can be verified and "
                           "no capture would ever leave the queue")
    trusted = {}
    for path in paths:
        if not path.exists():
            raise KeyFileError(f"{setting}: {path} not found; install the central service's receipt-signing "
                               "public key there (`kiosk-agent keys show --central` on the central side)")
        key = load_public(path, setting, Ed25519PublicKey)
        trusted[key_id(key)] = key
    return trusted  # type: ignore[return-value]


def load_kiosk_keys(directory: Path, setting: str = "receiver.kiosk_keys_dir") -> dict[str, Ed25519PublicKey]:
    """Enrolled kiosks: ``<kiosk_id>.pub`` files in one directory."""
    if not directory.is_dir():
        raise KeyFileError(f"{setting}: {directory} is not a directory; enrol kiosks with "
                        "`kiosk-agent keys enrol`")
    return {p.name.removesuffix(".pub"): load_public(p, setting, Ed25519PublicKey)  # type: ignore[misc]
            for p in sorted(directory.glob("*.pub"))}


def enrol(kiosk_id: str, public_key_file: Path, kiosks_dir: Path) -> Ed25519PublicKey:
    """Accept a kiosk's public key on the central side: ``<kiosks_dir>/<kiosk_id>.pub``."""
    key = load_public(public_key_file, "public key file", Ed25519PublicKey)
    kiosks_dir.mkdir(parents=True, exist_ok=True)
    _write_public(kiosks_dir / f"{kiosk_id}.pub", public_pem(key))
    return key  # type: ignore[return-value]


@dataclass(frozen=True)
class KeySet:
    """Paths of a complete set of keys for one kiosk and one central service."""

    kiosk_key: Path
    central_key: Path
    kiosks_dir: Path

    @property
    def central_public(self) -> Path:
        return public_path(self.central_key)

    @property
    def receipt_key(self) -> Path:
        """The central receipt-signing key (Ed25519), beside the central encryption key."""
        return self.central_key.with_name(RECEIPT_KEY_NAME)

    @property
    def receipt_public(self) -> Path:
        return public_path(self.receipt_key)


def provision(directory: Path, kiosk_id: str) -> KeySet:
    """Create kiosk and central keys (encryption, receipt signing) under ``directory`` and enrol
    the kiosk (demo, tests)."""
    keys = KeySet(directory / "kiosk.key", directory / "central.key", directory / "kiosks")
    create_signing_key(keys.kiosk_key)
    create_encryption_key(keys.central_key)
    create_signing_key(keys.receipt_key)
    enrol(kiosk_id, public_path(keys.kiosk_key), keys.kiosks_dir)
    return keys


SERVICE_USER = "kiosk"


def chown_to_service_user(private_path: Path, user: str = SERVICE_USER, *, folder: bool = False) -> None:
    """When run as root, hand the kiosk's own new key files to the service user so the agent
    can read them; their folder too when ``folder`` (keys init made it for this key).

    For the kiosk's key alone: an operator's, the central service's or a release key signs
    or decrypts for more than this kiosk, and the agent must not be able to read one (it
    refuses to start if it can: agent/remote/control.py operator_key_exposure). A folder
    that was there before (/etc/kiosk-agent, say) is never handed over: the service user
    could then replace what else is in it.
    """
    if os.geteuid() != 0:
        return
    import pwd

    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        return  # no service user on this machine (development)
    for path in ((private_path.parent,) if folder else ()) + (private_path, public_path(private_path)):
        os.chown(path, entry.pw_uid, entry.pw_gid)
