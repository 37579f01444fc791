"""The update bundle: a tar of wheels, a hash lock and a manifest signed by a release key.

A bundle arrives from the network, so it is read as hostile: members must match an
allow-list of names (no paths, links or devices), sizes are capped, the manifest's signature
is checked against the release keys the kiosk trusts, and every file's SHA-256 is checked,
all before anything is written. Extraction hashes again as it writes, so a file swapped
between the check and the copy is caught too.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import platform
import re
import sys
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from agent.errors import PermanentError
from agent.security import keys

FORMAT = 1
MANIFEST, SIGNATURE, LOCK = "manifest.json", "manifest.sig", "requirements.lock"
#: Signed bytes start with this, so no other signature an Ed25519 key makes in this project
#: (commands, receipts, captures) can ever pass for a release signature, and the other way round.
DOMAIN = b"kiosk-agent release bundle v1\0"
PLATFORMS = ("x86_64", "aarch64")
WHEEL_NAME = re.compile(r"wheels/[A-Za-z0-9][A-Za-z0-9_.+-]{0,150}\.whl")
#: Versions become directory names: digits, dots and PEP 440 pre/post/dev tags only.
VERSION = re.compile(r"(\d{1,6})\.(\d{1,6})\.(\d{1,6})(?:(a|b|rc)(\d{1,4}))?(?:\.post(\d{1,4}))?"
                     r"(?:\.dev(\d{1,4}))?")
MAX_MEMBERS = 400
MAX_SMALL = 1024 * 1024  # manifest, signature, lock


class BundleError(PermanentError):
    """The bundle is refused: the message says why, for the operator."""


def version_key(version: str) -> tuple[int, ...]:
    """A sort key for the versions VERSION accepts (PEP 440 order for that subset)."""
    m = VERSION.fullmatch(version)
    if m is None:
        raise BundleError(f"not a release version: {version[:40]!r}")
    major, minor, patch, pre, pre_n, post, dev = m.groups()
    # Final releases sort after their pre-releases; dev releases before everything else.
    pre_rank = {"a": 0, "b": 1, "rc": 2, None: 3}[pre]
    return (int(major), int(minor), int(patch), pre_rank, int(pre_n or 0), int(post or -1),
            int(dev) if dev is not None else 1 << 30)


def check_version(version: str) -> str:
    version_key(version)
    return version


def machine() -> str:
    arch = platform.machine()
    return {"arm64": "aarch64", "amd64": "x86_64"}.get(arch.lower(), arch)


def python_tag() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


@dataclass(frozen=True)
class Manifest:
    version: str
    min_from: str
    platforms: tuple[str, ...]
    python: str
    files: dict[str, str]  # member name -> SHA-256 hex
    system_dependencies: bool = False  # dependencies come from the OS (no wheels but ours)
    reversible_migration: bool = False

    def to_bytes(self) -> bytes:
        return json.dumps({"format": FORMAT, "name": "kiosk-agent", "version": self.version,
                           "min_from": self.min_from, "platforms": list(self.platforms),
                           "python": self.python, "system_dependencies": self.system_dependencies,
                           "reversible_migration": self.reversible_migration, "files": self.files},
                          indent=1, sort_keys=True).encode()

    @classmethod
    def parse(cls, data: bytes) -> Manifest:
        try:
            raw = json.loads(data)
            if raw.get("format") != FORMAT or raw.get("name") != "kiosk-agent":
                raise BundleError(f"not a kiosk-agent bundle of format {FORMAT}")
            files = raw["files"]
            if not isinstance(files, dict) or not all(
                    isinstance(k, str) and isinstance(v, str) and re.fullmatch(r"[0-9a-f]{64}", v)
                    for k, v in files.items()):
                raise BundleError("manifest: files must map names to SHA-256 hex digests")
            manifest = cls(check_version(raw["version"]), check_version(raw["min_from"]),
                           tuple(str(p) for p in raw["platforms"]), str(raw["python"]), dict(files),
                           bool(raw.get("system_dependencies", False)),
                           bool(raw.get("reversible_migration", False)))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise BundleError(f"manifest unreadable: {exc}") from None
        for name in manifest.files:
            if name != LOCK and not WHEEL_NAME.fullmatch(name):
                raise BundleError(f"manifest names a file a bundle may not hold: {name[:80]!r}")
        if LOCK not in manifest.files:
            raise BundleError("manifest lists no requirements.lock")
        return manifest


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_bundle(out: Path, manifest: Manifest, sources: dict[str, Path], key: Ed25519PrivateKey) -> None:
    """Write the bundle: ``sources`` maps member names (as in the manifest) to files."""
    data = manifest.to_bytes()
    signature = {"key_id": keys.key_id(key.public_key()),
                 "signature": base64.b64encode(key.sign(DOMAIN + data)).decode()}
    tmp = out.with_name(out.name + ".tmp")
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, blob in ((MANIFEST, data), (SIGNATURE, json.dumps(signature).encode())):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(blob), 0o644
            tar.addfile(info, io.BytesIO(blob))
        for name in sorted(sources):
            info = tarfile.TarInfo(name)
            info.size, info.mode = sources[name].stat().st_size, 0o644
            with sources[name].open("rb") as f:
                tar.addfile(info, f)
    tmp.replace(out)


@dataclass(frozen=True)
class Verified:
    manifest: Manifest
    key_id: str
    path: Path


def _members(tar: tarfile.TarFile, max_bytes: int) -> dict[str, tarfile.TarInfo]:
    members: dict[str, tarfile.TarInfo] = {}
    total = 0
    for info in tar:
        if len(members) >= MAX_MEMBERS:
            raise BundleError(f"more than {MAX_MEMBERS} files")
        name = info.name
        if name not in (MANIFEST, SIGNATURE, LOCK) and not WHEEL_NAME.fullmatch(name):
            raise BundleError(f"a bundle may not hold {name[:80]!r}")
        if not info.isreg():
            raise BundleError(f"{name}: not a regular file (links and devices are refused)")
        if name in members:
            raise BundleError(f"{name} appears twice")
        total += info.size
        if total > max_bytes or (name in (MANIFEST, SIGNATURE, LOCK) and info.size > MAX_SMALL):
            raise BundleError(f"too large ({name}; at most {max_bytes} bytes in all)")
        members[name] = info
    return members


def _read(tar: tarfile.TarFile, info: tarfile.TarInfo) -> bytes:
    f = tar.extractfile(info)
    assert f is not None  # regular files only, checked by _members
    return f.read()


def _check_signature(manifest_bytes: bytes, sig_bytes: bytes,
                     trusted: Iterable[Ed25519PublicKey]) -> str:
    try:
        sig = json.loads(sig_bytes)
        signature = base64.b64decode(sig["signature"], validate=True)
        claimed = str(sig["key_id"])
    except (ValueError, KeyError, TypeError):
        raise BundleError("signature file unreadable") from None
    for key in trusted:
        if keys.key_id(key) != claimed:
            continue
        try:
            key.verify(signature, DOMAIN + manifest_bytes)
            return claimed
        except InvalidSignature:
            raise BundleError(f"bad signature by release key {claimed}: the manifest was altered") from None
    raise BundleError(f"signed by key {claimed[:32]!r}, which is not one of this kiosk's release keys "
                      "(update.release_keys)")


def verify(path: Path, trusted: list[Ed25519PublicKey], max_bytes: int) -> Verified:
    """Check the bundle at ``path`` without writing anything: names, sizes, signature, hashes."""
    if not trusted:
        raise BundleError("no release keys configured (update.release_keys): nothing can be trusted")
    try:
        if path.stat().st_size > max_bytes + MAX_MEMBERS * 2048:  # members, plus their headers
            raise BundleError(f"too large (at most {max_bytes} bytes)")
        with tarfile.open(path, "r:") as tar:
            members = _members(tar, max_bytes)
            for needed in (MANIFEST, SIGNATURE):
                if needed not in members:
                    raise BundleError(f"no {needed}")
            manifest_bytes = _read(tar, members[MANIFEST])
            key_id = _check_signature(manifest_bytes, _read(tar, members[SIGNATURE]), trusted)
            manifest = Manifest.parse(manifest_bytes)
            carried = set(members) - {MANIFEST, SIGNATURE}
            if carried != set(manifest.files):
                extra = sorted(carried ^ set(manifest.files))[:3]
                raise BundleError(f"files do not match the signed manifest: {', '.join(extra)}")
            for name, expected in manifest.files.items():
                f = tar.extractfile(members[name])
                assert f is not None
                digest = hashlib.sha256()
                for block in iter(lambda f=f: f.read(1 << 20), b""):
                    digest.update(block)
                if digest.hexdigest() != expected:
                    raise BundleError(f"{name}: SHA-256 differs from the signed manifest (tampered)")
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise BundleError(f"not a readable bundle: {exc}") from None
    return Verified(manifest, key_id, path)


def check_upgrade(manifest: Manifest, current: str | None, failed: Iterable[str]) -> None:
    """Refuse what this kiosk must not install, whatever the signature says."""
    if machine() not in manifest.platforms:
        raise BundleError(f"built for {', '.join(manifest.platforms)}, this kiosk is {machine()}")
    if manifest.python != python_tag():
        raise BundleError(f"built for Python {manifest.python}, this kiosk runs {python_tag()}")
    if manifest.version in set(failed):
        raise BundleError(f"{manifest.version} failed its health gate here before; not retried")
    if current is not None and VERSION.fullmatch(current):
        if version_key(current) < version_key(manifest.min_from):
            raise BundleError(f"{manifest.version} upgrades from {manifest.min_from} or newer; this "
                              f"kiosk runs {current}")
        if manifest.version == current:
            raise BundleError(f"{current} is already running")
        if version_key(manifest.version) < version_key(current):
            raise BundleError(f"{manifest.version} is older than the running {current}: downgrades are "
                              "refused (a failed release is rolled back by itself)")


def extract(verified: Verified, dest: Path) -> None:
    """Copy the verified members into ``dest``, hashing again while writing."""
    dest.mkdir(parents=True)
    (dest / "wheels").mkdir()
    with tarfile.open(verified.path, "r:") as tar:
        members = _members(tar, 1 << 62)
        for name, expected in verified.manifest.files.items():
            src = tar.extractfile(members[name])
            assert src is not None
            digest = hashlib.sha256()
            with (dest / name).open("xb") as out:
                for block in iter(lambda src=src: src.read(1 << 20), b""):
                    digest.update(block)
                    out.write(block)
            if digest.hexdigest() != expected:
                raise BundleError(f"{name} changed while it was copied")


def load_release_keys(paths: Iterable[Path]) -> list[Ed25519PublicKey]:
    return [keys.load_public(p, "update.release_keys", Ed25519PublicKey) for p in paths]  # type: ignore[misc]
