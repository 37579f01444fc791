"""End to end through the SBI emulator: a registration with a 4-4-2 slap plan and a face, taken
over the local API from two emulated SBI device services (a slap scanner and a camera),
delivered to the reference receiver; and a capture whose signature does not verify, refused
with nothing kept."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.daemon import Agent
from devtools.broker import MosquittoBroker
from drivers.sbi_jws import EMPTY_HASH
from receiver.service import Receiver
from tests.emulators.sbi_pki import DevicePki
from tests.emulators.sbi_service import SbiService
from tests.support.config import agent_config, receiver_config
from tests.support.local_api import Api, local_api_section
from tests.support.waiting import wait_until


class SbiKiosk:
    def __init__(self, tmp_path: Path, broker: MosquittoBroker, finger_faults: list[str]) -> None:
        pki = DevicePki.make()
        ca = pki.write_ca(tmp_path / "provider-ca.pem")
        self.scanner = SbiService(pki, faults=finger_faults).__enter__()
        self.camera = SbiService(pki, bio_type="Face", serial="SBI0000000002").__enter__()
        sbi = {"trusted_certs": [str(ca)], "port_min": 4501, "port_max": 4600, "capture_timeout_s": 10.0}
        self.config = agent_config(
            tmp_path, broker.port, capture={"mode": "on-demand"},
            devices={"finger": {"driver": "sbi", **sbi}, "camera": {"driver": "sbi-face", **sbi}},
            registration={"max_attempts": 2, "plan": "slaps-442"},
            local_api=local_api_section(tmp_path))
        self.out = tmp_path / "received"
        self.receiver = Receiver(receiver_config(self.out, self.config))
        self.receiver.start()
        self.agent = Agent(self.config)
        self.agent.start()
        self.api = Api.for_agent(self.agent)

    def stop(self) -> None:
        self.agent.stop()
        self.receiver.stop()
        self.scanner.__exit__()
        self.camera.__exit__()


@pytest.fixture
def make_kiosk(tmp_path: Path, broker: MosquittoBroker) -> Iterator[Any]:
    made: list[SbiKiosk] = []

    def make(faults: list[str]) -> SbiKiosk:
        made.append(SbiKiosk(tmp_path, broker, faults))
        return made[-1]

    yield make
    for k in made:
        k.stop()


def _device_check(result: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in result["report"]["checks"] if c["name"] == "device_quality")


def test_a_slap_registration_with_a_face_runs_end_to_end_through_sbi(make_kiosk: Any) -> None:
    k = make_kiosk([])
    api = k.api
    sid = api.ok("POST", "/v1/sessions", {"applicant_ref": "APP-SBI-1", "operator_id": "op-1"})["id"]
    # The left ring finger is bandaged: the device is told, and the slap expects three fingers.
    api.ok("POST", f"/v1/sessions/{sid}/exceptions", {"position": 9, "code": "UP", "reason": "bandaged"})
    results = {}
    while (nxt := api.ok("GET", f"/v1/sessions/{sid}")["next"]) is not None:
        results[nxt] = api.ok("POST", f"/v1/sessions/{sid}/capture")
    assert list(results) == ["slap-13", "slap-14", "slap-15", "face"]
    for key, result in results.items():
        assert result["report"]["passed"], (key, result["report"])
        assert _device_check(result)["passed"]
    assert _device_check(results["slap-13"])["value"] == 64  # the device's scores 62..65, averaged
    assert results["slap-14"]["expected_fingers"] == 3
    bios = [body["bio"][0] for method, body in k.scanner.requests if method == "RCAPTURE"]
    assert bios[1]["exception"] == ["Left RingFinger"] and bios[1]["count"] == 3
    # One chain per session: the first capture starts it, each later one continues it.
    assert bios[0]["previousHash"] == EMPTY_HASH
    assert len({b["previousHash"] for b in bios}) == 3
    api.ok("POST", f"/v1/sessions/{sid}/complete")

    folder = k.out / k.config.kiosk.id / "registrations"
    wait_until(lambda: (folder / f"{sid}.complete.json").exists(), 30, what="registration complete")
    summary = json.loads((folder / f"{sid}.complete.json").read_text())
    assert summary["exceptions"] == [{"position": 9, "code": "UP", "reason": "bandaged"}]
    import nistitl

    msg = nistitl.Message()
    msg.parse((folder / f"{sid}.an2").read_bytes())
    assert sorted(int(r.FGP) for r in msg.iter(14)) == [9, 13, 14, 15]
    assert next(msg.iter(10))._999[:2] == b"\xff\xd8"


def test_a_capture_with_a_bad_signature_is_refused_and_nothing_is_kept(make_kiosk: Any) -> None:
    k = make_kiosk(["bad-signature"])
    api = k.api
    sid = api.ok("POST", "/v1/sessions", {"applicant_ref": "APP-SBI-2", "operator_id": "op-1"})["id"]
    status, err = api.call("POST", f"/v1/sessions/{sid}/capture")
    assert status >= 400 and err["error"]["code"] == "device_failed"
    message = err["error"]["message"]
    assert "signature does not verify" in message and "nothing kept" in message
    view = api.ok("GET", f"/v1/sessions/{sid}")
    assert view["items"][0]["status"] == "pending" and view["items"][0].get("capture_id") is None
    assert view["next"] == "slap-13"
    assert not any(k.out.rglob("*.png"))  # nothing of it ever left the kiosk
