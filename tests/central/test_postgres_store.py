"""The PostgreSQL capture store on a real server: one row per (verified kiosk, capture id),
duplicates told from conflicts, hostile ids refused before SQL and every value bound as a
parameter, migrations applied once when receivers start together."""

from __future__ import annotations

import threading
from pathlib import Path

import psycopg
import pytest

from devtools.broker import MosquittoBroker
from receiver.paths import UnsafeName
from receiver.storage.base import StoreUnavailable
from receiver.storage.migrate import migrations
from receiver.storage.postgres import PostgresStore
from tests.support.hostile import KIOSK_A, KIOSK_B, record, rig, sealed_capture

#: Names an attacker would try on SQL as well as on paths.
SQL_HOSTILE = ["x'; DROP TABLE captures; --", "kiosk-t1' OR '1'='1", "a\0b", "$1", "%s", "kiosk\\'",
               "../kiosk-b", "ü" * 10, "x" * 5000]


def rows(dsn: str, query: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(query, params).fetchall()


def test_stored_duplicate_conflict_and_the_bytes_in_the_row(tmp_path: Path, pg_dsn: str) -> None:
    store = PostgresStore(pg_dsn, tmp_path, "r1")
    try:
        first = record(KIOSK_A)
        assert store.store(KIOSK_A, first) == "stored"
        assert store.store(KIOSK_A, first) == "duplicate"
        other = record(KIOSK_A, first.id)  # same id, other image
        assert store.store(KIOSK_A, other) == "conflict"
        assert store.store(KIOSK_B, other) == "stored", "the key is (verified kiosk, id)"
        store.commit()
        meta, image = store.load(KIOSK_A, first.id)  # type: ignore[misc]
        assert image == first.image and meta["image_sha256"] == first.image_sha256
        assert store.has(KIOSK_A, first.id) and not store.has(KIOSK_A, record(KIOSK_A).id)
    finally:
        store.close()
    assert rows(pg_dsn, "SELECT kiosk_id, image FROM captures WHERE capture_id = %s ORDER BY kiosk_id",
                (first.id,)) == [(KIOSK_B, other.image), (KIOSK_A, first.image)]


def test_nothing_is_durable_before_commit(tmp_path: Path, pg_dsn: str) -> None:
    store = PostgresStore(pg_dsn, tmp_path, "r1")
    try:
        assert store.store(KIOSK_A, record(KIOSK_A)) == "stored"
        assert rows(pg_dsn, "SELECT count(*) FROM captures") == [(0,)], "visible before COMMIT"
        store.commit()
        assert rows(pg_dsn, "SELECT count(*) FROM captures") == [(1,)]
        store.store(KIOSK_A, record(KIOSK_A))
    finally:
        store.close()  # the open batch is rolled back, never half kept
    assert rows(pg_dsn, "SELECT count(*) FROM captures") == [(1,)]


@pytest.mark.parametrize("hostile", SQL_HOSTILE)
def test_hostile_ids_are_refused_and_bound_never_spliced(tmp_path: Path, pg_dsn: str, hostile: str) -> None:
    store = PostgresStore(pg_dsn, tmp_path, "r1")
    try:
        with pytest.raises(UnsafeName):
            store.store(KIOSK_A, record(KIOSK_A, hostile))
        with pytest.raises(UnsafeName):
            store.store(hostile, record(KIOSK_A))
        # A kiosk id from a topic reaches SQL unchecked here (events are about such names).
        store.security_event(hostile, "unsafe-name", f"refused {hostile!r}")
        for probe in (lambda: store.load(KIOSK_A, hostile), lambda: store.has(hostile, record(KIOSK_A).id)):
            with pytest.raises(UnsafeName):
                probe()
        store.commit()
    finally:
        store.close()
    tables = {name for (name,) in rows(pg_dsn, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    assert {"captures", "outbox", "security_events", "schema_version"} <= tables
    assert rows(pg_dsn, "SELECT count(*) FROM captures") == [(0,)]
    assert rows(pg_dsn, "SELECT kiosk_id FROM security_events") == [(hostile[:200].replace("\0", ""),)]


def test_migrations_apply_once_when_receivers_start_together(tmp_path: Path, pg_dsn: str) -> None:
    start = threading.Barrier(4)
    stores: list[PostgresStore] = []
    errors: list[BaseException] = []

    def open_one(n: int) -> None:
        start.wait()
        try:
            stores.append(PostgresStore(pg_dsn, tmp_path / str(n), f"r{n}"))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=open_one, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    for store in stores:
        store.close()
    assert errors == [] and len(stores) == 4
    shipped = [(version, name) for version, name, _ in migrations()]
    assert rows(pg_dsn, "SELECT version, name FROM schema_version ORDER BY version") == shipped


def test_the_outbox_takes_a_registration_once_whoever_offers_it(tmp_path: Path, pg_dsn: str) -> None:
    an2 = tmp_path / "r.an2"
    an2.write_bytes(b"ANSI/NIST bytes")
    registration_id = record(KIOSK_A).id
    first, second = PostgresStore(pg_dsn, tmp_path / "a", "r1"), PostgresStore(pg_dsn, tmp_path / "b", "r2")
    try:
        assert first.publish_registration(KIOSK_A, registration_id, an2) is True
        first.commit()
        assert second.publish_registration(KIOSK_A, registration_id, an2) is False, "another receiver"
        assert first.publish_registration(KIOSK_A, registration_id, an2) is False, "a retry"
        second.commit()
        first.commit()
    finally:
        first.close()
        second.close()
    assert rows(pg_dsn, "SELECT kiosk_id, registration_id, created_by FROM outbox") == [
        (KIOSK_A, registration_id, "r1")]


def test_a_receiver_refuses_hostile_ids_and_records_the_event(tmp_path: Path, broker: MosquittoBroker,
                                                             pg_dsn: str) -> None:
    """End to end: signed envelopes carrying hostile ids, through MQTT, into the PostgreSQL store."""
    hostile = ["x'; DROP TABLE captures; --", "kiosk-t1' OR '1'='1", "%s"]
    with rig(tmp_path, broker, store=pg_dsn) as r:
        for item_id in hostile:
            r.send(KIOSK_A, sealed_capture(r.sealers[KIOSK_A], record(KIOSK_A, item_id)))
        answers = [r.wire.receipt(item_id)["status"] for item_id in hostile]
        r.settle()
    assert answers == ["rejected"] * 3
    assert rows(pg_dsn, "SELECT count(*) FROM captures") == [(1,)], "only the settling capture"
    assert rows(pg_dsn, "SELECT kiosk_id, kind FROM security_events") == [(KIOSK_A, "unsafe-name")] * 3


def test_a_staged_batch_is_one_statement_decided_in_arrival_order(tmp_path: Path, pg_dsn: str) -> None:
    """Captures staged within one batch are written by one INSERT at the flush; each caller
    hears its own outcome, a copy later in the same batch being a duplicate (or a conflict)."""
    store = PostgresStore(pg_dsn, tmp_path, "r1")
    try:
        earlier = record(KIOSK_A)
        assert store.store(KIOSK_A, earlier) == "stored"
        store.commit()
        first, second = record(KIOSK_A), record(KIOSK_B)
        heard: list[tuple[str, str]] = []
        for kiosk, item in [(KIOSK_A, first), (KIOSK_B, second), (KIOSK_A, first),
                            (KIOSK_A, record(KIOSK_A, first.id)), (KIOSK_A, earlier),
                            (KIOSK_A, record(KIOSK_A, earlier.id))]:
            store.stage(kiosk, item, lambda outcome, kiosk=kiosk, item=item: heard.append((item.id, outcome)))
        assert heard == [], "decided before the batch was written"
        assert rows(pg_dsn, "SELECT count(*) FROM captures") == [(1,)]
        store.commit()
        assert heard == [(first.id, "stored"), (second.id, "stored"), (first.id, "duplicate"),
                         (first.id, "conflict"), (earlier.id, "duplicate"), (earlier.id, "conflict")]
        assert store.load(KIOSK_A, first.id)[1] == first.image  # type: ignore[index]
    finally:
        store.close()
    assert rows(pg_dsn, "SELECT count(*) FROM captures") == [(3,)]


def test_a_batch_whose_write_fails_decides_nothing_and_the_next_works(tmp_path: Path, pg_dsn: str) -> None:
    """The database connection dies between staging and the flush (the server ends it): no
    caller hears an outcome (so no receipt goes out), the commit says so, and the store
    reconnects for the next batch."""
    store = PostgresStore(pg_dsn, tmp_path, "r1")
    try:
        heard: list[str] = []
        store.stage(KIOSK_A, record(KIOSK_A), heard.append)
        pid = store.conn.info.backend_pid  # the connection the batch would be written on
        with psycopg.connect(pg_dsn, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        with pytest.raises(StoreUnavailable):
            store.commit()
        assert heard == []
        store.commit()  # the failure was said once; the next batch starts clean
        store.stage(KIOSK_A, record(KIOSK_A), heard.append)
        store.commit()
        assert heard == ["stored"]
    finally:
        store.close()
    assert rows(pg_dsn, "SELECT count(*) FROM captures") == [(1,)]
