"""The bundle as hostile input: every refusal happens in verify(), before anything is written."""

from __future__ import annotations

import base64
import io
import json
import tarfile
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.security import keys
from agent.update.bundle import (
    LOCK,
    MANIFEST,
    SIGNATURE,
    BundleError,
    Manifest,
    check_upgrade,
    extract,
    machine,
    python_tag,
    sha256_file,
    verify,
    version_key,
    write_bundle,
)
from agent.update.layout import Tree

WHEEL = "wheels/kiosk_agent-1.1.0-py3-none-any.whl"


def make(tmp_path: Path, key: Ed25519PrivateKey, *, version: str = "1.1.0", min_from: str = "1.0.0",
         platforms: tuple[str, ...] = ()) -> Path:
    wheel, lock = tmp_path / "w.whl", tmp_path / "lock"
    wheel.write_bytes(b"PK wheel bytes " * 100)
    lock.write_text("kiosk-agent==1.1.0 --hash=sha256:00\n")
    sources = {WHEEL: wheel, LOCK: lock}
    manifest = Manifest(version, min_from, platforms or (machine(),), python_tag(),
                        {n: sha256_file(p) for n, p in sources.items()})
    out = tmp_path / "b.bundle"
    write_bundle(out, manifest, sources, key)
    return out


def rewrite(bundle: Path, dest: Path, change) -> Path:  # type: ignore[no-untyped-def]
    """Copy the bundle's members through ``change(info, data) -> [(info, data), ...]``."""
    with tarfile.open(bundle) as src, tarfile.open(dest, "w", format=tarfile.PAX_FORMAT) as out:
        for info in src:
            for new_info, data in change(info, src.extractfile(info).read()):
                new_info.size = len(data) if new_info.isreg() else 0
                out.addfile(new_info, io.BytesIO(data) if new_info.isreg() else None)
    return dest


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def test_a_good_bundle_verifies_and_extracts(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    verified = verify(make(tmp_path, key), [key.public_key()], 10**6)
    assert verified.manifest.version == "1.1.0" and verified.key_id == keys.key_id(key.public_key())
    extract(verified, tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").rglob("*")) == sorted(["requirements.lock", "wheels",
                                                                          Path(WHEEL).name])


def test_unknown_key_no_keys_and_a_foreign_signature_are_refused(tmp_path: Path,
                                                                  key: Ed25519PrivateKey) -> None:
    bundle = make(tmp_path, key)
    with pytest.raises(BundleError, match="not one of this kiosk's release keys"):
        verify(bundle, [Ed25519PrivateKey.generate().public_key()], 10**6)
    with pytest.raises(BundleError, match="no release keys configured"):
        verify(bundle, [], 10**6)

    # The right key, but over the bare manifest (as a command or receipt signature would be):
    # the domain prefix makes it worthless as a release signature.
    with tarfile.open(bundle) as tar:
        manifest = tar.extractfile(MANIFEST).read()  # type: ignore[union-attr]

    def resign(info: tarfile.TarInfo, data: bytes):  # type: ignore[no-untyped-def]
        if info.name == SIGNATURE:
            data = json.dumps({"key_id": keys.key_id(key.public_key()),
                               "signature": base64.b64encode(key.sign(manifest)).decode()}).encode()
        return [(info, data)]
    with pytest.raises(BundleError, match="bad signature"):
        verify(rewrite(bundle, tmp_path / "r.bundle", resign), [key.public_key()], 10**6)


def test_tampered_files_and_manifests_are_refused(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    bundle = make(tmp_path, key)
    flip = rewrite(bundle, tmp_path / "flip.bundle",
                   lambda i, d: [(i, d[:-1] + b"X" if i.name == WHEEL else d)])
    with pytest.raises(BundleError, match="tampered"):
        verify(flip, [key.public_key()], 10**6)
    edit = rewrite(bundle, tmp_path / "edit.bundle",
                   lambda i, d: [(i, d.replace(b'"1.0.0"', b'"0.0.1"') if i.name == MANIFEST else d)])
    with pytest.raises(BundleError, match="bad signature"):
        verify(edit, [key.public_key()], 10**6)
    dropped = rewrite(bundle, tmp_path / "drop.bundle", lambda i, d: [] if i.name == WHEEL else [(i, d)])
    with pytest.raises(BundleError, match="do not match the signed manifest"):
        verify(dropped, [key.public_key()], 10**6)


@pytest.mark.parametrize("name, kind", [
    ("../../etc/cron.d/x", tarfile.REGTYPE), ("/etc/passwd", tarfile.REGTYPE),
    ("wheels/../../x.whl", tarfile.REGTYPE), ("wheels/a.whl", tarfile.SYMTYPE),
    ("wheels/b.whl", tarfile.LNKTYPE), ("wheels/c.whl", tarfile.CHRTYPE), ("extra.sh", tarfile.REGTYPE),
])
def test_names_links_and_devices_outside_the_allow_list_are_refused(tmp_path: Path, key: Ed25519PrivateKey,
                                                                   name: str, kind: bytes) -> None:
    def add(info: tarfile.TarInfo, data: bytes):  # type: ignore[no-untyped-def]
        if info.name != MANIFEST:
            return [(info, data)]
        evil = tarfile.TarInfo(name)
        evil.type, evil.linkname = kind, "/etc/shadow"
        return [(evil, b"x"), (info, data)]
    bundle = rewrite(make(tmp_path, key), tmp_path / "evil.bundle", add)
    with pytest.raises(BundleError, match="may not hold|not a regular file"):
        verify(bundle, [key.public_key()], 10**6)


def test_size_limit_and_garbage(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    with pytest.raises(BundleError, match="too large"):
        verify(make(tmp_path, key), [key.public_key()], 1000)
    junk = tmp_path / "junk.bundle"
    junk.write_bytes(b"\x1f\x8b not a tar" * 50)
    with pytest.raises(BundleError, match="not a readable bundle"):
        verify(junk, [key.public_key()], 10**6)


def test_versions_platforms_and_minimum(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    for bad in ("../1.0.0", "1.0", "1.0.0/..", "1.0.0+local", "", "1.0.0\n"):
        with pytest.raises(BundleError):
            version_key(bad)
        with pytest.raises(ValueError):
            Tree(tmp_path).release(bad)
    assert version_key("1.2.0rc1") < version_key("1.2.0") < version_key("1.2.0.post1") < version_key("1.10.0")
    manifest = verify(make(tmp_path, key, min_from="1.1.0"), [key.public_key()], 10**6).manifest
    with pytest.raises(BundleError, match="upgrades from 1.1.0 or newer"):
        check_upgrade(manifest, "1.0.5", {})
    with pytest.raises(BundleError, match="failed its health gate"):
        check_upgrade(manifest, "1.1.0rc1", {"1.1.0": "no broker"})
    check_upgrade(manifest, None, {})
    other = "aarch64" if machine() != "aarch64" else "x86_64"
    manifest = verify(make(tmp_path, key, platforms=(other,)), [key.public_key()], 10**6).manifest
    with pytest.raises(BundleError, match=f"built for {other}"):
        check_upgrade(manifest, None, {})
