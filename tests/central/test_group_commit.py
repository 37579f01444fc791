"""Group commit and the outbox, with real receivers on a real mosquitto and PostgreSQL:
receipts leave only after COMMIT, a failed commit receipts nothing, two receivers of one
share group keep one row per capture, and each finished registration reaches the outbox
(table + NOTIFY, or the file store's spool folder) exactly once."""

from __future__ import annotations

import hashlib
import os
import select
import time
from collections import Counter
from pathlib import Path

import psycopg

from agent.capture.ids import uuid7
from devtools.broker import MosquittoBroker
from receiver.service import Receiver
from receiver.store import OUTBOX
from tests.support.hostile import (
    KIOSK_A,
    finger_captures,
    record,
    registration_manifest,
    rig,
    sealed_capture,
    sealed_manifest,
)
from tests.support.waiting import wait_until


def count(dsn: str, query: str = "SELECT count(*) FROM captures") -> int:
    with psycopg.connect(dsn) as conn:
        return int(conn.execute(query).fetchone()[0])  # type: ignore[index]


def test_receipts_follow_the_commit(tmp_path: Path, broker: MosquittoBroker, pg_dsn: str) -> None:
    """While a batch is open its captures are handled and held, not committed, so not
    receipted. The batch here can only close at its 30th capture (no window closes it), so
    the check does not race a clock (a 400 ms window did, once, in a loaded CI run)."""
    with rig(tmp_path, broker, store=pg_dsn, group_commit_ms=NEVER_MS, group_commit_max=30) as r:
        records = [record(KIOSK_A) for _ in range(30)]
        payloads = [sealed_capture(r.sealers[KIOSK_A], rec) for rec in records]
        for payload in payloads[:29]:
            r.send(KIOSK_A, payload)
        wait_until(lambda: r.receiver.batch.pending == 29, what="29 captures held in the open batch")
        assert count(pg_dsn) == 0 and r.wire.receipts == []
        r.send(KIOSK_A, payloads[29])
        statuses = [r.wire.receipt(rec.id)["status"] for rec in records]
        assert statuses == ["stored"] * 30 and count(pg_dsn) == 30
        assert r.receiver.batch.commits == 1
        assert r.wire.receipt_frames == 1, "one signed frame per kiosk per batch, not one per receipt"


def test_a_window_groups_what_arrives_within_it(tmp_path: Path, broker: MosquittoBroker, pg_dsn: str) -> None:
    with rig(tmp_path, broker, store=pg_dsn, group_commit_ms=400.0) as r:
        records = [record(KIOSK_A) for _ in range(30)]
        payloads = [sealed_capture(r.sealers[KIOSK_A], rec) for rec in records]  # sent back to back
        for payload in payloads:
            r.send(KIOSK_A, payload)
        statuses = [r.wire.receipt(rec.id)["status"] for rec in records]
        assert statuses == ["stored"] * 30 and count(pg_dsn) == 30
        assert 1 <= r.receiver.batch.commits < 30, "one transaction per window, not per message"
        frames, commits = r.wire.receipt_frames, r.receiver.batch.commits
        assert frames == commits, (frames, commits)


#: A window no test run reaches (the config allows at most 1 s; the rig sets it unvalidated):
#: whatever commits in the limit tests below was committed by a limit, not by the clock.
NEVER_MS = 600_000.0
#: receiver.group_commit_max_bytes at the config's minimum, and images that put one sealed
#: capture under it and two over it.
MAX_BYTES = 1 << 16
IMAGE_BYTES = 40_000


def stored_ids(dsn: str) -> set[str]:
    with psycopg.connect(dsn) as conn:
        return {row[0] for row in conn.execute("SELECT capture_id FROM captures").fetchall()}


def send_until_held_or_receipted(r, records: list) -> None:  # type: ignore[no-untyped-def]
    """Send ``records`` and wait until each is either receipted or held in the open batch."""
    for rec in records:
        r.send(KIOSK_A, sealed_capture(r.sealers[KIOSK_A], rec))
    wait_until(lambda: r.receiver.batch.pending + sum(bool(r.wire.receipts_for(rec.id)) for rec in records)
               == len(records), what="every capture receipted or held")


def assert_committed_early(r, dsn: str, committed: list, held: list, batches: int) -> None:  # type: ignore[no-untyped-def]
    assert r.receiver.batch.commits == batches, "a full batch commits before its window is up"
    assert [r.wire.receipts_for(rec.id)[0]["status"] for rec in committed] == ["stored"] * len(committed)
    # Receipts follow the commit: each for a durable row, none for what the open batch holds.
    assert stored_ids(dsn) == {rec.id for rec in committed}
    assert r.receiver.batch.pending == len(held)
    assert not any(r.wire.receipts_for(rec.id) for rec in held), "a receipt for an uncommitted capture"
    assert r.wire.receipt_frames == batches, "one frame per committed batch"


def test_a_batch_commits_early_at_group_commit_max(tmp_path: Path, broker: MosquittoBroker,
                                                   pg_dsn: str) -> None:
    with rig(tmp_path, broker, store=pg_dsn, group_commit_ms=NEVER_MS, group_commit_max=4) as r:
        records = [record(KIOSK_A) for _ in range(10)]
        send_until_held_or_receipted(r, records)
        assert_committed_early(r, pg_dsn, records[:8], records[8:], batches=2)


def test_a_batch_commits_early_at_group_commit_max_bytes(tmp_path: Path, broker: MosquittoBroker,
                                                         pg_dsn: str) -> None:
    with rig(tmp_path, broker, store=pg_dsn, group_commit_ms=NEVER_MS,
             group_commit_max_bytes=MAX_BYTES) as r:
        records = [record(KIOSK_A, image=os.urandom(IMAGE_BYTES)) for _ in range(5)]
        sealed = len(sealed_capture(r.sealers[KIOSK_A], records[0]))
        assert MAX_BYTES / 2 <= sealed < MAX_BYTES, f"a sealed capture of {sealed} bytes: resize IMAGE_BYTES"
        assert r.config.receiver.group_commit_max > len(records), "the count limit must not be what commits"
        send_until_held_or_receipted(r, records)
        assert_committed_early(r, pg_dsn, records[:4], records[4:], batches=2)


def test_a_failed_commit_receipts_nothing_and_the_resend_is_stored(tmp_path: Path, broker: MosquittoBroker,
                                                                   pg_dsn: str) -> None:
    with rig(tmp_path, broker, store=pg_dsn, group_commit_ms=800.0) as r:
        first = [record(KIOSK_A) for _ in range(5)]
        for rec in first:
            r.send(KIOSK_A, sealed_capture(r.sealers[KIOSK_A], rec))
        wait_until(lambda: r.receiver.batch.pending == 5, what="the batch held")
        # A real failure: the server ends the receiver's session with the batch open.
        with psycopg.connect(pg_dsn, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = "
                          "current_database() AND application_name LIKE 'kiosk-agent-receiver%%'")
        wait_until(lambda: r.receiver.batch.failures >= 1 and r.receiver.batch.pending == 0,
                   what="the failed commit noticed")
        time.sleep(0.3)
        assert r.wire.receipts == [] and count(pg_dsn) == 0
        for rec in first:  # what the kiosk does after its receipt timeout
            r.send(KIOSK_A, sealed_capture(r.sealers[KIOSK_A], rec))
        assert [r.wire.receipt(rec.id)["status"] for rec in first] == ["stored"] * 5
    assert count(pg_dsn) == 5


def test_two_receivers_in_one_group_keep_one_row_per_capture(tmp_path: Path, broker: MosquittoBroker,
                                                             pg_dsn: str) -> None:
    with rig(tmp_path, broker, store=pg_dsn, group_commit_ms=20.0) as r:
        second = r.config.model_copy(update={"receiver": r.config.receiver.model_copy(
            update={"name": "r2", "output_dir": tmp_path / "out2"})})
        other = Receiver(second)
        other.start()
        try:
            wait_until(lambda: other.link.subscribed, what="second receiver subscribed")
            records = [record(KIOSK_A) for _ in range(40)]
            for rec in records:  # every capture twice: a resend lands on either receiver
                payload = sealed_capture(r.sealers[KIOSK_A], rec)
                r.send(KIOSK_A, payload)
                r.send(KIOSK_A, payload)
            wait_until(lambda: all(len(r.wire.receipts_for(rec.id)) == 2 for rec in records),
                       what="two receipts per capture")
        finally:
            other.stop()
    outcomes = Counter(x["status"] for rec in records for x in r.wire.receipts_for(rec.id))
    assert outcomes == {"stored": 40, "duplicate": 40}
    assert count(pg_dsn) == 40
    # mosquitto alternates a share group's messages, so each copy pair was split between the
    # two, the second often arriving while the first one's batch was still open.
    assert all(c.stored + c.duplicates >= 20 for c in (r.receiver.counters, other.counters))


def send_registration(r, registration_id: str) -> None:  # type: ignore[no-untyped-def]
    parts = finger_captures(KIOSK_A, [2, 3])
    manifest = registration_manifest(KIOSK_A, registration_id, [])
    manifest["captures"] = registration_manifest(KIOSK_A, registration_id, parts)["captures"]
    for part in parts:
        part = part.__class__(**{**part.__dict__, "registration": {"id": registration_id}})
        r.send(KIOSK_A, sealed_capture(r.sealers[KIOSK_A], part))
    r.send(KIOSK_A, sealed_manifest(r.sealers[KIOSK_A], KIOSK_A, manifest, seq=9))
    r.wire.receipt(registration_id)


def test_a_finished_registration_reaches_the_outbox_once_with_a_notify(
        tmp_path: Path, broker: MosquittoBroker, pg_dsn: str) -> None:
    registration_id = uuid7()
    with psycopg.connect(pg_dsn, autocommit=True) as listener:
        with rig(tmp_path, broker, store=pg_dsn) as r:
            listener.execute("LISTEN registration_complete")
            for _ in range(2):  # the second time: every part and the manifest resent
                send_registration(r, registration_id)
                r.settle()
            wait_until(lambda: count(pg_dsn, "SELECT count(*) FROM outbox") == 1, what="the outbox row")
            time.sleep(0.3)
        select.select([listener.fileno()], [], [], 2.0)
        notes = [n.payload for n in listener.notifies(timeout=0.5)]
        an2 = listener.execute("SELECT kiosk_id, registration_id, transaction FROM outbox").fetchall()
        (files,) = listener.execute("SELECT files FROM registrations WHERE registration_id = %s",
                                    (registration_id,)).fetchone()
    assert notes == [registration_id], "one NOTIFY, carrying the registration id"
    assert len(an2) == 1 and an2[0][:2] == (KIOSK_A, registration_id)
    built = next(f for f in files if f["name"] == f"{registration_id}.an2")
    assert hashlib.sha256(bytes(an2[0][2])).hexdigest() == built["sha256"], (
        "the row holds the transaction the receiver built")
    assert not (r.out / KIOSK_A / "registrations").exists(), "a receiver on PostgreSQL keeps no files"


def test_the_file_store_spools_each_finished_registration_once(tmp_path: Path,
                                                               broker: MosquittoBroker) -> None:
    registration_id = uuid7()
    with rig(tmp_path, broker) as r:
        for _ in range(2):
            send_registration(r, registration_id)
            r.settle()
    spool = r.out / OUTBOX / KIOSK_A
    assert [p.name for p in spool.iterdir()] == [f"{registration_id}.an2"]
    assert (spool / f"{registration_id}.an2").read_bytes() == (
        r.out / KIOSK_A / "registrations" / f"{registration_id}.an2").read_bytes()
