"""``kiosk-agent receiver import DIR``: registrations a van carried in on a drive.

Central side, with the receiver's config and keys. For each kiosk folder on the drive
(agent/media/medium.py has the layout) it verifies the index against the kiosk's enrolled
key, reads each listed item (its bytes must match the index's size and SHA-256), and hands
it to the receiver's own ingest path (``Receiver.ingest``: decryption, signature, checks,
store, de-duplication, registration assembly), exactly as if it had come over MQTT. Only
once that is durable (a batched store commits first) does it write the receipts, in the
receipt format the kiosk verifies for MQTT (agent/transport/receipts.py), each naming the
bytes read and the export's nonce, back to the drive as ``receipts-<export id>.kar``.

What does not verify is not imported and gets no receipt: a folder or index not signed by an
enrolled kiosk, a file whose bytes are not those the index names (truncated by a pulled
drive, altered), an envelope that fails the receiver's checks. Running it again is safe: what
is stored already is answered ``duplicate``.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from agent.config_types import topic_segment
from agent.media.medium import (
    INDEX,
    ITEMS,
    MARKER,
    MAX_INDEX_BYTES,
    ROOT,
    MediaError,
    check_folder,
    read_file,
    receipts_name,
    sha256,
    verify_index,
    write_atomically,
)
from agent.transport.receipts import MAX_RECEIPTS, Receipt
from receiver.service import Receiver
from receiver.storage import StoreUnavailable

log = logging.getLogger(__name__)


@dataclass
class KioskImport:
    folder: str
    kiosk_id: str = ""
    export_id: str = ""
    listed: int = 0
    stored: int = 0
    duplicate: int = 0
    rejected: int = 0
    not_imported: int = 0      # failed a check: no receipt (see problems)
    receipts_written: int = 0
    receipts_file: str = ""
    error: str | None = None   # the whole folder was refused or stopped
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.error is None and self.not_imported == 0

    def as_dict(self) -> dict[str, object]:
        return dict(asdict(self), ok=self.ok)


def import_media(receiver: Receiver, base: Path,
                 progress: Callable[[str], None] = lambda line: None) -> list[KioskImport]:
    """Import every kiosk folder under ``base``/kiosk-media; one summary per folder."""
    root = base / ROOT
    check_folder(root, "folder")
    results = []
    for name in sorted(os.listdir(root)):
        result = KioskImport(str(root / name))
        results.append(result)
        try:
            topic_segment(name)
        except ValueError:
            result.error = f"{name!r} is not a kiosk id: not a folder an export writes; ignored"
            continue
        result.kiosk_id = name
        try:
            _import_kiosk(receiver, root / name, result, progress)
        except MediaError as exc:
            result.error = f"{exc}; nothing from this folder was imported"
        except StoreUnavailable as exc:
            result.error = (f"the central store is unavailable ({exc}); no receipts written. Run the "
                            "import again once it is back (what was stored is answered duplicate)")
            return results
    return results


def _import_kiosk(receiver: Receiver, folder: Path, result: KioskImport,
                  progress: Callable[[str], None]) -> None:
    kiosk_id = result.kiosk_id
    check_folder(folder, "folder")
    check_folder(folder / ITEMS, "folder")
    index = verify_index(read_file(folder / INDEX, MAX_INDEX_BYTES, "index"),
                         receiver.opener.kiosk_keys, kiosk_id)
    result.export_id, result.listed = index.export_id, len(index.items)
    if os.path.lexists(folder / MARKER):
        result.warnings.append("the export to this drive was interrupted (or the drive filled up): items "
                               "copied after its index was written are not listed and not imported; "
                               "rerun `kiosk-agent export` on the kiosk")
    receipts: list[Receipt] = []
    last_line = time.monotonic()
    for n, entry in enumerate(index.items, 1):
        if time.monotonic() - last_line >= 1.0:
            last_line = time.monotonic()
            progress(f"kiosk {kiosk_id}: {n}/{len(index.items)} items")
        try:
            data = read_file(folder / entry.file, entry.size, "item")
        except MediaError as exc:
            _not_imported(result, str(exc))
            continue
        if len(data) != entry.size or sha256(data) != entry.sha256:
            _not_imported(result, f"item {entry.id}: {len(data):,} bytes on the drive, not the "
                          f"{entry.size:,} "
                          "bytes the index names (truncated by a pulled drive, or altered); rerun the export")
            continue
        receipt = receiver.ingest(kiosk_id, data)
        if receipt is None:
            _not_imported(result, f"item {entry.id}: the envelope does not verify (see the receiver's log)")
            continue
        if receipt.id != entry.id:
            _not_imported(result, f"item {entry.id}: the envelope on the drive is item {receipt.id}")
            continue
        setattr(result, receipt.status, getattr(result, receipt.status) + 1)
        # As over MQTT: names the bytes received and the send (here, the export's nonce).
        receipts.append(replace(receipt, sha256=entry.sha256, nonce=index.nonce))
    if not receiver.batch.commit():
        raise StoreUnavailable("the batch holding this drive's items did not commit")
    if not receipts:
        return
    frames = b"".join(receiver.receipts.signer.sign(kiosk_id, receipts[i:i + MAX_RECEIPTS])
                      for i in range(0, len(receipts), MAX_RECEIPTS))
    path = folder / receipts_name(index.export_id)
    try:
        write_atomically(path, frames)
    except OSError as exc:
        result.error = (f"the items are stored but their receipts could not be written to {path}: "
                        f"{exc.strerror or exc}. Run the import again with the drive writable (they are "
                        "answered duplicate); the kiosk deletes nothing until then")
        return
    result.receipts_written, result.receipts_file = len(receipts), str(path)
    log.info("kiosk %s: %d items from the drive (%d stored, %d duplicate, %d rejected), receipts in %s",
             kiosk_id, result.listed, result.stored, result.duplicate, result.rejected, path)


def _not_imported(result: KioskImport, problem: str) -> None:
    result.not_imported += 1
    if len(result.problems) < 100:  # a hostile drive cannot flood the output
        result.problems.append(problem)
