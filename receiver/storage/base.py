"""What the receiver asks of the place captures are kept, whichever it is.

Two implementations: receiver/store.py (files under ``receiver.output_dir``: the embedded
default for the demo and small sites) and receiver/storage/postgres.py (PostgreSQL, for
many receivers sharing one database). Where registrations stand (RegistrationRecords) and
chunked transfers are kept beside the captures: in files under ``output_dir`` with the file
store (receiver/storage/file_registrations.py, receiver/chunks.py), in tables with
PostgreSQL (receiver/storage/pg_registrations.py, receiver/storage/pg_chunks.py), so
receivers on one database keep nothing of their own.

A store may be *batched*: what ``store`` returns is then decided but not yet durable, and
becomes durable only at ``commit``. The receiver publishes a receipt only once the store
that filed its capture has committed (receiver/group_commit.py); a store that is not
batched is durable when ``store`` returns.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Literal, Protocol

from agent.capture.record import CaptureRecord

Outcome = Literal["stored", "duplicate", "conflict"]


class StoreUnavailable(Exception):
    """The store could not file or commit (database down, connection lost): transient.
    Nothing of the batch in flight is durable, so none of it may be receipted."""


class Store(Protocol):
    #: Where file-side state lives (chunked transfers, registration records).
    root: Path
    #: True when ``store`` is durable only after ``commit``.
    batched: bool

    def folder(self, kiosk_id: str) -> Path:
        """The verified kiosk's folder for file-side state; UnsafeName for a hostile id."""
        ...

    def store(self, kiosk_id: str, record: CaptureRecord) -> Outcome:
        """File ``record`` under the verified ``kiosk_id``; never replaces what is stored."""
        ...

    def stage(self, kiosk_id: str, record: CaptureRecord, decided: Callable[[Outcome], None]) -> None:
        """``store``, with the outcome handed to ``decided``: at once, or for a batched store
        when the batch is written (before its commit, and never for a batch that fails)."""
        ...

    def flush(self) -> None:
        """Decide what ``stage`` holds (a batched store writes it, still uncommitted)."""
        ...

    def load(self, kiosk_id: str, capture_id: str) -> tuple[dict[str, Any], bytes] | None:
        """(metadata, image bytes) of a stored capture, or None."""
        ...

    def has(self, kiosk_id: str, capture_id: str) -> bool: ...

    def count(self) -> int: ...

    def publish_registration(self, kiosk_id: str, registration_id: str, transaction: Path) -> bool:
        """Hand a finished ANSI/NIST transaction (already durable at ``transaction``) to the
        matching service's outbox, exactly once; True when this call added it."""
        ...

    def security_event(self, kiosk_id: str, kind: str, reason: str) -> None:
        """Record a refused message where an operator can query it (best effort)."""
        ...

    def commit(self) -> None:
        """Make everything stored since the last commit durable; StoreUnavailable if not."""
        ...

    def rollback(self) -> None: ...

    def close(self) -> None: ...


#: A registration's state on the central side.
State = Literal["complete", "cancelled", "failed", "waiting", "unknown"]


class RegistrationRecords(Protocol):
    """Where registration manifests, their state, the files built from them and the status
    last told to the kiosk are kept (receiver/assembly.py and receiver/status.py use it).
    Ids reach it checked (receiver/paths.py); every call is on the receiver's MQTT thread,
    in the open batch of a batched store."""

    #: True when other receivers see the same records (a shared database): the cap on
    #: unfinished registrations and the "incomplete" reports then come from the records.
    shared: bool

    def lock(self, kiosk_id: str, registration_id: str) -> None:
        """Until the batch commits, no other receiver checks or changes this registration;
        what they committed before is visible after this returns."""
        ...

    def get(self, kiosk_id: str, registration_id: str) -> tuple[dict[str, Any], State] | None:
        """(the manifest, the state) of a registration whose manifest is here, or None."""
        ...

    def put_manifest(self, kiosk_id: str, manifest: dict[str, Any]) -> Outcome: ...

    def present(self, kiosk_id: str, capture_ids: list[str], owner: str) -> dict[str, str | None]:
        """Which listed captures are stored: capture id -> the registration its own header
        names (or None), in list order; may stop after the first that does not name ``owner``."""
        ...

    def cancel(self, kiosk_id: str, registration_id: str, summary: dict[str, Any]) -> None: ...

    def complete(self, kiosk_id: str, registration_id: str, outputs: Iterable[tuple[str, bytes]],
                 summary: dict[str, Any]) -> bool:
        """Keep the files built ((suffix, bytes), ".an2", the transaction, first), hand the
        transaction to the outbox and record the registration complete, exactly once: True
        when this call completed it."""
        ...

    def files(self, kiosk_id: str, registration_id: str) -> tuple[dict[str, Any], ...]:
        """name, sha256 and bytes of the transaction and the finger and face records."""
        ...

    def record_failure(self, kiosk_id: str, registration_id: str, code: str, error: str, attempts: int,
                       retry_in_s: float | None) -> None: ...

    def clear_failure(self, kiosk_id: str, registration_id: str) -> None: ...

    def failures(self) -> Iterator[tuple[str, str]]:
        """(kiosk id, registration id) of every registration whose assembly failed."""
        ...

    def kept_status(self, kiosk_id: str, registration_id: str) -> dict[str, Any] | None: ...

    def keep_status(self, kiosk_id: str, registration_id: str, record: dict[str, Any]) -> None: ...

    def on_record(self, kiosk_id: str, registration_ids: list[str]) -> set[str]:
        """The (checked) ids with a manifest or a kept status here."""
        ...

    def unfinished(self, kiosk_id: str) -> int:
        """Shared records: the kiosk's registrations waiting for parts or failed for their
        data, counted under a per-kiosk lock held until the batch commits (so two receivers
        cannot both admit the one over the cap)."""
        ...

    def due_incomplete(self, older_than_s: float, limit: int) -> list[tuple[str, str]]:
        """Shared records: registrations waiting longer than ``older_than_s`` whose kiosk has
        not been told they are incomplete; locked (skipped by other receivers) till commit."""
        ...
