"""Registration records in PostgreSQL (tables from migrations/002): what lets any receiver of
a share group take any part of any registration.

Parts of one registration may reach different receivers within the same few milliseconds,
each in its own open batch. Checked without care, each would see only its own uncommitted
part and neither would find the registration complete. So a check starts with a
transaction-scoped advisory lock on (kiosk, registration): the second receiver waits until
the first one's batch has committed, and its next statement (READ COMMITTED: a new snapshot)
sees the first one's parts. The state column is read and changed under that lock, so a
registration is completed, and handed to the outbox, once. The cap on unfinished
registrations is counted under a per-kiosk advisory lock the same way.

Every statement runs in the store's open batch (receiver/storage/postgres.py), so a part,
the state it brings about and the outbox row commit together, and the receipts wait for
that commit. Locks are held until the batch commits: a few milliseconds
(``receiver.group_commit_ms``). Two receivers that each hold what the other waits for (the
same capture resent to both while both check its registration) are a deadlock PostgreSQL
breaks within ``deadlock_timeout`` by failing one batch: nothing of it is receipted, and
the kiosks send it again.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from psycopg.types.json import Json

from receiver.storage.base import Outcome, State

if TYPE_CHECKING:
    from receiver.storage.postgres import PostgresStore

#: Advisory lock spaces (the two-key form, apart from migrate.py's one-key lock).
REGISTRATION_LOCK = 0x6B72  # "kr": one registration
KIOSK_LOCK = 0x6B6B  # "kk": one kiosk's registrations, for the cap
#: Registrations whose failure is scheduled for a retry at start, at most.
FAILURES_READ = 100_000
#: What the receiver keeps of a listed item's name and modality (manifest_rules checked them).
TEXT_MAX = 64


class PostgresRegistrations:
    shared = True

    def __init__(self, store: PostgresStore) -> None:
        self.store = store
        # What get() read of registrations this batch holds the lock of: nobody else changes
        # them before the batch ends, so the state asked for again right after an assembly
        # attempt (retries.py, status.py) costs no round trip. Dropped at every commit and
        # rollback, and on each change made here. (True: locked, not read yet.)
        self._batch = (-1, -1)
        self._locked: dict[tuple[str, str], Any] = {}

    def _run(self, query: str, params: tuple[Any, ...] = ()):  # type: ignore[no-untyped-def]
        return self.store._run(query, params)

    def _held(self) -> dict[tuple[str, str], Any]:
        batch = (self.store.commits, self.store.rollbacks)
        if batch != self._batch:
            self._batch = batch
            self._locked = {}
        return self._locked

    def _changed(self, kiosk_id: str, registration_id: str) -> None:
        held = self._held()
        if (kiosk_id, registration_id) in held:
            held[(kiosk_id, registration_id)] = True

    def lock(self, kiosk_id: str, registration_id: str) -> None:
        held = self._held()
        if (kiosk_id, registration_id) in held:
            return  # taken already in this batch (transaction-scoped: held till it ends)
        self._run("SELECT pg_advisory_xact_lock(%s, hashtext(%s))",
                  (REGISTRATION_LOCK, f"{kiosk_id}/{registration_id}"))
        held[(kiosk_id, registration_id)] = True

    def get(self, kiosk_id: str, registration_id: str) -> tuple[dict[str, Any], State] | None:
        held = self._held()
        known = held.get((kiosk_id, registration_id), False)
        if known is not True and known is not False:
            return known  # type: ignore[no-any-return]
        row = self._run("SELECT manifest, state FROM registrations WHERE kiosk_id = %s"
                        " AND registration_id = %s", (kiosk_id, registration_id)).fetchone()
        found = None if row is None else (row[0], row[1])
        if known is True:
            held[(kiosk_id, registration_id)] = found
        return found

    def put_manifest(self, kiosk_id: str, manifest: dict[str, Any]) -> Outcome:
        text = json.dumps(manifest, sort_keys=True)
        digest = hashlib.sha256(text.encode()).hexdigest()
        registration_id = manifest["id"]
        self._changed(kiosk_id, registration_id)
        added = self._run(
            "INSERT INTO registrations (kiosk_id, registration_id, manifest, manifest_sha256, state,"
            " received_by) VALUES (%s, %s, %s, %s, 'waiting', %s)"
            " ON CONFLICT (kiosk_id, registration_id) DO NOTHING RETURNING 1",
            (kiosk_id, registration_id, text, digest, self.store.name)).fetchone()
        if added is None:
            row = self._run("SELECT manifest_sha256 FROM registrations WHERE kiosk_id = %s"
                            " AND registration_id = %s", (kiosk_id, registration_id)).fetchone()
            return "duplicate" if row is not None and row[0] == digest else "conflict"
        entries = manifest["captures"]  # ids checked, at most 64 (receiver/assembly.py)
        if entries:
            self._run(
                "INSERT INTO registration_parts (kiosk_id, registration_id, capture_id, item, modality,"
                " position) SELECT %s, %s, * FROM unnest(%s::text[], %s::text[], %s::text[], %s::smallint[])",
                (kiosk_id, registration_id, [e["id"] for e in entries],
                 [_text(e.get("item")) for e in entries], [_text(e.get("modality")) for e in entries],
                 [_position(e.get("position")) for e in entries]))
        return "stored"

    def present(self, kiosk_id: str, capture_ids: list[str], owner: str) -> dict[str, str | None]:
        # One query whatever the list's length (the column is the capture's own header's).
        rows = dict(self._run("SELECT capture_id, registration_id FROM captures WHERE kiosk_id = %s"
                              " AND capture_id = ANY(%s)", (kiosk_id, capture_ids)).fetchall())
        return {cid: rows[cid] for cid in capture_ids if cid in rows}

    def cancel(self, kiosk_id: str, registration_id: str, summary: dict[str, Any]) -> None:
        self._changed(kiosk_id, registration_id)
        self._run("UPDATE registrations SET state = 'cancelled', updated_at = now()"
                  " WHERE kiosk_id = %s AND registration_id = %s AND state <> 'complete'",
                  (kiosk_id, registration_id))

    def complete(self, kiosk_id: str, registration_id: str, built: Iterable[tuple[str, bytes]],
                 summary: dict[str, Any]) -> bool:
        outputs = dict(built)
        self._changed(kiosk_id, registration_id)
        listed = [{"name": f"{registration_id}{suffix}", "sha256": hashlib.sha256(data).hexdigest(),
                   "bytes": len(data)}
                  for suffix, data in outputs.items() if suffix in (".an2", ".fir", ".fac")]
        done = self._run(
            "UPDATE registrations SET state = 'complete', files = %s, completed_at = now(),"
            " completed_by = %s, updated_at = now(), failure_code = NULL, failure = NULL, retry_at = NULL"
            " WHERE kiosk_id = %s AND registration_id = %s AND state NOT IN ('complete', 'cancelled')"
            " RETURNING 1", (Json(listed), self.store.name, kiosk_id, registration_id)).fetchone()
        if done is None:
            return False
        for suffix, data in outputs.items():
            if suffix != ".an2":
                self._run("INSERT INTO registration_files (kiosk_id, registration_id, name, sha256, data)"
                          " VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                          (kiosk_id, registration_id, f"{registration_id}{suffix}",
                           hashlib.sha256(data).hexdigest(), data))
        self.store.hand_off(kiosk_id, registration_id, outputs[".an2"])
        return True

    def files(self, kiosk_id: str, registration_id: str) -> tuple[dict[str, Any], ...]:
        row = self._run("SELECT files FROM registrations WHERE kiosk_id = %s AND registration_id = %s",
                        (kiosk_id, registration_id)).fetchone()
        return tuple(row[0]) if row and isinstance(row[0], list) else ()

    def record_failure(self, kiosk_id: str, registration_id: str, code: str, error: str, attempts: int,
                       retry_in_s: float | None) -> None:
        self._changed(kiosk_id, registration_id)
        self._run("UPDATE registrations SET state = 'failed', failure_code = %s, failure = %s, attempts = %s,"
                  " retry_at = now() + make_interval(secs => %s), updated_at = now()"
                  " WHERE kiosk_id = %s AND registration_id = %s AND state NOT IN ('complete', 'cancelled')",
                  (code, error[:2000].replace("\0", ""), attempts, retry_in_s, kiosk_id, registration_id))

    def clear_failure(self, kiosk_id: str, registration_id: str) -> None:
        self._changed(kiosk_id, registration_id)
        self._run("UPDATE registrations SET failure_code = NULL, failure = NULL, retry_at = NULL,"
                  " state = CASE WHEN state = 'failed' THEN 'waiting' ELSE state END, updated_at = now()"
                  " WHERE kiosk_id = %s AND registration_id = %s", (kiosk_id, registration_id))

    def failures(self) -> Iterator[tuple[str, str]]:
        rows = self._run("SELECT kiosk_id, registration_id FROM registrations WHERE state = 'failed'"
                         " ORDER BY retry_at LIMIT %s", (FAILURES_READ,)).fetchall()
        yield from ((k, r) for k, r in rows)

    def kept_status(self, kiosk_id: str, registration_id: str) -> dict[str, Any] | None:
        row = self._run("SELECT status FROM registrations WHERE kiosk_id = %s AND registration_id = %s",
                        (kiosk_id, registration_id)).fetchone()
        return row[0] if row and isinstance(row[0], dict) else None

    def keep_status(self, kiosk_id: str, registration_id: str, record: dict[str, Any]) -> None:
        self._run("UPDATE registrations SET status = %s, status_seq = %s, updated_at = now()"
                  " WHERE kiosk_id = %s AND registration_id = %s",
                  (Json(record), int(record.get("seq") or 0), kiosk_id, registration_id))

    def on_record(self, kiosk_id: str, registration_ids: list[str]) -> set[str]:
        if not registration_ids:
            return set()
        rows = self._run("SELECT registration_id FROM registrations WHERE kiosk_id = %s"
                         " AND registration_id = ANY(%s)", (kiosk_id, registration_ids)).fetchall()
        return {r for (r,) in rows}

    def unfinished(self, kiosk_id: str) -> int:
        # The lock first, in a statement of its own: a count in the same statement would use
        # the snapshot taken before the wait, and miss what the lock's last holder committed.
        self._run("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (KIOSK_LOCK, kiosk_id))
        row = self._run("SELECT count(*) FROM registrations WHERE kiosk_id = %s AND (state = 'waiting'"
                        " OR (state = 'failed' AND failure_code IS DISTINCT FROM 'storage'))",
                        (kiosk_id,)).fetchone()
        return int(row[0]) if row else 0

    def due_incomplete(self, older_than_s: float, limit: int) -> list[tuple[str, str]]:
        rows = self._run(
            "SELECT kiosk_id, registration_id FROM registrations WHERE state = 'waiting'"
            " AND received_at < now() - make_interval(secs => %s)"
            " AND (status IS NULL OR status->>'state' IS DISTINCT FROM 'incomplete')"
            " ORDER BY received_at LIMIT %s FOR UPDATE SKIP LOCKED", (older_than_s, limit)).fetchall()
        return [(k, r) for k, r in rows]


def _text(value: Any) -> str | None:
    return value[:TEXT_MAX].replace("\0", "") if isinstance(value, str) else None


def _position(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 100 else None
