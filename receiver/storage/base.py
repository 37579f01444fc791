"""What the receiver asks of the place captures are kept, whichever it is.

Two implementations: receiver/store.py (files under ``receiver.output_dir``: the embedded
default for the demo and small sites) and receiver/storage/postgres.py (PostgreSQL, for
many receivers sharing one database). Registration manifests, their status records and
chunked transfers stay in files under ``output_dir`` for both in this version.

A store may be *batched*: what ``store`` returns is then decided but not yet durable, and
becomes durable only at ``commit``. The receiver publishes a receipt only once the store
that filed its capture has committed (receiver/group_commit.py); a store that is not
batched is durable when ``store`` returns.
"""

from __future__ import annotations

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
