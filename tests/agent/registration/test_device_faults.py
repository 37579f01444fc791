"""Device faults during a registration capture, as the registration app hears them.

A permanent fault (the U.are.U emulator sends frames scrambled in a way no driver can
decode: the hardware must change) is answered 500 ``device_failed``, naming what to fix, and
stays so on the next try; a transient one (the simulated scanner unplugged, a timeout) is
503 ``device``, retry later, and the same item succeeds once the device is back.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.daemon import Agent
from agent.errors import AgentError
from agent.registration.errors import RegistrationError, device_fault
from devtools.broker import MosquittoBroker
from drivers import DeviceDisconnected, PermanentDeviceError, TransientDeviceError, usb_scan
from tests.emulators.uru4000_backend import UNDECODABLE_BLOCKS, EmulatedBus, EmulatedScanner
from tests.support.config import agent_config
from tests.support.local_api import Api, local_api_section
from tests.support.uru4000 import FAST
from tests.support.waiting import wait_until


def start_agent(tmp_path: Path, broker: MosquittoBroker, finger: dict[str, Any]) -> tuple[Agent, Api]:
    config = agent_config(tmp_path, broker.port, capture={"mode": "on-demand"}, devices={"finger": finger},
                          registration={"face": False, "max_attempts": 2, "finger_min_quality": 0},
                          local_api=local_api_section(tmp_path))
    agent = Agent(config)
    agent.start()
    assert agent.local_api is not None
    return agent, Api.for_agent(agent)


def new_session(api: Api) -> str:
    return api.ok("POST", "/v1/sessions", {"applicant_ref": "A-DF", "operator_id": "op"})["id"]


@pytest.fixture
def scanner(monkeypatch: pytest.MonkeyPatch) -> EmulatedScanner:
    scanner = EmulatedScanner()
    monkeypatch.setattr(usb_scan, "default_backend", EmulatedBus(scanner))
    return scanner


@pytest.fixture
def uru_kiosk(tmp_path: Path, broker: MosquittoBroker,
              scanner: EmulatedScanner) -> Iterator[tuple[Agent, Api]]:
    agent, api = start_agent(tmp_path, broker, {"driver": "uru4000", **FAST})
    try:
        yield agent, api
    finally:
        agent.stop()


def test_a_permanent_device_fault_is_reported_as_permanent(uru_kiosk: tuple[Agent, Api],
                                                           scanner: EmulatedScanner) -> None:
    agent, api = uru_kiosk
    sid = new_session(api)
    kept = api.ok("POST", f"/v1/sessions/{sid}/capture")["capture_id"]
    scanner.faults.blocks = UNDECODABLE_BLOCKS
    status, err = api.call("POST", f"/v1/sessions/{sid}/capture")
    assert status == 500 and err["error"]["code"] == "device_failed", err
    message = err["error"]["message"]
    assert "cannot decode" in message and "[devices.finger]" in message, message
    assert "retry this item when the device is back" not in message
    assert "nothing already captured is lost" in message
    assert [e for e in api.ok("GET", f"/v1/sessions/{sid}/events")["events"] if e["event"] == "device_error"]
    # The device stays failed: trying again is still the permanent fault, not "retry later".
    devices = {d["name"]: d for d in api.ok("GET", "/v1/devices")["devices"]}
    assert devices["finger"]["state"] == "failed"
    status, err = api.call("POST", f"/v1/sessions/{sid}/capture")
    assert status == 500 and err["error"]["code"] == "device_failed", err
    view = api.ok("GET", f"/v1/sessions/{sid}")
    assert view["items"][0]["capture_id"] == kept and view["next"] == "finger-2"


@pytest.mark.parametrize("fault", ["disconnect", "timeout"])
def test_a_transient_device_fault_stays_retry_later(tmp_path: Path, broker: MosquittoBroker,
                                                    fault: str) -> None:
    agent, api = start_agent(tmp_path, broker, {"driver": "sim-finger", "seed": 5})
    try:
        sid = new_session(api)
        worker = agent.workers["finger"]
        worker.submit(lambda driver: driver.inject(fault)).result(10)  # type: ignore[attr-defined]
        status, err = api.call("POST", f"/v1/sessions/{sid}/capture")
        assert status == 503 and err["error"]["code"] == "device", err
        assert "retry this item when the device is back" in err["error"]["message"]
        wait_until(lambda: worker.state == "online", 15, what="the scanner back online")
        result = api.ok("POST", f"/v1/sessions/{sid}/capture")
        assert result["item"] == "finger-1" and result["attempts"] == 1
    finally:
        agent.stop()


@pytest.mark.parametrize(("exc", "failed", "code", "transient"), [
    (PermanentDeviceError("wrong password; set devices.finger.password"), False, "device_failed", False),
    (TransientDeviceError("device finger is failed: wrong password"), True, "device_failed", False),
    (DeviceDisconnected("unplugged"), False, "device", True),
    (TransientDeviceError("timed out"), False, "device", True),
])
def test_device_faults_keep_their_kind(exc: Exception, failed: bool, code: str, transient: bool) -> None:
    error = device_fault("finger", exc, failed, item="finger-1")  # type: ignore[arg-type]
    assert isinstance(error, AgentError) and isinstance(error, RegistrationError)
    assert error.code == code and error.transient is transient and error.detail == {"item": "finger-1"}
    assert str(exc) in error.message
