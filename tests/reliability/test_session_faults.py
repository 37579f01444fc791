"""Device faults during a registration session, from the wire-level emulators: the U.are.U
scanner unplugged halfway through a frame (pyusb backend) and a UART module pulled out (pty).
The session reports each fault, nothing already captured is lost, and the session finishes
once the device is back."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from agent.capture import hotplug
from agent.daemon import Agent
from devtools.broker import MosquittoBroker
from drivers import usb_scan
from receiver.service import Receiver
from tests.emulators.uru4000_backend import EmulatedBus, EmulatedScanner, default_image
from tests.emulators.zfm import ZfmEmulator
from tests.support.config import agent_config, receiver_config
from tests.support.local_api import Api, local_api_section
from tests.support.uru4000 import FAST
from tests.support.waiting import wait_until

ZFM_FAST: dict[str, Any] = {"poll_interval_s": 0.002, "probe_timeout_s": 0.05, "reply_timeout_s": 0.3}


def run_session_through_a_fault(tmp_path: Path, broker: MosquittoBroker, finger: dict[str, Any],
                                pull, plug_back) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """Two fingers, the device fails on the third, comes back, the session completes."""
    config = agent_config(tmp_path, broker.port, capture={"mode": "on-demand"},
                          devices={"finger": finger},
                          registration={"face": False, "max_attempts": 2, "finger_min_quality": 0},
                          local_api=local_api_section(tmp_path))
    receiver = Receiver(receiver_config(tmp_path / "out", config))
    receiver.start()
    agent = Agent(config)
    agent.start()
    try:
        api = Api.for_agent(agent)
        sid = api.ok("POST", "/v1/sessions", {"applicant_ref": "A-F1", "operator_id": "op"})["id"]
        kept = [api.ok("POST", f"/v1/sessions/{sid}/capture")["capture_id"] for _ in range(2)]
        pull()
        status, err = api.call("POST", f"/v1/sessions/{sid}/capture")
        assert status == 503 and err["error"]["code"] == "device", err
        assert "nothing already captured is lost" in err["error"]["message"]
        events = api.ok("GET", f"/v1/sessions/{sid}/events")["events"]
        assert [e for e in events if e["event"] == "device_error"]
        # Nothing lost: both captures are still in the queue or already at the receiver, and the
        # session still holds them.
        view = api.ok("GET", f"/v1/sessions/{sid}")
        assert [i["capture_id"] for i in view["items"][:2]] == kept and view["next"] == "finger-3"
        queued = {item.id for item in agent.queue.next_batch(0, 100)}  # type: ignore[union-attr]
        stored = {p.stem for p in (tmp_path / "out").glob("*/*.json")}
        assert set(kept) <= queued | stored
        plug_back()
        worker = agent.workers["finger"]
        wait_until(lambda: worker.state == "online", 15, what="the scanner back online")
        api.ok("POST", f"/v1/sessions/{sid}/capture")
        for position in range(4, 11):
            api.ok("POST", f"/v1/sessions/{sid}/exceptions", {"position": position, "code": "UP",
                                                               "reason": "test: short session"})
        api.ok("POST", f"/v1/sessions/{sid}/complete")
        folder = tmp_path / "out" / config.kiosk.id / "registrations"
        wait_until(lambda: (folder / f"{sid}.complete.json").exists(), 30, what="registration complete")
        summary = json.loads((folder / f"{sid}.complete.json").read_text())
        assert set(kept) <= set(summary["captures"]) and len(summary["captures"]) == 3
        assert agent.link is not None and agent.link.alive
        return summary
    finally:
        agent.stop()
        receiver.stop()


def test_usb_scanner_unplugged_mid_frame(tmp_path: Path, broker: MosquittoBroker,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    scanner = EmulatedScanner(image=default_image())
    bus = EmulatedBus(scanner)
    monkeypatch.setattr(usb_scan, "default_backend", bus)
    monkeypatch.setattr(hotplug, "DEFAULT_PERIOD_S", 0.05)

    def pull() -> None:
        scanner.faults.unplug_mid_frame = True

    def plug_back() -> None:
        wait_until(lambda: not scanner.plugged, 5, what="the scanner gone")
        bus.plug(scanner)

    run_session_through_a_fault(tmp_path, broker, {"driver": "uru4000", **FAST}, pull, plug_back)


def test_uart_module_pulled_out_mid_session(tmp_path: Path, broker: MosquittoBroker,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hotplug, "DEFAULT_PERIOD_S", 0.05)
    link = tmp_path / "ttyFINGER"  # as a udev rule names the module's USB bridge
    emulators = [ZfmEmulator(link=link).start()]

    def pull() -> None:
        emulators[-1].unplug()
        link.unlink(missing_ok=True)

    def plug_back() -> None:
        emulators.append(ZfmEmulator(link=link).start())

    try:
        run_session_through_a_fault(tmp_path, broker, {"driver": "zfm", "port": str(link), **ZFM_FAST},
                                    pull, plug_back)
    finally:
        for emulator in emulators:
            emulator.stop()
