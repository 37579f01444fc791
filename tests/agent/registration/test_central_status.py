"""The central side's word on a registration, as the registration app sees it.

A real agent (agent.daemon.Agent, simulated scanner, its local API), a real mosquitto and the
reference receiver. A registration whose transaction cannot be written shows ``failed`` with
the reason on the session in the local API, the receiver retries it on its own schedule, and
once the fault is gone (and the receiver restarted) the session shows ``complete``; one whose
part went missing on the central side shows ``incomplete`` and names the finger. Telemetry
counts them and the events topic says when one failed. Once the session is erased (every
part has its receipt), ``GET /v1/sessions/{id}/central`` still answers.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from agent.daemon import Agent
from agent.transport.telemetry import snapshot
from devtools.broker import MosquittoBroker
from receiver.service import Receiver
from tests.support.config import agent_config, receiver_config
from tests.support.local_api import Api, local_api_section
from tests.support.waiting import wait_until


def receiver(out: Path, config: Any) -> Receiver:
    base = receiver_config(out, config)
    settings = base.receiver.model_copy(update={"assembly_retry_s": 0.3, "assembly_retry_max_s": 0.6,
                                                "incomplete_after_s": 0.5})
    r = Receiver(base.model_copy(update={"receiver": settings}))
    r.start()
    wait_until(lambda: r.link.subscribed, what="receiver subscribed")
    return r


class Events:
    """What support sees on the kiosk's events topic."""

    def __init__(self, port: int, kiosk_id: str) -> None:
        self.seen: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.subscribe(f"kiosk/{kiosk_id}/events", qos=1)
        self.client.loop_start()

    def _on_message(self, client, userdata, message) -> None:  # type: ignore[no-untyped-def]
        with self._lock:
            self.seen.append(json.loads(message.payload))

    def named(self, kind: str) -> list[dict[str, Any]]:
        with self._lock:
            return [e for e in self.seen if e["event"] == kind]

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def registration(api: Api, fingers: int = 2) -> tuple[str, list[str]]:
    """An open session with its first ``fingers`` fingers captured, the rest recorded missing."""
    sid = api.ok("POST", "/v1/sessions", {"applicant_ref": "Łukasz-0042", "operator_id": "op-17"})["id"]
    captured = [api.ok("POST", f"/v1/sessions/{sid}/capture")["capture_id"] for _ in range(fingers)]
    for position in range(fingers + 1, 11):
        api.ok("POST", f"/v1/sessions/{sid}/exceptions",
               {"position": position, "code": "XX", "reason": "bandaged"})
    return sid, captured


def central(api: Api, sid: str) -> dict[str, Any]:
    return api.ok("GET", f"/v1/sessions/{sid}")["central"]


def test_the_app_sees_failed_with_the_reason_then_complete_and_incomplete_with_the_finger(
        tmp_path: Path, broker: MosquittoBroker) -> None:
    config = agent_config(tmp_path, broker.port, capture={"mode": "on-demand"},
                          registration={"face": False, "central_query_after_s": 0},
                          local_api=local_api_section(tmp_path))
    out = tmp_path / "received"
    folder = out / config.kiosk.id / "registrations"
    folder.mkdir(parents=True)
    events = Events(broker.port, config.kiosk.id)
    central_side = receiver(out, config)
    agent = Agent(config)
    try:
        agent.start()
        api = Api.for_agent(agent)
        # 1. The transaction cannot be written (a folder in its place): failed, retried, reported.
        sid, _ = registration(api)
        (folder / f"{sid}.an2").mkdir()
        api.ok("POST", f"/v1/sessions/{sid}/complete")
        wait_until(lambda: central(api, sid)["state"] == "failed", what="failed, in the local API")
        wait_until(lambda: central(api, sid)["reason"]["attempts"] >= 2,
                   what="retried on the receiver's schedule")
        failed = central(api, sid)
        wait_until(lambda: events.named("registration_failed"), what="the event on …/events")
        counts_failed = snapshot(agent)["registrations_central"]
        # 2. Fixed, and the receiver restarted: it retries from its failure record at once.
        central_side.stop()
        (folder / f"{sid}.an2").rmdir()
        central_side = receiver(out, config)
        wait_until(lambda: central(api, sid)["state"] == "complete", what="complete, in the local API")
        # 3. A part lost on the central side after its receipt: incomplete, naming the finger.
        sid2, (first, _second) = registration(api)
        wait_until(lambda: (out / config.kiosk.id / f"{first}.json").exists(), what="finger 1 stored")
        for stored in (out / config.kiosk.id).glob(f"{first}.*"):
            stored.unlink()
        api.ok("POST", f"/v1/sessions/{sid2}/complete")
        wait_until(lambda: central(api, sid2)["state"] == "incomplete", what="incomplete, in the local API")
        missing = central(api, sid2)["missing"]
        counts = snapshot(agent)["registrations_central"]
        # Every part has its receipt: the sessions are erased (personal data gone), their
        # central state is still there for the app.
        def erased() -> bool:
            agent.erase_delivered_sessions()
            return all(api.call("GET", f"/v1/sessions/{s}")[0] == 404 for s in (sid, sid2))

        wait_until(erased, what="the delivered sessions erased")
        after_erasure = [api.call("GET", f"/v1/sessions/{s}/central") for s in (sid, sid2, "no-such-session")]
    finally:
        agent.stop()
        central_side.stop()
        events.close()
    assert failed["reason"]["code"] == "storage" and "IsADirectoryError" in failed["reason"]["message"]
    assert failed["reason"]["retry_at"] and failed["updated_at"] and failed["missing"] == []
    (event,) = events.named("registration_failed")
    assert event["id"] == sid and event["code"] == "storage"
    assert "Łukasz" not in json.dumps(events.seen) + json.dumps(failed)
    assert counts_failed["failed"] == 1 and counts_failed["statuses_refused"] == 0
    assert missing == [{"item": "finger-1", "position": 1, "capture_id": first}]
    assert counts["complete"] == 1 and counts["incomplete"] == 1 and counts["failed"] == 0
    assert [status for status, _ in after_erasure] == [200, 200, 404]
    assert after_erasure[0][1]["state"] == "complete" and after_erasure[1][1]["missing"] == missing
