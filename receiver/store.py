"""Where the reference receiver files captures: one image file and one JSON file each.

Layout: ``<output_dir>/<kiosk_id>/<capture id>.<png|jpeg|wsq>`` and ``<capture id>.json``.
The JSON file is written last and created with ``link()``, which fails when the file
exists: that single atomic step both publishes a capture and de-duplicates it, even
between several receivers sharing one directory.

Chunked transfers in progress live under ``<output_dir>/.chunks/`` (ChunkAssembly), so a
receiver restart keeps every chunk already received.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Literal

from agent.capture.record import CaptureRecord
from agent.transport.chunking import Chunk, Manifest
from agent.transport.protocol import ProtocolError

EXTENSIONS = {"png": "png", "jpeg": "jpg", "wsq": "wsq"}


class CaptureStore:
    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def paths(self, record: CaptureRecord) -> tuple[Path, Path]:
        folder = self.root / record.kiosk_id
        return (folder / f"{record.id}.{EXTENSIONS[record.image_format]}",
                folder / f"{record.id}.json")

    def contains(self, record: CaptureRecord) -> bool:
        return self.paths(record)[1].exists()

    def store(self, record: CaptureRecord) -> Literal["stored", "duplicate"]:
        image_path, meta_path = self.paths(record)
        if meta_path.exists():
            return "duplicate"
        image_path.parent.mkdir(parents=True, exist_ok=True)
        write_durably(image_path, record.image, replace=True)
        meta = json.dumps(record.metadata(), indent=2, sort_keys=True).encode()
        return "stored" if write_durably(meta_path, meta, replace=False) else "duplicate"

    def count(self) -> int:
        return sum(1 for _ in self.root.glob("*/*.json"))


_KIOSK_DIR = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
#: Unfinished transfers (a capture purged on its kiosk mid-transfer) and the markers of
#: finished ones are swept after this long.
CHUNK_STATE_MAX_AGE_S = 30 * 86400


class ChunkAssembly:
    """Chunked transfers being reassembled, on disk, so a receiver restart loses nothing.

    Layout under ``<output_dir>/.chunks/<kiosk_id>/``: a folder ``<id>-<sha16>/`` per
    transfer holding ``manifest`` (as received) and ``<index>.part`` per verified chunk, each
    written durably (temporary file, fsync, rename: a chunk file is whole or absent), and,
    once the item is stored, ``<id>-<sha16>.done`` holding its receipt, so a kiosk that
    missed the receipt gets it again without sending a byte more. Nothing is cached in
    memory: receivers sharing one output_dir (one share group) see each other's chunks.
    """

    def __init__(self, output_dir: str | os.PathLike[str]) -> None:
        self.root = Path(output_dir) / ".chunks"

    def _folder(self, kiosk_id: str) -> Path:
        # The kiosk id comes from the topic, before anything is authenticated: it must be a
        # plain name (no "..", no separators) to become a directory.
        if not _KIOSK_DIR.fullmatch(kiosk_id):
            raise ProtocolError(f"kiosk id {kiosk_id!r} cannot name a folder")
        return self.root / kiosk_id

    def _dir(self, kiosk_id: str, item_id: str, sha256: str) -> Path:
        return self._folder(kiosk_id) / f"{item_id}-{sha256[:16]}"

    def done_receipt(self, kiosk_id: str, item_id: str, sha256: str) -> bytes | None:
        try:
            return (self._folder(kiosk_id) / f"{item_id}-{sha256[:16]}.done").read_bytes()
        except FileNotFoundError:
            return None

    def begin(self, kiosk_id: str, manifest: Manifest, raw: bytes) -> None:
        folder = self._dir(kiosk_id, manifest.id, manifest.sha256)
        folder.mkdir(parents=True, exist_ok=True)
        if not (folder / "manifest").exists():
            write_durably(folder / "manifest", raw, replace=True)

    def manifest(self, kiosk_id: str, item_id: str, sha256: str) -> Manifest | None:
        try:
            raw = (self._dir(kiosk_id, item_id, sha256) / "manifest").read_bytes()
        except FileNotFoundError:
            return None
        manifest = Manifest.decode(raw)
        return manifest if manifest.sha256 == sha256 else None

    def held(self, kiosk_id: str, manifest: Manifest) -> set[int]:
        folder = self._dir(kiosk_id, manifest.id, manifest.sha256)
        try:
            names = os.listdir(folder)
        except FileNotFoundError:
            return set()
        return {int(n[:-5]) for n in names if n.endswith(".part") and n[:-5].isdigit()
                and int(n[:-5]) < manifest.count}

    def put(self, kiosk_id: str, manifest: Manifest, chunk: Chunk) -> None:
        """Store a chunk the caller has verified against the manifest (chunking.chunk_ok)."""
        folder = self._dir(kiosk_id, manifest.id, manifest.sha256)
        write_durably(folder / f"{chunk.index}.part", chunk.data, replace=True)

    def assemble(self, kiosk_id: str, manifest: Manifest) -> tuple[bytes | None, set[int]]:
        """(the whole item, set()) when every chunk is here and verifies; (None, the bad
        chunks, removed so they are asked for again); (None, set()) when the chunks verify
        but the whole does not match the manifest: the transfer is discarded."""
        folder = self._dir(kiosk_id, manifest.id, manifest.sha256)
        parts, bad = [], set()
        for index in range(manifest.count):
            try:
                data = (folder / f"{index}.part").read_bytes()
            except FileNotFoundError:
                bad.add(index)
                continue
            start, end = manifest.chunk_range(index)
            if len(data) != end - start or hashlib.sha256(data).digest() != manifest.digests[index]:
                (folder / f"{index}.part").unlink(missing_ok=True)  # damaged on disk: never used
                bad.add(index)
            parts.append(data)
        if bad:
            return None, bad
        whole = b"".join(parts)
        if hashlib.sha256(whole).hexdigest() != manifest.sha256:
            # Every chunk matches its digest but the whole does not: the manifest itself is
            # inconsistent. Start over rather than hand on bytes that fail their hash.
            self.discard(kiosk_id, manifest)
            return None, set()
        return whole, set()

    def finish(self, kiosk_id: str, manifest: Manifest, receipt: bytes) -> None:
        folder = self._dir(kiosk_id, manifest.id, manifest.sha256)
        write_durably(folder.with_name(folder.name + ".done"), receipt, replace=True)
        shutil.rmtree(folder, ignore_errors=True)

    def discard(self, kiosk_id: str, manifest: Manifest) -> None:
        shutil.rmtree(self._dir(kiosk_id, manifest.id, manifest.sha256), ignore_errors=True)

    def sweep(self, max_age_s: float = CHUNK_STATE_MAX_AGE_S) -> int:
        """Remove transfers untouched for ``max_age_s`` and old .done markers; how many."""
        if not self.root.exists():
            return 0
        cutoff = time.time() - max_age_s
        removed = 0
        for entry in self.root.glob("*/*"):
            try:
                if entry.stat().st_mtime >= cutoff:
                    continue
                if entry.is_dir():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)
                removed += 1
            except OSError:
                continue
        return removed


def write_durably(path: Path, data: bytes, *, replace: bool) -> bool:
    """Write via a temporary file, fsync, then rename (replace) or link (first one wins)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if replace:
            os.replace(tmp, path)
            created = True
        else:
            try:
                os.link(tmp, path)
                created = True
            except FileExistsError:
                created = False
            os.unlink(tmp)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # the new directory entry must survive a power cut too
        finally:
            os.close(dir_fd)
        return created
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
