"""End to end with irises: a "slaps-442-iris" registration taken over the local API from three
emulated SBI services (slap scanner, camera, Double iris camera), delivered to the reference
receiver, whose transaction holds a Type-17 record per eye and whose .iir record both eyes."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from agent.daemon import Agent
from agent.formats.iso19794_6 import read_record
from devtools.broker import MosquittoBroker
from receiver.service import Receiver
from tests.agent.formats import an2_reader
from tests.emulators.sbi_iris import eye_image
from tests.emulators.sbi_pki import DevicePki
from tests.emulators.sbi_service import SbiService
from tests.support.config import agent_config, receiver_config
from tests.support.local_api import Api, local_api_section
from tests.support.waiting import wait_until


def test_an_iris_registration_runs_end_to_end_through_sbi(tmp_path: Path, broker: MosquittoBroker) -> None:
    pki = DevicePki.make()
    ca = pki.write_ca(tmp_path / "provider-ca.pem")
    sbi = {"trusted_certs": [str(ca)], "port_min": 4501, "port_max": 4600, "capture_timeout_s": 10.0}
    with SbiService(pki) as _scanner, SbiService(pki, bio_type="Face", serial="SBI0000000002") as _camera, \
            SbiService(pki, bio_type="Iris", serial="SBI0000000003") as iris:
        config = agent_config(
            tmp_path, broker.port, capture={"mode": "on-demand"},
            devices={"finger": {"driver": "sbi", **sbi}, "camera": {"driver": "sbi-face", **sbi},
                     "iris": {"driver": "sbi-iris", **sbi}},
            registration={"max_attempts": 2, "plan": "slaps-442-iris"},
            local_api=local_api_section(tmp_path))
        out = tmp_path / "received"
        receiver = Receiver(receiver_config(out, config))
        receiver.start()
        agent = Agent(config)
        agent.start()
        try:
            api = Api.for_agent(agent)
            sid = api.ok("POST", "/v1/sessions", {"applicant_ref": "APP-IRIS-1", "operator_id": "op-1"})["id"]
            results = {}
            while (nxt := api.ok("GET", f"/v1/sessions/{sid}")["next"]) is not None:
                results[nxt] = api.ok("POST", f"/v1/sessions/{sid}/capture")
            assert list(results)[-2:] == ["iris-right", "iris-left"]
            for key in ("iris-right", "iris-left"):
                assert results[key]["report"]["passed"], results[key]["report"]
            assert results["iris-right"]["quality"] == 81 and results["iris-left"]["quality"] == 74
            sub_ids = [body["bio"][0]["deviceSubId"] for m, body in iris.requests if m == "RCAPTURE"]
            assert sub_ids == [2, 1]  # right, then left, each on its own sub id
            api.ok("POST", f"/v1/sessions/{sid}/complete")
            folder = out / config.kiosk.id / "registrations"
            wait_until(lambda: (folder / f"{sid}.complete.json").exists(), 30, what="registration complete")
        finally:
            agent.stop()
            receiver.stop()
    summary = json.loads((folder / f"{sid}.complete.json").read_text())
    assert summary["state"] == "complete"
    tx = an2_reader.read((folder / f"{sid}.an2").read_bytes())
    records = tx.of_type(17)
    assert [tx.text(r, 3) for r in records] == ["1", "2"]
    for record, name in zip(records, ("Right", "Left"), strict=True):
        gray = cv2.imdecode(np.frombuffer(record.fields[999], np.uint8), cv2.IMREAD_GRAYSCALE)
        assert np.array_equal(gray, eye_image(name))
    iir = read_record((folder / f"{sid}.iir").read_bytes())
    assert [(v.eye, v.quality) for v in iir.views] == [(1, 81), (2, 74)]
