"""Chunked transfers being reassembled: the chunks on disk, an index of them in memory.

Layout under ``<output_dir>/.chunks/<kiosk_id>/``: a folder ``<id>-<sha16>/`` per transfer
holding ``manifest`` (as received) and ``<index>.part`` per verified chunk, each written
durably (temporary file, fsync, rename: a chunk file is whole or absent), and, once the item
is stored, ``<id>-<sha16>.done`` holding its receipt, so a kiosk that missed the receipt gets
it again without sending a byte more. The disk is the truth: a receiver restart loses
nothing, and receivers sharing one output_dir (one share group) see each other's chunks.

The index (one Transfer per folder, rebuilt from disk at start) makes a chunk cost O(1):
which chunks are held is a bit per chunk, and a chunk's expected digest is read from the
manifest file (32 bytes at a known offset) instead of decoding the manifest or listing the
folder each time. A transfer is read from disk again when its manifest comes back (at most
every few seconds), which is how one receiver learns of chunks another one stored.

Storage is bounded per kiosk (``receiver.chunk_quota_bytes``): every file is charged at
whole 4 KiB blocks, so a flood of one-byte chunks costs what it costs the file system. A
manifest that could not complete within the quota is refused before anything is written;
a chunk over it is not stored. Nothing of another kiosk is ever touched to make room.
Reassembly streams: each chunk is checked, hashed and appended to one file in turn.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from agent.errors import TransientError
from agent.transport.chunking import DIGEST_BYTES, Chunk, Manifest
from agent.transport.protocol import ProtocolError
from receiver.paths import check_item_id, item_path, kiosk_folder
from receiver.store import make_dirs, write_durably

#: Unfinished transfers (a capture purged on its kiosk mid-transfer) and the markers of
#: finished ones are swept after this long.
CHUNK_STATE_MAX_AGE_S = 30 * 86400
#: Files are charged against the quota in whole blocks of this size.
BLOCK = 4096
#: A transfer already indexed is re-read from disk on its manifest at most this often.
REFRESH_INTERVAL_S = 5.0
ASSEMBLED = "assembled"


def charge(nbytes: int) -> int:
    """What a file of ``nbytes`` costs on disk: whole blocks, at least one."""
    return max(1, -(-nbytes // BLOCK)) * BLOCK


class OverQuota(TransientError):
    """A kiosk's held chunks would exceed its quota; passes as its transfers finish or expire."""

    def __init__(self, kiosk_id: str, held: int, needed: int, quota: int) -> None:
        super().__init__(f"kiosk {kiosk_id!r} holds {held:,} bytes of chunks; {needed:,} more would "
                         f"exceed receiver.chunk_quota_bytes ({quota:,})")
        self.kiosk_id = kiosk_id


@dataclass(eq=False)
class Transfer:
    """One transfer in the index: what the service needs of its manifest, and which chunks
    are on disk (a bit each). The digests stay in the manifest file."""

    kiosk_id: str
    id: str
    sha256: str
    size: int
    chunk_size: int
    count: int
    folder: Path
    #: Where the 32-byte digests start in the manifest file.
    digests_at: int
    have: bytearray = field(repr=False)
    held: int = 0
    #: Bytes charged to the kiosk for this transfer's files.
    charged: int = 0
    refreshed: float = 0.0
    #: The held indexes as last computed; None once a chunk is marked. A status is built from
    #: them, and must not cost O(count) per message when nothing changed (bad chunks).
    _indexes: frozenset[int] | None = field(default=None, repr=False)

    @classmethod
    def of(cls, kiosk_id: str, manifest: Manifest, raw_size: int, folder: Path) -> Transfer:
        return cls(kiosk_id, manifest.id, manifest.sha256, manifest.size, manifest.chunk_size,
                   manifest.count, folder, raw_size - manifest.count * DIGEST_BYTES,
                   bytearray(-(-manifest.count // 8)), charged=charge(raw_size),
                   refreshed=time.monotonic())

    def has(self, index: int) -> bool:
        return bool(self.have[index >> 3] & (1 << (index & 7)))

    def mark(self, index: int, held: bool) -> int:
        """Record chunk ``index`` as held or not; the change in charged bytes."""
        if self.has(index) == held:
            return 0
        self.have[index >> 3] ^= 1 << (index & 7)
        self._indexes = None
        cost = charge(self.length(index))
        self.held += 1 if held else -1
        self.charged += cost if held else -cost
        return cost if held else -cost

    def length(self, index: int) -> int:
        return min(self.chunk_size, self.size - index * self.chunk_size)

    def indexes(self) -> frozenset[int]:
        if self._indexes is None:
            # Byte by byte, skipping empty ones: a large transfer barely begun costs little.
            self._indexes = frozenset(at * 8 + bit for at, byte in enumerate(self.have) if byte
                                      for bit in range(8) if byte >> bit & 1)
        return self._indexes

    def missing_cost(self) -> int:
        return sum(charge(self.length(i)) for i in range(self.count) if not self.has(i))

    def digests(self) -> bytes:
        with open(self.folder / "manifest", "rb") as fh:
            fh.seek(self.digests_at)
            return fh.read(self.count * DIGEST_BYTES)

    def digest(self, index: int) -> bytes:
        fd = os.open(self.folder / "manifest", os.O_RDONLY)
        try:
            return os.pread(fd, DIGEST_BYTES, self.digests_at + index * DIGEST_BYTES)
        finally:
            os.close(fd)

    def accepts(self, chunk: Chunk) -> bool:
        """The chunk belongs to this transfer and its bytes hash to the manifest's digest."""
        return ((chunk.id, chunk.sha256, chunk.count) == (self.id, self.sha256, self.count)
                and 0 <= chunk.index < self.count and len(chunk.data) == self.length(chunk.index)
                and hashlib.sha256(chunk.data).digest() == self.digest(chunk.index))


class ChunkAssembly:
    def __init__(self, output_dir: str | os.PathLike[str], quota_bytes: int) -> None:
        self.root = Path(output_dir) / ".chunks"
        self.quota_bytes = quota_bytes
        self._transfers: dict[Path, Transfer] = {}
        self._held: dict[str, int] = {}

    # --- the index ---------------------------------------------------------------------------

    def held_bytes(self, kiosk_id: str) -> int:
        """Bytes of chunk files (and manifests) held for a kiosk, as charged to its quota."""
        return self._held.get(kiosk_id, 0)

    def _add(self, transfer: Transfer) -> Transfer:
        self._transfers[transfer.folder] = transfer
        self._held[transfer.kiosk_id] = self.held_bytes(transfer.kiosk_id) + transfer.charged
        return transfer

    def _drop(self, transfer: Transfer) -> None:
        if self._transfers.pop(transfer.folder, None) is transfer:
            self._held[transfer.kiosk_id] = self.held_bytes(transfer.kiosk_id) - transfer.charged

    def _load(self, kiosk_id: str, folder: Path) -> Transfer | None:
        """Index a transfer from its folder: the manifest once, the folder listed once."""
        try:
            raw = (folder / "manifest").read_bytes()
            manifest = Manifest.decode(raw)
            names = os.listdir(folder)
        except (OSError, ProtocolError):
            return None  # gone, or damaged on disk: swept in time, never used
        transfer = Transfer.of(kiosk_id, manifest, len(raw), folder)
        for name in names:
            stem = name.removesuffix(".part")
            if stem != name and stem.isdigit() and int(stem) < transfer.count:
                transfer.mark(int(stem), True)
        return transfer

    def rebuild(self) -> int:
        """Index every transfer on disk (at start); how many."""
        self._transfers.clear()
        self._held.clear()
        if not self.root.is_dir():
            return 0
        for kiosk in os.scandir(self.root):
            if not kiosk.is_dir():
                continue
            for entry in os.scandir(kiosk.path):
                if entry.is_dir() and (transfer := self._load(kiosk.name, Path(entry.path))):
                    self._add(transfer)
        return len(self._transfers)

    def _folder(self, kiosk_id: str, item_id: str, sha256: str, suffix: str = "") -> Path:
        # Both names checked (receiver/paths.py); sha256 is 64 hex digits (chunking.py).
        return item_path(kiosk_folder(self.root, kiosk_id), item_id, f"-{sha256[:16]}{suffix}")

    def lookup(self, kiosk_id: str, item_id: str, sha256: str, *, refresh: bool = False) -> Transfer | None:
        folder = self._folder(kiosk_id, item_id, sha256)
        transfer = self._transfers.get(folder)
        if transfer is not None and not (refresh and time.monotonic() - transfer.refreshed
                                          >= REFRESH_INTERVAL_S):
            return transfer
        loaded = self._load(kiosk_id, folder)
        if transfer is not None:
            self._drop(transfer)
        if loaded is not None and loaded.sha256 != sha256:
            return None
        return self._add(loaded) if loaded is not None else None

    # --- one transfer ------------------------------------------------------------------------

    def done_receipt(self, kiosk_id: str, item_id: str, sha256: str) -> bytes | None:
        try:
            return self._folder(kiosk_id, item_id, sha256, ".done").read_bytes()
        except FileNotFoundError:
            return None

    def begin(self, kiosk_id: str, manifest: Manifest, raw: bytes) -> Transfer:
        """The transfer for this manifest, indexed; a new one only if it fits the quota
        (OverQuota otherwise, with nothing written)."""
        check_item_id(manifest.id, "chunked item id")
        transfer = self.lookup(kiosk_id, manifest.id, manifest.sha256, refresh=True)
        if transfer is not None:
            return transfer
        new = Transfer.of(kiosk_id, manifest, len(raw), self._folder(kiosk_id, manifest.id, manifest.sha256))
        need = new.charged + new.missing_cost()
        if self.held_bytes(kiosk_id) + need > self.quota_bytes:
            raise OverQuota(kiosk_id, self.held_bytes(kiosk_id), need, self.quota_bytes)
        make_dirs(new.folder)
        if not write_durably(new.folder / "manifest", raw, replace=False):
            # Another receiver wrote it first: its file is the one chunks are checked against.
            if (theirs := self.lookup(kiosk_id, manifest.id, manifest.sha256)) is not None:
                return theirs
            # Unreadable (damaged, or an older format): the verified one in hand replaces it,
            # since chunks are checked against the file.
            write_durably(new.folder / "manifest", raw, replace=True)
        return self._add(new)

    def put(self, transfer: Transfer, chunk: Chunk) -> Literal["stored", "duplicate", "gone"]:
        """Store a chunk that ``transfer.accepts``; OverQuota when it would not fit."""
        if transfer.has(chunk.index):
            return "duplicate"
        cost = charge(len(chunk.data))
        if self.held_bytes(transfer.kiosk_id) + cost > self.quota_bytes:
            raise OverQuota(transfer.kiosk_id, self.held_bytes(transfer.kiosk_id), cost, self.quota_bytes)
        try:
            write_durably(transfer.folder / f"{chunk.index}.part", chunk.data, replace=True)
        except FileNotFoundError:
            self._drop(transfer)  # finished by another receiver, or swept
            return "gone"
        self._held[transfer.kiosk_id] += transfer.mark(chunk.index, True)
        return "stored"

    def assemble(self, transfer: Transfer) -> tuple[Path | None, set[int]]:
        """(the whole item in a file, set()) when every chunk is here and verifies; (None, the
        bad chunks, removed so they are asked for again); (None, set()) when the chunks verify
        but the whole does not match the manifest: the transfer is discarded.

        One chunk is in memory at a time: each is checked, hashed and appended in turn."""
        digests = transfer.digests()
        target = transfer.folder / ASSEMBLED
        whole, bad = hashlib.sha256(), set()
        with open(target, "wb") as out:
            for index in range(transfer.count):
                part = transfer.folder / f"{index}.part"
                try:
                    data = part.read_bytes()
                except FileNotFoundError:
                    data = b""
                expected = digests[index * DIGEST_BYTES:(index + 1) * DIGEST_BYTES]
                if len(data) != transfer.length(index) or hashlib.sha256(data).digest() != expected:
                    part.unlink(missing_ok=True)  # missing or damaged on disk: never used
                    self._held[transfer.kiosk_id] += transfer.mark(index, False)
                    bad.add(index)
                elif not bad:
                    whole.update(data)
                    out.write(data)
        if bad:
            target.unlink(missing_ok=True)
            return None, bad
        if whole.hexdigest() != transfer.sha256:
            # Every chunk matches its digest but the whole does not: the manifest itself is
            # inconsistent. Start over rather than hand on bytes that fail their hash.
            self.discard(transfer)
            return None, set()
        return target, set()

    def finish(self, transfer: Transfer, receipt: bytes) -> None:
        write_durably(transfer.folder.with_name(transfer.folder.name + ".done"), receipt, replace=True)
        self.discard(transfer)

    def discard(self, transfer: Transfer) -> None:
        self._drop(transfer)
        shutil.rmtree(transfer.folder, ignore_errors=True)

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
                    if (transfer := self._transfers.get(entry)) is not None:
                        self._drop(transfer)
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)
                removed += 1
            except OSError:
                continue
        return removed
