"""The local API as an integrator reads it: what docs/openapi.json and docs/local-api.md
promise is what a real agent answers. Positions the API takes are the ones the receiver takes;
every method on every path answers JSON; a capture's answer says what comes next; `quality`
is one shape; a retried `complete` gets the same answer."""

from __future__ import annotations

import hashlib
import http.client
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.capture.record import CaptureRecord
from agent.daemon import Agent
from agent.registration.bodies import AddException, Cancel, CaptureItem, SingleCapture, StartSession
from agent.registration.http import ROUTES
from agent.transport.protocol import ProtocolError, decode_capture, encode_capture
from devtools.broker import MosquittoBroker
from drivers import Modality
from tests.support.config import agent_config
from tests.support.local_api import Api, local_api_section
from tests.support.paths import ROOT

#: Positions an app might send, right and wrong: every code around the valid ones, and the
#: JSON values Python takes for integers (true is 1, 6.0 == 6).
CANDIDATES: list[Any] = [*range(-1, 18), True, False, 6.0, 6.5, "7", None]


@pytest.fixture
def kiosk(tmp_path: Path, broker: MosquittoBroker) -> Iterator[tuple[Agent, Api]]:
    agent = Agent(agent_config(
        tmp_path, broker.port, capture={"mode": "on-demand"},
        devices={"finger": {"driver": "sim-finger", "seed": 4}},
        registration={"face": False, "max_attempts": 1, "finger_min_quality": 0},
        local_api=local_api_section(tmp_path),
    ))
    agent.start()
    try:
        yield agent, Api.for_agent(agent)
    finally:
        agent.stop()


def receiver_takes(position: Any) -> bool:
    """Whether the central side decodes a capture at ``position`` (agent/transport/protocol.py)."""
    image = b"\x89PNG image"
    record = CaptureRecord(
        id="0190d4c2-0000-7000-8000-000000000001", kiosk_id="k1", site="s", operator_id=None,
        device_id="finger", driver="sim-finger", device_serial="SN1", modality=Modality.FINGER,
        position=position, captured_at="2026-11-28T12:00:00.000Z", image_format="png", width=10,
        height=20, ppi=500, image_sha256=hashlib.sha256(image).hexdigest(), quality=None, image=image, seq=1,
    )
    try:
        decode_capture(encode_capture(record))
    except ProtocolError:
        return False
    return True


def test_positions_the_api_takes_are_the_positions_the_receiver_takes(kiosk: tuple[Agent, Api]) -> None:
    _, api = kiosk
    taken, refused = [], {}
    for position in CANDIDATES:
        status, answer = api.call("POST", "/v1/devices/finger/capture", {"position": position})
        if status == 200:
            taken.append(position)
            assert answer["position"] == position and type(answer["position"]) is int, answer
        else:
            assert status == 400 and answer["error"]["code"] == "invalid", (position, answer)
            refused[json.dumps(position)] = answer["error"]["message"]
    assert taken == [p for p in CANDIDATES if receiver_takes(p)]
    assert taken == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 13, 14, 15]
    # The reason fits the mistake: not a number, not whole, or not one of the positions.
    for wrong in ("true", "6.0", "6.5", '"7"'):
        assert refused[wrong].startswith("position must be an integer"), refused[wrong]
    assert refused["12"] == "position 12 is not allowed: positions are 0..10 or 13..15"


def test_exceptions_take_fingers_only_and_say_why_not(kiosk: tuple[Agent, Api]) -> None:
    _, api = kiosk
    sid = api.ok("POST", "/v1/sessions", {"applicant_ref": "A-EXC", "operator_id": "op"})["id"]
    for position, message in ((6.0, "position must be an integer (1..10), not 6.0"),
                              (True, "position must be an integer (1..10), not true"),
                              (0, "position 0 is not allowed: positions are 1..10"),
                              (13, "position 13 is not allowed: positions are 1..10")):
        status, err = api.call("POST", f"/v1/sessions/{sid}/exceptions",
                               {"position": position, "code": "XX", "reason": "amputated"})
        assert status == 400 and err["error"]["message"] == message, (position, err)
    assert api.ok("GET", f"/v1/sessions/{sid}")["exceptions"] == []


def test_every_method_on_every_path_answers_json(kiosk: tuple[Agent, Api]) -> None:
    _, api = kiosk
    host = api.base.removeprefix("http://")
    paths = sorted({template for _, _, _, template in ROUTES})
    for path in paths:
        allowed = sorted(m for m, _, _, t in ROUTES if t == path)
        for method in ("TRACE", "HEAD", "OPTIONS", "PATCH", "PUT", "DELETE", "BREW"):
            conn = http.client.HTTPConnection(host, timeout=10)
            conn.request(method, path, headers=api.headers())
            resp = conn.getresponse()
            body = resp.read()
            conn.close()
            assert resp.status == 405, (method, path, resp.status, body)
            assert sorted(resp.getheader("Allow", "").split(", ")) == allowed, (method, path)
            assert resp.getheader("Content-Type") == "application/json", (method, path)
            if method == "HEAD":
                assert body == b"" and int(resp.getheader("Content-Length", "0")) > 0  # headers only
            else:
                assert json.loads(body)["error"]["code"] == "invalid", (method, path, body)


def test_the_document_states_405_413_and_the_models_rules() -> None:
    document = json.loads((ROOT / "docs" / "openapi.json").read_text())
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            responses = operation["responses"]
            assert {"405", "413"} <= set(responses), (method, path)
            assert responses["405"]["headers"]["Allow"]["required"] is True
    # The bodies' schemas are the models' own: one source for the document and the checks.
    schemas = document["components"]["schemas"]
    for model in (StartSession, CaptureItem, AddException, Cancel, SingleCapture):
        assert schemas[model.__name__] == json.loads(json.dumps(model.model_json_schema()))
    assert schemas["AddException"]["properties"]["position"]["enum"] == list(range(1, 11))
    assert schemas["SingleCapture"]["properties"]["position"]["enum"] == [*range(0, 11), 13, 14, 15]
    assert schemas["StartSession"]["properties"]["applicant_ref"]["maxLength"] == 128


def test_a_session_as_the_docs_tell_it(kiosk: tuple[Agent, Api]) -> None:
    agent, api = kiosk
    session = api.ok("POST", "/v1/sessions", {"applicant_ref": "A-DOCS", "operator_id": "op"})
    sid = session["id"]
    first = api.ok("POST", f"/v1/sessions/{sid}/capture")
    # The capture answer says what is next, and `quality` is the score, as in the session's items.
    assert first["item"] == "finger-1" and first["next"] == "finger-2"
    assert isinstance(first["quality"], int) and first["quality"] == first["report"]["score"]
    view = api.ok("GET", f"/v1/sessions/{sid}")
    assert view["items"][0]["quality"] == first["quality"] and view["next"] == first["next"]
    events = api.ok("GET", f"/v1/sessions/{sid}/events")["events"]
    assert next(e for e in events if e["event"] == "captured")["quality"] == first["quality"]
    # An item of another plan is not in this session; a captured finger cannot also be missing.
    status, err = api.call("POST", f"/v1/sessions/{sid}/capture", {"item": "slap-13"})
    assert status == 409 and err["error"]["code"] == "conflict" and "finger-1" in err["error"]["message"], err
    status, err = api.call("POST", f"/v1/sessions/{sid}/exceptions",
                           {"position": 1, "code": "XX", "reason": "amputated"})
    assert status == 409 and err["error"]["code"] == "conflict", err
    for position in range(2, 10):
        api.ok("POST", f"/v1/sessions/{sid}/exceptions", {"position": position, "code": "UP", "reason": "r"})
    last = api.ok("POST", f"/v1/sessions/{sid}/capture")
    assert last["item"] == "finger-10" and last["next"] is None
    status, err = api.call("POST", f"/v1/sessions/{sid}/capture")
    assert status == 409 and err["error"]["code"] == "conflict", err

    # complete, then the same again (the app timed out and retries): the same answer, once.
    queued = agent.queue.totals()[0]  # type: ignore[union-attr]
    done = api.ok("POST", f"/v1/sessions/{sid}/complete")
    again = api.call("POST", f"/v1/sessions/{sid}/complete")
    assert done["state"] == "completed" and again == (200, done)
    assert agent.queue.totals()[0] <= queued + 1  # type: ignore[union-attr]  # one manifest
    events = api.ok("GET", f"/v1/sessions/{sid}/events")["events"]
    assert [e["event"] for e in events].count("completed") == 1
    # Other state conflicts stay 409, with the reason.
    status, err = api.call("POST", f"/v1/sessions/{sid}/cancel", {"reason": "too late"})
    assert status == 409 and err["error"]["code"] == "closed" and "completed" in err["error"]["message"]
    other = api.ok("POST", "/v1/sessions", {"applicant_ref": "A-CANCEL", "operator_id": "op"})["id"]
    api.ok("POST", f"/v1/sessions/{other}/cancel", {"reason": "applicant left"})
    status, err = api.call("POST", f"/v1/sessions/{other}/complete")
    assert status == 409 and err["error"]["code"] == "closed" and "cancelled" in err["error"]["message"]
