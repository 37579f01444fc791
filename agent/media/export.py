"""``kiosk-agent export --to DIR``: the queue's sealed items onto a removable drive.

The queue is the truth and stays untouched: every item still waiting for a receipt is
copied (its exact sealed bytes; nothing is decrypted, nothing is in clear), then the signed
index that lists them, last. A drive pulled at any point therefore leaves either the old
index (naming only files that are whole) or none, plus the ``.exporting`` marker, and the
next run completes the same export (same id and nonce) without copying what is already
whole. Files of items no longer in the queue (settled since the last trip) are removed from
the drive first, to make room; the queue itself is never changed here. Items leave it only
through ``import-receipts`` (agent/media/receipts_in.py) or a receipt over MQTT.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from agent.capture.ids import is_item_id, uuid7
from agent.media.medium import (
    INDEX,
    ITEM_SUFFIX,
    ITEMS,
    MARKER,
    Index,
    IndexEntry,
    MediaError,
    check_folder,
    fsync_folder,
    kiosk_dir,
    read_file,
    receipts_name,
    sha256,
    sign_index,
    verify_index,
    write_atomically,
)
from agent.security.keys import key_id
from agent.transport.durable_queue import DurableQueue

log = logging.getLogger(__name__)

#: Items read from the queue at a time (each holds its payload in memory).
BATCH = 16
#: Errors that mean the drive has no room left.
_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


@dataclass
class ExportSummary:
    kiosk_id: str
    folder: str
    export_id: str
    items: int = 0            # listed in the index written
    bytes: int = 0
    written: int = 0          # copied by this run
    already_there: int = 0    # whole on the drive from an interrupted run
    removed: int = 0          # files of items no longer queued, removed from the drive
    continued: bool = False   # this run completed an interrupted export
    complete: bool = False
    error: str | None = None
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def export(queue: DurableQueue, kiosk_id: str, signing_key, base: Path,  # type: ignore[no-untyped-def]
           progress: Callable[[str], None] = lambda line: None,
           now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> ExportSummary:
    """Copy every queued item to ``base``; see the module's text. Raises MediaError only
    for a drive it cannot start on; a failure midway is reported in the summary (``error``)
    with ``complete`` False."""
    if not base.is_dir():
        raise MediaError(f"{base} is not a folder (mount the drive and name its folder)")
    folder = kiosk_dir(base, kiosk_id)
    own = {kiosk_id: signing_key.public_key()}
    try:
        for part in (folder.parent, folder, folder / ITEMS):
            if not os.path.lexists(part):
                part.mkdir(mode=0o700)
            check_folder(part, "folder")
        export_id, nonce, continued = _export_ids(folder)
        summary = ExportSummary(kiosk_id, str(folder), export_id, continued=continued)
        _note_unapplied_receipts(folder, own, kiosk_id, export_id, summary)
        write_atomically(folder / MARKER, json.dumps({"export_id": export_id, "nonce": nonce}).encode())
        # Room first: files of items settled since the last export (their receipts applied)
        # would otherwise fill a drive that is carried back and forth.
        summary.removed = _remove_stale(folder, queue.pending_ids(_ids_on_drive(folder)))
    except OSError as exc:
        raise MediaError(f"cannot write to {base}: {exc.strerror or exc} (is the drive mounted "
                         "writable?); nothing was removed from the queue") from None
    entries: list[IndexEntry] = []
    total, _ = queue.totals()
    cursor, last_line = 0, 0.0
    try:
        while batch := queue.next_batch(cursor, BATCH):
            for item in batch:
                cursor = item.seq
                if not is_item_id(item.id):  # never a path from anything but an id
                    summary.warnings.append(f"queue item {item.id!r} skipped: not an item id")
                    continue
                entry = IndexEntry(item.id, item.kind, item.seq, len(item.payload), sha256(item.payload))
                target = folder / entry.file
                if _whole(target, entry):
                    summary.already_there += 1
                else:
                    write_atomically(target, item.payload)
                    summary.written += 1
                entries.append(entry)
                summary.bytes += entry.size
                if time.monotonic() - last_line >= 1.0:
                    last_line = time.monotonic()
                    progress(f"exported {len(entries)}/{total} items ({summary.bytes:,} bytes)")
    except OSError as exc:
        summary.error = _failure(exc, base, entries, summary)
        if exc.errno in _FULL and entries:
            # What fits is still worth carrying: list it, so the central side can take it.
            try:
                _write_index(folder, kiosk_id, export_id, nonce, signing_key, entries, now, summary)
            except OSError:
                summary.error += "; the index could not be written either: this drive holds nothing usable"
        return summary
    try:
        _write_index(folder, kiosk_id, export_id, nonce, signing_key, entries, now, summary)
        summary.removed += _remove_stale(folder, {e.id for e in entries})
        (folder / MARKER).unlink()
        fsync_folder(folder)
    except OSError as exc:
        summary.error = _failure(exc, base, entries, summary)
        return summary
    summary.complete = True
    progress(f"exported {summary.items} items ({summary.bytes:,} bytes) to {folder}")
    return summary


def _export_ids(folder: Path) -> tuple[str, str, bool]:
    """(export id, nonce, continued): those of an interrupted export when its marker is
    there (so receipts already made for it still match), else new ones."""
    try:
        marker = json.loads(read_file(folder / MARKER, 4096, "marker"))
        if is_item_id(marker.get("export_id")) and re.fullmatch(r"[0-9a-f]{32}", str(marker.get("nonce"))):
            return marker["export_id"], marker["nonce"], True
    except (MediaError, ValueError, AttributeError, TypeError):
        pass  # none, or not one we wrote: start afresh
    return uuid7(), secrets.token_hex(16), False


def _note_unapplied_receipts(folder: Path, own, kiosk_id: str, export_id: str,  # type: ignore[no-untyped-def]
                             summary: ExportSummary) -> None:
    """Receipts for the drive's last export not yet applied are replaced in effect by this
    export (a new nonce): nothing is lost (the central side answers the items again), but
    the officer should know that import-receipts was skipped."""
    try:
        old = verify_index(read_file(folder / INDEX, 64 * 1024 * 1024, "index"), own, kiosk_id)
    except MediaError:
        return
    if old.export_id != export_id and os.path.lexists(folder / receipts_name(old.export_id)):
        summary.warnings.append(
            f"the drive holds receipts for the previous export ({old.export_id}) that this export "
            "supersedes; if they were not applied with `kiosk-agent import-receipts`, the central "
            "import of this drive answers those items again (nothing is lost)")


def _whole(target: Path, entry: IndexEntry) -> bool:
    """Already on the drive with the right bytes (a rerun after an interruption)."""
    try:
        return sha256(read_file(target, entry.size, "item")) == entry.sha256
    except MediaError:
        return False


def _write_index(folder: Path, kiosk_id: str, export_id: str, nonce: str, signing_key,  # type: ignore[no-untyped-def]
                 entries: list[IndexEntry], now: Callable[[], datetime], summary: ExportSummary) -> None:
    created = now().astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    index = Index(kiosk_id, export_id, nonce, created, key_id(signing_key.public_key()), tuple(entries))
    write_atomically(folder / INDEX, sign_index(index, lambda ctx, msg: signing_key.sign(ctx + msg)))
    summary.items = len(entries)


def _ids_on_drive(folder: Path) -> list[str]:
    return [name[:-len(ITEM_SUFFIX)] for name in os.listdir(folder / ITEMS)
            if name.endswith(ITEM_SUFFIX) and is_item_id(name[:-len(ITEM_SUFFIX)])]


def _remove_stale(folder: Path, listed: set[str]) -> int:
    """Files in items/ but those of ``listed`` (items still queued, or listed in the index
    just written): settled ones, and what an interrupted write or anyone else left there.
    Only copies of settled items go: the queue still holds every other one."""
    removed = 0
    for name in os.listdir(folder / ITEMS):
        stem = name[:-len(ITEM_SUFFIX)] if name.endswith(ITEM_SUFFIX) else None
        if stem in listed:
            continue
        path = folder / ITEMS / name
        if os.path.isdir(path) and not os.path.islink(path):
            continue  # not ours to judge
        path.unlink()  # a symlink is removed itself, never its target
        removed += 1
    if removed:
        fsync_folder(folder / ITEMS)
    return removed


def _failure(exc: OSError, base: Path, entries: list[IndexEntry], summary: ExportSummary) -> str:
    done = f"{len(entries)} item(s) copied"
    if exc.errno in _FULL:
        return (f"the drive at {base} is full after {done} ({summary.bytes:,} bytes); those are listed "
                "in its index and can be imported. Nothing was removed from the queue: import this "
                "drive, apply its receipts, then export the rest (or use a larger drive)")
    return (f"writing to {base} failed after {done}: {exc.strerror or exc} (drive removed or "
            "damaged?). Nothing was removed from the queue; the export is incomplete: run "
            "`kiosk-agent export` again with the drive in place")
