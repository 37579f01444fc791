"""Disk full: captures refused with a clear error, nothing corrupted, recovery when space
returns. On a small tmpfs when the test may mount one (root), otherwise against the quota."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.daemon import Agent
from agent.transport import wal_checkpoints
from agent.transport.durable_queue import DurableQueue, QueueFull
from devtools.broker import MosquittoBroker
from receiver.service import Receiver
from tests.reliability.common import integrity
from tests.support.config import agent_config, receiver_config
from tests.support.processes import stored_ids
from tests.support.waiting import wait_until

MB = 1024 * 1024


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path | None]:
    """A 12 MiB file system of its own, or None where mounting is not allowed."""
    mount_point = tmp_path / "fs"
    mount_point.mkdir()
    if os.geteuid() != 0:
        yield None
        return
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12m", "tmpfs", str(mount_point)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        yield None
        return
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)


def fill(directory: Path, leave_free: int) -> Path:
    """A filler file that leaves about ``leave_free`` bytes on the file system."""
    filler = directory / "filler"
    stat = os.statvfs(directory)
    size = stat.f_bavail * stat.f_frsize - leave_free
    with filler.open("wb") as fh:
        fh.write(b"\0" * max(size, 0))
    return filler


@pytest.mark.parametrize("limit", ["disk", "watermark"])
def test_disk_full_refuses_then_recovers(tmp_path: Path, small_fs: Path | None, limit: str,
                                         caplog: pytest.LogCaptureFixture) -> None:
    broker = MosquittoBroker()  # not started yet: nothing drains while the disk fills
    if small_fs is None:
        # No file system of our own: the quota stands in for the disk.
        queue_dir, queue_cfg = tmp_path, {"max_bytes": 2 * MB, "min_free_bytes": 0}
        expected = "queue.max_bytes"
    elif limit == "disk":
        queue_dir, queue_cfg = small_fs, {"min_free_bytes": 0}  # let SQLite hit ENOSPC itself
        # Refused by the pre-check ("only N bytes free") or by SQLite's own "disk is full".
        expected = "free on the disk|is full"
    else:
        queue_dir, queue_cfg = small_fs, {"min_free_bytes": 3 * MB}
        expected = "queue.min_free_bytes"
    queue_cfg["path"] = str(queue_dir / "queue.db")
    config = agent_config(tmp_path, broker.port, queue=queue_cfg,
                          capture={"finger_positions": [1], "max_captures": 0},
                          devices={"finger": {"driver": "sim-finger", "seed": 3}})
    filler = fill(queue_dir, 4 * MB) if small_fs is not None else None
    agent = Agent(config)
    agent.start()
    receiver = None
    try:
        assert agent.capture is not None and agent.queue is not None
        wait_until(lambda: agent.capture.refused > 0, timeout_s=60, what="captures refused")
        wait_until(lambda: any(re.search(expected, r.getMessage()) for r in caplog.records),
                   what="a clear error")
        held = agent.queue.totals()[0]
        assert held > 0 and integrity(Path(queue_cfg["path"])) == "ok"
        assert agent.link is not None and agent.link.alive, "the agent keeps running"

        # Space returns (filler removed, or the backlog drains): captures resume, all delivered.
        if filler is not None:
            filler.unlink()
            wait_until(lambda: agent.capture.captured > held + 5, what="captures resume")
        broker.start()
        receiver = Receiver(receiver_config(tmp_path / "out", config))
        receiver.start()
        agent.continuous.stop()  # type: ignore[union-attr]
        wait_until(lambda: agent.queue.totals()[0] == 0, timeout_s=60, what="backlog drained")
        assert len(stored_ids(tmp_path / "out")) == agent.capture.captured
        assert integrity(Path(queue_cfg["path"])) == "ok"
    finally:
        agent.stop()
        if receiver is not None:
            receiver.stop()
        broker.close()


class NoPrecheckQueue(DurableQueue):
    """The queue without its free-space pre-check, so SQLite itself meets ENOSPC."""

    def _check_space(self, size: int) -> None:
        return None


def fill_queue(queue: DurableQueue) -> list[str]:
    """Captures of 100 KB until SQLite itself finds the disk full; then smaller ones until not
    even a tiny one fits. What the first phase leaves is not a full disk for every write: the
    WAL file keeps blocks past its last commit (a transaction that failed half-written, or a
    WAL that a checkpoint let start over), and a small transaction fits there. The small
    captures use that room up, so the next write that is not tiny needs blocks the disk
    does not have. Returns the ids of the 100 KB captures."""
    committed = []
    with pytest.raises(QueueFull, match="is full") as info:
        for i in range(1000):
            queue.put(f"id-{i}", "capture", lambda seq: os.urandom(100_000))
            committed.append(f"id-{i}")
    assert "free disk space" in str(info.value)
    small = 0
    for size in (20_000, 4_000, 500, 10):
        payload = os.urandom(size)
        with pytest.raises(QueueFull, match="is full"):
            for _ in range(10_000):  # the disk holds far fewer
                queue.put(f"small-{small}", "capture", lambda seq, p=payload: p)
                small += 1
    assert committed and queue.totals()[0] == len(committed) + small
    return committed


def test_sqlite_disk_full_becomes_a_clear_queue_error(small_fs: Path | None,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    if small_fs is None:
        pytest.fail("needs a small file system: run the suite as root (as `make test` in CI does)")
    queue = NoPrecheckQueue(small_fs / "queue.db", max_bytes=1 << 40, min_free_bytes=0,
                            reserve_bytes=2 * MB)
    assert queue.disk.path.stat().st_size == 2 * MB
    try:
        committed = fill_queue(queue)
        # The disk is full, yet acknowledged captures can be deleted (the reserve is given
        # back), and then new captures are taken again.
        assert queue.ack(committed[: len(committed) // 2]) == len(committed) // 2
        assert any("released the queue's" in r.getMessage() for r in caplog.records)
        queue.put("after", "capture", lambda seq: os.urandom(50_000))
        # Whether the reserve is back yet depends on how far the checkpoints had got when the
        # disk filled (the next test makes sure it comes back once the disk has room).
    finally:
        queue.close()
    assert integrity(small_fs / "queue.db") == "ok"


def test_a_full_disk_whose_wal_cannot_be_checkpointed_still_drains(
        small_fs: Path | None, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """The WAL holds more than the reserve can take into the database file (here no checkpoint
    ran at all): truncating it fails, yet the deletes go on in the reserve's room, no raw
    SQLite error escapes, and once the disk has room again everything resumes."""
    if small_fs is None:
        pytest.fail("needs a small file system: run the suite as root (as `make test` in CI does)")
    monkeypatch.setattr(wal_checkpoints, "CHECKPOINT_BYTES", 1 << 40)
    monkeypatch.setattr(wal_checkpoints, "BEHIND_BYTES", 1 << 40)
    queue = NoPrecheckQueue(small_fs / "queue.db", max_bytes=1 << 40, min_free_bytes=0,
                            reserve_bytes=2 * MB)
    try:
        committed = fill_queue(queue)
        assert (small_fs / "queue.db-wal").stat().st_size > 8 * MB, "the captures are in the WAL"
        half = committed[: len(committed) // 2]
        assert queue.ack(half) == len(half)
        assert any("released the queue's" in r.getMessage() for r in caplog.records)
        assert (small_fs / "queue.db-wal").stat().st_size > 8 * MB, "no truncation tried: it cannot fit"
        assert not queue.disk.path.exists(), "no room to make the reserve again yet"
        assert queue.ack(half) == 0, "deleted for good"
        # Room again (the operator freed space): the WAL goes into the database, the reserve
        # comes back, captures are taken.
        subprocess.run(["mount", "-o", "remount,size=24m", str(small_fs)], check=True)
        assert queue.erase_if_due(force=True)
        assert (small_fs / "queue.db-wal").stat().st_size == 0
        assert queue.disk.path.exists()
        held = queue.totals()[0]
        queue.put("after", "capture", lambda seq: os.urandom(50_000))
        assert queue.totals()[0] == held + 1
    finally:
        queue.close()
    assert integrity(small_fs / "queue.db") == "ok"
