"""Whether the kiosk's clock can be believed, from what the system says of it.

A van offline for days may boot with a clock that is plainly wrong (no RTC, or a flat RTC
battery): every date it stamps on a registration would be wrong, and certificate and command
expiry checks fail for no visible reason. The agent therefore judges its clock from:

* the system's synchronisation state: ``chronyc -n tracking`` (reference, stratum, offset,
  leap status) or, without chrony, ``timedatectl show`` (``NTPSynchronized``);
* GNSS time, when a receiver has a fix (``gnss``: the fix's UTC time and when it was read);
* this release's date: no kiosk running it can truly be earlier (``clock.not_before``).

``wrong`` (before the release date, or further than ``clock.max_gnss_offset_s`` from GNSS
time) stops new registrations (ClockGate); ``trusted`` (synchronised to NTP, chrony or GNSS,
and not wrong) is recorded in every registration's manifest either way. Nothing here ever
sets the clock: that is chrony's job (docs/deployment.md, "gpsd feeding chrony").
"""

from __future__ import annotations

import logging
import re
import ssl
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from datetime import time as dtime
from typing import Any

from agent.clock.config import ClockConfig
from agent.registration.gates import Refusal

log = logging.getLogger(__name__)

#: Runs a command: its standard output, or None when it is missing, fails or hangs.
Runner = Callable[[list[str], float], str | None]
#: GNSS time: (UTC seconds of the fix, time.monotonic() when it was read), or None.
GnssTime = Callable[[], tuple[float, float] | None]


def run_command(argv: list[str], timeout_s: float) -> str | None:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


@dataclass(frozen=True)
class ChronyTracking:
    synchronized: bool
    reference: str    # the source's name or address, "" when none
    stratum: int
    offset_s: float | None   # system clock minus true time: positive when the clock is fast


_CHRONY_LINE = re.compile(r"^([A-Za-z ()]+?)\s*:\s*(.*)$")
_CHRONY_OFFSET = re.compile(r"^([0-9.]+) seconds (fast|slow) of NTP time$")
_REFERENCE = re.compile(r"^([0-9A-Fa-f]{8})\s*\((.*)\)$")


def parse_chrony_tracking(text: str) -> ChronyTracking | None:
    """``chronyc tracking``'s report, or None when ``text`` is not one."""
    fields = {}
    for line in text.splitlines():
        m = _CHRONY_LINE.match(line.strip())
        if m:
            fields[m.group(1).strip()] = m.group(2).strip()
    if "Leap status" not in fields or "Reference ID" not in fields:
        return None
    ref = _REFERENCE.match(fields["Reference ID"])
    ref_id, ref_name = (ref.group(1), ref.group(2)) if ref else ("00000000", "")
    try:
        stratum = int(fields.get("Stratum", "0"))
    except ValueError:
        stratum = 0
    offset = None
    m = _CHRONY_OFFSET.match(fields.get("System time", ""))
    if m:
        offset = float(m.group(1)) * (1 if m.group(2) == "fast" else -1)
    synced = (fields["Leap status"] != "Not synchronised" and ref_id != "00000000" and stratum > 0)
    return ChronyTracking(synced, ref_name if synced else "", stratum, offset)


def parse_timedatectl(text: str) -> bool | None:
    """``timedatectl show``'s ``NTPSynchronized`` (systemd-timesyncd or chrony), or None."""
    for line in text.splitlines():
        key, _, value = line.strip().partition("=")
        if key == "NTPSynchronized":
            return {"yes": True, "no": False}.get(value.strip())
    return None


@dataclass(frozen=True)
class ClockState:
    #: Synchronised (chrony, NTP or GNSS) and not wrong: dates it stamps can be believed.
    trusted: bool
    #: Clearly wrong: before this release's date, or far from GNSS time. New registrations stop.
    wrong: bool
    #: The system's own word (chrony, else timedatectl); None when neither answered.
    synchronized: bool | None
    #: What the judgement rests on: "gnss", "chrony", "ntp" (timedatectl) or "none".
    source: str
    #: chrony's estimate of the clock's error, seconds (positive: fast); None if unknown.
    offset_s: float | None
    #: The clock minus GNSS time, seconds; None without a fix.
    gnss_offset_s: float | None
    #: Why it is wrong or not trusted ("" when trusted), for the officer and the log.
    reason: str
    checked_at: float
    #: The same reasons for the operator console's catalogues: ``{"text": message id,
    #: "values": {...}}`` each (``clock.reason.*``; agent/registration/gates.py, Refusal).
    reason_texts: tuple[dict[str, Any], ...] = ()

    def manifest(self) -> dict[str, Any]:
        """What a registration's manifest records of the clock that stamped it."""
        return {"trusted": self.trusted, "wrong": self.wrong, "synchronized": self.synchronized,
                "source": self.source,
                "offset_s": None if self.offset_s is None else round(self.offset_s, 6),
                "gnss_offset_s": None if self.gnss_offset_s is None else round(self.gnss_offset_s, 3),
                "reason": self.reason or None}


_latest: ClockState | None = None


def clock_hint() -> str:
    """A clause to add to an expiry or certificate failure when the clock is the likely
    cause ("" when the clock is trusted, or not judged yet)."""
    state = _latest
    if state is None or state.trusted:
        return ""
    return f" (this kiosk's clock may be the cause: {state.reason})"


#: OpenSSL's verify codes a wrong clock causes: a certificate (or CRL) not yet valid, or expired.
CLOCK_VERIFY_CODES = frozenset({9, 10, 11, 12})


def tls_clock_hint(exc: BaseException) -> str:
    """``clock_hint()`` for a certificate refused as not yet valid or expired (the kiosk's
    clock decides those); "" for any other TLS failure, which the clock cannot cause."""
    if isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_code in CLOCK_VERIFY_CODES:
        return clock_hint()
    return ""


class ClockWatch:
    """Judges the clock on demand, at most every ``check_interval_s``; thread-safe."""

    def __init__(self, config: ClockConfig, *, clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic, run: Runner = run_command,
                 gnss: GnssTime | None = None) -> None:
        self.config = config
        self.clock, self.monotonic, self.run, self.gnss = clock, monotonic, run, gnss
        self._lock = threading.Lock()
        self._state: ClockState | None = None
        self._at = 0.0

    def state(self, fresh: bool = False) -> ClockState:
        global _latest
        with self._lock:
            if fresh or self._state is None or self._fix_came() \
                    or self.monotonic() - self._at >= self.config.check_interval_s:
                previous, self._state = self._state, self._judge()
                self._at = self.monotonic()
                if previous is None or previous.wrong != self._state.wrong:
                    level = logging.ERROR if self._state.wrong else logging.INFO
                    log.log(level, "clock %s: %s", "wrong" if self._state.wrong else
                            ("trusted" if self._state.trusted else "not synchronised"),
                            self._state.reason or self._state.source)
            _latest = self._state
            return self._state

    def _fix_came(self) -> bool:
        """A GNSS fix has come since a judgement made without one: judge again now, or the
        first registrations after a boot would record the judgement made before the
        receiver's first fix, for up to ``check_interval_s``. (A fix lost is not urgent: the
        offset it measured stays true for a while.)"""
        had = self._state is not None and self._state.gnss_offset_s is not None
        return self.gnss is not None and not had and self.gnss() is not None

    def _judge(self) -> ClockState:
        now = self.clock()
        timeout = self.config.command_timeout_s
        tracking = None
        out = self.run(["chronyc", "-n", "tracking"], timeout)
        if out is not None:
            tracking = parse_chrony_tracking(out)
        synchronized: bool | None = tracking.synchronized if tracking else None
        if synchronized is None and (out := self.run(["timedatectl", "show"], timeout)) is not None:
            synchronized = parse_timedatectl(out)
        gnss_offset = None
        fix = self.gnss() if self.gnss else None
        if fix is not None:
            fix_utc, read_at = fix
            gnss_offset = now - (fix_utc + (self.monotonic() - read_at))
        floor = datetime.combine(self.config.not_before, dtime(), UTC)
        reasons, texts = [], []
        if now < floor.timestamp():
            reasons.append(f"the clock says {_iso(now)}, before this release's date "
                           f"{self.config.not_before.isoformat()}: it is wrong (a flat clock battery "
                           "after days without power?)")
            texts.append({"text": "clock.reason.before_release",
                          "values": {"now": _iso(now), "release": self.config.not_before.isoformat()}})
        if gnss_offset is not None and abs(gnss_offset) > self.config.max_gnss_offset_s:
            reasons.append(f"the clock is {gnss_offset:+.0f} s from GNSS time "
                           f"(more than {self.config.max_gnss_offset_s:g} s)")
            texts.append({"text": "clock.reason.gnss_offset", "values": {"offset": f"{gnss_offset:+.0f}",
                                                            "limit": f"{self.config.max_gnss_offset_s:g}"}})
        wrong = bool(reasons)
        if gnss_offset is not None and not wrong:
            source = "gnss"
        elif tracking is not None and tracking.synchronized:
            source = "chrony"
        elif synchronized:
            source = "ntp"
        else:
            source = "none"
        trusted = not wrong and source != "none"
        if not reasons and not trusted:
            reasons.append("the clock is not synchronised (no NTP, chrony or GNSS time yet)")
            texts.append({"text": "clock.reason.unsynchronised", "values": {}})
        return ClockState(trusted, wrong, synchronized, source, tracking.offset_s if tracking else None,
                          gnss_offset, "; ".join(reasons), now, tuple(texts))


def _iso(t: float) -> str:
    try:
        return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M UTC")
    except (OverflowError, OSError, ValueError):
        return f"{t:.0f} s since 1970"


class ClockGate:
    """New registrations stop while the clock is clearly wrong (agent/registration/gates.py)."""

    rule = "clock_wrong"

    def __init__(self, watch: ClockWatch) -> None:
        self.watch = watch

    def check(self) -> Refusal | None:
        state = self.watch.state()
        if not state.wrong or not self.watch.config.refuse_when_wrong:
            return None
        return Refusal(self.rule, f"the kiosk's clock is wrong: {state.reason}",
                       "set the correct date and time (or let the kiosk reach NTP or a GNSS fix), then "
                       "start again; call support if it stays wrong",
                       self.rule, {"reason": list(state.reason_texts)})
