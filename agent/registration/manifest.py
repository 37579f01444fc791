"""A session's manifest: what the central side needs to know the registration is whole.

Completing (or cancelling) a session queues one manifest, sealed like a capture, listing
every capture id with its item, position, quality and attempts, the face's token image, and
every exception. The receiver reports the registration complete only once the manifest and
every capture it lists have arrived (receiver/assembly.py; the format is in docs/protocol.md).
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any

from agent.config import KioskConfig
from agent.registration.plan import PlanItem
from agent.registration.store import SessionState
from agent.security.sealing import Sealer
from agent.transport.durable_queue import DurableQueue

MANIFEST_KIND = "registration"


def build_manifest(
    state: SessionState,
    plan: list[PlanItem],
    kiosk: KioskConfig,
    outcome: str,
    reason: str | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The manifest of ``state`` closing as ``outcome`` ("completed" or "cancelled");
    ``extra``: other components' fields (the clock's state), never replacing these."""
    return {
        **(extra or {}),
        "v": 1,
        "type": "registration",
        "id": state.id,
        "state": outcome,
        "reason": reason,
        "kiosk_id": kiosk.id,
        "site": kiosk.site,
        "operator_id": state.operator_id,
        "applicant_ref": state.applicant_ref,
        "plan": state.plan,
        "created_at": iso_time(state.created),
        "closed_at": iso_time(time.time()),
        "captures": _captures(state, plan),
        "exceptions": [
            {"position": p, "code": c, "reason": r} for p, (c, r) in sorted(state.exceptions.items())
        ],
    }


def _captures(state: SessionState, plan: list[PlanItem]) -> list[dict[str, Any]]:
    items = {i.key: i for i in plan}
    captures = []
    for key, s in state.items.items():
        if s.status != "captured":
            continue
        item = items[key]
        captures.append(
            {
                "id": s.capture_id,
                "item": key,
                "modality": item.modality.value,
                "position": item.position,
                "fingers": list(item.fingers),
                "quality": s.quality,
                "force_captured": s.force_captured,
                "attempts": s.attempts,
                **({"taken": s.taken} if s.taken else {}),
            }
        )
        if s.token_id:
            captures.append(
                {
                    "id": s.token_id,
                    "item": "face-token",
                    "modality": "face",
                    "position": 0,
                    "fingers": [],
                    "token_of": s.capture_id,
                }
            )
    return captures


def queue_manifest(
    queue: DurableQueue, sealer: Sealer, kiosk_id: str, session_id: str, manifest: dict[str, Any],
    held: bool = False,
) -> None:
    """Seal ``manifest`` and commit it to the durable queue, behind the session's captures;
    ``held``: out of the send order until a supervisor approves (approval.py)."""
    body = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()

    def sealed(seq: int) -> bytes:
        return sealer.seal(item_id=session_id, kiosk_id=kiosk_id, seq=seq, kind=MANIFEST_KIND, inner=body)

    queue.put(session_id, MANIFEST_KIND, sealed, held=held)


def iso_time(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
