from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from agent.security import keys
from agent.security.sealing import Opener, Sealer, SealError, read_header

INNER = b"KAE\x01 inner envelope with an image \x89PNG\r\n\x1a\n" + bytes(range(256)) * 40


@pytest.fixture
def pair() -> tuple[Sealer, Opener, Ed25519PrivateKey]:
    kiosk = Ed25519PrivateKey.generate()
    central = X25519PrivateKey.generate()
    return Sealer(kiosk, central.public_key()), Opener(central, {"k1": kiosk.public_key()}), kiosk


def seal(sealer: Sealer, kiosk_id: str = "k1") -> bytes:
    return sealer.seal(item_id="id-1", kiosk_id=kiosk_id, seq=3, kind="capture", inner=INNER)


def test_round_trip_hides_the_content(pair) -> None:  # type: ignore[no-untyped-def]
    sealer, opener, _ = pair
    sealed = seal(sealer)
    assert b"\x89PNG" not in sealed and bytes(range(256)) not in sealed and b"KAE" not in sealed
    header, inner = opener.open(sealed)
    assert inner == INNER and (header.id, header.kiosk_id, header.seq) == ("id-1", "k1", 3)
    assert seal(sealer) != sealed, "a fresh key and nonce for every envelope"


def test_tampered_ciphertext_and_header_rejected(pair) -> None:  # type: ignore[no-untyped-def]
    sealer, opener, _ = pair
    sealed = bytearray(seal(sealer))
    sealed[-100] ^= 1
    with pytest.raises(SealError, match="tampered") as info:
        opener.open(bytes(sealed))
    assert not info.value.authentic
    relabelled = seal(sealer).replace(b'"seq":3', b'"seq":4')
    with pytest.raises(SealError, match="tampered"):
        opener.open(relabelled)


def test_truncated_rejected(pair) -> None:  # type: ignore[no-untyped-def]
    sealer, opener, _ = pair
    sealed = seal(sealer)
    for cut in (5, 40, len(sealed) - 10):
        with pytest.raises(SealError):
            opener.open(sealed[:cut])


def test_resigned_by_another_key_rejected(pair) -> None:  # type: ignore[no-untyped-def]
    _, opener, _ = pair
    # An attacker knows the central public key (it is public) and signs with a key of its own.
    forger = Sealer(Ed25519PrivateKey.generate(), opener._private.public_key())
    with pytest.raises(SealError, match="signed by key"):
        opener.open(seal(forger))
    # Even claiming the enrolled key's id in the header, the signature itself fails.
    honest_id = keys.key_id(opener.kiosk_keys["k1"])
    forger.signer_id = honest_id
    with pytest.raises(SealError, match="bad signature"):
        opener.open(seal(forger))


def test_unknown_kiosk_and_wrong_recipient(pair) -> None:  # type: ignore[no-untyped-def]
    sealer, opener, kiosk = pair
    with pytest.raises(SealError, match="not enrolled"):
        opener.open(seal(sealer, kiosk_id="k2"))
    other = Sealer(kiosk, X25519PrivateKey.generate().public_key())
    with pytest.raises(SealError, match="sealed to key"):
        opener.open(seal(other))


def test_plaintext_never_accepted() -> None:
    with pytest.raises(SealError, match="plaintext captures are never accepted"):
        read_header(INNER)


def test_key_files(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "kiosk.key"
    public = keys.create_signing_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert keys.load_signing_key(path).public_key() == public
    assert keys.fingerprint(public).startswith("SHA256:")
    with pytest.raises(keys.KeyFileError, match="refusing to overwrite"):
        keys.create_signing_key(path)
    central = tmp_path / "central.key"
    keys.create_encryption_key(central)
    with pytest.raises(keys.KeyFileError, match="not an Ed25519 private key"):
        keys.load_signing_key(central)
    with pytest.raises(keys.KeyFileError, match="not found; create it with `kiosk-agent keys init`"):
        keys.load_signing_key(tmp_path / "absent.key")
    with pytest.raises(keys.KeyFileError, match="not an X25519 public key"):
        keys.load_encryption_public(keys.public_path(path))
