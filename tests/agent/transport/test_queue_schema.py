"""The queue's schema 2: a schema-1 file keeps its backlog, and erasure by crypto-shredding.

``data/queue-v1.db`` was written by the schema-1 queue (commit 7d87da2, before this schema):
twelve items put (payloads ``V1PAYLOAD-<n>-seq<seq>-`` then filler, three of them over 6 KB so
they spill into overflow pages), seqs 1-4 sent (seq 3 twice), v1-00, v1-01 and v1-11 (the
newest) acknowledged, v1-04 rejected; WAL checkpointed at close.
"""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from agent.transport import queue_schema
from agent.transport.durable_queue import SCHEMA_VERSION, DurableQueue, QueueError

V1 = Path(__file__).parent / "data" / "queue-v1.db"


def make(path: Path) -> DurableQueue:
    return DurableQueue(path, max_bytes=1 << 30, min_free_bytes=0, erase_interval_s=0)


def files(path: Path) -> dict[str, bytes]:
    """queue.db and its WAL as they are on disk (what a thief with the disk would read)."""
    return {p.name: p.read_bytes() for p in path.parent.glob(path.name + "*") if not p.name.endswith("-shm")}


def found(needle: bytes, path: Path) -> list[str]:
    return [name for name, data in files(path).items() if needle in data]


@pytest.fixture
def v1_copy(tmp_path: Path) -> Path:
    path = tmp_path / "queue.db"
    shutil.copyfile(V1, path)
    return path


def test_a_schema_1_queue_keeps_its_backlog(v1_copy: Path) -> None:
    q = make(v1_copy)
    try:
        items = q.next_batch(0, 100)
        expected = [f"v1-{n:02d}" for n in (2, 3, 5, 6, 7, 8, 9, 10)]
        assert [i.id for i in items] == expected, "v1-04 is rejected"
        for item in items:
            n = int(item.id[3:])
            assert item.payload.startswith(b"V1PAYLOAD-%02d-seq%d-" % (n, item.seq)), item.id
            assert item.payload.endswith(bytes([n]) * 300)
        assert q.get("v1-02").attempts == 2 and q.get("v1-03").attempts == 1  # type: ignore[union-attr]
        assert q.get("v1-05").kind == "registration"  # type: ignore[union-attr]
        stats = q.stats()
        assert stats.by_state == {"queued": 6, "sent": 2, "rejected": 1}
        assert q.totals() == (9, 19_964), "the running totals carried over"
        # v1-11 (seq 12) was acknowledged: AUTOINCREMENT never reused 12, nor does schema 2.
        assert q.put("new-1", "capture", lambda seq: b"new") == 13
        assert q.totals() == (10, 19_967)
        # Acknowledging an old item erases it as schema 1 did: its clear payload is zeroed.
        marker = b"V1PAYLOAD-03-seq4-"
        assert found(marker, v1_copy)
        assert q.ack(["v1-03", "v1-02"], sent=[q.get("v1-06").seq]) == 2  # type: ignore[union-attr]
        q.erase_if_due(force=True)  # ack() did it already (interval 0): a no-op then
        assert found(marker, v1_copy) == []
        assert q.get("v1-06").attempts == 1  # type: ignore[union-attr]
        assert q.integrity_check() == "ok"
    finally:
        q.close()
    raw = sqlite3.connect(v1_copy)
    try:
        assert raw.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone() == (str(SCHEMA_VERSION),)
        assert raw.execute("SELECT count(*) FROM sqlite_master WHERE type = 'trigger'").fetchone() == (0,)
    finally:
        raw.close()
    # Reopened as schema 2, nothing is migrated twice.
    q = make(v1_copy)
    try:
        assert q.totals() == (8, 19_964 - 318 - 6018 + 3) and q.put("new-2", "capture", lambda s: b"x") == 14
    finally:
        q.close()


def test_a_newer_schema_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "queue.db"
    make(path).close()
    raw = sqlite3.connect(path)
    raw.execute("UPDATE meta SET value = '3' WHERE key = 'schema'")
    raw.commit()
    raw.close()
    with pytest.raises(QueueError, match="schema 3"):
        make(path)


def test_payloads_are_stored_under_a_key_of_their_own(tmp_path: Path) -> None:
    path = tmp_path / "queue.db"
    q = make(path)
    try:
        payloads = {f"c{i}": b"SEALED-%d-" % i + bytes(range(256)) * 400 for i in range(3)}
        for item_id, payload in payloads.items():
            q.put(item_id, "capture", lambda seq, p=payload: p)
        assert {i.id: i.payload for i in q.next_batch(0, 10)} == payloads
        raw = sqlite3.connect(path)
        rows = raw.execute("SELECT i.id, i.seq, i.key, b.payload FROM items i JOIN blobs b USING (seq)"
                           ).fetchall()
        raw.close()
        keys = [key for _, _, key, _ in rows]
        assert len(set(keys)) == 3 and all(len(k) == 32 for k in keys), "a fresh 256-bit key each"
        for item_id, seq, key, stored in rows:
            assert payloads[item_id] not in stored and b"SEALED-" not in stored, "stored wrapped"
            nonce = bytes(12)
            assert AESGCM(key).decrypt(nonce, stored, f"{seq}/{item_id}".encode()) == payloads[item_id]
            with pytest.raises(InvalidTag):  # bound to its row: moved elsewhere, it does not open
                AESGCM(key).decrypt(nonce, stored, f"{seq + 1}/{item_id}".encode())
        for needle in (b"SEALED-0-", b"SEALED-1-"):
            assert found(needle, path) == [], "the sealed form never reaches the disk"
    finally:
        q.close()


def test_a_deleted_capture_leaves_no_key_in_the_database_or_wal(tmp_path: Path) -> None:
    """The erasure property: after the acknowledgement and the erasure interval, the key of a
    deleted capture is in neither file, so what is left of its payload cannot be opened."""
    path = tmp_path / "queue.db"
    q = make(path)
    try:
        for i in range(12):  # enough rows that deleted keys share pages with live ones
            q.put(f"c{i}", "capture", lambda seq, i=i: bytes([i]) * 100_000)
        raw = sqlite3.connect(path)
        keys = dict(raw.execute("SELECT id, key FROM items"))
        raw.close()
        gone, kept = [f"c{i}" for i in range(0, 12, 2)], [f"c{i}" for i in range(1, 12, 2)]
        assert all(found(keys[i], path) for i in gone), "the keys are on disk before"
        assert q.ack(gone[:3]) == 3 and q.ack(gone[3:]) == 3
        q.erase_if_due(force=True)  # ack() did it already (interval 0): a no-op then
        leftover = {i: found(keys[i], path) for i in gone}
        assert leftover == {i: [] for i in gone}, "a deleted capture's key is still on disk"
        assert all(found(keys[i], path) for i in kept), "the others' keys are still there"
        assert [i.id for i in q.next_batch(0, 20)] == kept
    finally:
        q.close()
    # And after a restart (the WAL replayed and checkpointed by the next open and close).
    make(path).close()
    assert all(found(keys[i], path) == [] for i in gone)


def test_purge_erases_the_same_way(tmp_path: Path) -> None:
    path = tmp_path / "queue.db"
    q = make(path)
    try:
        for i in range(4):
            q.put(f"c{i}", "capture", lambda seq: b"x" * 50_000)
        q.reject("c1", "bad-data")
        raw = sqlite3.connect(path)
        key = raw.execute("SELECT key FROM items WHERE id = 'c1'").fetchone()[0]
        raw.close()
        assert q.purge(("rejected",)) == (1, 50_000)
        assert q.totals() == (3, 150_000)
        q.erase_if_due(force=True)
        assert found(key, path) == []
    finally:
        q.close()


def test_the_updater_sees_the_schema_change() -> None:
    """agent/update refuses a bundle whose SCHEMA_VERSION differs from the running release's
    unless it declares the migration reversible: the number must say what the file is."""
    assert SCHEMA_VERSION == 2
    assert "'2'" in queue_schema._MIGRATE_V1, "a migrated file says 2 as well"
