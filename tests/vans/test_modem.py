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
