"""Checkpoints of the durable queue's WAL, off the commit path.

SQLite checkpoints a WAL from the connection that happens to commit once the WAL passes 1,000
pages (4 MB): with 100 KB captures, every fortieth capture waited while 4 MB were copied into
the database and the database fsynced (commit p99 several times p50; a capture to receipt
p99 of 35 to 45 ms in `make bench` against a p50 of 9 to 12). The erasure checkpoint
(``DurableQueue.erase_if_due``) held the queue's lock for all of its copy, so a capture
arriving then waited too.

Here the queue's own connection never checkpoints (``wal_autocheckpoint=0``); a second
connection does. After every 1 MB committed a PASSIVE checkpoint runs on a short-lived
thread (``queue-wal``, one at a time; it ends with the checkpoint, so a queue never closed
leaves no thread behind): it copies what it can without blocking anyone, and a commit
meanwhile simply appends to the WAL. But the WAL file is written from its start again only
by a writer that begins after a checkpoint that left nothing behind, which a checkpoint
running beside a busy writer cannot promise. So every 16 MB the committing thread itself
finishes the job, as SQLite would have every 4 MB: with the bulk already copied by the
thread, little is left for it. The erasure checkpoint runs PASSIVE first, so the TRUNCATE
after it, which does hold new writers back, has little left to do either.

A checkpoint that fails (I/O error, disk full) loses nothing: the frames stay in the WAL,
which SQLite reads as part of the database, and the next checkpoint tries again.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from pathlib import Path

log = logging.getLogger(__name__)

#: Committed bytes after which the thread checkpoints: often, so that what the committing
#: thread finishes itself is small (SQLite's own: every 1,000 4 KB pages, inline).
CHECKPOINT_BYTES = 1024 * 1024
#: Committed bytes after which the committing thread finishes a checkpoint itself.
BEHIND_BYTES = 16 * CHECKPOINT_BYTES


class WalCheckpoints:
    def __init__(self, path: Path) -> None:
        # A TRUNCATE waits for readers to leave the WAL and holds new commits back meanwhile:
        # at most 0.1 s, then the erasure is tried again at its next turn.
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=0.1)
        self._db.execute("PRAGMA synchronous=FULL")
        self._lock = threading.Lock()
        # Bytes committed since the last checkpoint started, and since the WAL was last
        # restarted for sure; approximate (no lock), and that is enough for when to start one.
        self._written = self._behind = 0
        self._closing = False
        self._thread: threading.Thread | None = None

    def written(self, size: int) -> None:
        """``size`` bytes were committed (by the queue, under its lock): past CHECKPOINT_BYTES a
        PASSIVE checkpoint starts, unless one is still running."""
        self._written += size
        self._behind += size
        if self._closing:
            return
        if self._behind >= BEHIND_BYTES:
            # The caller holds the queue's lock: nothing is appended meanwhile, so a complete
            # checkpoint lets its next commit start the WAL file over.
            if self.checkpoint("PASSIVE"):
                self._behind = 0
        elif self._written >= CHECKPOINT_BYTES and (self._thread is None or not self._thread.is_alive()):
            self._written = 0
            self._thread = threading.Thread(target=self.checkpoint, args=("PASSIVE",), name="queue-wal",
                                            daemon=True)
            self._thread.start()

    def checkpoint(self, mode: str) -> bool:
        """One checkpoint ("PASSIVE" or "TRUNCATE"); True when it left nothing behind, False
        when readers or a writer kept it from finishing (or it failed: logged), so it is
        tried again later."""
        assert mode in ("PASSIVE", "TRUNCATE")
        with self._lock:
            if self._closing and mode == "PASSIVE":
                return False
            self._written = 0
            try:
                busy, frames, copied = self._db.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
            except sqlite3.Error as exc:
                log.warning("queue WAL checkpoint (%s) failed, it will be tried again: %s", mode, exc)
                return False
            complete = not busy and frames == copied
            if complete and mode == "TRUNCATE":
                self._behind = 0  # the WAL file is empty
        return complete

    def close(self) -> None:
        self._closing = True
        if self._thread is not None:
            self._thread.join()
        with self._lock:
            self._db.close()
