"""Registrations whose assembly failed, retried by the receiver itself with backoff.

A registration is assembled when its last part arrives. If that fails (a full or read-only
disk, a transaction that cannot be built) and no further part is coming, nothing else would
ever try again: the registration would sit half-written while every kiosk was told its
parts were stored. So each failure is scheduled here, and the receiver's loop retries what
is due: after ``first_s``, then twice as long each time up to ``max_s``. The
schedule lives in memory; the ``.error.json`` record beside the registration
(receiver/assembly.py) is what survives a restart, and the receiver schedules those again
when it starts. Every outcome goes to the status reporter (receiver/status.py), which tells
the kiosk: complete, failed (each failure, with a reason code), or incomplete.

A failure of the registration's own data (``bad-data``, ``encoding``: a capture listed by
another registration's manifest, a field the transaction cannot hold) is not retried in this
run: the same bytes fail the same way, and retrying them let one kiosk keep the receiver busy
(receiver/unfinished.py caps how many a kiosk may have). Retries run from the receiver's loop
within ``receiver.assembly_tick_budget_ms`` per turn; what is left waits for the next turn, so
a wave of retries never holds back the messages (other kiosks' receipts) between turns.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agent.guard import log_and_continue
from receiver.assembly import RegistrationAssembler
from receiver.status import StatusReporter, reason_code
from receiver.unfinished import Unfinished
from receiver.warnings_limit import LimitedWarnings

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (kiosk id, registration id)


@dataclass
class _Pending:
    attempts: int
    due: float


class AssemblyRetries:
    def __init__(self, first_s: float, max_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.first_s = first_s
        self.max_s = max_s
        self.clock = clock
        self._pending: dict[Key, _Pending] = {}

    def __len__(self) -> int:
        return len(self._pending)

    def __contains__(self, key: Key) -> bool:
        return key in self._pending

    def failed(self, key: Key) -> tuple[int, float]:
        """Count a failed attempt; (attempts so far, seconds until the next one)."""
        entry = self._pending.get(key)
        attempts = entry.attempts + 1 if entry else 1
        delay = min(self.max_s, self.first_s * 2 ** (attempts - 1))
        self._pending[key] = _Pending(attempts, self.clock() + delay)
        return attempts, delay

    def gave_up(self, key: Key) -> int:
        """A failed attempt that is not retried: the attempts it makes, and no schedule."""
        entry = self._pending.pop(key, None)
        return entry.attempts + 1 if entry else 1

    def schedule(self, key: Key) -> None:
        """Retry soon a failure found on disk (after a restart): first attempt of this run."""
        self._pending.setdefault(key, _Pending(0, self.clock()))

    def settled(self, key: Key) -> int | None:
        """The registration no longer needs retrying; the failed attempts it had, if any."""
        entry = self._pending.pop(key, None)
        return entry.attempts if entry else None

    def due(self) -> list[Key]:
        now = self.clock()
        return [key for key, entry in self._pending.items() if entry.due <= now]


#: Registrations whose assembly a duplicate part has already run in this receiver run.
CHECKS_KEPT = 100_000
#: Failures of the registration's own data: the same bytes fail the same way, not retried.
NOT_RETRIED = frozenset({"bad-data", "encoding"})


class RegistrationFinisher:
    """Assembles registrations for the receiver: a failure is recorded beside the
    registration (``.error.json``), logged at ERROR, counted and retried; a later success
    removes the record. ``count(name)`` adds one to the receiver's counter ``name``;
    ``reporter`` tells the kiosk each outcome."""

    def __init__(self, assembler: RegistrationAssembler, first_s: float, max_s: float,
                 count: Callable[[str], None], reporter: StatusReporter | None = None,
                 max_unfinished: int = 20, tick_budget_s: float = 0.05) -> None:
        self.assembler = assembler
        self.retries = AssemblyRetries(first_s, max_s)
        # Shared records (PostgreSQL) count the cap in the database, across receivers.
        self.unfinished = Unfinished(max_unfinished, assembler.records if assembler.records.shared else None)
        self.tick_budget_s = tick_budget_s
        self.count = count
        self.reporter = reporter
        # Many registrations failing at once (a full disk) must not flood the journal.
        self.warnings = LimitedWarnings(log)
        self._checked_on_duplicate: set[Key] = set()
        self._lock = threading.Lock()  # parts arrive on the MQTT thread; tests call in too
        for key in assembler.failures():
            self.retries.schedule(key)  # failed before a restart: nothing else would retry them

    def refusal(self, kiosk_id: str, manifest: dict[str, Any]) -> tuple[str, str] | None:
        """Why a parsed manifest new here must be refused before it is stored: (security event
        kind, reason), or None. A resend of a stored one is answered as before (duplicate)."""
        registration_id = manifest["id"]
        if self.assembler.has_manifest(kiosk_id, registration_id):
            return None
        if self.unfinished.full(kiosk_id, registration_id):
            return "too-many-unfinished", (f"the kiosk has {self.unfinished.limit} registrations that cannot "
                                           "finish; no more are accepted until some do")
        if self.assembler.foreign_part(kiosk_id, manifest):
            # Parts already here meet their manifest now; later ones meet it in assembly.
            return "foreign-capture", "a capture it lists belongs to another registration"
        return None

    def part_arrived(self, kiosk_id: str, registration_id: str, outcome: str) -> None:
        """A part of the registration (a capture or its manifest) was answered ``outcome``.

        A part new here may complete it. A duplicate (which anyone on the broker can replay)
        runs the assembly once per registration and receiver run, no more: that finishes a
        registration whose last part was stored just before a crash (the kiosk's resend comes
        back as a duplicate), while replays cost nothing (assembly reads the manifest and looks
        up every capture it lists)."""
        if outcome == "duplicate":
            key = (kiosk_id, registration_id)
            with self._lock:
                if key in self._checked_on_duplicate:
                    return
                if len(self._checked_on_duplicate) >= CHECKS_KEPT:
                    self._checked_on_duplicate.clear()  # bounded; at worst one more run
                self._checked_on_duplicate.add(key)
        elif outcome != "stored":
            return
        self.assemble(kiosk_id, registration_id)

    def tick(self) -> None:
        """Due retries and "incomplete" reports, for at most tick_budget_s (one attempt may
        overrun it); the rest stay due for the next turn of the loop."""
        deadline = time.monotonic() + self.tick_budget_s
        for kiosk_id, registration_id in self.retries.due():
            if time.monotonic() >= deadline:
                break
            self.assemble(kiosk_id, registration_id)
        if self.reporter is not None:
            self.reporter.tick(deadline)

    def assemble(self, kiosk_id: str, registration_id: str) -> None:
        key = (kiosk_id, registration_id)
        try:
            self.assembler.try_complete(kiosk_id, registration_id)
        except Exception as exc:  # noqa: BLE001
            # Whatever the cause (disk, data, a bug), the registration is recorded as failed
            # and retried; the receipt of the part that triggered it never depends on it.
            self._failed(key, exc)
            return
        with log_and_continue(log, "cannot read the state of registration %s", registration_id):
            self.unfinished.note(kiosk_id, registration_id,
                                 self.assembler.status(kiosk_id, registration_id) == "waiting")
        failed = self.retries.settled(key)
        if failed is not None:
            with log_and_continue(log, "cannot remove the failure record of registration %s",
                                  registration_id):
                self.assembler.clear_failure(kiosk_id, registration_id)
            self.count("assembly_recovered")
            log.info("registration %s from kiosk %s: %s after %d failed assembly attempt(s)", registration_id,
                     kiosk_id, self.assembler.status(kiosk_id, registration_id), failed)
        if self.reporter is not None:
            with log_and_continue(log, "cannot report the status of registration %s", registration_id):
                self.reporter.assembled(kiosk_id, registration_id)

    def _failed(self, key: Key, exc: Exception) -> None:
        kiosk_id, registration_id = key
        code = reason_code(exc)
        delay: float | None = None
        if code in NOT_RETRIED:
            attempts = self.retries.gave_up(key)
        else:
            attempts, delay = self.retries.failed(key)
        self.unfinished.note(kiosk_id, registration_id, code != "storage")
        self.count("assembly_failures")
        with log_and_continue(log, "cannot record the failed assembly of registration %s", registration_id):
            # The error's own text stays in the central store's record: it may quote a name.
            self.assembler.record_failure(kiosk_id, registration_id, f"{type(exc).__name__}: {exc}",
                                          attempts, delay, code)
        if self.reporter is not None:
            with log_and_continue(log, "cannot report the failed assembly of registration %s",
                                  registration_id):
                self.reporter.failed(kiosk_id, registration_id, exc, attempts, delay)
        self.warnings.warn(kiosk_id, "assembly-failed", "registration %s from kiosk %s is incomplete: "
                           "assembling it failed (attempt %d, %s, %s); %s; details in its .error.json",
                           registration_id, kiosk_id, attempts, type(exc).__name__, code,
                           "not retried (its data cannot be built)" if delay is None else
                           f"retrying in {delay:.0f} s", level=logging.ERROR)
        log.debug("assembly of registration %s failed", registration_id, exc_info=exc)
