"""The writers the power-loss tests run on crashfs: the real queue, receiver store and session
store, driven as fast as they go. Each prints a line once a call has returned (and, for a
delete, also before it starts), and those lines are the ground truth of the tests:

    queue:    committed ID SHA256 | acking ID | acked ID
    receiver: stored ID SHA256
    chunks:   held KIOSK/ID/SHA256:INDEX CHUNK_SHA256 | finishing KEY | finished KEY RECEIPT_SHA256
    sessions: saved SESSION:ITEM CAPTURE_ID | erasing SESSION | erased SESSION

    python -m tests.support.crashfs.writers KIND DIR KEYS_DIR [MUTATION]

MUTATION breaks the code under test on purpose, in this process only, to show that the
harness catches it: ``sync-off`` (the queue or session store with synchronous=OFF) or
``no-dirsync`` (the receiver store without its directory fsync).
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.registration.store import ItemState, SessionStore
from agent.security.keys import load_encryption_public, load_signing_key, public_path
from agent.security.sealing import Sealer
from agent.transport.chunking import chunk_of
from agent.transport.durable_queue import DurableQueue
from agent.transport.wal_checkpoints import WalCheckpoints
from receiver import store as receiver_store
from receiver.chunks import ChunkAssembly
from receiver.store import CaptureStore
from tests.support.hostile import manifest_for, record

ITEMS = ("finger-1", "finger-2", "finger-6", "face")
#: The stores keep everything, and every image is checked in full: a pause between calls
#: keeps that work in proportion (the queue deletes as it goes and runs flat out).
PACE_S = 0.004


def say(*lines: str) -> None:
    sys.stdout.write("".join(f"{line}\n" for line in lines))
    sys.stdout.flush()


def sync_off(opener: Callable[..., sqlite3.Connection]) -> Callable[..., sqlite3.Connection]:
    """The mutation: the connection the product opened, switched to synchronous=OFF."""
    def open_unsafely(*args: Any) -> sqlite3.Connection:
        db = opener(*args)
        db.execute("PRAGMA synchronous=OFF")
        return db
    return open_unsafely


def without_dir_fsync() -> types.SimpleNamespace:
    """The mutation: receiver/store.py's ``os`` with an fsync that skips directories."""
    def fsync(fd: int) -> None:
        if not os.path.isdir(f"/proc/self/fd/{fd}"):
            os.fsync(fd)
    names = {name: getattr(os, name) for name in dir(os) if not name.startswith("__")}
    return types.SimpleNamespace(**{**names, "fsync": fsync})


def queue(directory: Path, keys: Path, mutation: str) -> None:
    if mutation == "sync-off":
        DurableQueue._connect = sync_off(DurableQueue._connect)  # type: ignore[method-assign]
        # and its second connection, the one that checkpoints the WAL
        opened = WalCheckpoints.__init__

        def checkpoints_unsafely(self: WalCheckpoints, path: Path) -> None:
            opened(self, path)
            self._db.execute("PRAGMA synchronous=OFF")
        WalCheckpoints.__init__ = checkpoints_unsafely  # type: ignore[method-assign]
    sealer = Sealer(load_signing_key(keys / "kiosk.key"),
                    load_encryption_public(public_path(keys / "central.key")))
    # A subfolder the queue creates itself: its own directory entry must survive too.
    q = DurableQueue(directory / "queue" / "queue.db", max_bytes=1 << 40, min_free_bytes=0,
                     erase_interval_s=0.2)
    n = 0
    while True:
        n += 1
        item_id = f"item-{os.getpid()}-{n}"
        image = os.urandom(20_000 + n % 5 * 10_000)
        sealed: list[bytes] = []

        def encode(seq: int, i: str = item_id, img: bytes = image, out: list[bytes] = sealed) -> bytes:
            out.append(sealer.seal(item_id=i, kiosk_id="k", seq=seq, kind="capture", inner=img))
            return out[-1]
        q.put(item_id, "capture", encode)
        say(f"committed {item_id} {hashlib.sha256(sealed[-1]).hexdigest()}")
        if n % 4 == 0:  # acknowledge the oldest few, as receipts would; a backlog of ~100 stays
            oldest = [item.id for item in q.next_batch(0, 4 if q.totals()[0] >= 100 else 3)]
            say(*(f"acking {i}" for i in oldest))  # from here on they may be gone at any moment
            q.ack(oldest)
            say(*(f"acked {i}" for i in oldest))


def receiver(directory: Path, keys: Path, mutation: str) -> None:
    if mutation == "no-dirsync":
        receiver_store.os = without_dir_fsync()  # type: ignore[assignment]
    # A folder per kiosk, each made on its first capture: new directories as well as files.
    store = CaptureStore(directory / "out")
    n = 0
    while True:
        n += 1
        rec = record(f"kiosk-{n % 3}", None, os.urandom(3000 + n % 7 * 1000))  # a fresh UUIDv7 id
        if store.store(rec.kiosk_id, rec) != "stored":
            raise SystemExit(f"{rec.id} was not stored")
        say(f"stored {rec.kiosk_id}/{rec.id} {rec.image_sha256}")
        time.sleep(2 * PACE_S)


def sessions(directory: Path, keys: Path, mutation: str) -> None:
    if mutation == "sync-off":
        SessionStore._open = sync_off(SessionStore._open)  # type: ignore[method-assign]
    store = SessionStore(directory / "state" / "registrations.db")
    n = 0
    while True:
        n += 1
        sid = f"reg-{os.getpid()}-{n}"
        store.create(sid, f"APP-{n}", "op-1", "ten-flat", True, list(ITEMS))
        for key in ITEMS:
            item = ItemState(key, "captured", capture_id=f"{sid}-{key}", quality=60, attempts=1)
            store.save_item(sid, item)
            say(f"saved {sid}:{key} {item.capture_id}")
            time.sleep(PACE_S)
        store.set_state(sid, "completed")
        if n % 3 == 0:  # the central side has it all: erased for good
            old = f"reg-{os.getpid()}-{n - 2}"
            say(f"erasing {old}")
            store.erase([old])
            say(f"erased {old}")


def chunks(directory: Path, keys: Path, mutation: str) -> None:
    """Chunked transfers as the receiver reassembles them: manifest, chunks, then (for every
    other one) the whole item assembled and the transfer finished with its receipt marker."""
    if mutation == "no-dirsync":  # chunks.py writes through receiver/store.py's write_durably
        receiver_store.os = without_dir_fsync()  # type: ignore[assignment]
    sealer = Sealer(load_signing_key(keys / "kiosk.key"),
                    load_encryption_public(public_path(keys / "central.key")))
    assembly = ChunkAssembly(directory / "out", quota_bytes=1 << 40)
    n = 0
    while True:
        n += 1
        kiosk_id = f"kiosk-{n % 2}"
        payload = os.urandom(12_000 + n % 4 * 4000)
        manifest = manifest_for(kiosk_id, payload, 4096)
        key = f"{kiosk_id}/{manifest.id}/{manifest.sha256}"
        transfer = assembly.begin(kiosk_id, manifest, manifest.encode(sealer))
        for index in range(manifest.count):
            chunk = chunk_of(manifest, payload, index)
            if assembly.put(transfer, chunk) != "stored":
                raise SystemExit(f"{key}:{index} was not stored")
            say(f"held {key}:{index} {hashlib.sha256(chunk.data).hexdigest()}")
            time.sleep(PACE_S)
        if n % 2 == 0:
            whole, bad = assembly.assemble(transfer)
            if whole is None or bad:
                raise SystemExit(f"{key} did not assemble: {bad}")
            receipt = os.urandom(64)
            say(f"finishing {key}")  # its chunks go with the folder from here on
            assembly.finish(transfer, receipt)
            say(f"finished {key} {hashlib.sha256(receipt).hexdigest()}")


WRITERS = {"queue": queue, "receiver": receiver, "chunks": chunks, "sessions": sessions}


if __name__ == "__main__":
    WRITERS[sys.argv[1]](Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4] if len(sys.argv) > 4 else "")
