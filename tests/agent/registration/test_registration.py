"""Registration sessions over the local API with simulated devices, against a real mosquitto
and the reference receiver: retries, a force-captured finger, exceptions, slaps with a
missing finger, crash and resume, and the ANSI/NIST transaction read back with nistitl."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.daemon import Agent
from devtools.broker import MosquittoBroker
from receiver.service import Receiver
from tests.support.config import agent_config, receiver_config
from tests.support.local_api import Api, local_api_section
from tests.support.paths import ROOT
from tests.support.waiting import wait_until


def kiosk_config(tmp_path: Path, port: int, finger_faults: list[str] | None = None, **registration: Any):
    return agent_config(
        tmp_path,
        port,
        capture={"mode": "on-demand"},
        devices={
            "finger": {"driver": "sim-finger", "seed": 11, "faults": finger_faults or []},
            "camera": {"driver": "sim-camera", "seed": 2},
        },
        registration={"max_attempts": 3, **registration},
        local_api=local_api_section(tmp_path),
    )


class Kiosk:
    def __init__(self, tmp_path: Path, broker: MosquittoBroker, **kw: Any) -> None:
        self.config = kiosk_config(tmp_path, broker.port, **kw)
        self.out = tmp_path / "received"
        self.receiver = Receiver(receiver_config(self.out, self.config))
        self.receiver.start()
        self.agent: Agent | None = None
        self.start_agent()

    def start_agent(self) -> None:
        self.agent = Agent(self.config)
        self.agent.start()
        assert self.agent.local_api is not None and self.agent.local_api.address.startswith("http://")
        self.api = Api.for_agent(self.agent)

    def stop(self) -> None:
        if self.agent is not None:
            self.agent.stop()
        self.receiver.stop()


@pytest.fixture
def kiosk(tmp_path: Path, broker: MosquittoBroker) -> Iterator[Kiosk]:
    k = Kiosk(tmp_path, broker, finger_faults=["ok", "no-finger", "ok", "poor", "poor", "poor"])
    try:
        yield k
    finally:
        k.stop()


def test_a_whole_registration_arrives_complete(kiosk: Kiosk) -> None:
    api = kiosk.api
    session = api.ok("POST", "/v1/sessions", {"applicant_ref": "APP-2026-0042", "operator_id": "op-17"})
    sid = session["id"]
    assert session["state"] == "open" and session["next"] == "finger-1" and len(session["items"]) == 11
    # Finger 1: first attempt fine. Finger 2: "no finger" once, then fine (a retry).
    r1 = api.ok("POST", f"/v1/sessions/{sid}/capture")
    assert r1["item"] == "finger-1" and r1["attempts"] == 1 and not r1["force_captured"]
    r2 = api.ok("POST", f"/v1/sessions/{sid}/capture")
    assert r2["item"] == "finger-2" and r2["attempts"] == 2 and r2["report"]["passed"]
    # Finger 3: three poor prints -> the best is kept, flagged force_captured, with its failures.
    r3 = api.ok("POST", f"/v1/sessions/{sid}/capture", {"item": "finger-3"})
    assert r3["attempts"] == 3 and r3["force_captured"] is True and r3["report"]["passed"] is False
    assert "registration_min_quality" in [c["name"] for c in r3["report"]["checks"] if not c["passed"]]
    assert api.ok("GET", f"/v1/captures/{r3['capture_id']}")["force_captured"] is True
    # Finger 4 is amputated: an exception with a reason instead of a capture.
    status, err = api.call(
        "POST", f"/v1/sessions/{sid}/exceptions", {"position": 4, "code": "ZZ", "reason": "x"}
    )
    assert status == 400 and "XX" in err["error"]["message"]
    view = api.ok(
        "POST",
        f"/v1/sessions/{sid}/exceptions",
        {"position": 4, "code": "XX", "reason": "amputated (work accident)"},
    )
    assert [i["status"] for i in view["items"][:4]] == ["captured", "captured", "captured", "exception"]
    status, err = api.call("POST", f"/v1/sessions/{sid}/complete")
    assert status == 409 and err["error"]["code"] == "incomplete" and "finger-5" in err["error"]["pending"]
    while (nxt := api.ok("GET", f"/v1/sessions/{sid}")["next"]) is not None:
        result = api.ok("POST", f"/v1/sessions/{sid}/capture")
        assert result["item"] == nxt
    face = api.ok("GET", f"/v1/captures/{result['capture_id']}")
    assert face["item"] == "face" and face["token_id"] and face["report"]["passed"]
    preview = api.call("GET", f"/v1/sessions/{sid}/items/face/preview")
    assert preview[0] == 200 and preview[1][:2] == b"\xff\xd8"
    events = api.ok("GET", f"/v1/sessions/{sid}/events?after=0")["events"]
    assert {"started", "attempt", "retry", "judged", "captured", "exception"} <= {e["event"] for e in events}
    done = api.ok("POST", f"/v1/sessions/{sid}/complete")
    assert done["state"] == "completed"
    status, err = api.call("POST", f"/v1/sessions/{sid}/capture")
    assert status == 409 and err["error"]["code"] == "closed"

    # The receiver: every part, then the registration, complete, with its transaction.
    folder = kiosk.out / kiosk.config.kiosk.id / "registrations"
    wait_until(lambda: (folder / f"{sid}.complete.json").exists(), 30, what="registration complete")
    summary = json.loads((folder / f"{sid}.complete.json").read_text())
    assert len(summary["captures"]) == 9 + 2  # 9 fingers, the face and its token image
    assert summary["exceptions"] == [{"position": 4, "code": "XX", "reason": "amputated (work accident)"}]
    assert summary["force_captured"] == ["finger-3"]
    check_transaction(folder / f"{sid}.an2", sid, folder.parent)
    from agent.formats.iso19794_4 import read_record

    fir = (folder / f"{sid}.fir").read_bytes()
    assert fir[:8] == b"FIR\x00010\x00" and int.from_bytes(fir[8:14], "big") == len(fir)
    record = read_record(fir)
    assert [v.position for v in record.views] == [1, 2, 3, 5, 6, 7, 8, 9, 10]
    assert record.compression == "png" and record.ppi == 500


def check_transaction(path: Path, sid: str, captures_dir: Path) -> None:
    """Read the transaction back with nistitl's own parser; images equal the stored captures."""
    import nistitl

    msg = nistitl.Message()
    msg.parse(path.read_bytes())
    assert [r.type for r in msg] == [1, 2] + [14] * 10 + [10]
    assert msg[0].TCN == sid and msg[1]._101 == "APP-2026-0042" and msg[1]._102 == "op-17"
    by_position = {int(r.FGP): r for r in msg.iter(14)}
    assert sorted(by_position) == list(range(1, 11))
    assert by_position[4]._18 == [["4", "XX"]] and by_position[4][999] is None
    stored = {
        json.loads(p.read_text())["position"]: p
        for p in captures_dir.glob("*.json")
        if json.loads(p.read_text()).get("modality") == "finger"
    }
    for position, record in by_position.items():
        if position == 4:
            continue
        assert record._999 == stored[position].with_suffix(".png").read_bytes()
        assert int(record._24[0][1]) == json.loads(stored[position].read_text())["quality"]
    face = next(msg.iter(10))
    assert face._3 == "FACE" and face._999[:2] == b"\xff\xd8"


def test_busy_device_and_bad_requests_get_clear_4xx(kiosk: Kiosk) -> None:
    import threading

    api = kiosk.api
    s1 = api.ok("POST", "/v1/sessions", {"applicant_ref": "A1", "operator_id": "op"})["id"]
    s2 = api.ok("POST", "/v1/sessions", {"applicant_ref": "A2", "operator_id": "op"})["id"]
    # Make finger captures slow, so a second request meets a busy device.
    finger = kiosk.agent.workers["finger"].driver
    finger.config.capture_delay_s = 1.5
    results: dict[str, Any] = {}
    first = threading.Thread(target=lambda: results.update(a=api.call("POST", f"/v1/sessions/{s1}/capture")))
    first.start()
    time.sleep(0.4)
    status, err = api.call("POST", f"/v1/sessions/{s2}/capture")
    first.join()
    finger.config.capture_delay_s = 0.0
    assert results["a"][0] == 200
    assert status == 409 and err["error"]["code"] == "busy" and "finger" in err["error"]["message"]
    for method, path, body, code in (
        ("POST", "/v1/sessions", {"applicant_ref": ""}, 400),
        ("GET", "/v1/sessions/nope", None, 404),
        ("POST", f"/v1/sessions/{s1}/capture", {"item": "finger-99"}, 400),
        ("POST", f"/v1/sessions/{s1}/exceptions", {"position": 11, "code": "XX", "reason": "r"}, 400),
        ("POST", f"/v1/sessions/{s1}/cancel", {}, 400),
        ("GET", "/v1/nothing-here", None, 404),
        ("DELETE", "/v1/sessions", None, 405),
        ("GET", f"/v1/sessions/{s1}/events?wait=abc", None, 400),
        ("GET", "/v1/sessions?stat=open", None, 400),
        ("POST", "/v1/sessions", {"applicant_ref": "A", "operator_id": "op", "extra": 1}, 400),
        ("POST", "/v1/devices/nope/capture", {}, 404),
    ):
        status, err = api.call(method, path, body)
        assert status == code, (method, path, status, err)
        assert err["error"]["message"]
    req = urllib.request.Request(api.base + "/v1/sessions", data=b"{not json", method="POST",
                                 headers=api.headers())
    with pytest.raises(urllib.error.HTTPError) as bad:
        urllib.request.urlopen(req, timeout=10)
    assert bad.value.code == 400 and "not JSON" in json.loads(bad.value.read())["error"]["message"]
    cancelled = api.ok("POST", f"/v1/sessions/{s2}/cancel", {"reason": "applicant left"})
    assert cancelled["state"] == "cancelled"


def test_crash_mid_session_loses_nothing_and_resumes(tmp_path: Path, broker: MosquittoBroker) -> None:
    k = Kiosk(tmp_path, broker, finger_faults=[])
    try:
        sid = k.api.ok("POST", "/v1/sessions", {"applicant_ref": "A3", "operator_id": "op"})["id"]
        first = [k.api.ok("POST", f"/v1/sessions/{sid}/capture")["capture_id"] for _ in range(3)]
        k.agent.stop()  # the kiosk goes down mid-session (a clean stop; kill -9 is in reliability/)
        k.start_agent()
        view = k.api.ok("GET", f"/v1/sessions/{sid}")
        assert view["state"] == "open" and view["next"] == "finger-4"
        assert [i["capture_id"] for i in view["items"][:3]] == first
        assert [s["id"] for s in k.api.ok("GET", "/v1/sessions?state=open")["sessions"]] == [sid]
        while k.api.ok("GET", f"/v1/sessions/{sid}")["next"]:
            k.api.ok("POST", f"/v1/sessions/{sid}/capture")
        k.api.ok("POST", f"/v1/sessions/{sid}/complete")
        folder = k.out / k.config.kiosk.id / "registrations"
        wait_until(lambda: (folder / f"{sid}.complete.json").exists(), 30, what="registration complete")
        assert set(first) <= set(json.loads((folder / f"{sid}.complete.json").read_text())["captures"])
    finally:
        k.stop()


def test_slaps_with_a_missing_finger_are_caught(tmp_path: Path, broker: MosquittoBroker) -> None:
    k = Kiosk(
        tmp_path,
        broker,
        finger_faults=["missing-finger", "missing-finger", "missing-finger", "ok"],
        plan="slaps-442",
        face=False,
    )
    try:
        sid = k.api.ok("POST", "/v1/sessions", {"applicant_ref": "A4", "operator_id": "op"})["id"]
        r = k.api.ok("POST", f"/v1/sessions/{sid}/capture")
        assert r["item"] == "slap-13" and r["force_captured"] is True and r["attempts"] == 3
        count = next(c for c in r["report"]["checks"] if c["name"] == "finger_count")
        assert count["value"] == 3 and count["threshold"] == "== 4" and not count["passed"]
        assert "all 4 fingers" in count["hint"]
        # Left ring finger bandaged: the left slap now expects three fingers, and gets four -> retry
        # is not needed for a missing one; a slap with exactly three passes.
        k.api.ok(
            "POST", f"/v1/sessions/{sid}/exceptions", {"position": 9, "code": "UP", "reason": "bandaged"}
        )
        k.agent.workers["finger"].submit(lambda d: d.inject("missing-finger")).result()
        r = k.api.ok("POST", f"/v1/sessions/{sid}/capture")
        assert r["item"] == "slap-14" and r["expected_fingers"] == 3
        assert next(c for c in r["report"]["checks"] if c["name"] == "finger_count")["passed"]
        r = k.api.ok("POST", f"/v1/sessions/{sid}/capture")
        assert r["item"] == "slap-15" and r["expected_fingers"] == 2 and not r["force_captured"]
        k.api.ok("POST", f"/v1/sessions/{sid}/complete")
        folder = k.out / k.config.kiosk.id / "registrations"
        wait_until(lambda: (folder / f"{sid}.complete.json").exists(), 30, what="registration complete")
        import nistitl

        msg = nistitl.Message()
        msg.parse((folder / f"{sid}.an2").read_bytes())
        assert sorted(int(r.FGP) for r in msg.iter(14)) == [9, 13, 14, 15]  # three slaps, one exception
    finally:
        k.stop()


def test_live_preview_streams_at_least_3_frames_a_second(kiosk: Kiosk) -> None:
    api = kiosk.api
    checks = api.ok("GET", "/v1/devices/camera/checks")
    assert checks["modality"] == "face" and checks["passed"] is True
    status, frame = api.call("GET", "/v1/devices/camera/preview.jpg")
    assert status == 200 and frame[:2] == b"\xff\xd8"
    status, err = api.call("GET", "/v1/devices/finger/preview.jpg")
    # A finger scanner has no preview: there is no such thing to wait for (not 503, "retry later").
    assert status == 404 and "no live preview" in err["error"]["message"]
    # Asking a scanner for a preview is the caller's mistake: the scanner stays in service.
    finger = next(d for d in api.call("GET", "/v1/devices")[1]["devices"] if d["name"] == "finger")
    assert finger["state"] == "online"
    stream = urllib.request.Request(api.base + "/v1/devices/camera/preview.mjpeg?fps=5&checks=1",
                                    headers=api.headers())
    with urllib.request.urlopen(stream, timeout=10) as resp:
        assert resp.headers["Content-Type"].startswith("multipart/x-mixed-replace")
        started, frames, scores = time.monotonic(), 0, 0
        buffer = b""
        while time.monotonic() - started < 2.0:
            buffer += resp.read1(65536)
            frames = buffer.count(b"--kiosk-frame\r\n")
            scores = buffer.count(b"X-Face-Score:")
        elapsed = time.monotonic() - started
    assert frames / elapsed >= 3, f"{frames} frames in {elapsed:.1f} s"
    assert scores >= frames - 1


def test_openapi_document_matches_the_routes(kiosk: Kiosk) -> None:
    from agent.registration.http import ROUTES
    from agent.registration.openapi import spec

    served = kiosk.api.ok("GET", "/v1/openapi.json")
    assert served == json.loads(json.dumps(spec()))
    routes = {(m.lower(), template) for m, _, _, template in ROUTES}
    documented = {(m, p) for p, ops in served["paths"].items() for m in ops}
    assert routes == documented
    on_disk = json.loads((ROOT / "docs" / "openapi.json").read_text())
    assert on_disk == served, "docs/openapi.json is stale: run `make openapi`"


def test_status_and_devices(kiosk: Kiosk) -> None:
    devices = kiosk.api.ok("GET", "/v1/devices")["devices"]
    assert {d["name"]: d["state"] for d in devices} == {"finger": "online", "camera": "online"}
    # The MQTT link comes up on its own thread after start(): wait for it, as a client would.
    wait_until(lambda: kiosk.api.ok("GET", "/v1/status")["connection"]["connected"] is True,
               what="the agent connected")
    status = kiosk.api.ok("GET", "/v1/status")
    assert status["connection"]["connected"] is True and status["queue"]["pending"] >= 0
    single = kiosk.api.ok("POST", "/v1/devices/finger/capture", {"position": 7})
    assert single["position"] == 7 and single["capture_id"]


def test_fingers_travel_as_wsq_when_configured(tmp_path: Path, broker: MosquittoBroker) -> None:
    import io

    import wsq  # noqa: F401  (registers the WSQ codec with Pillow)
    from PIL import Image

    k = Kiosk(tmp_path, broker, face=False)
    k.agent.stop()
    k.config = k.config.model_copy(
        update={"formats": k.config.formats.model_copy(update={"finger_format": "wsq"})}
    )
    k.start_agent()
    try:
        sid = k.api.ok("POST", "/v1/sessions", {"applicant_ref": "A5", "operator_id": "op"})["id"]
        for position in range(3, 11):
            k.api.ok(
                "POST",
                f"/v1/sessions/{sid}/exceptions",
                {"position": position, "code": "UP", "reason": "burns"},
            )
        ids = [k.api.ok("POST", f"/v1/sessions/{sid}/capture")["capture_id"] for _ in range(2)]
        k.api.ok("POST", f"/v1/sessions/{sid}/complete")
        folder = k.out / k.config.kiosk.id / "registrations"
        wait_until(lambda: (folder / f"{sid}.complete.json").exists(), 30, what="registration complete")
        for capture_id in ids:
            data = (folder.parent / f"{capture_id}.wsq").read_bytes()
            assert Image.open(io.BytesIO(data)).size == (320, 400)
        import nistitl

        msg = nistitl.Message()
        msg.parse((folder / f"{sid}.an2").read_bytes())
        images = [r for r in msg.iter(14) if r[999] is not None]
        assert [r.CGA for r in images] == ["WSQ20", "WSQ20"]
    finally:
        k.stop()
