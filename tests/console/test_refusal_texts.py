"""Every rule that stops registrations reads, in the operator console, in the officer's language:
the English catalogue's sentence with the refusal's values is exactly the agent's English (the
local API's and the log's), and the Urdu one carries the same figures. A catalogue whose
placeholders do not fit shows the agent's English rather than failing the page."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from agent.clock.config import ClockConfig
from agent.clock.watch import ClockGate, ClockWatch
from agent.console.i18n import Translator
from agent.console.pages import clock_reason, refusal
from agent.registration.gates import (
    AwaitingApprovalGate,
    CentralUnreachedGate,
    FreeDiskGate,
    Gates,
    Refusal,
)
from tests.support.refusals import URDU_LETTERS, check_texts

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC).timestamp()


def clock_watch(now: float, gnss_offset_s: float | None = None) -> ClockWatch:
    """A clock watch whose commands say nothing, at ``now``, with a GNSS fix that far off."""
    fix = None if gnss_offset_s is None else (now - gnss_offset_s, 1000.0)
    return ClockWatch(ClockConfig(), clock=lambda: now, monotonic=lambda: 1000.0,
                      run=lambda argv, timeout: None, gnss=(lambda: fix) if fix else None)


def test_every_rule_reads_in_english_exactly_as_the_agent_says_it_and_in_urdu(tmp_path: Path) -> None:
    assert "12" in check_texts(AwaitingApprovalGate(lambda: 12, 10).check())
    check_texts(CentralUnreachedGate(lambda: 0.0, 7, clock=lambda: 8.5 * 86400).check())
    check_texts(FreeDiskGate(tmp_path, 2**60).check())

    class Broken:
        rule = "low_disk"

        def check(self) -> Refusal | None:
            raise OSError("disk gone")

    gates = Gates()
    gates.add(Broken())
    check_texts(gates.refusals()[0])

    # The clock: before this release's date, then hours off GNSS time; the reasons are parts
    # of the message, each translated.
    cold = check_texts(ClockGate(clock_watch(datetime(1970, 1, 1, 3, 2, tzinfo=UTC).timestamp())).check())
    assert "1970-01-01 03:02 UTC" in cold and "ریلیز" in cold
    off = check_texts(ClockGate(clock_watch(NOW, gnss_offset_s=3 * 3600)).check())
    assert "+10800" in off and "GNSS" in off


def test_the_clock_reason_on_the_dashboard_is_translated() -> None:
    state = clock_watch(NOW).state()  # nothing answers: not synchronised
    shown = {"reason": state.reason, "reason_texts": list(state.reason_texts)}
    assert clock_reason(Translator("en"), shown) == state.reason
    assert URDU_LETTERS.search(clock_reason(Translator("ur"), shown))
    # Two reasons at once are joined with the language's separator.
    both = clock_watch(datetime(1970, 1, 1, tzinfo=UTC).timestamp(), gnss_offset_s=-600).state()
    assert len(both.reason_texts) == 2
    shown = {"reason": both.reason, "reason_texts": list(both.reason_texts)}
    assert clock_reason(Translator("en"), shown) == both.reason
    assert "؛ " in clock_reason(Translator("ur"), shown)


def test_a_translation_that_does_not_fit_shows_the_agents_english() -> None:
    found = FreeDiskGate(Path("/"), 2**60).check()
    assert found is not None
    # Values that do not fill the catalogue's placeholders (an older agent, a hand-edited
    # catalogue): the page shows the English sentence rather than failing.
    shown = {**found.as_dict(), "text": found.text, "values": {"unexpected": "1"}}
    assert refusal(Translator("ur"), shown, "message") == found.message
    # A refusal without a message id (a rule added without catalogue entries): English.
    plain = {"rule": "new_rule", "message": "m", "action": "a", "text": "", "values": {}}
    assert refusal(Translator("ur"), plain, "action") == "a"
    # A reason this console has no message for: the agent's English, not a message id.
    unknown = [{"text": "clock.reason.newer", "values": {"y": "1"}}]
    assert clock_reason(Translator("ur"), {"reason": "r", "reason_texts": unknown}) == "r"
