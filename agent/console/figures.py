"""What the console's pages show, gathered from the running agent (agent/runtime.py).

Nothing here holds biometric data: ids, states, counts, quality scores. Applicant references
are read only for supervisors (``with_applicant``).
"""

from __future__ import annotations

import datetime
import shutil
import threading
import time
from dataclasses import dataclass
from typing import Any

from agent import __version__
from agent.runtime import Runtime


@dataclass
class Watch:
    """When the connection last changed and the last receipt came, seen from the console's
    own loop (every half second): the agent does not keep either time itself."""

    connected: bool | None = None
    since: float | None = None
    acknowledged: int = 0
    last_receipt: float | None = None


class Watcher:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.watch = Watch()
        self._lock = threading.Lock()

    def sample(self) -> None:
        connected = self.runtime.connection().connected
        deliveries = self.runtime.deliveries()
        now = time.time()
        with self._lock:
            w = self.watch
            if connected != w.connected:
                w.connected, w.since = connected, now
            if deliveries is not None and deliveries.acknowledged > w.acknowledged:
                w.acknowledged, w.last_receipt = deliveries.acknowledged, now

    def snapshot(self) -> Watch:
        with self._lock:
            return Watch(**vars(self.watch))


def iso(t: float | None) -> str | None:
    if t is None:
        return None
    return datetime.datetime.fromtimestamp(t, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def dashboard(runtime: Runtime, watcher: Watcher) -> dict[str, Any]:
    cfg = runtime.config
    watch = watcher.snapshot()
    stats = runtime.queue_stats()
    state_dir = cfg.state_dir
    free = shutil.disk_usage(state_dir if state_dir.exists() else "/").free
    usable = max(0, free - cfg.queue.min_free_bytes - cfg.console.min_free_disk_mb * 2**20)
    by_state = stats.by_state if stats else {}
    registrations = runtime.registration_service()
    # The English sentences, and their message ids and values for the console's language.
    rules = ([{**r.as_dict(), "text": r.text, "values": r.values} for r in registrations.gates.refusals()]
             if registrations else [])
    return {
        "kiosk_id": cfg.kiosk.id,
        "site": cfg.kiosk.site,
        "version": __version__,
        "connected": bool(watch.connected),
        "connected_since": iso(watch.since),
        "backlog_captures": stats.pending if stats else 0,
        "backlog_bytes": stats.pending_bytes if stats else 0,
        "backlog_oldest_s": stats.oldest_age_s if stats else None,
        "held": by_state.get("held", 0),
        "withheld": by_state.get("withheld", 0),
        "last_receipt": iso(watch.last_receipt),
        "disk_free_bytes": free,
        "registrations_left": int(usable // (cfg.console.registration_size_mb * 2**20)),
        "awaiting_approval": registrations.approvals.count_awaiting() if registrations else 0,
        "devices": [{"name": n, "state": w.state, "driver": w.driver.name}
                    for n, w in runtime.device_workers().items()],
        "clock_utc": iso(time.time()),
        "clock": clock(runtime),
        "blocked": rules,
    }


def clock(runtime: Runtime) -> dict[str, Any]:
    """The agent's own judgement of its clock (agent/clock/watch.py), the one its manifests
    record and its clock rule acts on: "trusted", "untrusted" (not synchronised yet) or
    "wrong", what it rests on and why. Cached by the watch, so a dashboard refreshing every
    2 s does not run chronyc every 2 s."""
    state = runtime.clock.state()
    judged = "wrong" if state.wrong else "trusted" if state.trusted else "untrusted"
    return {"state": judged, "source": state.source, "reason": state.reason,
            "reason_texts": list(state.reason_texts)}


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def human_age(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.0f} h"
    return f"{seconds / 86400:.0f} d"


def today_start() -> float:
    now = time.localtime()
    return time.mktime((now.tm_year, now.tm_mon, now.tm_mday, 0, 0, 0, 0, 0, -1))


def registrations(runtime: Runtime, query: str = "", with_applicant: bool = False) -> list[dict[str, Any]]:
    """Today's registrations and every one not finished (open, held, queued, not confirmed
    centrally), newest first; ``query``: those whose id contains it."""
    service = runtime.registration_service()
    if service is None:
        return []
    start = today_start()
    rows: dict[str, dict[str, Any]] = {}
    for view in service.sessions():
        created = _epoch(view["created_at"])
        approval = service.approvals.get(view["id"])
        status, missing = _status(view, approval, service.queue.pending_ids(_ids(view)), len(_ids(view)))
        if created < start and status in ("complete", "cancelled"):
            continue
        rows[view["id"]] = {
            "id": view["id"], "created_at": view["created_at"], "status": status, "missing": missing,
            "approval": approval, "applicant_ref": view["applicant_ref"] if with_applicant else None,
            "items": [{"key": i["key"], "status": i["status"], "quality": i["quality"],
                       "force_captured": i["force_captured"]} for i in view["items"]],
            "exceptions": [{"finger": e["finger"], "code": e["code"]} for e in view["exceptions"]],
        }
    # Delivered and erased from the kiosk today: only the central side's word is left.
    for sid, closed in service.store.central_closed_since(start):
        if sid not in rows:
            central = service.store.central(sid)
            status, missing = _central_status(central)
            rows[sid] = {"id": sid, "created_at": iso(closed), "status": status or "delivered",
                         "missing": missing, "approval": service.approvals.get(sid), "applicant_ref": None,
                         "items": [], "exceptions": []}
    found = [r for r in rows.values() if query.lower() in r["id"].lower()]
    return sorted(found, key=lambda r: r["created_at"] or "", reverse=True)


def _ids(view: dict[str, Any]) -> list[str]:
    ids = [view["id"]]
    for item in view["items"]:
        ids += [i for i in (item["capture_id"], item["token_id"]) if i]
    return ids


def _central_status(central: dict[str, Any]) -> tuple[str | None, list[str]]:
    state = central["state"]
    missing = [m.get("item") or m.get("capture_id") or "?" for m in central.get("missing") or []]
    return {"complete": "complete", "incomplete": "incomplete", "failed": "central_failed",
            "cancelled": "cancelled"}.get(state), missing


def _status(view: dict[str, Any], approval: dict[str, Any] | None, pending: set[str],
            total: int) -> tuple[str, list[str]]:
    """From capture to central confirmation: in_progress, awaiting_approval, rejected,
    cancelled, queued, delivered (every receipt, no central word yet), complete, incomplete,
    central_failed."""
    if view["state"] == "open":
        return "in_progress", []
    if approval and approval["state"] == "awaiting":
        return "awaiting_approval", []
    if approval and approval["state"] == "rejected":
        return "rejected", []
    central, missing = _central_status(view["central"])
    if central:
        return central, missing
    if view["state"] == "cancelled":
        return "cancelled", []
    return ("queued" if pending else "delivered"), []


def _epoch(text: str) -> float:
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def approvals(runtime: Runtime) -> list[dict[str, Any]]:
    """Registrations awaiting a supervisor, with what the supervisor reviews (no images)."""
    service = runtime.registration_service()
    if service is None:
        return []
    out = []
    for decision in service.approvals.listed("awaiting"):
        try:
            view = service.view(decision["session_id"])
        except Exception:  # noqa: BLE001 - erased or unreadable: shown without detail
            view = None
        out.append({
            "id": decision["session_id"], "since": iso(decision["awaiting_since"]),
            "applicant_ref": view["applicant_ref"] if view else None,
            "operator_id": view["operator_id"] if view else None,
            "items": [{"key": i["key"], "status": i["status"], "quality": i["quality"],
                       "force_captured": i["force_captured"]} for i in (view["items"] if view else [])],
            "exceptions": [{"finger": e["finger"], "code": e["code"], "reason": e["reason"]}
                           for e in (view["exceptions"] if view else [])],
        })
    return out

