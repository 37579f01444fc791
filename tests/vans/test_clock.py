"""The clock: judged from recorded chronyc/timedatectl output and GNSS time, with injected
clocks (the test machine's clock is never touched); a clearly wrong clock stops new
registrations through the real agent's local API; expiry failures name the clock."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.clock import watch as clock_watch
from agent.clock.config import ClockConfig
from agent.clock.watch import ClockGate, ClockWatch, clock_hint, parse_chrony_tracking, parse_timedatectl

SAMPLES = Path(__file__).parent / "samples"
NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC).timestamp()


@pytest.fixture(autouse=True)
def forget_the_clock() -> Iterator[None]:
    """The last judgement is process-wide (expiry messages read it): none leaks out."""
    yield
    clock_watch._latest = None


def sample(name: str) -> str:
    return (SAMPLES / name).read_text()


def runner(chrony: str | None = None, timedatectl: str | None = None):  # type: ignore[no-untyped-def]
    """What the two commands print on a machine in that state (None: not installed)."""
    outputs = {"chronyc": chrony and sample(chrony), "timedatectl": timedatectl and sample(timedatectl)}
    return lambda argv, timeout: outputs[argv[0]]


class Clocks:
    """An injected wall clock and monotonic clock."""

    def __init__(self, now: float) -> None:
        self.now, self.mono = now, 1000.0

    def wall(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.mono


def watch(clocks: Clocks, run=None, gnss=None, **config) -> ClockWatch:  # type: ignore[no-untyped-def]
    return ClockWatch(ClockConfig(**config), clock=clocks.wall, monotonic=clocks.monotonic,
                      run=run or runner(), gnss=gnss)


def test_chrony_reports_are_read() -> None:
    ntp = parse_chrony_tracking(sample("chronyc-tracking-ntp.txt"))
    assert ntp is not None and ntp.synchronized and ntp.reference == "192.168.1.10" and ntp.stratum == 3
    assert ntp.offset_s == pytest.approx(-0.000184213)  # slow: the clock is behind
    gps = parse_chrony_tracking(sample("chronyc-tracking-gps.txt"))
    assert gps is not None and gps.synchronized and gps.reference == "PPS" and gps.offset_s > 0
    cold = parse_chrony_tracking(sample("chronyc-tracking-unsynchronised.txt"))
    assert cold is not None and not cold.synchronized and cold.reference == ""
    assert parse_chrony_tracking("506 Cannot talk to daemon\n") is None
    assert parse_timedatectl(sample("timedatectl-show-synchronized.txt")) is True
    assert parse_timedatectl(sample("timedatectl-show-unsynchronized.txt")) is False
    assert parse_timedatectl("garbage") is None


def test_a_synchronised_clock_is_trusted() -> None:
    state = watch(Clocks(NOW), runner("chronyc-tracking-ntp.txt")).state()
    assert state.trusted and not state.wrong and state.source == "chrony" and state.reason == ""
    # Without chrony, timedatectl's word (systemd-timesyncd).
    state = watch(Clocks(NOW), runner(None, "timedatectl-show-synchronized.txt")).state()
    assert state.trusted and state.source == "ntp"


def test_an_unsynchronised_clock_is_recorded_but_not_refused() -> None:
    w = watch(Clocks(NOW), runner("chronyc-tracking-unsynchronised.txt", "timedatectl-show-synchronized.txt"))
    state = w.state()
    assert not state.trusted and not state.wrong and state.source == "none"
    assert "not synchronised" in state.reason and ClockGate(w).check() is None
    manifest = state.manifest()
    assert manifest["trusted"] is False and manifest["synchronized"] is False and manifest["source"] == "none"
    # Neither command installed (a container, a minimal image): unknown, not an error.
    assert watch(Clocks(NOW)).state().synchronized is None


def test_a_clock_before_the_release_is_wrong_and_stops_registrations() -> None:
    clocks = Clocks(datetime(1970, 1, 1, 3, 2, tzinfo=UTC).timestamp())  # no RTC, cold boot
    w = watch(clocks, runner("chronyc-tracking-unsynchronised.txt"))
    refusal = ClockGate(w).check()
    assert refusal is not None and refusal.rule == "clock_wrong"
    assert "1970-01-01 03:02 UTC" in refusal.message and "before this release's date" in refusal.message
    assert "set the correct date and time" in refusal.action
    # Even when chrony claims to be synchronised: the date cannot be right.
    assert watch(clocks, runner("chronyc-tracking-ntp.txt")).state().wrong
    # refuse_when_wrong = false: recorded, not refused.
    assert ClockGate(watch(clocks, refuse_when_wrong=False)).check() is None
    # A configured floor.
    assert watch(Clocks(NOW), not_before=date(2027, 1, 1)).state().wrong


def test_gnss_time_decides() -> None:
    clocks = Clocks(NOW)
    fix = (NOW - 5.0, clocks.mono - 5.0)  # a fix read 5 s ago, saying then what the clock says now - 5
    state = watch(clocks, gnss=lambda: fix).state()
    assert state.trusted and state.source == "gnss" and state.gnss_offset_s == pytest.approx(0.0)
    # Three hours off GNSS time: wrong, whatever NTP says (the van's NTP server may be wrong too).
    far = (NOW - 3 * 3600, clocks.mono)
    w = watch(clocks, runner("chronyc-tracking-ntp.txt"), gnss=lambda: far)
    state = w.state()
    assert state.wrong and not state.trusted and state.gnss_offset_s == pytest.approx(10800)
    assert "+10800 s from GNSS time" in state.reason
    refusal = ClockGate(w).check()
    assert refusal is not None and "GNSS" in refusal.message
    # Just inside the margin: fine.
    near = (NOW - 299, clocks.mono)
    assert not watch(clocks, gnss=lambda: near).state().wrong


def test_the_commands_are_asked_at_most_every_check_interval() -> None:
    calls: list[str] = []

    def run(argv: list[str], timeout: float) -> str | None:
        calls.append(argv[0])
        return sample("chronyc-tracking-ntp.txt") if argv[0] == "chronyc" else None

    clocks = Clocks(NOW)
    w = watch(clocks, run, check_interval_s=60)
    for _ in range(5):
        w.state()
    assert calls == ["chronyc"]
    clocks.mono += 61
    w.state()
    assert calls == ["chronyc", "chronyc"]


def test_a_first_fix_brings_a_new_judgement_at_once() -> None:
    """Judged at boot without a fix; the receiver's first fix must not wait check_interval_s
    to count (the first registrations would record "not synchronised")."""
    calls: list[str] = []

    def run(argv: list[str], timeout: float) -> str | None:
        calls.append(argv[0])
        return None

    clocks = Clocks(NOW)
    fix: list[tuple[float, float]] = []
    w = watch(clocks, run, gnss=lambda: fix[0] if fix else None, check_interval_s=60)
    assert w.state().source == "none" and not w.state().trusted
    asked = len(calls)
    fix.append((NOW - 1.0, clocks.mono - 1.0))
    state = w.state()
    assert state.source == "gnss" and state.trusted, "the fix counted at once"
    assert len(calls) == 2 * asked, "judged once more"
    fix.clear()
    assert w.state().source == "gnss" and len(calls) == 2 * asked, "a lost fix waits for the interval"


def test_expiry_failures_name_the_clock() -> None:
    from agent.remote.auth import CommandError, Operator, sign_command, verify_command

    key = Ed25519PrivateKey.generate()
    operators = {"ada": Operator("ada", key.public_key(), frozenset({"admin"}))}
    body = json.loads(sign_command(key, operator="ada", kiosk="van-07", name="status", now=NOW))
    wrong_now = datetime(1970, 1, 2, tzinfo=UTC).timestamp()

    def refusal() -> str:
        with pytest.raises(CommandError) as err:
            verify_command(body, kiosk_id="van-07", topic_name="status", operators=operators, skew_s=300,
                           max_ttl_s=3600, now=wrong_now)
        return str(err.value)

    watch(Clocks(NOW), runner("chronyc-tracking-ntp.txt")).state()  # trusted: nothing added
    assert "in the future" in refusal() and "clock may be the cause" not in refusal() and clock_hint() == ""
    watch(Clocks(wrong_now)).state()
    assert "this kiosk's clock may be the cause: the clock says 1970-01-02" in refusal()


def test_the_agent_refuses_registrations_while_its_clock_is_wrong(tmp_path: Path) -> None:
    """The real agent and local API; the floor is moved past today instead of the clock."""
    from agent.config import validate_config
    from agent.daemon import Agent
    from agent.security.keys import provision
    from devtools.broker import free_port
    from tests.support.local_api import Api
    from tests.vans.van import KIOSK, kiosk_raw

    provision(tmp_path / "keys", KIOSK)
    raw = kiosk_raw(tmp_path, free_port())
    raw["clock"] = {"not_before": "2100-01-01"}
    agent = Agent(validate_config(raw, "van"))
    agent.start()
    try:
        status, body = Api.for_agent(agent).call("POST", "/v1/sessions",
                                                 {"applicant_ref": "APP-1", "operator_id": "op-1"})
        from agent.transport.telemetry import snapshot

        telemetry = snapshot(agent)  # type: ignore[arg-type]
    finally:
        agent.stop()
    assert status == 409 and body["error"]["code"] == "blocked"
    (rule,) = [r for r in body["error"]["rules"] if r["rule"] == "clock_wrong"]
    assert "before this release's date 2100-01-01" in rule["message"]
    assert "set the correct date" in rule["action"]
    assert telemetry["clock"]["wrong"] is True and telemetry["clock"]["trusted"] is False
