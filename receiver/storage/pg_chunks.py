"""Chunked transfers in PostgreSQL (``chunk_transfers``, ``chunk_parts``): the chunks of one
transfer may land on every receiver of the share group, and still assemble.

The same interface as the file implementation (receiver/chunks.py ChunkAssembly), for the
receiver's service. The signed manifest is a row; each verified chunk is a row, written in
the receiver's open batch (so a chunk is held once its batch commits, like a capture); the
transfer's ``held`` counter is raised in the same batch by an UPDATE, which waits for any
other receiver's uncommitted raise of the same row and then counts on from it: exactly one
receiver sees ``held = count``, and that one reassembles. A receiver that gets a chunk of a
transfer it has not seen reads the manifest from the table, after taking the transfer's
advisory lock, which the receiver that took the manifest holds until its batch commits: so
a chunk right behind its manifest, at another receiver, waits for it instead of being
answered "unknown".

The quota per kiosk (``receiver.chunk_quota_bytes``) is charged for the whole transfer
when its manifest is accepted, in whole 4 KiB blocks as on disk, counted under a per-kiosk
lock: two receivers cannot both accept the manifest one over it. Reassembly streams the
chunks through a server-side cursor into a scratch file under ``output_dir`` (one chunk in
memory at a time), removed when the transfer ends; nothing there is state.
"""

from __future__ import annotations

import hashlib
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import psycopg

from agent.transport.chunking import DIGEST_BYTES, Chunk, Manifest
from agent.transport.protocol import ProtocolError
from receiver.chunks import ASSEMBLED, CHUNK_STATE_MAX_AGE_S, REFRESH_INTERVAL_S, OverQuota, Transfer
from receiver.paths import check_item_id, item_path, kiosk_folder
from receiver.storage.base import StoreUnavailable
from receiver.store import make_dirs, write_durably

if TYPE_CHECKING:
    from receiver.storage.postgres import PostgresStore

#: Advisory lock spaces (two-key form): one transfer; one kiosk's quota.
TRANSFER_LOCK = 0x6B74  # "kt"
QUOTA_LOCK = 0x6B71  # "kq"
#: Chunks fetched per round trip when reassembling.
FETCH_CHUNKS = 8


@dataclass(eq=False)
class StoredTransfer(Transfer):
    """A transfer whose manifest is a row: the digests are read from it in memory."""

    raw: bytes = field(default=b"", repr=False)

    def digests(self) -> bytes:
        return self.raw[self.digests_at:self.digests_at + self.count * DIGEST_BYTES]

    def digest(self, index: int) -> bytes:
        at = self.digests_at + index * DIGEST_BYTES
        return self.raw[at:at + DIGEST_BYTES]


class PostgresChunks:
    def __init__(self, store: PostgresStore, quota_bytes: int) -> None:
        self.store = store
        # Scratch only (a transfer being checked), this receiver's own: several may share
        # output_dir, and each clears its scratch when it starts.
        self.root = store.root / f".chunk-scratch-{hashlib.sha256(store.name.encode()).hexdigest()[:12]}"
        self.quota_bytes = quota_bytes
        self._transfers: dict[tuple[str, str, str], StoredTransfer] = {}
        self._rollbacks = store.rollbacks

    def _fresh(self) -> None:
        """Forget what the index says once a batch was rolled back: the chunks it marked as
        held were never committed (a deadlock broken by the server, a lost connection), and
        would otherwise be answered "duplicate" for ever while the table lacks them."""
        if self.store.rollbacks != self._rollbacks:
            self._rollbacks = self.store.rollbacks
            self._transfers.clear()

    def _run(self, query: str, params: tuple[object, ...] = ()) -> psycopg.Cursor:
        return self.store._run(query, params)

    def _scratch(self, kiosk_id: str, item_id: str, sha256: str) -> Path:
        # Both names checked (receiver/paths.py); sha256 is 64 hex digits (chunking.py).
        return item_path(kiosk_folder(self.root, kiosk_id), item_id, f"-{sha256[:16]}")

    # --- the index ---------------------------------------------------------------------------

    def held_bytes(self, kiosk_id: str) -> int:
        """Bytes charged to the kiosk's quota by its open transfers, all receivers together."""
        row = self._run("SELECT coalesce(sum(charged), 0) FROM chunk_transfers WHERE kiosk_id = %s"
                        " AND done_at IS NULL", (kiosk_id,)).fetchone()
        return int(row[0]) if row else 0

    def rebuild(self) -> int:
        """Nothing to read at start (the table is the index); the open transfers, counted."""
        self._transfers.clear()
        row = self._run("SELECT count(*) FROM chunk_transfers WHERE done_at IS NULL").fetchone()
        return int(row[0]) if row else 0

    def _load(self, kiosk_id: str, item_id: str, sha256: str) -> StoredTransfer | None:
        self._run("SELECT pg_advisory_xact_lock(%s, hashtext(%s))",
                  (TRANSFER_LOCK, f"{kiosk_id}/{item_id}/{sha256}"))
        row = self._run("SELECT manifest FROM chunk_transfers WHERE kiosk_id = %s AND item_id = %s"
                        " AND sha256 = %s AND done_at IS NULL", (kiosk_id, item_id, sha256)).fetchone()
        if row is None:
            return None
        raw = bytes(row[0])
        try:
            manifest = Manifest.decode(raw)
        except ProtocolError:
            return None  # written by a verified manifest: never happens unless the row was edited
        transfer = self._transfer(kiosk_id, manifest, raw)
        held = self._run("SELECT index FROM chunk_parts WHERE kiosk_id = %s AND item_id = %s"
                         " AND sha256 = %s", (kiosk_id, item_id, sha256)).fetchall()
        for (index,) in held:
            if 0 <= index < transfer.count:
                transfer.mark(index, True)
        self._transfers[(kiosk_id, item_id, sha256)] = transfer
        return transfer

    def _transfer(self, kiosk_id: str, manifest: Manifest, raw: bytes) -> StoredTransfer:
        scratch = self._scratch(kiosk_id, manifest.id, manifest.sha256)
        base = Transfer.of(kiosk_id, manifest, len(raw), scratch)
        return StoredTransfer(base.kiosk_id, base.id, base.sha256, base.size, base.chunk_size, base.count,
                              base.folder, base.digests_at, base.have, charged=base.charged,
                              refreshed=time.monotonic(), raw=raw)

    def lookup(self, kiosk_id: str, item_id: str, sha256: str, *,
               refresh: bool = False) -> StoredTransfer | None:
        self._scratch(kiosk_id, item_id, sha256)  # UnsafeName for hostile names, before SQL
        self._fresh()
        transfer = self._transfers.get((kiosk_id, item_id, sha256))
        if transfer is not None and not (refresh and time.monotonic() - transfer.refreshed
                                          >= REFRESH_INTERVAL_S):
            return transfer
        self._transfers.pop((kiosk_id, item_id, sha256), None)
        return self._load(kiosk_id, item_id, sha256)

    # --- one transfer ------------------------------------------------------------------------

    def done_receipt(self, kiosk_id: str, item_id: str, sha256: str) -> bytes | None:
        self._scratch(kiosk_id, item_id, sha256)
        row = self._run("SELECT receipt FROM chunk_transfers WHERE kiosk_id = %s AND item_id = %s"
                        " AND sha256 = %s AND receipt IS NOT NULL", (kiosk_id, item_id, sha256)).fetchone()
        return None if row is None else bytes(row[0])

    def begin(self, kiosk_id: str, manifest: Manifest, raw: bytes) -> StoredTransfer:
        """The transfer for this manifest; a new one only if the kiosk's quota has room for
        all of it (OverQuota otherwise, with nothing written)."""
        check_item_id(manifest.id, "chunked item id")
        transfer = self.lookup(kiosk_id, manifest.id, manifest.sha256, refresh=True)
        if transfer is not None:
            return transfer
        new = self._transfer(kiosk_id, manifest, raw)
        need = new.charged + new.missing_cost()
        self._run("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (QUOTA_LOCK, kiosk_id))
        held = self.held_bytes(kiosk_id)
        if held + need > self.quota_bytes:
            raise OverQuota(kiosk_id, held, need, self.quota_bytes)
        added = self._run(
            "INSERT INTO chunk_transfers (kiosk_id, item_id, sha256, manifest, size, chunk_size, count,"
            " charged, started_by) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
            " ON CONFLICT DO NOTHING RETURNING 1",
            (kiosk_id, manifest.id, manifest.sha256, raw, manifest.size, manifest.chunk_size, manifest.count,
             need, self.store.name)).fetchone()
        if added is None:
            # Finished and kept for its receipt (done_at set): a kiosk announcing it again
            # gets the receipt (done_receipt), never a second transfer under the same key.
            theirs = self.lookup(kiosk_id, manifest.id, manifest.sha256)
            if theirs is None:
                raise StoreUnavailable(f"transfer {manifest.id} from kiosk {kiosk_id} is finished; its "
                                       "receipt is sent on its next manifest")
            return theirs
        self._transfers[(kiosk_id, manifest.id, manifest.sha256)] = new
        return new

    def put(self, transfer: Transfer, chunk: Chunk) -> Literal["stored", "duplicate", "gone"]:
        """Store a chunk that ``transfer.accepts``: its row, and the transfer's count raised."""
        self._fresh()
        if transfer.has(chunk.index) and transfer is self._transfers.get(
                (transfer.kiosk_id, transfer.id, transfer.sha256)):
            return "duplicate"
        key = (transfer.kiosk_id, transfer.id, transfer.sha256)
        # The count first: it takes the transfer's row lock (waiting for another receiver's
        # uncommitted chunk), and finds a transfer finished or swept meanwhile.
        row = self._run("UPDATE chunk_transfers SET held = held + 1, updated_at = now()"
                        " WHERE kiosk_id = %s AND item_id = %s AND sha256 = %s AND done_at IS NULL"
                        " AND held < count"
                        " RETURNING held", key).fetchone()
        if row is None:
            self._transfers.pop(key, None)
            return "gone"
        added = self._run("INSERT INTO chunk_parts (kiosk_id, item_id, sha256, index, data, stored_by)"
                          " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING RETURNING 1",
                          (*key, chunk.index, chunk.data, self.store.name)).fetchone()
        if added is None:  # another receiver stored this chunk: give the count back
            row = self._run("UPDATE chunk_transfers SET held = held - 1 WHERE kiosk_id = %s"
                            " AND item_id = %s AND sha256 = %s RETURNING held", key).fetchone()
            transfer.mark(chunk.index, True)
            transfer.held = int(row[0]) if row else transfer.held
            return "duplicate"
        transfer.mark(chunk.index, True)
        transfer.held = int(row[0])  # all receivers' chunks: count reached means complete
        return "stored"

    def assemble(self, transfer: Transfer) -> tuple[Path | None, set[int]]:
        """As ChunkAssembly.assemble: (the whole item in a scratch file, set()); (None, the bad
        or missing chunks, removed so they are asked for again); (None, set()) when the whole
        does not match the manifest: the transfer is discarded."""
        assert isinstance(transfer, StoredTransfer)
        key = (transfer.kiosk_id, transfer.id, transfer.sha256)
        make_dirs(transfer.folder)
        # The manifest beside it, as a file transfer has it (receiver/receipting.py reads the
        # nonce from there when another receiver took the latest manifest).
        write_durably(transfer.folder / "manifest", transfer.raw, replace=True)
        target = transfer.folder / ASSEMBLED
        whole, bad, expect = hashlib.sha256(), set(), 0
        try:
            cursor_name = f"assemble_{transfer.id[:8]}"
            with self.store.conn.cursor(name=cursor_name) as cursor, open(target, "wb") as out:
                cursor.itersize = FETCH_CHUNKS
                cursor.execute("SELECT index, data FROM chunk_parts WHERE kiosk_id = %s AND item_id = %s"
                               " AND sha256 = %s ORDER BY index", key)
                for index, data in cursor:
                    bad.update(range(expect, min(index, transfer.count)))  # absent rows
                    expect = index + 1
                    if not 0 <= index < transfer.count:
                        continue
                    data = bytes(data)
                    if (len(data) != transfer.length(index)
                            or hashlib.sha256(data).digest() != transfer.digest(index)):
                        bad.add(index)
                    elif not bad:
                        whole.update(data)
                        out.write(data)
                bad.update(range(expect, transfer.count))
        except psycopg.Error as exc:
            self.store.rollback()
            target.unlink(missing_ok=True)
            raise StoreUnavailable(f"capture database: {type(exc).__name__}: {exc}") from None
        if bad:
            target.unlink(missing_ok=True)
            self._run("DELETE FROM chunk_parts WHERE kiosk_id = %s AND item_id = %s AND sha256 = %s"
                      " AND index = ANY(%s)", (*key, sorted(bad)))
            row = self._run("UPDATE chunk_transfers t SET held = (SELECT count(*) FROM chunk_parts p"
                            " WHERE (p.kiosk_id, p.item_id, p.sha256) = (t.kiosk_id, t.item_id, t.sha256))"
                            " WHERE kiosk_id = %s AND item_id = %s AND sha256 = %s RETURNING held",
                            key).fetchone()
            for index in bad:
                transfer.mark(index, False)
            transfer.held = int(row[0]) if row else 0
            return None, bad
        if whole.hexdigest() != transfer.sha256:
            self.discard(transfer)
            return None, set()
        return target, set()

    def finish(self, transfer: Transfer, receipt: bytes) -> None:
        """Keep the receipt (for a kiosk that missed it) and drop the chunks."""
        key = (transfer.kiosk_id, transfer.id, transfer.sha256)
        self._run("DELETE FROM chunk_parts WHERE kiosk_id = %s AND item_id = %s AND sha256 = %s", key)
        self._run("UPDATE chunk_transfers SET receipt = %s, done_at = now(), updated_at = now(), held = 0,"
                  " charged = 0 WHERE kiosk_id = %s AND item_id = %s AND sha256 = %s", (receipt, *key))
        self._forget(transfer)

    def discard(self, transfer: Transfer) -> None:
        self._run("DELETE FROM chunk_transfers WHERE kiosk_id = %s AND item_id = %s AND sha256 = %s",
                  (transfer.kiosk_id, transfer.id, transfer.sha256))
        self._forget(transfer)

    def _forget(self, transfer: Transfer) -> None:
        self._transfers.pop((transfer.kiosk_id, transfer.id, transfer.sha256), None)
        shutil.rmtree(transfer.folder, ignore_errors=True)

    def sweep(self, max_age_s: float = CHUNK_STATE_MAX_AGE_S) -> int:
        """Remove transfers untouched for ``max_age_s`` (finished ones with their receipts)."""
        shutil.rmtree(self.root, ignore_errors=True)  # scratch of a receiver stopped mid-check
        rows = self._run("DELETE FROM chunk_transfers WHERE updated_at < now() - make_interval(secs => %s)"
                         " RETURNING 1", (max_age_s,)).fetchall()
        self._transfers.clear()
        return len(rows)
