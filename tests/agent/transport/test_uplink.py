"""The uplink gate (agent/transport/uplink.py) and upload windows (windows.py): windows, token bucket,
daily budget, drain estimate.

Clocks are injected, so days and windows pass in microseconds."""

from __future__ import annotations

import json
import logging
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from agent.config import ConfigError, UplinkConfig, validate_config
from agent.transport.uplink import Uplink
from agent.transport.windows import parse_window, seconds_until_open, window_open
from receiver.config import ReceiverServiceConfig
from tests.support.config import security_section


class FakeClock:
    def __init__(self, start: datetime) -> None:
        self.now = start
        self.mono = 1000.0

    def __call__(self) -> datetime:
        return self.now

    def monotonic(self) -> float:
        return self.mono

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)
        self.mono += seconds


def at(hhmm: str, day: int = 1) -> datetime:
    h, m = (int(x) for x in hhmm.split(":"))
    return datetime(2026, 5, day, h, m)


# --- windows -----------------------------------------------------------------------------


def test_window_parsing_and_membership() -> None:
    office = parse_window("08:00-18:00")
    assert (office.start, office.end) == (480, 1080) and str(office) == "08:00-18:00"
    night = parse_window(" 22:30 - 06:00 ")  # wraps midnight
    assert [night.contains(m) for m in (22 * 60 + 29, 22 * 60 + 30, 0, 5 * 60 + 59, 6 * 60)] == [
        False, True, True, True, False]
    evening = parse_window("18:00-24:00")
    assert evening.contains(23 * 60 + 59) and not evening.contains(0)
    assert window_open([], at("03:00")), "no windows: always open"
    assert not window_open([office, night], at("07:00"))
    assert window_open([office, night], at("23:00"))


@pytest.mark.parametrize("text, message", [
    ("8:00-18:00", "not a time range"),
    ("08:00 to 18:00", "not a time range"),
    ("25:00-26:00", "25:00 is not a time of day"),
    ("08:61-09:00", "08:61 is not a time of day"),
    ("24:00-06:00", "24:00 is not a time of day"),
    ("08:00-08:00", "starts and ends at the same time"),
    ("00:00-24:00", "starts and ends at the same time"),
])
def test_bad_window_strings_are_refused(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_window(text)


def test_bad_window_is_a_config_error_with_its_path(tmp_path: Path) -> None:
    raw = {"kiosk": {"id": "k1"}, "mqtt": {"allow_plaintext": True},
           "security": security_section(tmp_path, "k1"),
           "uplink": {"windows": ["08:00-18:00", "18:00-7:00"], "chunk_bytes": 10}}
    with pytest.raises(ConfigError) as info:
        validate_config(raw, "van.toml")
    problems = "\n".join(info.value.problems)
    assert "uplink.windows: '18:00-7:00' is not a time range" in problems
    # Every problem at once: the bad chunk size too.
    with pytest.raises(ConfigError, match="chunk_bytes must be 0"):
        validate_config({**raw, "uplink": {"chunk_bytes": 10}}, "van.toml")


def test_uplink_config_defaults_and_receiver_accepts_the_section() -> None:
    cfg = UplinkConfig()
    assert (cfg.chunk_bytes, cfg.max_bytes_per_s, cfg.daily_budget_bytes, cfg.windows) == (131072, 0, 0, [])
    receiver = ReceiverServiceConfig.model_validate({"mqtt": {"allow_plaintext": True},
                                                     "uplink": {"max_bytes_per_s": 5}})
    assert receiver.uplink == {"max_bytes_per_s": 5}


def test_seconds_until_open() -> None:
    windows = [parse_window("08:00-09:00"), parse_window("22:00-02:00")]
    assert seconds_until_open(windows, at("08:30")) == 0
    assert seconds_until_open(windows, at("07:00")) == 3600
    assert seconds_until_open(windows, at("03:00")) == 5 * 3600
    assert seconds_until_open(windows, at("09:00")) == 13 * 3600
    assert seconds_until_open([parse_window("08:00-09:00")], at("10:00")) == 22 * 3600


def test_gate_follows_the_window() -> None:
    clock = FakeClock(at("07:59"))
    uplink = Uplink(windows=["08:00-08:30"], clock=clock, monotonic=clock.monotonic)
    assert not uplink.try_send(100) and uplink.held == "window closed"
    assert uplink.state()["window_open"] is False
    clock.advance(60)
    assert uplink.try_send(100) and uplink.held is None
    clock.advance(30 * 60)
    assert not uplink.try_send(100)
    assert uplink.sent_bytes == 100


# --- bandwidth cap -------------------------------------------------------------------------


def test_token_bucket_holds_the_rate() -> None:
    clock = FakeClock(at("12:00"))
    uplink = Uplink(max_bytes_per_s=10_000, clock=clock, monotonic=clock.monotonic)
    sent = 0
    for _ in range(10_000):  # 10 s in 1 ms steps, offering 1,000-byte messages
        clock.advance(0.001)
        while uplink.try_send(1000):
            sent += 1000
    # 10 s at 10,000 B/s plus the bucket's initial 0.25 s burst.
    assert 100_000 <= sent <= 102_500 + 1000
    assert uplink.state()["throttled"] is True


def test_message_larger_than_the_bucket_goes_and_leaves_debt() -> None:
    clock = FakeClock(at("12:00"))
    uplink = Uplink(max_bytes_per_s=1000, clock=clock, monotonic=clock.monotonic)
    assert uplink.try_send(5000)  # a full bucket lets one big message go
    clock.advance(4.0)  # 4,000 tokens earned, 5,000 owed: still in debt
    assert not uplink.try_send(10)
    clock.advance(1.3)
    assert uplink.try_send(10)


# --- daily budget --------------------------------------------------------------------------


def test_budget_stops_and_resumes_next_day_and_survives_restart(tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock(at("23:00"))
    events: list[tuple[str, dict]] = []
    state = tmp_path / "uplink-state.json"

    def make() -> Uplink:
        return Uplink(daily_budget_bytes=1000, state_path=state, clock=clock, monotonic=clock.monotonic,
                      on_event=lambda kind, **f: events.append((kind, f)))

    uplink = make()
    assert uplink.try_send(600)
    uplink.persist()
    # A restart the same day: the budget used so far is remembered.
    caplog.set_level(logging.WARNING, "agent.transport.uplink")
    uplink = make()
    assert uplink.used == 600
    assert not uplink.try_send(600) and uplink.held == "daily budget reached"
    assert not uplink.try_send(600)
    assert uplink.try_send(400), "what is left of the budget can still be used"
    assert [e[0] for e in events] == ["quota_reached"], "one event per day, not one per attempt"
    assert events[0][1]["resumes_at"] == "2026-05-02T00:00" and events[0][1]["used_bytes"] == 600
    assert sum("daily data budget" in r.getMessage() for r in caplog.records) == 1
    assert json.loads(state.read_text()) == {"day": "2026-05-01", "used": 1000}
    clock.advance(3600)  # past local midnight
    assert uplink.try_send(600) and uplink.used == 600
    assert not uplink.try_send(600)
    assert [e[0] for e in events] == ["quota_reached", "quota_reached"]
    uplink.persist()
    assert json.loads(state.read_text()) == {"day": "2026-05-02", "used": 600}
    assert not list(tmp_path.glob(".uplink-*")), "no temporary files left behind"


def test_damaged_state_file_does_not_stop_the_agent(tmp_path: Path) -> None:
    state = tmp_path / "uplink-state.json"
    state.write_text("{not json")
    uplink = Uplink(daily_budget_bytes=1000, state_path=state)
    assert uplink.used == 0 and uplink.try_send(10)


def test_drain_estimate_counts_cap_window_and_budget() -> None:
    clock = FakeClock(at("07:00"))
    plain = Uplink(clock=clock, monotonic=clock.monotonic)
    assert plain.drain_estimate_s(1_000_000, 10, 2.0) == 5.0
    assert plain.drain_estimate_s(0, 0, 2.0) is None
    capped = Uplink(max_bytes_per_s=10_000, clock=clock, monotonic=clock.monotonic)
    assert capped.drain_estimate_s(1_000_000, 10, 2.0) == 100.0  # the cap, not the observed rate
    assert capped.drain_estimate_s(1_000_000, 10, None) == 100.0
    windowed = Uplink(max_bytes_per_s=10_000, windows=["08:00-18:00"], clock=clock, monotonic=clock.monotonic)
    assert windowed.drain_estimate_s(1_000_000, 10, None) == 3600 + 100.0
    budget = Uplink(max_bytes_per_s=10_000, daily_budget_bytes=400_000, clock=clock,
                    monotonic=clock.monotonic)
    # 1 MB with 400 kB a day: today, tomorrow and the day after.
    assert budget.drain_estimate_s(1_000_000, 10, None) == 100.0 + 17 * 3600 + 86400
