"""End to end: registrations named in Urdu, Arabic, Chinese, Polish and emoji, taken on a kiosk
with simulated devices, delivered over a real mosquitto to the reference receiver, whose
ANSI/NIST transaction an independent strict reader reads back with the very same names, and
whose ISO/IEC 19794-4:2011 record (JPEG 2000 lossless prints) and ISO/IEC 19794-5:2011 record
(the face's token image) the receiver wrote beside it."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from agent.daemon import Agent
from agent.formats import jp2
from agent.formats.iso19794_4_2011 import read_record_2011
from agent.formats.iso19794_5 import read_record as read_face_record
from devtools.broker import MosquittoBroker
from receiver.service import Receiver
from tests.agent.formats import an2_reader
from tests.support.config import agent_config, receiver_config
from tests.support.local_api import Api, local_api_section
from tests.support.waiting import wait_until

NAMES = ["ڈاکٹر عائشہ صدیقی", "محمد بن عبد الله", "王小明", "Łukasz-0042", "Ana 👩🏽‍⚕️ 🇵🇰"]


def test_names_in_five_scripts_arrive_intact(tmp_path: Path, broker: MosquittoBroker) -> None:
    config = agent_config(
        tmp_path, broker.port, capture={"mode": "on-demand"},
        devices={"finger": {"driver": "sim-finger", "seed": 11, "ppi": 500},
                 "camera": {"driver": "sim-camera", "seed": 2}},
        registration={"max_attempts": 1}, local_api=local_api_section(tmp_path),
        formats={"finger_format": "jp2l", "iso_edition": "2011"},
    )
    out = tmp_path / "received"
    # The central side has its own [formats]: it asks for the 2011 edition too.
    receiver = Receiver(receiver_config(out, config).model_copy(update={"formats": config.formats}))
    receiver.start()
    agent = Agent(config)
    agent.start()
    try:
        api = Api.for_agent(agent)
        sessions = {}
        for name in NAMES:
            sid = api.ok("POST", "/v1/sessions", {"applicant_ref": name, "operator_id": "op"})["id"]
            for position in range(3, 11):
                api.ok("POST", f"/v1/sessions/{sid}/exceptions",
                       {"position": position, "code": "UP", "reason": f"{name}: bandage"})
            for _ in range(3):  # two fingers and the face
                api.ok("POST", f"/v1/sessions/{sid}/capture")
            api.ok("POST", f"/v1/sessions/{sid}/complete")
            sessions[sid] = name
        folder = out / config.kiosk.id / "registrations"
        wait_until(lambda: all((folder / f"{sid}.complete.json").exists() for sid in sessions), 60,
                   what="five registrations complete")
        for sid, name in sessions.items():
            tx = an2_reader.read((folder / f"{sid}.an2").read_bytes())
            assert tx.items(tx.records[0], 15) == [["3", "UTF-8"]]
            assert tx.text(tx.of_type(2)[0], 101) == name
            reasons = {tx.text(r, 20) for r in tx.of_type(14) if 20 in r.fields}
            assert reasons == {f"{name}: bandage"}
            prints = [r for r in tx.of_type(14) if 999 in r.fields]
            assert [tx.text(r, 11) for r in prints] == ["JP2L", "JP2L"]
            assert all(jp2.resolution(r.fields[999]) == 500 for r in prints)
            fir = read_record_2011((folder / f"{sid}.fir").read_bytes())
            assert (fir.compression, fir.ppi, [v.position for v in fir.views]) == ("jp2l", 500, [1, 2])
            # The face: SAP 14 (it passed the full-frontal checks), its token in the .fac.
            assert tx.text(tx.of_type(10)[0], 13) == "14"
            fac = read_face_record((folder / f"{sid}.fac").read_bytes())
            token = cv2.imdecode(np.frombuffer(fac.image, np.uint8), cv2.IMREAD_COLOR)
            assert token.shape[:2] == (fac.height, fac.width) and abs(fac.height - fac.width / 0.75) < 1
    finally:
        agent.stop()
        receiver.stop()
