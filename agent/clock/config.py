"""The [clock] config section: how the agent judges its own clock."""

from __future__ import annotations

from datetime import date

from agent.config_types import Section

#: No kiosk running this release can truly be earlier than this: a clock before it is wrong
#: (a flat RTC battery after days without power, a board with no RTC at all). Moved forward
#: with each release; ``clock.not_before`` overrides it.
RELEASED = date(2026, 11, 1)


class ClockConfig(Section):
    """Checks of the system clock before registrations are stamped with it."""

    #: Refuse new registrations while the clock is clearly wrong (before ``not_before``, or
    #: further than ``max_gnss_offset_s`` from GNSS time); false: record it only.
    refuse_when_wrong: bool = True
    #: A clock before this date is wrong. Default: this release's date.
    not_before: date = RELEASED
    #: A clock further than this from the GNSS receiver's time is wrong (a fix's time is
    #: good to well under a second; the margin covers a slow serial line and a stale fix).
    max_gnss_offset_s: float = 300.0
    #: timedatectl and chronyc are asked at most this often (their answers are cached).
    check_interval_s: float = 60.0
    #: Seconds each command may take; a missing or hanging one just leaves that source unknown.
    command_timeout_s: float = 2.0
