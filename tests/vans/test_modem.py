"""The cellular modem in telemetry, from recorded ``mmcli --output-json`` output."""

from __future__ import annotations

from pathlib import Path

from agent.transport.modem import ModemWatch, parse_modem

SAMPLES = Path(__file__).parent / "samples"


def sample(name: str) -> str:
    return (SAMPLES / name).read_text()


def test_an_lte_modem_is_read() -> None:
    state = parse_modem(sample("mmcli-list.json"), sample("mmcli-modem-lte.json"))
    assert state == {"present": True, "state": "connected", "signal_quality_pct": 67, "signal_recent": True,
                     "access_technologies": ["lte"], "registration_state": "home", "operator": "Safaricom",
                     "model": "Quectel EC25", "error": None}
    assert "861234050012345" not in str(state), "no IMEI in telemetry"


def test_a_searching_modem_and_no_modem() -> None:
    state = parse_modem(sample("mmcli-list.json"), sample("mmcli-modem-searching.json"))
    assert state["registration_state"] == "searching" and state["operator"] is None
    assert state["signal_quality_pct"] == 0 and state["access_technologies"] == []
    assert parse_modem(sample("mmcli-list-empty.json"), None) == {"present": False, "error": None}
    assert parse_modem("garbage", None)["present"] is False
    assert parse_modem(sample("mmcli-list.json"), "{]")["error"] == "mmcli did not describe the modem"


def test_without_mmcli_nothing_runs_and_answers_are_cached() -> None:
    calls: list[list[str]] = []

    def run(argv: list[str], timeout: float) -> str | None:
        calls.append(argv)
        return sample("mmcli-list.json") if "-L" in argv else sample("mmcli-modem-lte.json")

    assert ModemWatch(run=run, available=lambda: False).state() is None and calls == []
    now = [0.0]
    watch = ModemWatch(run=run, available=lambda: True, monotonic=lambda: now[0], interval_s=60)
    assert watch.state()["signal_quality_pct"] == 67  # type: ignore[index]
    assert calls[1] == ["mmcli", "-m", "/org/freedesktop/ModemManager1/Modem/0", "--output-json"]
    watch.state()
    assert len(calls) == 2, "cached"
    now[0] = 61
    watch.state()
    assert len(calls) == 4
    failing = ModemWatch(run=lambda argv, t: None, available=lambda: True)
    assert failing.state() == {"present": False, "error": "mmcli failed (is ModemManager running?)"}


def test_telemetry_carries_the_modem_block(tmp_path: Path) -> None:
    """The real agent's telemetry snapshot, its ModemWatch fed recorded mmcli output."""
    from agent.config import validate_config
    from agent.daemon import Agent
    from agent.security.keys import provision
    from agent.transport.telemetry import snapshot
    from devtools.broker import free_port
    from tests.vans.van import KIOSK, kiosk_raw

    def mmcli(name: str):  # type: ignore[no-untyped-def]
        return lambda argv, t: sample("mmcli-list.json") if "-L" in argv else sample(name)

    provision(tmp_path / "keys", KIOSK)
    agent = Agent(validate_config(kiosk_raw(tmp_path, free_port()), "van"))
    agent.start()
    try:
        assert agent.modem is not None
        agent.modem = ModemWatch(run=mmcli("mmcli-modem-lte.json"), available=lambda: True)
        lte = snapshot(agent)["modem"]  # type: ignore[arg-type]
        agent.modem = ModemWatch(run=mmcli("mmcli-modem-searching.json"), available=lambda: True)
        searching = snapshot(agent)["modem"]  # type: ignore[arg-type]
        agent.modem = ModemWatch(run=mmcli("mmcli-modem-lte.json"), available=lambda: False)
        absent = snapshot(agent)["modem"]  # type: ignore[arg-type]
    finally:
        agent.stop()
    assert lte["registration_state"] == "home" and lte["signal_quality_pct"] == 67
    assert lte["operator"] == "Safaricom" and lte["access_technologies"] == ["lte"]
    assert lte["state"] == "connected"
    assert "861234050012345" not in str(lte), "no IMEI in telemetry"
    assert searching["registration_state"] == "searching" and searching["signal_quality_pct"] == 0
    assert absent is None, "without ModemManager: null, nothing run"
