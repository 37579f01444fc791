"""What became of the last update, told to the operators once.

The updater runs as root in its own process and restarts the agent (on a switch and on a
rollback), so it cannot hand the agent an event. It leaves the outcome in the spool's
``result.json`` instead (agent/update/spool.py, written durably); the agent looks at it on
each telemetry turn, emits one ``update_result`` event for an outcome it has not announced,
and remembers the outcome's id in ``result.published``. Telemetry carries the last outcome.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.update.layout import write_durably
from agent.update.spool import RESULT

PUBLISHED = "result.published"
OUTCOMES = ("committed", "rolled_back", "refused")
#: The file is root's, but bounded anyway: a reason is a line, not a log.
MAX_BYTES = 16 * 1024


def last_outcome(spool: Path) -> dict[str, Any] | None:
    """{id, version, outcome, reason, at} of the updater's last result; None when there is
    none or it is not one (never an exception: telemetry must go on)."""
    try:
        fd = os.open(spool / RESULT, os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd, "rb") as f:
            raw = json.loads(f.read(MAX_BYTES + 1)[:MAX_BYTES])
    except (OSError, ValueError):
        return None
    if not isinstance(raw, dict) or raw.get("outcome") not in OUTCOMES or not isinstance(raw.get("id"), str):
        return None
    version, reason, at = raw.get("version"), raw.get("reason"), raw.get("at")
    return {"id": raw["id"][:64], "version": version[:64] if isinstance(version, str) else None,
            "outcome": raw["outcome"], "reason": reason[:500] if isinstance(reason, str) else "",
            "at": at if isinstance(at, (int, float)) else None}


def announce(spool: Path, emit: Callable[..., None]) -> dict[str, Any] | None:
    """Emit ``update_result`` for an outcome not announced yet; returns the last outcome."""
    outcome = last_outcome(spool)
    if outcome is None:
        return None
    try:
        published = (spool / PUBLISHED).read_text()[:64]
    except OSError:
        published = ""
    if published != outcome["id"]:
        # Marked first: a crash between the two loses one event rather than repeating it
        # at every start (an operator would read a second event as a second update).
        try:
            write_durably(spool / PUBLISHED, outcome["id"].encode())
        except OSError:
            return outcome  # tried again on the next turn
        emit("update_result", version=outcome["version"], outcome=outcome["outcome"],
             reason=outcome["reason"])
    return outcome
