"""Capture storage behind one interface (base.Store): files, or PostgreSQL by config."""

from __future__ import annotations

from pathlib import Path

from receiver.storage.base import Outcome, Store, StoreUnavailable

__all__ = ["Outcome", "Store", "StoreUnavailable", "open_store"]


def open_store(store: str, output_dir: Path, receiver_name: str) -> Store:
    """``store`` is "files" or a ``postgresql://`` DSN (receiver.store in the config)."""
    if store.startswith(("postgresql://", "postgres://")):
        from receiver.storage.postgres import PostgresStore  # psycopg: the `central` extra only

        return PostgresStore(store, output_dir, receiver_name)
    from receiver.store import CaptureStore

    return CaptureStore(output_dir)
