"""Where the reference receiver files captures: one image file and one JSON file each.

Layout: ``<output_dir>/<kiosk_id>/<capture id>.<png|jpg|wsq>`` and ``<capture id>.json``.
A capture is identified by (the kiosk whose key verified it, its id): the folder is the
verified kiosk's, never one a message names, and both names pass receiver/paths.py.

Nothing stored is ever replaced. Both files are created with ``link()``, which fails when
the name exists; the JSON file, written last, both publishes a capture and de-duplicates
it, even between several receivers sharing one directory. The same id again with the same
image is a duplicate (at-least-once delivery); with another image it is a conflict, which
the caller refuses: answering ``duplicate`` would make a kiosk delete a capture that was
never stored.

Chunked transfers in progress live under ``<output_dir>/.chunks/`` (receiver/chunks.py).
Finished registrations are linked into the outbox spool ``<output_dir>/.outbox/<kiosk_id>/``
(one ``<registration id>.an2`` each, exactly once): what a matching service picks up.
This is the file implementation of receiver/storage/base.Store.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.capture.record import CaptureRecord
from agent.security.private_files import fsync_dir
from receiver.paths import item_path, kiosk_folder
from receiver.storage.base import Outcome

EXTENSIONS = {"png": "png", "jpeg": "jpg", "wsq": "wsq", "jp2l": "jp2"}
#: The spool of finished transactions; a dot keeps it apart from every kiosk id's folder.
OUTBOX = ".outbox"

__all__ = ["EXTENSIONS", "OUTBOX", "CaptureStore", "Outcome", "make_dirs", "write_durably"]


class CaptureStore:
    #: Durable when store() returns: nothing to commit.
    batched = False

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        make_dirs(self.root)

    def folder(self, kiosk_id: str) -> Path:
        return kiosk_folder(self.root, kiosk_id)

    def paths(self, kiosk_id: str, item_id: str, image_format: str) -> tuple[Path, Path]:
        """(image, metadata) paths of a capture; UnsafeName for a hostile kiosk id or id."""
        folder = self.folder(kiosk_id)
        return (item_path(folder, item_id, f".{EXTENSIONS[image_format]}", "capture id"),
                item_path(folder, item_id, ".json", "capture id"))

    def store(self, kiosk_id: str, record: CaptureRecord) -> Outcome:
        """File ``record`` under the verified ``kiosk_id``; never replaces a stored file.

        Three fsyncs, not four: both files' data, then both names linked and the folder
        synced once, before the outcome (and so the receipt) is given. A capture counts as
        stored only when both names are there, so a file system that made the JSON's name
        durable before the image's cannot make a receipt out of a capture without an image:
        the image is linked again (tests/reliability: the receiver's power-cut harness)."""
        image_path, meta_path = self.paths(kiosk_id, record.id, record.image_format)
        stored = _stored_image_sha(meta_path)
        if stored is not None:
            if stored != record.image_sha256:
                return "conflict"  # also an unreadable JSON: a damaged record is never overwritten
            if image_path.exists():
                _sync_folder(image_path.parent)  # another receiver's names may not be durable yet
                return "duplicate"
            # The JSON's name survived a power cut and the image's did not: link it again.
        make_dirs(image_path.parent)
        meta = json.dumps(record.metadata(), indent=2, sort_keys=True).encode()
        image_tmp = _durable_temp(image_path.parent, record.image)
        meta_tmp = None
        try:
            meta_tmp = _durable_temp(image_path.parent, meta)
            if not _link(image_tmp, image_path) and _file_sha(image_path) != record.image_sha256:
                # An image without its JSON: a receiver stopped between the two, or another
                # one is storing this id now. The same bytes may be completed; other bytes
                # may not.
                return "conflict"
            created = _link(meta_tmp, meta_path)
        finally:
            for tmp in (image_tmp, meta_tmp):
                if tmp is not None:
                    os.unlink(tmp)
        _sync_folder(image_path.parent)  # both names survive a power cut before any receipt
        if created:
            return "stored"
        return "duplicate" if _stored_image_sha(meta_path) == record.image_sha256 else "conflict"

    def stage(self, kiosk_id: str, record: CaptureRecord, decided: Callable[[Outcome], None]) -> None:
        decided(self.store(kiosk_id, record))  # durable already: nothing to wait for

    def flush(self) -> None:
        pass  # nothing is ever staged

    def count(self) -> int:
        return sum(1 for _ in self.root.glob("*/*.json"))

    def load(self, kiosk_id: str, capture_id: str) -> tuple[dict[str, Any], bytes] | None:
        meta_path = item_path(self.folder(kiosk_id), capture_id, ".json", "capture id")
        if not meta_path.exists():
            return None
        meta = json.loads(meta_path.read_bytes())
        image = (meta_path.parent / f"{capture_id}.{EXTENSIONS[meta['image_format']]}").read_bytes()
        return meta, image

    def has(self, kiosk_id: str, capture_id: str) -> bool:
        return item_path(self.folder(kiosk_id), capture_id, ".json", "capture id").exists()

    def publish_registration(self, kiosk_id: str, registration_id: str, transaction: Path) -> bool:
        # link(): the file appears whole, and a second call (a retry, another receiver) fails
        # instead of handing the matching service the same registration twice.
        spool = kiosk_folder(self.root / OUTBOX, kiosk_id)
        make_dirs(spool)
        target = item_path(spool, registration_id, ".an2", "registration id")
        try:
            os.link(transaction, target)
        except FileExistsError:
            return False
        fsync_dir(spool)
        return True

    def security_event(self, kiosk_id: str, kind: str, reason: str) -> None:
        pass  # the file store keeps them in the log only (receiver/service.py logs each)

    def commit(self) -> None:
        pass

    def rollback(self) -> None:
        pass

    def close(self) -> None:
        pass


def _stored_image_sha(meta_path: Path) -> str | None:
    """The image hash a stored capture's JSON names; None when nothing is stored; "" when the
    JSON is unreadable (it then matches nothing: a damaged record is never overwritten)."""
    try:
        meta = json.loads(meta_path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return ""
    sha = meta.get("image_sha256") if isinstance(meta, dict) else None
    return sha if isinstance(sha, str) else ""


def _file_sha(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def make_dirs(path: Path) -> None:
    """``mkdir -p`` whose new folders survive a power cut: a new folder is named in its
    parent, and that entry is on the disk only once the parent is fsynced (else the folder,
    and every capture stored and acknowledged in it, could vanish)."""
    missing = []
    for folder in (path, *path.parents):
        if folder.is_dir():
            break
        missing.append(folder)
    for folder in reversed(missing):
        try:
            folder.mkdir()
        except FileExistsError:
            pass  # another receiver made it just now: sync it all the same, it may not have yet
        fsync_dir(folder.parent)


def _sync_folder(folder: Path) -> None:
    """fsync_dir through this module's ``os`` (the power-loss harness's mutation replaces it
    to prove it notices a store that skips these syncs)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _durable_temp(folder: Path, data: bytes) -> str:
    """``data`` in a new temporary file in ``folder``, fsynced; its path."""
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        os.unlink(tmp)
        raise
    return tmp


def _link(tmp: str, path: Path) -> bool:
    """Name ``tmp`` as ``path`` unless that exists (first one wins); True when it did."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        return False
    return True


def write_durably(path: Path, data: bytes, *, replace: bool) -> bool:
    """Write via a temporary file, fsync, then rename (replace) or link (first one wins)."""
    tmp = _durable_temp(path.parent, data)
    try:
        if replace:
            os.replace(tmp, path)
            created = True
        else:
            created = _link(tmp, path)
            os.unlink(tmp)
        _sync_folder(path.parent)  # the new directory entry must survive a power cut too
        return created
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
