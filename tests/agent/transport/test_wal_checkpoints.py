"""The queue's WAL is checkpointed off the commit path (agent/transport/wal_checkpoints.py)."""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

from agent.transport.durable_queue import DurableQueue
from agent.transport.wal_checkpoints import BEHIND_BYTES
from tests.support.waiting import wait_until

CAPTURE = 100_000


def put_many(q: DurableQueue, count: int, first: int = 0) -> None:
    for i in range(first, first + count):
        q.put(f"id-{i}", "capture", lambda seq: os.urandom(CAPTURE))


def test_the_committing_connection_never_checkpoints_and_the_wal_stays_bounded(tmp_path: Path) -> None:
    """Without the checkpoints here the WAL would hold every capture (it grows with the
    backlog: 400 captures, 40 MB); with SQLite's own, a commit would stop every 4 MB to copy
    them."""
    q = DurableQueue(tmp_path / "q.db", max_bytes=10**9, min_free_bytes=0)
    try:
        assert q._db.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
        for round_ in range(20):
            put_many(q, 20, round_ * 20)
            # A checkpoint in flight finishes before the next batch: the bound below is then
            # exact, not a race with the writer.
            wait_until(lambda: q._wal._thread is None or not q._wal._thread.is_alive(), 10)
        wal = Path(f"{tmp_path / 'q.db'}-wal").stat().st_size
        # Frames carry pages, not payload bytes: about 1.2 times the payload (B-tree pages,
        # frame headers). Unbounded, the 40 MB of captures would make about 48 MB.
        assert wal <= 1.5 * BEHIND_BYTES, f"the WAL holds {wal:,} bytes after 40 MB"
        assert q.totals()[0] == 400
    finally:
        q.close()


def test_the_erasure_checkpoint_copies_without_the_queue_lock(tmp_path: Path) -> None:
    """A capture committed during an erasure is not held back by its copying: both of its
    checkpoints run without the queue's lock (which commits take), on the second connection."""
    path = tmp_path / "q.db"
    q = DurableQueue(path, max_bytes=10**9, min_free_bytes=0, erase_interval_s=0)
    seen: list[tuple[str, bool]] = []
    checkpoint = q._wal.checkpoint

    def watched(mode: str) -> bool:
        seen.append((mode, q._lock.locked()))
        return checkpoint(mode)

    q._wal.checkpoint = watched  # type: ignore[method-assign]
    try:
        put_many(q, 8)  # below the size that starts a checkpoint of its own
        q.ack([f"id-{i}" for i in range(8)])
        assert seen == [("PASSIVE", False), ("TRUNCATE", False)]
        assert Path(f"{path}-wal").stat().st_size == 0, "the erased captures' frames stay in the WAL"
    finally:
        q.close()


def test_a_reader_in_the_way_delays_the_erasure_not_the_captures(tmp_path: Path) -> None:
    """A reader holding a snapshot (`queue stats` beside the agent) keeps the TRUNCATE from
    finishing: the erasure is retried later, captures still commit, and it completes once
    the reader is gone."""
    path = tmp_path / "q.db"
    q = DurableQueue(path, max_bytes=10**9, min_free_bytes=0, erase_interval_s=0)
    reader = sqlite3.connect(path)
    try:
        put_many(q, 30)
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM items").fetchone()  # a snapshot held open
        q.ack([f"id-{i}" for i in range(10)])
        assert q._erase_due, "the erasure must be retried while a reader holds the WAL"
        started = time.monotonic()
        put_many(q, 1, 100)
        assert time.monotonic() - started < 2
        reader.rollback()
        assert q.erase_if_due(force=True) and not q._erase_due
        assert Path(f"{path}-wal").stat().st_size == 0
        assert q.totals()[0] == 21
    finally:
        reader.close()
        q.close()
