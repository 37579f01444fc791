"""``kiosk-agent receiver status``: where the registrations under a receiver's output folder stand.

Read from the files alone (the receiver need not run): each registration with a manifest is
complete, cancelled, failed (its ``.error.json``: assembly failed and is being retried),
or incomplete (parts missing). The status record the kiosk was last sent
(``<id>.status.json``, receiver/status.py) adds the reason and attempts. Complete and
cancelled ones are counted, the others listed: those are what an operator acts on. Exit 1
when any registration is failed, so a monitoring check can run it as it is.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from agent.cliutil import EXIT_FAILED, EXIT_OK
from agent.remote.output import printable


def registrations(output_dir: Path) -> list[dict[str, Any]]:
    """One entry per registration manifest under ``output_dir``."""
    found = []
    for manifest in sorted(output_dir.glob("*/registrations/*.manifest.json")):
        folder, registration_id = manifest.parent, manifest.name.removesuffix(".manifest.json")
        state = ("complete" if (folder / f"{registration_id}.complete.json").exists() else
                 "cancelled" if (folder / f"{registration_id}.cancelled.json").exists() else
                 "failed" if (folder / f"{registration_id}.error.json").exists() else "incomplete")
        entry: dict[str, Any] = {"kiosk_id": folder.parent.name, "id": registration_id, "state": state}
        record = _read(folder / f"{registration_id}.status.json")
        if record and record.get("state") == state:
            entry.update({k: record[k] for k in ("missing", "reason", "updated_at") if record.get(k)})
        elif state == "failed":
            error = _read(folder / f"{registration_id}.error.json") or {}
            entry["reason"] = {"attempts": error.get("attempts"), "failed_at": error.get("failed_at")}
        found.append(entry)
    return found


def _read(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def print_status(output_dir: Path, as_json: bool) -> int:
    entries = registrations(output_dir)
    counts = Counter(e["state"] for e in entries)
    open_ones = [e for e in entries if e["state"] in ("failed", "incomplete")]
    if as_json:
        print(json.dumps({"output_dir": str(output_dir), "counts": dict(counts), "registrations": open_ones}))
    else:
        print(f"{len(entries)} registrations under {output_dir}: "
              + ", ".join(f"{counts[s]} {s}" for s in ("complete", "incomplete", "failed", "cancelled")))
        for e in open_ones:
            print(f"  {printable(e['kiosk_id'])} {printable(e['id'])} {e['state']}: {_detail(e)}")
    return EXIT_FAILED if counts["failed"] else EXIT_OK


def _detail(entry: dict[str, Any]) -> str:
    # Every value through printable(): the files hold what kiosks sent (an item name from a
    # manifest stored before items were checked on arrival), and an escape sequence or a bidi
    # override printed raw would act on the operator's terminal or disguise the line.
    reason = entry.get("reason") or {}
    if entry["state"] == "failed":
        return printable(f"{reason.get('code', '?')}: {reason.get('message', '')} (attempt "
                         f"{reason.get('attempts')}, next {reason.get('retry_at', '?')})")
    if entry.get("missing") and isinstance(entry["missing"], list):
        return "missing " + ", ".join(printable(f"{m.get('item')} ({m.get('id')})") if isinstance(m, dict)
                                      else "?" for m in entry["missing"])
    return "parts missing (not yet reported to the kiosk)"
