"""The queue's disk guard: the free-space watermark and a ballast file for a full disk.

A kiosk whose disk fills must still drain: deleting an acknowledged capture writes to the WAL
before it frees anything. The ballast (``queue.reserve_bytes``, real blocks) is given back
the moment a write fails for lack of space, so deletes can go on, and made again once there is
room beside the watermark. Apart from agent/transport/durable_queue.py because it is about the
file system, not the queue's rows.
"""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
from pathlib import Path

from agent.security.private_files import create_private

log = logging.getLogger("agent.transport.durable_queue")  # the name operators know from the log


class DiskReserve:
    def __init__(self, queue_path: Path, *, reserve_bytes: int, min_free_bytes: int) -> None:
        self.folder = queue_path.parent
        self.path = Path(f"{queue_path}.reserve")
        self.reserve_bytes = reserve_bytes
        self.min_free_bytes = min_free_bytes

    def shortfall(self, size: int) -> str | None:
        """Why ``size`` more bytes would take the disk below the watermark, or ``None``."""
        free = shutil.disk_usage(self.folder).free
        if free - size >= self.min_free_bytes:
            return None
        return (f"only {free:,} bytes free on the disk holding {self.folder} "
                f"(queue.min_free_bytes is {self.min_free_bytes:,}). Queued captures are kept; "
                "free disk space or reconnect the kiosk so they can be sent.")

    def has_room_for_checkpoint(self, db: sqlite3.Connection, path: Path) -> bool:
        """Whether the disk has room for a checkpoint of the queue ``db`` (file ``path``; the
        watermark aside: it is for what drains). A checkpoint grows the database file to the
        size the database has with the WAL's pages in it; one that cannot fails half-way,
        having used up the room."""
        pages = db.execute("PRAGMA page_count").fetchone()[0]
        page_size = db.execute("PRAGMA page_size").fetchone()[0]
        return shutil.disk_usage(self.folder).free >= pages * page_size - path.stat().st_size

    def release(self) -> None:
        try:
            self.path.unlink()
        except FileNotFoundError:
            return
        log.warning("disk full: released the queue's %d-byte reserve so acknowledged captures can "
                    "be deleted; free disk space", self.reserve_bytes)

    def refill(self) -> None:
        """Recreate the reserve once there is room for it beside the free-space watermark."""
        if not self.reserve_bytes or self.path.exists():
            return
        if shutil.disk_usage(self.folder).free < self.reserve_bytes + self.min_free_bytes:
            return
        tmp = self.path.with_suffix(".tmp")
        tmp.unlink(missing_ok=True)  # left by a crash
        try:
            with os.fdopen(create_private(tmp), "wb") as fh:
                os.posix_fallocate(fh.fileno(), 0, self.reserve_bytes)  # real blocks, not a sparse file
            os.replace(tmp, self.path)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            log.warning("cannot create the queue's disk reserve %s: %s", self.path, exc)
