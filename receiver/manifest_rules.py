"""What a registration manifest must hold to be stored: everything assembly will read, checked
when the manifest arrives.

A manifest that could be stored but never built (a ``created_at`` that is no date, a finger
position that is no finger, text a transaction cannot hold) used to be answered ``stored``
and then fail in assembly, on the receiver's one MQTT thread, again on every retry: one
kiosk holding its own key could send thousands of them and stall every other kiosk's
receipts (measured: 300 such manifests delayed another kiosk's receipt from 0.06 s to 5.7 s).
Now such a manifest is refused on arrival with ``rejected`` and a reason the kiosk sees, as
a security event (no kiosk's own code writes one), and costs no more than its parsing.

The rules are the kiosk's own (agent/registration/manifest.py, agent/registration/plan.py):
an item is a plan item (``finger-1`` .. ``finger-10``, ``slap-13`` .. ``slap-15``, ``face``)
or the face's ``face-token``, each once, with its modality and position; an exception names a
finger (1-10) not captured, with code ``XX`` or ``UP``. Item names are the fixed set, so
nothing a kiosk chose is ever printed to an operator's terminal (receiver/status_report.py).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from agent.formats.positions import FINGERS, SLAPS
from agent.transport.protocol import ProtocolError

#: Item -> (modality, position): every item a kiosk's plan has, and the face's token image.
ITEMS: dict[str, tuple[str, int]] = {
    **{f"finger-{p}": ("finger", p) for p in sorted(FINGERS)},
    **{f"slap-{p}": ("finger", p) for p in sorted(SLAPS)},
    "face": ("face", 0),
    "face-token": ("face", 0),
    "iris-right": ("iris", 1),  # ANSI/NIST 17.003 eye labels (agent/formats/positions.py)
    "iris-left": ("iris", 2),
}
#: The plans a kiosk runs (agent/registration/plan.py: plan_items).
PLANS = frozenset({"ten-flat", "slaps-442", "ten-flat-iris", "slaps-442-iris"})
EXCEPTION_CODES = frozenset({"XX", "UP"})
#: Free text fields: each a string (or null) of at most this many characters.
TEXT_FIELDS = ("applicant_ref", "operator_id", "site", "reason", "closed_at")
MAX_TEXT = 256


class HostileManifest(ProtocolError):
    """A signed registration manifest no kiosk makes (too many captures, an id twice, a field
    assembly cannot use): refused as a security event, not as a kiosk's mistake."""


def check_fields(manifest: dict[str, Any], item_id: str) -> None:
    """HostileManifest unless assembly can build ``manifest`` from its listed captures.
    Its structure (ids, counts) is checked already (receiver/assembly.py: parse_manifest)."""
    def refuse(why: str) -> HostileManifest:
        return HostileManifest(f"registration manifest: {why}", item_id)

    for field in TEXT_FIELDS:
        if not _text_ok(manifest.get(field)):
            raise refuse(f"{field} must be text of at most {MAX_TEXT} characters")
    plan = manifest.get("plan")
    if plan is not None and plan not in PLANS:
        raise refuse(f"plan is not one of {sorted(PLANS)}")
    completed = manifest["state"] == "completed"
    if completed and not _date_ok(manifest.get("created_at")):
        raise refuse("created_at is not an ISO 8601 date and time with a zone")
    items: set[str] = set()
    singles: set[int] = set()
    for entry in manifest["captures"]:
        item = entry.get("item")
        if item is None and not completed:
            continue  # a cancelled manifest needs only the ids
        if item not in ITEMS or item in items:
            # Neither echoed nor logged: the name is the kiosk's to choose and may hold escapes.
            raise refuse("a capture's item is not a plan item, or is listed twice")
        items.add(item)
        modality, position = ITEMS[item]
        if entry.get("modality") != modality or _int(entry.get("position")) != position:
            raise refuse(f"capture item {item} must have modality {modality} and position {position}")
        if position in FINGERS:
            singles.add(position)
    for entry in manifest.get("exceptions", []):
        if not isinstance(entry, dict):
            raise refuse("an exception is not an object")
        position = _int(entry.get("position"))
        if position not in FINGERS or position in singles:
            raise refuse("an exception's position is not a finger (1-10), or that finger is captured "
                         "or excepted already")
        singles.add(position)
        if entry.get("code") not in EXCEPTION_CODES or not _text_ok(entry.get("reason")):
            raise refuse(f"an exception's code is not one of {sorted(EXCEPTION_CODES)}, or its "
                         "reason is not text")


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _text_ok(value: Any) -> bool:
    if value is None:
        return True
    if not isinstance(value, str) or len(value) > MAX_TEXT:
        return False
    try:
        value.encode("utf-8")  # JSON can carry a lone surrogate, which no transaction can
    except UnicodeEncodeError:
        return False
    return True


def _date_ok(value: Any) -> bool:
    if not isinstance(value, str) or len(value) > 40:
        return False
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return False
    return parsed.tzinfo is not None
