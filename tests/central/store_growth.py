"""How the PostgreSQL store grows on disk per capture: figures for docs/central-store.md.

    .venv/bin/python -m tests.central.store_growth [COUNT] [IMAGE_BYTES]

Files COUNT captures of IMAGE_BYTES random (incompressible, as PNG, WSQ and JPEG images are)
bytes through the receiver's own PostgresStore, in batches of 200 as group commit does, into
a scratch database, then reads pg_total_relation_size (heap, TOAST and indexes) of each
table after VACUUM. Then as many registrations of 11 parts with their transaction in the
outbox. Prints one JSON object.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import tempfile
from pathlib import Path

import psycopg

from agent.capture.ids import uuid7
from receiver.storage.postgres import PostgresStore
from tests.support.hostile import KIOSK_A, record, registration_manifest
from tests.support.postgres import scratch_database

TABLES = ("captures", "registrations", "registration_parts", "outbox", "security_events",
          "chunk_transfers", "chunk_parts")


def sizes(dsn: str) -> dict[str, dict[str, int]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
        out = {}
        for table in TABLES:
            total, heap, indexes = conn.execute(
                "SELECT pg_total_relation_size(%s), pg_relation_size(%s), pg_indexes_size(%s)",
                (table, table, table)).fetchone()  # type: ignore[misc]
            out[table] = {"total": total, "heap": heap, "indexes": indexes, "toast": total - heap - indexes}
        return out


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    size = int(sys.argv[2]) if len(sys.argv) > 2 else 100_000
    with tempfile.TemporaryDirectory() as tmp, scratch_database() as dsn:
        store = PostgresStore(dsn, Path(tmp), "growth")
        empty = sizes(dsn)
        for n in range(count):
            store.store(KIOSK_A, record(KIOSK_A, image=os.urandom(size), seq=n))
            if n % 200 == 199:
                store.commit()
        store.commit()
        filled = sizes(dsn)
        # Registrations: 11 parts each, the manifest row, its parts, its transaction (~1.1 MB).
        registrations = max(1, count // 11)
        for _ in range(registrations):
            registration_id = uuid7()
            parts = [dataclasses.replace(record(KIOSK_A, image=b""), registration={"id": registration_id})
                     for _ in range(11)]
            manifest = registration_manifest(KIOSK_A, registration_id, parts)
            store._run("INSERT INTO registrations (kiosk_id, registration_id, manifest, manifest_sha256,"
                       " state, received_by) VALUES (%s, %s, %s, '', 'complete', 'growth')",
                       (KIOSK_A, registration_id, json.dumps(manifest)))
            store._run("INSERT INTO registration_parts (kiosk_id, registration_id, capture_id)"
                       " SELECT %s, %s, unnest(%s::text[])",
                       (KIOSK_A, registration_id, [p.id for p in parts]))
            store.hand_off(KIOSK_A, registration_id, os.urandom(11 * size))
        store.commit()
        store.close()
        done = sizes(dsn)
    captures = filled["captures"]["total"] - empty["captures"]["total"]
    toast = filled["captures"]["toast"] - empty["captures"]["toast"]
    reg = sum(done[t]["total"] - filled[t]["total"] for t in ("registrations", "registration_parts"))
    outbox = done["outbox"]["total"] - filled["outbox"]["total"]
    print(json.dumps({
        "captures": count, "image_bytes": size,
        "captures_bytes_per_capture": round(captures / count),
        "captures_toast_bytes_per_capture": round(toast / count),
        "captures_heap_and_index_bytes_per_capture": round((captures - toast) / count),
        "overhead_ratio": round(captures / count / size, 3),
        "registrations": registrations,
        "registration_rows_bytes_per_registration": round(reg / registrations),
        "outbox_bytes_per_registration": round(outbox / registrations),
        "outbox_transaction_bytes": 11 * size,
    }, indent=1))


if __name__ == "__main__":
    main()
