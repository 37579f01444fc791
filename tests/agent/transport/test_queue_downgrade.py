"""The queue's way back from schema 2 to 1 (agent/transport/queue_migrate.py), for a rollback.

``data/durable_queue_v1.py`` is the schema-1 queue as committed (7d87da2): a downgraded file
must open there, with every payload as it was and sequence numbers going on.
"""

from __future__ import annotations

import importlib.util
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from agent.lock import StateLock
from agent.transport.durable_queue import DurableQueue
from agent.transport.queue_migrate import DOWNGRADES_TO, DowngradeError, downgrade, main

DATA = Path(__file__).parent / "data"
ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def v1() -> ModuleType:
    spec = importlib.util.spec_from_file_location("durable_queue_v1", DATA / "durable_queue_v1.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    assert module.SCHEMA_VERSION == 1
    return module


def make(cls: type, path: Path):  # type: ignore[no-untyped-def]
    return cls(path, max_bytes=1 << 30, min_free_bytes=0, erase_interval_s=0)


def everything(q) -> dict[str, tuple[int, str, bytes, int]]:  # type: ignore[no-untyped-def]
    """id -> (seq, kind, payload, attempts), rejected items included (next_batch skips them)."""
    ids = [r[0] for r in q._db.execute("SELECT id FROM items ORDER BY seq")]
    return {i: (it.seq, it.kind, it.payload, it.attempts) for i in ids if (it := q.get(i))}


def layout(path: Path) -> list[tuple[str, str, str]]:
    raw = sqlite3.connect(path)
    try:
        return sorted(raw.execute("SELECT type, name, sql FROM sqlite_master WHERE sql IS NOT NULL"))
    finally:
        raw.close()


@pytest.fixture
def migrated(tmp_path: Path) -> tuple[Path, dict[str, tuple[int, str, bytes, int]], tuple[int, int]]:
    """The schema-1 fixture opened by schema 2 (migrated), captures put (one rejected, one acknowledged)."""
    path = tmp_path / "state" / "queue.db"
    path.parent.mkdir(mode=0o700)
    shutil.copyfile(DATA / "queue-v1.db", path)
    q = make(DurableQueue, path)
    try:
        assert q.put("v2-new", "capture", lambda seq: b"SEALED-v2-%d-" % seq + bytes(range(256)) * 40) == 13
        q.put("v2-bad", "registration", lambda seq: b"SEALED-bad")
        q.reject("v2-bad", "bad-data")
        q.mark_sent([13])
        # The newest gone before the rollback: only the sequence table remembers its number.
        assert q.put("v2-gone", "capture", lambda seq: b"gone") == 15 and q.ack(["v2-gone"]) == 1
        before, totals = everything(q), q.totals()
    finally:
        q.close()
    return path, before, totals


def test_a_downgraded_queue_opens_in_schema_1_with_every_payload(  # type: ignore[no-untyped-def]
        v1: ModuleType, migrated, tmp_path: Path) -> None:
    path, before, totals = migrated
    raw = sqlite3.connect(path)
    keys = [k for (k,) in raw.execute("SELECT key FROM items WHERE key IS NOT NULL")]
    raw.close()
    assert len(keys) == 2
    assert downgrade(path, 1) == 11
    # The same tables, triggers and sequence table as a file schema 1 made itself.
    fresh = tmp_path / "fresh" / "queue.db"
    make(v1.DurableQueue, fresh).close()
    assert layout(path) == layout(fresh)
    # The keys are gone from the database and its WAL; the payloads are there as sealed.
    for name in (path.name, path.name + "-wal"):
        data = (path.parent / name).read_bytes() if (path.parent / name).exists() else b""
        assert not [k for k in keys if k in data], f"a key is still in {name}"
    assert b"SEALED-v2-13-" in path.read_bytes()
    q = make(v1.DurableQueue, path)
    try:
        assert everything(q) == before, "every item, byte for byte, with its seq and attempts"
        assert q.totals() == totals
        assert q.stats().by_state == {"queued": 6, "sent": 3, "rejected": 2}
        # v1-11 (seq 12) was acknowledged before the migration, v2-gone (15) after: no reuse.
        assert q.put("v1-after", "capture", lambda seq: b"after-%d" % seq) == 16
        assert q.ack(["v2-new", "v1-02"]) == 2
        gone = len(before["v2-new"][2]) + len(before["v1-02"][2])
        assert q.totals() == (totals[0] - 1, totals[1] - gone + len(b"after-16"))
        assert q.integrity_check() == "ok"
    finally:
        q.close()
    # And up again: the current release migrates it once more, keeping the numbers going.
    q = make(DurableQueue, path)
    try:
        assert q.get("v2-bad").payload == b"SEALED-bad"  # type: ignore[union-attr]
        assert q.put("v2-again", "capture", lambda seq: b"x") == 17
    finally:
        q.close()


def test_an_empty_queue_keeps_its_last_number(v1: ModuleType, tmp_path: Path) -> None:
    path = tmp_path / "queue.db"
    q = make(DurableQueue, path)
    try:
        for i in range(3):
            q.put(f"c{i}", "capture", lambda seq: b"p")
        assert q.ack(["c0", "c1", "c2"]) == 3
    finally:
        q.close()
    assert downgrade(path) == 0
    q = make(v1.DurableQueue, path)
    try:
        assert q.put("next", "capture", lambda seq: b"p") == 4
    finally:
        q.close()


def test_refused_while_the_agent_holds_the_state_folder(migrated) -> None:  # type: ignore[no-untyped-def]
    path, _, _ = migrated
    image = path.read_bytes()
    with StateLock(path.parent):
        with pytest.raises(DowngradeError, match="is using"):
            downgrade(path, 1)
        # The command line says the same, in one line, exit 1.
        done = subprocess.run([sys.executable, "-m", "agent.transport.queue_migrate", "--to", "1", str(path)],
                              capture_output=True, text=True, cwd=ROOT)
        assert done.returncode == 1 and done.stderr.count("\n") == 1 and "is using" in done.stderr
    assert path.read_bytes() == image, "untouched"


def test_refused_when_already_there_or_held(v1: ModuleType, migrated, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path, _, _ = migrated
    assert main(["--to", "1", str(path)]) == 0
    image = path.read_bytes()
    with pytest.raises(DowngradeError, match="already at queue schema 1"):
        downgrade(path, 1)
    assert main(["--to", "1", str(path)]) == 1
    assert path.read_bytes() == image
    assert 1 in DOWNGRADES_TO
    with pytest.raises(SystemExit) as usage:
        main(["--to", "1"])
    assert usage.value.code == 2
    # A registration awaiting approval would be sent by schema 1: refused, the file untouched.
    other = tmp_path / "held" / "queue.db"
    q = make(DurableQueue, other)
    try:
        q.put("h", "registration", lambda seq: b"p", held=True)
    finally:
        q.close()
    image = other.read_bytes()
    with pytest.raises(DowngradeError, match="held or withheld"):
        downgrade(other, 1)
    assert other.read_bytes() == image


def test_a_damaged_payload_stops_it_untouched(migrated) -> None:  # type: ignore[no-untyped-def]
    path, _, _ = migrated
    raw = sqlite3.connect(path)
    raw.execute("UPDATE blobs SET payload = zeroblob(40) WHERE seq = 13")
    raw.commit()
    raw.close()
    with pytest.raises(DowngradeError, match="does not decrypt"):
        downgrade(path, 1)
    raw = sqlite3.connect(path)
    try:
        assert raw.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone() == ("2",)
        assert raw.execute("SELECT count(*) FROM items WHERE key IS NOT NULL").fetchone() == (2,)
    finally:
        raw.close()
