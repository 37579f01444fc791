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
import threading
from dataclasses import asdict, dataclass
from typing import Protocol

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Refusal:
    """Why new registrations are refused: ``rule`` is a stable identifier for scripts and
    translations (``low_disk``, ``clock_untrusted``, ...), ``message`` says what is wrong and
    ``action`` what the officer or their supervisor should do about it."""

    rule: str
    message: str
    action: str

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


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
                )
            if refusal is not None:
                found.append(refusal)
        return found
