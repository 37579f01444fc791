"""Registration records in files, beside the file store's captures (one receiver, or several
sharing one folder).

Layout::

    <output_dir>/<kiosk_id>/registrations/<registration id>.manifest.json
    <output_dir>/<kiosk_id>/registrations/<registration id>.an2          (complete ones)
    <output_dir>/<kiosk_id>/registrations/<registration id>.fir / .fac / .iir   (ISO/IEC 19794-4 / -5 / -6)
    <output_dir>/<kiosk_id>/registrations/<registration id>.complete.json (written last)
    <output_dir>/<kiosk_id>/registrations/<registration id>.cancelled.json
    <output_dir>/<kiosk_id>/registrations/<registration id>.error.json    (while assembly fails)
    <output_dir>/<kiosk_id>/registrations/<registration id>.status.json   (the status last sent)

Every file is written durably, and the one that ends assembly with ``link()``, so receivers
sharing the folder finish a registration exactly once. Every name passes receiver/paths.py.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from receiver.paths import item_path
from receiver.storage.base import Outcome, State, Store
from receiver.store import write_durably


class FileRegistrations:
    shared = False

    def __init__(self, captures: Store) -> None:
        self.captures = captures

    def folder(self, kiosk_id: str) -> Path:
        return self.captures.folder(kiosk_id) / "registrations"

    def path(self, kiosk_id: str, registration_id: str, suffix: str) -> Path:
        """A registration's file; UnsafeName for a hostile kiosk or registration id."""
        return item_path(self.folder(kiosk_id), registration_id, suffix, "registration id")

    def lock(self, kiosk_id: str, registration_id: str) -> None:
        pass  # link() makes the record that ends assembly once, whoever writes it

    def get(self, kiosk_id: str, registration_id: str) -> tuple[dict[str, Any], State] | None:
        try:
            manifest = json.loads(self.path(kiosk_id, registration_id, ".manifest.json").read_bytes())
        except FileNotFoundError:
            return None
        return manifest, self._state(kiosk_id, registration_id)

    def _state(self, kiosk_id: str, registration_id: str) -> State:
        for suffix, state in ((".complete.json", "complete"), (".cancelled.json", "cancelled"),
                              (".error.json", "failed")):
            if self.path(kiosk_id, registration_id, suffix).exists():
                return state  # type: ignore[return-value]
        return "waiting"

    def put_manifest(self, kiosk_id: str, manifest: dict[str, Any]) -> Outcome:
        path = self.path(kiosk_id, manifest["id"], ".manifest.json")
        path.parent.mkdir(parents=True, exist_ok=True)
        data = json.dumps(manifest, indent=2, sort_keys=True).encode()
        if write_durably(path, data, replace=False):
            return "stored"
        same = hashlib.sha256(path.read_bytes()).digest() == hashlib.sha256(data).digest()
        return "duplicate" if same else "conflict"

    def present(self, kiosk_id: str, capture_ids: list[str], owner: str) -> dict[str, str | None]:
        found: dict[str, str | None] = {}
        for capture_id in capture_ids:
            part = self.captures.load(kiosk_id, capture_id)
            if part is None:
                continue
            registration = part[0].get("registration")
            named = registration.get("id") if isinstance(registration, dict) else None
            found[capture_id] = named if isinstance(named, str) else None
            if found[capture_id] != owner:
                # One read for a manifest that reuses another registration's captures, not the
                # whole list's: any number of manifests could list the same ones.
                break
        return found

    def cancel(self, kiosk_id: str, registration_id: str, summary: dict[str, Any]) -> None:
        write_durably(self.path(kiosk_id, registration_id, ".cancelled.json"), json.dumps(summary).encode(),
                      replace=False)

    def complete(self, kiosk_id: str, registration_id: str, outputs: Iterable[tuple[str, bytes]],
                 summary: dict[str, Any]) -> bool:
        for suffix, data in outputs:
            write_durably(self.path(kiosk_id, registration_id, suffix), data, replace=True)
        # Into the outbox before the record that ends assembly: a stop in between repeats the
        # hand-off on the next attempt, which the outbox refuses as already there.
        self.captures.publish_registration(kiosk_id, registration_id,
                                           self.path(kiosk_id, registration_id, ".an2"))
        return write_durably(self.path(kiosk_id, registration_id, ".complete.json"),
                             json.dumps(summary, indent=2).encode(), replace=False)

    def files(self, kiosk_id: str, registration_id: str) -> tuple[dict[str, Any], ...]:
        files = []
        for suffix in (".an2", ".fir", ".fac"):  # the transaction, the finger and face records
            path = self.path(kiosk_id, registration_id, suffix)
            if path.is_file():
                data = path.read_bytes()
                files.append({"name": path.name, "sha256": hashlib.sha256(data).hexdigest(),
                              "bytes": len(data)})
        return tuple(files)

    def record_failure(self, kiosk_id: str, registration_id: str, code: str, error: str, attempts: int,
                       retry_in_s: float | None) -> None:
        record = {"id": registration_id, "state": "incomplete", "kiosk_id": kiosk_id, "code": code,
                  "error": error, "attempts": attempts,
                  "retry_in_s": None if retry_in_s is None else round(retry_in_s, 1),
                  "failed_at": datetime.now().astimezone().isoformat(timespec="seconds")}
        write_durably(self.path(kiosk_id, registration_id, ".error.json"),
                      json.dumps(record, indent=2).encode(), replace=True)

    def clear_failure(self, kiosk_id: str, registration_id: str) -> None:
        self.path(kiosk_id, registration_id, ".error.json").unlink(missing_ok=True)

    def failures(self) -> Iterator[tuple[str, str]]:
        for path in self.captures.root.glob("*/registrations/*.error.json"):
            yield path.parent.parent.name, path.name.removesuffix(".error.json")

    def kept_status(self, kiosk_id: str, registration_id: str) -> dict[str, Any] | None:
        try:
            value = json.loads(self.path(kiosk_id, registration_id, ".status.json").read_bytes())
        except (OSError, ValueError):
            return None
        return value if isinstance(value, dict) else None

    def keep_status(self, kiosk_id: str, registration_id: str, record: dict[str, Any]) -> None:
        write_durably(self.path(kiosk_id, registration_id, ".status.json"),
                      json.dumps(record, indent=2).encode(), replace=True)

    def on_record(self, kiosk_id: str, registration_ids: list[str]) -> set[str]:
        folder = self.folder(kiosk_id)  # resolved once per query, not per id
        # Two stat calls per id, nothing resolved: the ids are checked and hold no separator.
        return {rid for rid in registration_ids if (folder / f"{rid}.manifest.json").exists()
                or (folder / f"{rid}.status.json").exists()}

    def unfinished(self, kiosk_id: str) -> int:
        raise NotImplementedError("file records are not shared: receiver/unfinished.py counts in memory")

    def due_incomplete(self, older_than_s: float, limit: int) -> list[tuple[str, str]]:
        raise NotImplementedError("file records are not shared: receiver/status.py remembers them")
