"""Fuzzing the local API with schemathesis against docs/openapi.json: a real agent serves it
on loopback, and generated requests, valid and invalid, go to every endpoint with the app's
token. No answer may be a 5xx, and every answer must be what the document says (status,
content type, body schema), invalid input must be refused with a 4xx, and an endpoint must
not answer without the token."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from agent.daemon import Agent
from devtools.broker import MosquittoBroker
from tests.support.config import agent_config
from tests.support.local_api import Api, local_api_section
from tests.support.paths import ROOT

#: Per generation mode; about 20 s in all on two cores.
EXAMPLES = 150
CHECKS: list[Callable[..., Any]] = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    negative_data_rejection,
    ignored_auth,
]


def test_fuzzed_requests_get_documented_answers_and_no_5xx(tmp_path: Path, broker: MosquittoBroker) -> None:
    config = agent_config(
        tmp_path, broker.port, capture={"mode": "on-demand"},
        # Device names no generator guesses: a live MJPEG stream would never end.
        devices={"finger-x7": {"driver": "sim-finger", "seed": 1}, "camera-x7": {"driver": "sim-camera"}},
        registration={"finger_device": "finger-x7", "face_device": "camera-x7", "max_attempts": 1},
        local_api=local_api_section(tmp_path),
    )
    agent = Agent(config)
    agent.start()
    session = requests.Session()
    try:
        api = Api.for_agent(agent)
        auth = api.headers()

        def fuzz(strategy: Any) -> None:
            @given(case=strategy)
            @settings(max_examples=EXAMPLES, deadline=None, database=None,
                      suppress_health_check=list(HealthCheck))
            def one_request(case: Any) -> None:
                response = case.call(base_url=api.base, session=session, headers=auth, timeout=30)
                case.validate_response(response, checks=CHECKS, headers=auth,
                                       transport_kwargs={"base_url": api.base, "headers": auth})

            one_request()

        schema = schemathesis.openapi.from_path(ROOT / "docs" / "openapi.json")
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            fuzz(schema.as_strategy(generation_mode=mode))
        # Random ids reach little past "no such session": now the same on a real one (captures,
        # exceptions, its previews, completion). Not its events: a valid wait is up to 60 s.
        sid = api.ok("POST", "/v1/sessions", {"applicant_ref": "A-FUZZ", "operator_id": "op"})["id"]
        one_session = schema.include(path_regex=r"^/v1/sessions/\{session\}").exclude(path_regex="/events$")
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            fuzz(one_session.as_strategy(generation_mode=mode, path_parameters={"session": sid}))
    finally:
        session.close()
        agent.stop()
