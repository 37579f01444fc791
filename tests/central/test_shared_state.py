"""Registrations, their parts and status, chunked transfers and the cap on unfinished
registrations live in PostgreSQL, so receivers sharing one database keep nothing of their
own: two receivers racing on the same registration complete it exactly once, a chunked
transfer split between receivers assembles, and the cap holds across receivers.

The races run on real stores over a real server: two PostgresStore instances in threads
(each one a receiver's batch connection), released together by a barrier, each holding its
batch open for a group-commit window before it commits, as the receiver does."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

from agent.capture.ids import uuid7
from agent.transport.chunking import chunk_of, make_manifest
from devtools.broker import MosquittoBroker
from receiver.assembly import RegistrationAssembler
from receiver.retries import RegistrationFinisher
from receiver.service import Receiver
from receiver.storage.postgres import PostgresStore
from tests.support.hostile import (
    KIOSK_A,
    KIOSK_B,
    finger_captures,
    record,
    registration_manifest,
    rig,
    sealed_capture,
    sealed_manifest,
)
from tests.support.waiting import wait_until

#: How long each racing batch stays open after its check: the group-commit window.
WINDOW_S = 0.03


def rows(dsn: str, query: str, params: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(query, params).fetchall()


def tagged(parts: list[Any], registration_id: str) -> list[Any]:
    """Copies of ``parts`` with fresh ids, each naming ``registration_id`` in its own header."""
    return [dataclasses.replace(p, id=uuid7(), registration={"id": registration_id,
                                                              "item": f"finger-{p.position}"})
            for p in parts]


def race(*steps: Callable[[], None]) -> None:
    """Run each step in its own thread, all released at once; re-raise the first error."""
    barrier = threading.Barrier(len(steps))
    errors: list[BaseException] = []

    def run(step: Callable[[], None]) -> None:
        barrier.wait()
        try:
            step()
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(step,)) for step in steps]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    if errors:
        raise errors[0]


class Side:
    """One receiver's view: its own store (batch connection) and assembler."""

    def __init__(self, dsn: str, root: Path, name: str, max_unfinished: int = 20) -> None:
        self.store = PostgresStore(dsn, root, name)
        self.assembler = RegistrationAssembler(self.store)
        self.finisher = RegistrationFinisher(self.assembler, 30, 3600, lambda counter: None,
                                             max_unfinished=max_unfinished)

    def part(self, capture: Any) -> None:
        assert self.store.store(KIOSK_A, capture) == "stored"
        self.finisher.part_arrived(KIOSK_A, capture.registration["id"], "stored")

    def manifest(self, manifest: dict[str, Any]) -> str:
        refusal = self.finisher.refusal(KIOSK_A, manifest)
        if refusal is not None:
            return refusal[0]
        outcome = self.assembler.store_manifest(KIOSK_A, manifest)
        self.finisher.part_arrived(KIOSK_A, manifest["id"], outcome)
        return outcome

    def commit_after_window(self) -> None:
        time.sleep(WINDOW_S)
        self.store.commit()

    def close(self) -> None:
        self.store.close()


def test_parts_racing_on_two_receivers_complete_each_registration_exactly_once(
        tmp_path: Path, pg_dsn: str) -> None:
    base = finger_captures(KIOSK_A, [1, 2, 3])
    a, b = Side(pg_dsn, tmp_path / "a", "ra"), Side(pg_dsn, tmp_path / "b", "rb")
    registrations = []
    try:
        for n in range(12):
            registration_id = uuid7()
            parts = tagged(base, registration_id)
            manifest = registration_manifest(KIOSK_A, registration_id, parts)
            registrations.append(registration_id)
            if n % 2:
                # The manifest and one part at one receiver, the other parts at the other,
                # in the same instant: each batch alone lacks what the other holds.
                race(lambda m=manifest, p=parts: (a.manifest(m), a.part(p[0]), a.commit_after_window()),
                     lambda p=parts: (b.part(p[1]), b.part(p[2]), b.commit_after_window()))
            else:
                # Every part stored first; then the manifest and the last part race.
                a.part(parts[0])
                a.store.commit()  # (one thread: a batch holding the lock would block the next)
                b.part(parts[1])
                b.store.commit()
                race(lambda m=manifest: (a.manifest(m), a.commit_after_window()),
                     lambda p=parts: (b.part(p[2]), b.commit_after_window()))
    finally:
        a.close()
        b.close()
    states = dict(rows(pg_dsn, "SELECT registration_id, state FROM registrations"))
    assert states == {rid: "complete" for rid in registrations}, "none left waiting for a part it has"
    outbox = rows(pg_dsn, "SELECT registration_id, count(*) FROM outbox GROUP BY registration_id")
    assert sorted(outbox) == sorted((rid, 1) for rid in registrations), "one outbox row each"
    assert a.assembler.completed + b.assembler.completed == len(registrations)
    assert rows(pg_dsn, "SELECT count(*) FROM registration_missing") == [(0,)]
    files = rows(pg_dsn, "SELECT r.files, o.transaction FROM registrations r JOIN outbox o"
                         " USING (kiosk_id, registration_id) LIMIT 1")
    an2 = next(f for f in files[0][0] if f["name"].endswith(".an2"))
    assert an2["sha256"] == hashlib.sha256(bytes(files[0][1])).hexdigest()
    assert rows(pg_dsn, "SELECT count(*) FROM registration_files WHERE name LIKE '%%.fir'") == [
        (len(registrations),)]


def test_the_cap_on_unfinished_registrations_holds_across_receivers(tmp_path: Path, pg_dsn: str) -> None:
    cap = 5
    a = Side(pg_dsn, tmp_path / "a", "ra", max_unfinished=cap)
    b = Side(pg_dsn, tmp_path / "b", "rb", max_unfinished=cap)
    outcomes: list[str] = []
    try:
        for _ in range(6):
            # Each a manifest whose part never comes: it stays unfinished.
            one, two = (registration_manifest(KIOSK_A, uuid7(), [record(KIOSK_A)]) for _ in range(2))
            race(lambda one=one: (outcomes.append(a.manifest(one)), a.commit_after_window()),
                 lambda two=two: (outcomes.append(b.manifest(two)), b.commit_after_window()))
        # Another kiosk's cap is its own.
        other = registration_manifest(KIOSK_B, uuid7(), [record(KIOSK_B)])
        assert a.finisher.refusal(KIOSK_B, other) is None
    finally:
        a.close()
        b.close()
    waiting = rows(pg_dsn, "SELECT count(*) FROM registrations WHERE kiosk_id = %s AND state = 'waiting'",
                   (KIOSK_A,))
    assert waiting == [(cap,)], f"{waiting[0][0]} unfinished registrations admitted, cap {cap}"
    assert outcomes.count("stored") == cap and outcomes.count("too-many-unfinished") == 12 - cap


def test_incomplete_registrations_say_what_is_missing_and_any_receiver_reports_them(
        tmp_path: Path, broker: MosquittoBroker, pg_dsn: str) -> None:
    registration_id = uuid7()
    parts = tagged(finger_captures(KIOSK_A, [1, 2, 3]), registration_id)
    manifest = registration_manifest(KIOSK_A, registration_id, parts)
    # The receiver that takes the manifest would report it only after an hour; it stops.
    with rig(tmp_path, broker, store=pg_dsn, incomplete_after_s=3600.0) as r:
        for part in (parts[0], parts[2]):
            r.send(KIOSK_A, sealed_capture(r.sealers[KIOSK_A], part))
        # Both parts stored (committed: receipts follow the commit) before the manifest, so
        # what is missing is finger-2 alone. (Once, in a loaded CI run, all three were found
        # missing; not reproduced in 18 runs here, 10 under load: this makes the precondition
        # explicit, and a failure here would name it.)
        assert [r.wire.receipt(part.id)["status"] for part in (parts[0], parts[2])] == ["stored"] * 2
        assert rows(pg_dsn, "SELECT count(*) FROM captures") == [(2,)]
        r.send(KIOSK_A, sealed_manifest(r.sealers[KIOSK_A], KIOSK_A, manifest, seq=9))
        assert r.wire.receipt(registration_id)["status"] == "stored"
        r.settle()
        # Another receiver, started later, finds it in the table and reports it.
        later = r.config.model_copy(update={"receiver": r.config.receiver.model_copy(update={
            "name": "r2", "output_dir": tmp_path / "out2", "incomplete_after_s": 0.2})})
        r.receiver.stop()
        r.receiver = Receiver(later)
        r.receiver.start()
        wait_until(lambda: rows(pg_dsn, "SELECT status->>'state' FROM registrations") == [("incomplete",)],
                   what="the incomplete status kept in the table")
    (status,) = rows(pg_dsn, "SELECT status FROM registrations WHERE registration_id = %s",
                     (registration_id,))
    assert [(m["item"], m["position"], m["id"]) for m in status[0]["missing"]] == [
        ("finger-2", 2, parts[1].id)]
    assert rows(pg_dsn, "SELECT registration_id, capture_id, item, position FROM registration_missing") == [
        (registration_id, parts[1].id, "finger-2", 2)]
    assert rows(pg_dsn, "SELECT count(*) FROM outbox") == [(0,)]


def test_a_chunked_transfer_split_between_two_receivers_assembles(
        tmp_path: Path, broker: MosquittoBroker, pg_dsn: str) -> None:
    with rig(tmp_path, broker, store=pg_dsn, group_commit_ms=20.0) as r:
        second = r.config.model_copy(update={"receiver": r.config.receiver.model_copy(
            update={"name": "r2", "output_dir": tmp_path / "out2"})})
        other = Receiver(second)
        other.start()
        try:
            wait_until(lambda: other.link.subscribed, what="second receiver subscribed")
            seal = r.sealers[KIOSK_A]
            items, answers = [], []
            for _ in range(3):  # one transfer at a time, as a kiosk sends them
                capture = record(KIOSK_A, image=os.urandom(180_000))
                payload = sealed_capture(seal, capture)
                manifest = make_manifest(capture.id, KIOSK_A, capture.seq, "capture", payload, 16384)
                items.append(capture)
                for _ in range(5):
                    # A chunk may reach the other receiver before the manifest is read: it is
                    # answered "unknown" and dropped, and the kiosk, with no receipt after its
                    # timeout, announces the transfer again and sends what is missing.
                    r.send(KIOSK_A, manifest.encode(seal), "chunks")
                    for index in range(manifest.count):
                        r.send(KIOSK_A, chunk_of(manifest, payload, index).encode(), "chunks")
                    try:
                        answers.append(r.wire.receipt(capture.id, timeout_s=3)["status"])
                        break
                    except AssertionError:
                        continue
            counted = [(x.counters.chunks_received, x.counters.reassembled) for x in (r.receiver, other)]
        finally:
            other.stop()
    assert answers == ["stored"] * 3
    assert all(chunks > 0 for chunks, _ in counted), f"chunks split between the receivers: {counted}"
    assert sum(done for _, done in counted) == 3
    stored = rows(pg_dsn, "SELECT capture_id, image FROM captures WHERE kiosk_id = %s", (KIOSK_A,))
    assert {c.id: c.image for c in items}.items() <= {cid: bytes(image) for cid, image in stored}.items()
    assert rows(pg_dsn, "SELECT count(*) FROM chunk_parts") == [(0,)], "chunks dropped once stored"
    kept = rows(pg_dsn, "SELECT count(*) FROM chunk_transfers WHERE done_at IS NOT NULL"
                        " AND receipt IS NOT NULL")
    assert kept == [(3,)], "each finished transfer keeps its receipt for a kiosk that missed it"


def test_hostile_manifest_text_is_bound_kept_verbatim_and_never_spliced(tmp_path: Path, pg_dsn: str) -> None:
    """What a kiosk's key signs reaches SQL only as bound parameters: quotes, placeholders and
    NUL in a manifest's fields are stored and read back as they came; ids that could not name
    a file are refused before any SQL."""
    import pytest

    from receiver.paths import UnsafeName

    side = Side(pg_dsn, tmp_path / "a", "ra")
    hostile = "x'); DROP TABLE registrations; -- %s $1 \\' \u0000 \u202e"
    registration_id = uuid7()
    part = record(KIOSK_A)
    manifest = registration_manifest(KIOSK_A, registration_id, [part], applicant_ref=hostile, site=hostile)
    manifest["captures"][0]["item"] = hostile
    try:
        assert side.assembler.store_manifest(KIOSK_A, manifest) == "stored"
        assert side.assembler.store_manifest(KIOSK_A, dict(manifest)) == "duplicate"
        assert side.assembler.store_manifest(KIOSK_A, {**manifest, "site": "other"}) == "conflict"
        for bad_id in ("x'; DROP TABLE registrations; --", "../kiosk-b", "%s"):
            with pytest.raises(UnsafeName):
                side.assembler.store_manifest(KIOSK_A, {**manifest, "id": bad_id})
            with pytest.raises(UnsafeName):
                side.assembler.status(KIOSK_A, bad_id)
        with pytest.raises(UnsafeName):
            side.assembler.status("kiosk'; --", registration_id)
        side.store.commit()
        found = side.assembler.records.get(KIOSK_A, registration_id)
    finally:
        side.close()
    assert found is not None and found[0] == manifest and found[1] == "waiting"
    assert rows(pg_dsn, "SELECT item FROM registration_parts") == [(hostile.replace("\0", "")[:64],)]
    assert rows(pg_dsn, "SELECT count(*) FROM registrations") == [(1,)]


def test_receiver_status_reads_the_tables(tmp_path: Path, pg_dsn: str,
                                          capsys: Any) -> None:
    """`kiosk-agent receiver status` on a PostgreSQL store: counts, and each incomplete or
    failed registration with what it lacks; exit 1 once one has failed."""
    import json

    from cli.main import main
    from tests.central.configs import config_file

    side = Side(pg_dsn, tmp_path / "a", "ra")
    waiting_id, failed_id = uuid7(), uuid7()
    parts = [record(KIOSK_A, position=2), record(KIOSK_A, position=3)]
    try:
        side.manifest(registration_manifest(KIOSK_A, waiting_id, parts))
        side.manifest(registration_manifest(KIOSK_A, failed_id, [record(KIOSK_A)]))
        side.store.commit()
        config = config_file(tmp_path, pg_dsn)
        assert main(["receiver", "--config", str(config), "status", "--json"]) == 0
        report = json.loads(capsys.readouterr().out)
        side.assembler.record_failure(KIOSK_A, failed_id, "OSError: disk", 2, 30.0, "storage")
        side.store.commit()
        assert main(["receiver", "--config", str(config), "status"]) == 1
        text = capsys.readouterr().out
    finally:
        side.close()
    assert report["counts"] == {"incomplete": 2}
    (entry,) = [e for e in report["registrations"] if e["id"] == waiting_id]
    assert [m["item"] for m in entry["missing"]] == ["finger-2", "finger-3"]
    assert "2 registrations in the PostgreSQL store: 0 complete, 1 incomplete, 1 failed" in text
    assert f"{failed_id} failed: storage (attempt 2" in text and "missing finger-2" in text


def test_chunks_put_by_two_receivers_at_once_are_counted_so_one_of_them_completes(
        tmp_path: Path, pg_dsn: str) -> None:
    """The transfer's count is the table's, not each receiver's: with the chunks split
    between two receivers racing, exactly one sees every chunk held, and reassembles the
    whole item from both receivers' rows."""
    from agent.transport.chunking import Manifest
    from receiver.storage.pg_chunks import PostgresChunks
    from tests.support.hostile import sealers

    seal = sealers(tmp_path)[KIOSK_A]
    payload = os.urandom(100_000)
    manifest = make_manifest(uuid7(), KIOSK_A, 1, "capture", payload, 4096)
    raw = manifest.encode(seal)
    stores = [PostgresStore(pg_dsn, tmp_path / name, name) for name in ("ra", "rb")]
    sides = [PostgresChunks(store, 1 << 30) for store in stores]
    held: dict[int, int] = {}
    try:
        first = sides[0].begin(KIOSK_A, Manifest.decode(raw), raw)
        stores[0].commit()
        transfers = [first, sides[1].lookup(KIOSK_A, manifest.id, manifest.sha256)]
        assert transfers[1] is not None, "the other receiver reads the manifest from the table"

        # A chunk one receiver stored, sent again to the other: a duplicate, counted once.
        assert sides[1].put(transfers[1], chunk_of(manifest, payload, 0)) == "stored"
        stores[1].commit()
        assert sides[0].put(transfers[0], chunk_of(manifest, payload, 0)) == "duplicate"
        stores[0].commit()
        assert rows(pg_dsn, "SELECT held FROM chunk_transfers") == [(1,)]

        def put(n: int) -> None:
            for index in range(2 - n, manifest.count, 2):
                assert sides[n].put(transfers[n], chunk_of(manifest, payload, index)) == "stored"
            held[n] = transfers[n].held
            time.sleep(WINDOW_S)
            stores[n].commit()

        race(lambda: put(0), lambda: put(1))
        done = max(held, key=lambda n: held[n])
        # Every chunk held: one sent again is not stored, and the count stays.
        again = 1 - done
        theirs = 1 if again == 0 else 2  # one the other receiver stored
        assert sides[again].put(transfers[again], chunk_of(manifest, payload, theirs)) == "gone"
        stores[again].commit()
        path, bad = sides[done].assemble(transfers[done])
        assert path is not None and bad == set() and path.read_bytes() == payload
        stores[done].commit()
    finally:
        for store in stores:
            store.close()
    assert held[done] == manifest.count and held[1 - done] < manifest.count, (
        f"exactly one receiver sees every chunk held: {held}")
    assert rows(pg_dsn, "SELECT held, count FROM chunk_transfers") == [(manifest.count, manifest.count)]
