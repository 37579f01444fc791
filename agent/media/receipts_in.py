"""``kiosk-agent import-receipts DIR``: delete what the central side's receipts on a drive
confirm, with exactly the checks receipts over MQTT get (agent/transport/receipt_gate.py).

"In flight" means: listed in the drive's index (which this kiosk signed, so nobody can add
to it), still in the queue, and with the bytes the index names. The nonce a receipt must
echo is the one this kiosk wrote into that index, so receipts made for an earlier export
(another nonce) settle nothing in a later one. The receipts file must be signed by a
central receipt-signing key this kiosk trusts and be addressed to it (``verify_receipts``:
all or nothing); each receipt then must name the item's exact bytes (``sha256``).
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from agent.media.medium import (
    INDEX,
    MARKER,
    MAX_INDEX_BYTES,
    MAX_RECEIPTS_FILE_BYTES,
    MediaError,
    check_folder,
    kiosk_dir,
    read_file,
    receipts_name,
    sha256,
    verify_index,
)
from agent.transport.durable_queue import DurableQueue
from agent.transport.receipt_gate import ReceiptGate, Sent

log = logging.getLogger(__name__)


@dataclass
class ReceiptsSummary:
    kiosk_id: str
    export_id: str
    listed: int = 0           # items the drive's index lists
    deleted: int = 0          # settled by a receipt (stored or duplicate) and deleted
    rejected: int = 0         # set aside: the central side will never take them
    already_gone: int = 0     # listed, but no longer in the queue (settled over MQTT, or before)
    waiting: int = 0          # listed and queued, no receipt: still to be delivered
    changed: int = 0          # listed, but the queue holds other bytes under the id
    refused: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def import_receipts(queue: DurableQueue, kiosk_id: str, own_key: Ed25519PublicKey,
                    trusted: dict[str, Ed25519PublicKey], base: Path) -> ReceiptsSummary:
    """Apply the receipts on the drive at ``base``; MediaError when there is nothing to apply
    (no index, no receipts file, or a file that does not verify: nothing is deleted then)."""
    folder = kiosk_dir(base, kiosk_id)
    for part in (folder.parent, folder):
        check_folder(part, "folder")
    index = verify_index(read_file(folder / INDEX, MAX_INDEX_BYTES, "index"), {kiosk_id: own_key}, kiosk_id)
    summary = ReceiptsSummary(kiosk_id, index.export_id, listed=len(index.items))
    if os.path.lexists(folder / MARKER):
        summary.warnings.append("an export to this drive was interrupted after its index was written; "
                                "receipts are applied for what the index lists")
    path = folder / receipts_name(index.export_id)
    if not os.path.lexists(path):
        others = sorted(p.name for p in folder.glob("receipts-*.kar"))
        hint = (f" (the drive holds {', '.join(others)}: receipts for an earlier export, which the last "
                "export superseded)" if others else "")
        raise MediaError(f"no receipts for export {index.export_id} on the drive{hint}; import the drive "
                         "centrally first (`kiosk-agent receiver import`). Nothing was deleted")
    data = read_file(path, MAX_RECEIPTS_FILE_BYTES, "receipts file")
    refusals: Counter[str] = Counter()
    gate = ReceiptGate(trusted, kiosk_id, lambda reason: refusals.update([reason]))
    in_flight: dict[str, Sent] = {}
    for entry in index.items:
        item = queue.get(entry.id)
        sent = Sent(entry.sha256, index.nonce)
        if item is None:
            # Settled already (over MQTT, or by an earlier run): its receipts here are late
            # duplicates, not attacks.
            summary.already_gone += 1
            gate.settled(entry.id, sent)
        elif sha256(item.payload) != entry.sha256:
            summary.changed += 1  # not these bytes: no receipt for the index's may delete them
        else:
            in_flight[entry.id] = sent
    accepted = gate.check(data, in_flight)
    if refusals and not accepted and sum(refusals.values()) == 1 and refusals.keys() & {
            "malformed", "unknown_key", "bad_signature", "wrong_kiosk"}:
        (reason,) = refusals
        raise MediaError(f"{path.name} refused ({reason}): not receipts from a central key this kiosk "
                         "trusts (security.receipt_keys) for this kiosk. Nothing was deleted")
    settled = [r.id for r in accepted if r.settled]
    summary.deleted = queue.ack(settled)
    for receipt in accepted:
        if not receipt.settled:
            queue.reject(receipt.id, f"rejected by {receipt.receiver}: {receipt.reason}")
            summary.rejected += 1
            log.error("item %s rejected by the central side (%s): %s; kept in the queue as 'rejected' "
                      "for support", receipt.id, receipt.receiver, receipt.reason)
    summary.waiting = len(in_flight) - len(accepted)
    summary.refused = dict(refusals)
    return summary
