"""Upload windows: daily local-time ranges "HH:MM-HH:MM" when captures may be sent.

Pure clock arithmetic for the uplink gate (agent/transport/uplink.py) and for validating
``uplink.windows`` (agent/transport/config.py). A range may wrap midnight ("22:00-06:00").
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from datetime import time as dtime

_WINDOW = re.compile(r"^\s*(\d{2}):(\d{2})\s*-\s*(\d{2}):(\d{2})\s*$")


@dataclass(frozen=True)
class Window:
    """A daily local-time range [start, end) in minutes after midnight; may wrap midnight."""

    start: int
    end: int

    def contains(self, minute: int) -> bool:
        if self.start < self.end:
            return self.start <= minute < self.end
        return minute >= self.start or minute < self.end

    def __str__(self) -> str:
        return f"{self.start // 60:02d}:{self.start % 60:02d}-{self.end // 60:02d}:{self.end % 60:02d}"


def parse_window(text: str) -> Window:
    """'HH:MM-HH:MM' -> Window; ValueError says exactly what is wrong (it becomes a config error)."""
    if not isinstance(text, str):
        raise ValueError(f"{text!r} is not a string like \"08:00-18:00\"")
    m = _WINDOW.match(text)
    if not m:
        raise ValueError(f"{text!r} is not a time range like \"08:00-18:00\" "
                         "(24-hour HH:MM-HH:MM, local time)")
    sh, sm, eh, em = (int(g) for g in m.groups())
    for hour, minute, end in ((sh, sm, False), (eh, em, True)):
        # 24:00 is allowed as an end only ("18:00-24:00" reads better than "18:00-00:00").
        if minute > 59 or hour > 24 or (hour == 24 and (minute or not end)):
            raise ValueError(f"{text!r}: {hour:02d}:{minute:02d} is not a time of day")
    start, end_minute = sh * 60 + sm, (eh * 60 + em) % 1440
    if start == end_minute:
        raise ValueError(f"{text!r} starts and ends at the same time; leave uplink.windows empty "
                         "for always open")
    return Window(start, end_minute)


def parse_windows(texts: list[str]) -> list[Window]:
    return [parse_window(t) for t in texts]


def _minute(now: datetime) -> int:
    return now.hour * 60 + now.minute


def window_open(windows: list[Window], now: datetime) -> bool:
    return not windows or any(w.contains(_minute(now)) for w in windows)


def seconds_until_open(windows: list[Window], now: datetime) -> float:
    """0 when open; else seconds until the next window starts (local wall time)."""
    if window_open(windows, now):
        return 0.0
    today = datetime.combine(now.date(), dtime(0), now.tzinfo)
    starts = [today + timedelta(days=d, minutes=w.start) for w in windows for d in (0, 1)]
    return min((s - now).total_seconds() for s in starts if s > now)


def seconds_until_tomorrow(now: datetime) -> float:
    midnight = datetime.combine(now.date() + timedelta(days=1), dtime(0), now.tzinfo)
    return (midnight - now).total_seconds()
