"""The removable drive's layout and its signed index, shared by the kiosk (export,
import-receipts) and the central import (receiver/media_import.py).

Layout under the folder given on the command line (the drive's mount point, or a folder
on it)::

    kiosk-media/<kiosk_id>/items/<item id>.kas        one sealed envelope, exactly the queue's bytes
    kiosk-media/<kiosk_id>/index.kmi                  the signed index (written last)
    kiosk-media/<kiosk_id>/.exporting                 present while an export runs (or was cut)
    kiosk-media/<kiosk_id>/receipts-<export id>.kar   receipts frames, back to back (central side)

The index is a frame like the others (docs/protocol.md, "Frames"): magic ``KMI``, version,
header length, UTF-8 JSON header, then the kiosk key's Ed25519 signature of
``"kiosk-agent media index v1\\0" || header``. Its header names the export (``export_id``,
``nonce``) and lists each item's id, kind, seq, size and SHA-256. Nothing on the drive is
in clear: the items are sealed envelopes (encrypted to the central key, signed by the
kiosk's), and the index holds only what a sealed envelope's clear header shows anyway.

Everything read from a drive may have been written by an attacker: names come from ids that
pass ``is_item_id`` (never from a file name or an index field), files are opened without
following symlinks, must be regular files and are read only up to a limit.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from agent.capture.ids import is_item_id
from agent.config_types import topic_segment
from agent.transport.protocol import ProtocolError, pack_frame, unpack_frame

ROOT = "kiosk-media"
INDEX = "index.kmi"
ITEMS = "items"
MARKER = ".exporting"
ITEM_SUFFIX = ".kas"
INDEX_MAGIC = b"KMI"
INDEX_CONTEXT = b"kiosk-agent media index v1\x00"
SIGNATURE_BYTES = 64
#: A sealed item is at most 256 MiB (docs/protocol.md, "Frames and their limits").
MAX_ITEM_BYTES = 256 * 1024 * 1024
#: About 200 bytes an entry: a quarter of a million items, far more than a van's queue.
MAX_INDEX_BYTES = 64 * 1024 * 1024
#: A receipts file holds at most one receipt per item of the index (~300 bytes each).
MAX_RECEIPTS_FILE_BYTES = 128 * 1024 * 1024
KINDS = ("capture", "registration")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_NONCE = re.compile(r"[0-9a-f]{32}")


class MediaError(Exception):
    """Something on the drive that must not be used; the text says what and what to do."""


@dataclass(frozen=True)
class IndexEntry:
    id: str
    kind: str
    seq: int
    size: int
    sha256: str

    @property
    def file(self) -> str:
        """The item's path inside the kiosk's folder, made from the checked id alone."""
        return f"{ITEMS}/{self.id}{ITEM_SUFFIX}"


@dataclass(frozen=True)
class Index:
    kiosk_id: str
    export_id: str
    nonce: str
    created_at: str
    signer: str
    items: tuple[IndexEntry, ...]

    def header(self) -> bytes:
        return json.dumps({
            "v": 1, "type": "media-index", "kiosk_id": self.kiosk_id, "export_id": self.export_id,
            "nonce": self.nonce, "created_at": self.created_at, "signer": self.signer,
            "items": [vars(e) for e in self.items],
        }, separators=(",", ":"), sort_keys=True).encode()


def kiosk_dir(base: Path, kiosk_id: str) -> Path:
    return base / ROOT / topic_segment(kiosk_id)


def receipts_name(export_id: str) -> str:
    return f"receipts-{export_id}.kar"


def sign_index(index: Index, sign: Any) -> bytes:
    """``sign(context, message)``: the kiosk key's (agent.security.sealing.Sealer.sign)."""
    header = index.header()
    return pack_frame(INDEX_MAGIC, header, sign(INDEX_CONTEXT, header))


def verify_index(data: bytes, keys: Mapping[str, Ed25519PublicKey], kiosk_id: str) -> Index:
    """The index in ``data``, signed by ``keys[kiosk_id]`` (the kiosk's enrolled or own key)
    and naming that kiosk; MediaError says what is wrong with anything else."""
    try:
        header_bytes, signature = unpack_frame(data, INDEX_MAGIC, "media index", MAX_INDEX_BYTES)
    except ProtocolError as exc:
        raise MediaError(f"{INDEX} is not a media index: {exc}") from None
    key = keys.get(kiosk_id)
    if key is None:
        raise MediaError(f"kiosk {kiosk_id!r} is not enrolled here: its index cannot be verified "
                         "(enrol its key with `kiosk-agent keys enrol`)")
    if len(signature) != SIGNATURE_BYTES:
        raise MediaError(f"{INDEX} is truncated or has bytes after its signature")
    try:
        key.verify(signature, INDEX_CONTEXT + header_bytes)
    except InvalidSignature:
        raise MediaError(f"{INDEX} is not signed by kiosk {kiosk_id}'s key (altered, or written "
                         "by someone else)") from None
    return _parse_index(header_bytes, kiosk_id)


def _parse_index(raw: bytes, kiosk_id: str) -> Index:
    # Signed by the kiosk, yet still checked: a stolen kiosk key signs whatever its holder
    # writes, and these values name files and reach the receipts.
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MediaError(f"{INDEX} header is not JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("type") != "media-index":
        raise MediaError(f"{INDEX} is not a media index header")
    if doc.get("kiosk_id") != kiosk_id:
        raise MediaError(f"{INDEX} names kiosk {doc.get('kiosk_id')!r} but lies in {kiosk_id!r}'s folder")
    if not is_item_id(doc.get("export_id")) or not isinstance(doc.get("nonce"), str) \
            or not _NONCE.fullmatch(doc["nonce"]):
        raise MediaError(f"{INDEX} lacks a valid export id or nonce")
    items, seen = doc.get("items"), set()
    if not isinstance(items, list):
        raise MediaError(f"{INDEX} lacks its list of items")
    entries = []
    for value in items:
        if not (isinstance(value, dict) and is_item_id(value.get("id")) and value.get("kind") in KINDS
                and _whole(value.get("seq")) and _whole(value.get("size"))
                and 0 < value["size"] <= MAX_ITEM_BYTES and isinstance(value.get("sha256"), str)
                and _HEX64.fullmatch(value["sha256"])):
            raise MediaError(f"{INDEX} has a malformed entry: {str(value)[:200]}")
        if value["id"] in seen:
            raise MediaError(f"{INDEX} lists item {value['id']} twice")
        seen.add(value["id"])
        entries.append(IndexEntry(value["id"], value["kind"], value["seq"], value["size"], value["sha256"]))
    return Index(kiosk_id, doc["export_id"], doc["nonce"], str(doc.get("created_at", ""))[:40],
                 str(doc.get("signer", ""))[:16], tuple(entries))


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def read_file(path: Path, limit: int, what: str) -> bytes:
    """A regular file's bytes, at most ``limit``; never through a symlink (the last part of
    the name; the folders above are checked by ``check_folder``)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        raise MediaError(f"{what} {path} is missing") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise MediaError(f"{what} {path} is a symbolic link; refused (only regular files are read "
                             "from a drive)") from None
        raise MediaError(f"cannot open {what} {path}: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise MediaError(f"{what} {path} is not a regular file; refused")
        if info.st_size > limit:
            raise MediaError(f"{what} {path} is {info.st_size:,} bytes, over the limit of {limit:,}; refused")
        chunks, total = [], 0
        while True:  # read to EOF, but never past the limit (the file may grow meanwhile)
            chunk = os.read(fd, min(1 << 20, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > limit:
                raise MediaError(f"{what} {path} grew over the limit of {limit:,} bytes; refused")
        return b"".join(chunks)
    except OSError as exc:
        raise MediaError(f"cannot read {what} {path}: {exc.strerror} (a damaged drive?)") from None
    finally:
        os.close(fd)


def check_folder(path: Path, what: str) -> None:
    """``path`` must be a real folder, not a symlink to one (it could lead off the drive)."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        raise MediaError(f"{what} {path} is missing") from None
    if stat.S_ISLNK(info.st_mode):
        raise MediaError(f"{what} {path} is a symbolic link; refused")
    if not stat.S_ISDIR(info.st_mode):
        raise MediaError(f"{what} {path} is not a folder")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_atomically(path: Path, data: bytes) -> None:
    """Write ``path`` whole or not at all: a temporary file beside it, fsynced, renamed over
    it, the folder fsynced. A drive pulled meanwhile leaves at most a ``.tmp-`` file, which
    nothing reads and the next export removes. A symlink planted at ``path`` is replaced,
    never followed (rename replaces the link itself)."""
    tmp = path.with_name(f".tmp-{path.name}")
    try:
        tmp.unlink()
    except FileNotFoundError:
        pass
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_folder(path.parent)


def fsync_folder(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    except OSError as exc:  # vfat and some FUSE file systems refuse a folder's fsync
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)
