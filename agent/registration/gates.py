"""Rules that stop a kiosk from starting new registrations when it should not.

A kiosk that has not reached the central side for weeks, is nearly out of disk, holds too
many registrations awaiting a supervisor, or whose clock is plainly wrong must not go on
enrolling people: what it takes could be lost, stuck or stamped with wrong dates. Each rule is
a ``Gate``; ``RegistrationService.start`` asks every gate before opening a session and refuses
with *every* rule that holds (the officer fixes them all in one go), naming what is wrong and
what to do. The operator console shows the same refusals.

Gates are checked on the local API's request thread, so each must be cheap (a stat, a count
from SQLite) and must not raise: a gate that cannot decide answers with its own refusal
rather than letting a broken check open the door (or lock the kiosk with a traceback).
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Refusal:
    """Why new registrations are refused: ``rule`` is a stable identifier for scripts and
    translations (``low_disk``, ``clock_wrong``, ...), ``message`` says what is wrong and
    ``action`` what the officer or their supervisor should do about it.

    ``text`` and ``values`` are the same two sentences for the operator console's catalogues
    (agent/console/locale: ``refusal.<text>.message`` and ``.action``, the values filling
    their placeholders; a value may be a list of ``{"text": message id, "values": {...}}``
    parts, each translated, as the clock's reasons are). The English catalogue's text with
    these values is exactly ``message`` and ``action`` (tests/console/test_refusal_texts.py
    checks every rule)."""

    rule: str
    message: str
    action: str
    text: str = ""
    values: dict[str, Any] = field(default_factory=dict, compare=False)

    def as_dict(self) -> dict[str, str]:
        """The local API's and the log's form: the English sentences."""
        return {"rule": self.rule, "message": self.message, "action": self.action}


class Gate(Protocol):
    #: Stable identifier, used when the gate itself fails.
    rule: str

    def check(self) -> Refusal | None:
        """``None`` when this rule lets a new registration start."""
        ...


class Gates:
    """The gates of one registration service; safe to add to and check from any thread."""

    def __init__(self) -> None:
        self._gates: list[Gate] = []
        self._lock = threading.Lock()

    def add(self, gate: Gate) -> None:
        with self._lock:
            self._gates.append(gate)

    def refusals(self) -> list[Refusal]:
        with self._lock:
            gates = list(self._gates)
        found: list[Refusal] = []
        for gate in gates:
            try:
                refusal = gate.check()
            except Exception as exc:  # noqa: BLE001 - a broken rule refuses, it does not open the door
                log.error("enrolment rule %s could not be checked: %s", gate.rule, type(exc).__name__)
                refusal = Refusal(
                    gate.rule,
                    f"the kiosk could not check rule {gate.rule} ({type(exc).__name__})",
                    "restart the agent; if this stays, call support with the agent's log",
                    "unchecked", {"rule": gate.rule, "error": type(exc).__name__},
                )
            if refusal is not None:
                found.append(refusal)
        return found

    def warnings(self) -> list[dict[str, Any]]:
        """What gates that let a registration go on still want the officer told while the
        person is there (a gate's optional ``warning()``: the assigned area in "flag" mode)."""
        with self._lock:
            gates = list(self._gates)
        found = []
        for gate in gates:
            warn = getattr(gate, "warning", None)
            try:
                warning = warn() if warn is not None else None
            except Exception as exc:  # noqa: BLE001 - a broken warning must not stop the session
                log.error("warning of rule %s could not be checked: %s", gate.rule, type(exc).__name__)
                continue
            if warning is not None:
                found.append(warning)
        return found


# --- the console's rules (docs/console.md); limits in [console], 0 turns a rule off -------------


class AwaitingApprovalGate:
    """Too many completed registrations wait for a supervisor: approve or reject them first,
    before the kiosk holds a day's work nobody has looked at."""

    rule = "approvals_pending"

    def __init__(self, count: Callable[[], int], limit: int) -> None:
        self.count, self.limit = count, limit

    def check(self) -> Refusal | None:
        waiting = self.count()
        if not self.limit or waiting < self.limit:
            return None
        return Refusal(self.rule,
                       f"{waiting} registrations await a supervisor's approval (limit {self.limit})",
                       "a supervisor approves or rejects them on the operator console",
                       self.rule, {"waiting": str(waiting), "limit": str(self.limit)})


class CentralUnreachedGate:
    """Something has waited too long for the central side: the kiosk has been cut off for
    days, and what it takes now would wait with it (on a disk that can be stolen)."""

    rule = "central_unreached"

    def __init__(self, oldest_waiting: Callable[[], float | None], max_days: float,
                 clock: Callable[[], float] = time.time) -> None:
        self.oldest_waiting, self.max_days, self.clock = oldest_waiting, max_days, clock

    def check(self) -> Refusal | None:
        oldest = self.oldest_waiting()
        if not self.max_days or oldest is None:
            return None
        days = (self.clock() - oldest) / 86400
        if days < self.max_days:
            return None
        return Refusal(self.rule, f"captures have waited {days:.1f} days for the central side "
                       f"(limit {self.max_days:g})",
                       "connect the kiosk to the network (cable, Wi-Fi or mobile data) so its backlog "
                       "is sent; call support if it stays disconnected",
                       self.rule, {"days": f"{days:.1f}", "limit": f"{self.max_days:g}"})


class FreeDiskGate:
    """Too little free disk: a registration must never be half taken for want of space."""

    rule = "low_disk"

    def __init__(self, path: Path, min_free_bytes: int) -> None:
        self.path, self.min_free_bytes = path, min_free_bytes

    def check(self) -> Refusal | None:
        free = shutil.disk_usage(self.path).free
        if not self.min_free_bytes or free >= self.min_free_bytes:
            return None
        return Refusal(self.rule, f"only {free // 2**20} MiB free on the kiosk's disk "
                       f"(limit {self.min_free_bytes // 2**20} MiB)",
                       "connect the kiosk so its backlog is sent and deleted, or call support to free space",
                       self.rule, {"free": str(free // 2**20), "limit": str(self.min_free_bytes // 2**20)})
