"""Personal data the kiosk must keep for a while, sealed at rest under a key the kiosk holds.

Registration sessions (agent/registration/store.py) hold who registered whom: the applicant
reference, the operator id, which fingers are missing and why ("amputated"). The kiosk must
read them back (to resume a session, to show it to a supervisor), so they cannot be sealed
to the central key as captures are. Each field is sealed with AES-256-GCM under a 256-bit
**data key** instead; the associated data names the row and column, so a sealed value
cannot be moved to another session or field without failing to open.

The data key is a file of its own (32 random bytes, mode 0600, created once with O_EXCL and
published with link() so a crash never leaves a half-written key), beside the database it
protects, not a key derived (HKDF) from the kiosk's Ed25519 signing key, because:

* rotating the kiosk key (docs/security.md) must not make open sessions unreadable, and
  losing the data key must not cost the kiosk its identity: the two have different lives;
* the signing key is the kiosk's identity towards the central side; keeping it for signing
  only keeps it ready to move into a TPM or secure element, from which nothing can be
  derived;
* the key lives where the data lives (the state folder, always writable for the service,
  even under ProtectSystem=strict), so it is created with the database on first use.

What this protects, honestly: copies of the database file (a support bundle, a backup
without the key file, a file moved aside) and its leftovers reveal nothing. A thief with
the whole disk also has the key; against that thief the defence is erasure: a session's
personal data leaves the kiosk as soon as the central side has all of it.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from agent.errors import PermanentError
from agent.security.private_files import FILE_MODE, create_private, fsync_dir

log = logging.getLogger(__name__)

KEY_BYTES = 32
NONCE_BYTES = 12
#: First byte of every sealed value: the format, so a later one can be told apart.
FORMAT = b"\x01"


class DataKeyError(PermanentError):
    """The data key file is unusable (wrong size, unreadable); the text names it."""


class SealedFieldError(PermanentError):
    """A sealed value did not open: another key, or it was altered or moved."""


class FieldCipher:
    """Seals and opens JSON values, each bound to where it is stored (``where``)."""

    def __init__(self, key: bytes, purpose: str) -> None:
        if len(key) != KEY_BYTES:
            raise DataKeyError(f"a data key is {KEY_BYTES} bytes, not {len(key)}")
        self._aead = AESGCM(key)
        self._purpose = purpose

    @classmethod
    def for_key_file(cls, path: Path, purpose: str) -> FieldCipher:
        """The cipher of the key in ``path``, creating the key file when there is none."""
        return cls(load_or_create_key(path), purpose)

    def seal(self, value: Any, *where: str) -> bytes:
        nonce = os.urandom(NONCE_BYTES)  # random 96-bit nonces: far below GCM's 2^32 limit per key
        plain = json.dumps(value, separators=(",", ":")).encode()
        return FORMAT + nonce + self._aead.encrypt(nonce, plain, self._aad(where))

    def open(self, sealed: bytes, *where: str) -> Any:
        if sealed[:1] != FORMAT or len(sealed) < 1 + NONCE_BYTES + 16:
            raise SealedFieldError(f"{'/'.join(where)}: not a sealed value")
        nonce, body = sealed[1:1 + NONCE_BYTES], sealed[1 + NONCE_BYTES:]
        try:
            plain = self._aead.decrypt(nonce, body, self._aad(where))
        except InvalidTag:
            raise SealedFieldError(f"{'/'.join(where)}: does not open with this data key "
                                   "(another key, or the value was altered)") from None
        return json.loads(plain)

    def _aad(self, where: tuple[str, ...]) -> bytes:
        return "\x00".join((self._purpose, *where)).encode()


def load_or_create_key(path: Path) -> bytes:
    try:
        key = _read_key(path)
    except FileNotFoundError:
        key = _create_key(path)
    if len(key) != KEY_BYTES:
        raise DataKeyError(f"{path} is not a data key ({len(key)} bytes, expected {KEY_BYTES}); "
                           "move it away: a new key is made, and data sealed with the old one is "
                           "set aside unread")
    return key


def _read_key(path: Path) -> bytes:
    with path.open("rb") as fh:
        mode = os.fstat(fh.fileno()).st_mode & 0o777
        if mode != FILE_MODE:
            # Someone widened it by hand: whoever can read it can read the sessions.
            log.warning("data key %s was mode %o; set it back to 0600", path, mode)
            os.fchmod(fh.fileno(), FILE_MODE)
        return fh.read()


def _create_key(path: Path) -> bytes:
    key = os.urandom(KEY_BYTES)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)  # left by a crash of this pid's predecessor
    fd = create_private(tmp)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(key)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)  # appears whole or not at all, and never replaces a key
        except FileExistsError:
            return _read_key(path)  # another process made one first: use that one
        fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)
    log.info("created the data key %s", path)
    return key

