"""Capture storage behind one interface (base.Store): files, or PostgreSQL by config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from receiver.storage.base import Outcome, RegistrationRecords, Store, StoreUnavailable

__all__ = ["Outcome", "RegistrationRecords", "Store", "StoreUnavailable", "chunk_assembly", "open_store",
           "registration_records"]


def open_store(store: str, output_dir: Path, receiver_name: str) -> Store:
    """``store`` is "files" or a ``postgresql://`` DSN (receiver.store in the config)."""
    if store.startswith(("postgresql://", "postgres://")):
        from receiver.storage.postgres import PostgresStore  # psycopg: the `central` extra only

        return PostgresStore(store, output_dir, receiver_name)
    from receiver.store import CaptureStore

    return CaptureStore(output_dir)


def registration_records(store: Store) -> RegistrationRecords:
    """Where ``store``'s registrations are kept: its tables, or files beside its captures."""
    from receiver.store import CaptureStore

    if isinstance(store, CaptureStore):
        from receiver.storage.file_registrations import FileRegistrations

        return FileRegistrations(store)
    from receiver.storage.pg_registrations import PostgresRegistrations  # psycopg: only when used

    return PostgresRegistrations(store)  # type: ignore[arg-type]


def chunk_assembly(store: Store, quota_bytes: int) -> Any:
    """Where ``store``'s chunked transfers are reassembled: files under its root
    (receiver/chunks.py), or its tables (receiver/storage/pg_chunks.py); one interface."""
    from receiver.store import CaptureStore

    if isinstance(store, CaptureStore):
        from receiver.chunks import ChunkAssembly

        return ChunkAssembly(store.root, quota_bytes)
    from receiver.storage.pg_chunks import PostgresChunks

    return PostgresChunks(store, quota_bytes)  # type: ignore[arg-type]
