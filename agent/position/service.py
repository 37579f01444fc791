"""The kiosk's position for registrations, telemetry and the area rule.

What a manifest records (``manifest()``) is the receiver's latest fix only while it is
younger than ``position.max_age_s``; otherwise it says there is no fix and why. A stale fix
is never passed off as current, and the fix's own UTC time is recorded beside it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

from agent.position.config import PositionConfig
from agent.registration.gates import Refusal
from drivers.gnss import Fix, GnssStatus, GpsdClient, NmeaReceiver

EARTH_RADIUS_M = 6_371_008.8


def distance_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance (haversine): metres-accurate at the scale of an area."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(a)))


class PositionService:
    def __init__(self, config: PositionConfig, monotonic: Callable[[], float] = time.monotonic,
                 reader: Any = None) -> None:
        self.config = config
        self.monotonic = monotonic
        if reader is None:
            reader = (NmeaReceiver(config.port, config.baud, monotonic) if config.source == "nmea"
                      else GpsdClient(config.gpsd_host, config.gpsd_port, monotonic))
        self.reader = reader

    def start(self) -> None:
        self.reader.start()

    def stop(self) -> None:
        self.reader.stop()

    @property
    def status(self) -> GnssStatus:
        return self.reader.status

    def current(self) -> tuple[Fix | None, str]:
        """The fix to use now, or None and why not."""
        status = self.status
        fix = status.fix
        if fix is None:
            if not status.connected:
                return None, f"the GNSS receiver is not connected ({status.error or 'starting'})"
            return None, "the GNSS receiver has no fix"
        age = self.monotonic() - fix.received
        if age > self.config.max_age_s:
            return None, f"the last fix is {age:.0f} s old (position.max_age_s {self.config.max_age_s:g})"
        return fix, ""

    def manifest(self) -> dict[str, Any]:
        """What a registration's manifest records of where it was taken."""
        fix, why = self.current()
        if fix is None:
            return {"fix": False, "source": self.config.source, "reason": why}
        out: dict[str, Any] = {
            "fix": True, "source": fix.source, "lat": round(fix.lat, 7), "lon": round(fix.lon, 7),
            "accuracy_m": fix.accuracy_m, "fix_time": _iso(fix.fix_time), "quality": fix.quality,
            "satellites": fix.satellites, "hdop": fix.hdop,
        }
        area = self.config.area
        if area is not None:
            d = distance_m(area.lat, area.lon, fix.lat, fix.lon)
            out["area_distance_m"] = round(d, 1)
            out["outside_area"] = d > area.radius_m
        return out

    def gnss_time(self) -> tuple[float, float] | None:
        """(the fix's UTC time, when it was read) for the clock check, or None."""
        fix, _ = self.current()
        return None if fix is None else (fix.fix_time, fix.received)

    def telemetry(self) -> dict[str, Any]:
        return dict(self.status.as_dict(self.monotonic()), current=self.manifest())


def _iso(t: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class AreaGate:
    """The assigned area, both ways. ``outside = "refuse"``: no new registration outside it.
    ``outside = "flag"``: registrations go on, and the officer is warned while the person is
    there (``warning``: the session view and its events), not only the manifest marked.
    Without a current fix nothing is refused or warned of (the manifest records "no fix")."""

    rule = "outside_area"

    def __init__(self, service: PositionService) -> None:
        self.service = service

    def _outside(self, mode: str) -> float | None:
        """How far the current fix is from the area's centre, when outside it in ``mode``."""
        area = self.service.config.area
        if area is None or area.outside != mode:
            return None
        fix, _ = self.service.current()
        if fix is None:
            return None
        d = distance_m(area.lat, area.lon, fix.lat, fix.lon)
        return d if d > area.radius_m else None

    def _where(self, d: float) -> str:
        area = self.service.config.area
        assert area is not None
        return (f"the kiosk is {d / 1000:.1f} km from the centre of its assigned area "
                f"(radius {area.radius_m / 1000:g} km)")

    def check(self) -> Refusal | None:
        d = self._outside("refuse")
        if d is None:
            return None
        area = self.service.config.area
        assert area is not None
        return Refusal(self.rule, self._where(d),
                       "drive back into the assigned area, or ask the supervisor to change it "
                       "(position.area)",
                       self.rule, {"km": f"{d / 1000:.1f}", "radius_km": f"{area.radius_m / 1000:g}"})

    def warning(self) -> dict[str, Any] | None:
        """With ``outside = "flag"``: what the officer is told while the kiosk is outside."""
        d = self._outside("flag")
        if d is None:
            return None
        return {"rule": self.rule,
                "message": self._where(d) + ": this registration is taken, but marked as made "
                           "outside the area for the central side to review",
                "action": "check that the van is where it was sent; if it is, tell your supervisor so "
                          "the assigned area (position.area) is corrected; if not, drive back into the "
                          "area before the next registration",
                "distance_m": round(d, 1)}


def probe(config: PositionConfig, wait_s: float = 3.0) -> dict[str, Any]:
    """``kiosk-agent devices``: the receiver's state after up to ``wait_s`` of listening (a
    receiver sends an epoch a second). With the agent running, prefer its telemetry: two
    readers of one serial port each miss lines (gpsd has no such problem)."""
    service = PositionService(config)
    service.start()
    try:
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline and service.status.fix is None:
            time.sleep(0.05)
        return service.telemetry()
    finally:
        service.stop()
