"""``kiosk-agent receiver status`` on a PostgreSQL store: the same report as the file store's
(receiver/status_report.py), read from ``registrations`` and ``registration_missing``.

Complete and cancelled registrations are counted, failed and incomplete ones listed with
what is wrong (the failure's code and attempts, or the parts missing); exit 1 when any has
failed, so a monitoring check can run it as it is. Every value is escaped for the terminal:
item names come from kiosks. The DSN is never printed.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from agent.cliutil import EXIT_FAILED, EXIT_OK
from agent.remote.output import printable

#: Open registrations listed at most (the counts cover them all).
LISTED = 1000
_STATE = {"waiting": "incomplete"}


def registrations(dsn: str) -> tuple[Counter[str], list[dict[str, Any]]]:
    import psycopg

    with psycopg.connect(dsn, connect_timeout=10, application_name="kiosk-agent receiver status") as conn:
        counts: Counter[str] = Counter({_STATE.get(s, s): n for s, n in conn.execute(
            "SELECT state, count(*) FROM registrations GROUP BY state").fetchall()})
        rows = conn.execute(
            "SELECT r.kiosk_id, r.registration_id, r.state, r.failure_code, r.attempts, r.retry_at,"
            " (SELECT json_agg(json_build_object('item', m.item, 'id', m.capture_id) ORDER BY m.position)"
            "    FROM registration_missing m"
            "   WHERE (m.kiosk_id, m.registration_id) = (r.kiosk_id, r.registration_id))"
            " FROM registrations r WHERE r.state IN ('waiting', 'failed') ORDER BY r.received_at LIMIT %s",
            (LISTED,)).fetchall()
    found = []
    for kiosk_id, registration_id, state, code, attempts, retry_at, missing in rows:
        entry: dict[str, Any] = {"kiosk_id": kiosk_id, "id": registration_id,
                                 "state": _STATE.get(state, state)}
        if state == "failed":
            entry["reason"] = {"code": code, "attempts": attempts,
                               "retry_at": retry_at.isoformat() if retry_at else None}
        elif missing:
            entry["missing"] = missing
        found.append(entry)
    return counts, found


def print_status(dsn: str, as_json: bool) -> int:
    counts, open_ones = registrations(dsn)
    if as_json:
        print(json.dumps({"store": "postgresql", "counts": dict(counts), "registrations": open_ones}))
    else:
        print(f"{sum(counts.values())} registrations in the PostgreSQL store: "
              + ", ".join(f"{counts[s]} {s}" for s in ("complete", "incomplete", "failed", "cancelled")))
        for e in open_ones:
            if e["state"] == "failed":
                r = e["reason"]
                detail = f"{r['code']} (attempt {r['attempts']}, next {r['retry_at'] or 'not retried'})"
            else:
                detail = "missing " + ", ".join(f"{m['item']} ({m['id']})" for m in e.get("missing") or [])
            print(printable(f"  {e['kiosk_id']} {e['id']} {e['state']}: {detail}"))
    return EXIT_FAILED if counts["failed"] else EXIT_OK
