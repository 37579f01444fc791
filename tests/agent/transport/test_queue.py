from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from agent.errors import PermanentError, TransientError
from agent.transport.durable_queue import DurableQueue, QueueError, QueueFull, QueueWriteError

MB = 1024 * 1024


def make(path: Path, max_bytes: int = 100 * MB, min_free: int = 0) -> DurableQueue:
    return DurableQueue(path, max_bytes=max_bytes, min_free_bytes=min_free)


def put(q: DurableQueue, item_id: str, size: int = 100) -> int:
    return q.put(item_id, "capture", lambda seq: seq.to_bytes(8, "big") + b"x" * size)


def test_put_is_durable_and_survives_reopen(tmp_path: Path) -> None:
    q = make(tmp_path / "q.db")
    seqs = [put(q, f"id-{i}") for i in range(5)]
    assert seqs == sorted(seqs) and len(set(seqs)) == 5
    q.close()
    # Another connection (another process would do the same) sees the committed rows.
    raw = sqlite3.connect(tmp_path / "q.db")
    assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert raw.execute("SELECT count(*) FROM items").fetchone()[0] == 5
    raw.close()
    q2 = make(tmp_path / "q.db")
    assert [i.id for i in q2.next_batch(0, 10)] == [f"id-{i}" for i in range(5)]
    # Sequence numbers keep rising after a restart, even when the newest was acknowledged.
    q2.ack(["id-4"])
    q2.close()
    q3 = make(tmp_path / "q.db")
    assert put(q3, "id-5") > seqs[-1]
    q3.close()


def test_encode_receives_the_sequence_number(tmp_path: Path) -> None:
    q = make(tmp_path / "q.db")
    seq = put(q, "a")
    (item,) = q.next_batch(0, 1)
    assert int.from_bytes(item.payload[:8], "big") == seq == item.seq
    q.close()


def test_order_and_ack(tmp_path: Path) -> None:
    q = make(tmp_path / "q.db")
    for i in range(10):
        put(q, f"id-{i}")
    first = q.next_batch(0, 4)
    assert [i.id for i in first] == ["id-0", "id-1", "id-2", "id-3"]
    assert [i.id for i in q.next_batch(first[-1].seq, 2)] == ["id-4", "id-5"]
    assert q.ack(["id-1", "id-3", "unknown"]) == 2
    assert [i.id for i in q.next_batch(0, 3)] == ["id-0", "id-2", "id-4"]
    assert q.totals() == (8, sum(len(i.payload) for i in q.next_batch(0, 100)))
    q.close()


def test_mark_sent_and_reject_show_in_stats(tmp_path: Path) -> None:
    q = make(tmp_path / "q.db")
    for i in range(4):
        put(q, f"id-{i}")
    q.mark_sent([q.get("id-0").seq, q.get("id-1").seq])  # type: ignore[union-attr]
    q.reject("id-1", "bad")
    stats = q.stats()
    assert stats.by_state == {"queued": 2, "sent": 1, "rejected": 1}
    assert stats.pending == 4 and stats.oldest_age_s is not None and stats.oldest_age_s >= 0
    # Rejected items are kept but no longer offered.
    assert [i.id for i in q.next_batch(0, 10)] == ["id-0", "id-2", "id-3"]
    assert q.get("id-0").attempts == 1  # type: ignore[union-attr]
    q.close()


def test_quota_refuses_new_and_keeps_old(tmp_path: Path) -> None:
    q = make(tmp_path / "q.db", max_bytes=1 * MB)
    for i in range(9):
        put(q, f"id-{i}", size=100_000)
    with pytest.raises(QueueFull, match="queue.max_bytes"):
        put(q, "id-9", size=200_000)
    assert q.totals()[0] == 9
    assert q.get("id-9") is None
    q.ack(["id-0", "id-1"])
    put(q, "id-9", size=200_000)  # room again once captures are acknowledged
    q.close()


def test_min_free_disk_refuses(tmp_path: Path) -> None:
    q = make(tmp_path / "q.db", min_free=1 << 62)  # more than any disk has free
    with pytest.raises(QueueFull, match="min_free_bytes"):
        put(q, "a")
    assert q.totals() == (0, 0)
    q.close()


def test_corrupt_file_is_quarantined_not_deleted(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "q.db"
    garbage = b"this is not an sqlite database, but it might hold someone's captures" * 100
    path.write_bytes(garbage)
    q = make(path)
    put(q, "fresh")
    assert q.totals()[0] == 1
    q.close()
    moved = list(tmp_path.glob("q.db.corrupt-*"))
    assert len(moved) == 1 and moved[0].read_bytes() == garbage
    assert any(r.levelname == "CRITICAL" and "moved it aside" in r.getMessage() for r in caplog.records)


class CountingQueue(DurableQueue):
    """Counts SQLite VM steps during open: a deterministic measure of start-up work."""

    steps = 0

    def _connect(self) -> sqlite3.Connection:
        CountingQueue.steps = 0

        def count() -> int:
            CountingQueue.steps += 1
            return 0

        original_connect = sqlite3.connect

        def connect(*args, **kwargs):  # type: ignore[no-untyped-def]
            db = original_connect(*args, **kwargs)
            db.set_progress_handler(count, 1)
            return db

        sqlite3.connect = connect  # type: ignore[assignment]
        try:
            db = super()._connect()
        finally:
            sqlite3.connect = original_connect  # type: ignore[assignment]
        return db


def open_steps(path: Path) -> int:
    q = CountingQueue(path, max_bytes=1 << 40, min_free_bytes=0)
    q._db.set_progress_handler(None, 1)
    q.close()
    return CountingQueue.steps


def test_startup_does_not_grow_with_backlog(tmp_path: Path) -> None:
    empty = tmp_path / "empty.db"
    make(empty).close()
    full = tmp_path / "full.db"
    q = make(full)
    payload = b"y" * 10_000
    q._db.execute("BEGIN")  # bulk-load quickly; the shape of the data is what matters
    for i in range(20_000):
        q._db.execute("INSERT INTO items (seq, id, kind, created, size) VALUES (?, ?, 'capture', 0, ?)",
                      (i + 1, f"id-{i}", len(payload)))
        q._db.execute("INSERT INTO blobs VALUES (?, ?)", (i + 1, payload))
    # The running totals are kept by put() in the same transaction; here by hand.
    q._db.execute("UPDATE totals SET items = 20000, bytes = ?, last_seq = 20000", (20_000 * len(payload),))
    q._db.execute("COMMIT")
    q.close()
    assert make(full).totals() == (20_000, 20_000 * len(payload))
    # Opening 200 MB of backlog does the same work as opening an empty queue: no scan.
    # (SQLite VM steps, not seconds: deterministic on any machine.)
    empty_steps, full_steps = open_steps(empty), open_steps(full)
    assert empty_steps > 0
    assert full_steps <= empty_steps + 50, (empty_steps, full_steps)


def test_integrity_check_ok(tmp_path: Path) -> None:
    q = make(tmp_path / "q.db")
    put(q, "a")
    assert q.integrity_check() == "ok"
    q.close()


def test_error_kinds() -> None:
    # A full queue or disk passes as the backlog drains; a failing disk needs a person.
    assert QueueFull("x").transient and isinstance(QueueFull("x"), TransientError)
    assert not QueueWriteError("x").transient and isinstance(QueueWriteError("x"), PermanentError)
    assert isinstance(QueueFull("x"), QueueError) and isinstance(QueueWriteError("x"), QueueError)
    assert not QueueError("unusable").transient
