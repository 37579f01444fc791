"""Attacks on the local API, each against a real agent serving it on loopback (or a Unix
socket) and answered by real HTTP requests: a web page in the kiosk's browser (a simple
cross-origin POST, DNS rebinding, a preflight), callers without the token, broken request
framing, and a rogue operator paging back to earlier applicants' previews. Each test fails
if its hole reopens (docs/security.md, "The local API")."""

from __future__ import annotations

import http.client
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.config import ConfigError
from agent.daemon import Agent
from agent.registration.http import ROUTES, unix_request
from devtools.broker import MosquittoBroker
from tests.support.config import agent_config
from tests.support.local_api import Api, local_api_section, write_token
from tests.support.paths import ROOT


def kiosk_config(tmp_path: Path, broker: MosquittoBroker, **local_api: Any) -> Any:
    return agent_config(
        tmp_path, broker.port, capture={"mode": "on-demand"},
        devices={"finger": {"driver": "sim-finger", "seed": 4},
                 "camera": {"driver": "sim-camera", "seed": 2}},
        registration={"face": False, "max_attempts": 1, "finger_min_quality": 0},
        local_api=local_api or local_api_section(tmp_path),
    )


@pytest.fixture
def kiosk(tmp_path: Path, broker: MosquittoBroker) -> Iterator[tuple[Agent, Api]]:
    agent = Agent(kiosk_config(tmp_path, broker))
    agent.start()
    try:
        yield agent, Api.for_agent(agent)
    finally:
        agent.stop()


class _Reader:
    """Hands http.client a file it cannot close, so what follows the first answer can be read too."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream

    def makefile(self, *args: Any, **kwargs: Any) -> Any:
        return self

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)

    def close(self) -> None:
        pass


def raw(api: Api, request: bytes, timeout: float = 5, rest: list[bytes] | None = None
        ) -> tuple[int, dict[str, str], Any]:
    """One request written byte for byte, as an attacker would; the answer must come within
    timeout. ``rest``: gets whatever the agent sends after that answer before it closes."""
    host, port = api.base.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(request)  # and keep the connection open: the agent must not wait for its end
        stream = sock.makefile("rb")
        resp = http.client.HTTPResponse(_Reader(stream))  # type: ignore[arg-type]
        resp.begin()
        body = resp.read()
        headers = {k.lower(): v for k, v in resp.getheaders()}
        if rest is not None:
            rest.append(stream.read())  # to the end: the agent must close, not answer again
        return resp.status, headers, json.loads(body) if "json" in headers.get("content-type", "") else body


def host_of(api: Api) -> str:
    return api.base.removeprefix("http://")


def every_route(api: Api) -> Iterator[tuple[str, str]]:
    """Each endpoint with real path values: a real session, a real camera."""
    sid = api.ok("POST", "/v1/sessions", {"applicant_ref": "A-ROUTES", "operator_id": "op"})["id"]
    values = {"session": sid, "device": "camera", "item": "finger-1", "capture": "x"}
    for method, _, _, template in ROUTES:
        yield method, template.format(**values)


def no_cors(headers: dict[str, str]) -> None:
    assert not [h for h in headers if h.startswith("access-control-")], headers


def test_every_endpoint_wants_the_token(kiosk: tuple[Agent, Api]) -> None:
    agent, api = kiosk
    queued = agent.queue.totals()  # type: ignore[union-attr]
    # A wrong token, a prefix of the right one, another scheme, the token in the query string.
    assert api.token is not None
    wrong = [{}, {"Authorization": "Bearer " + "x" * len(api.token)},
             {"Authorization": f"Bearer {api.token[:-1]}"}, {"Authorization": f"Basic {api.token}"},
             {"Authorization": api.token}]
    routes = list(every_route(api))
    assert ("GET", "/v1/status") in routes and ("GET", "/v1/openapi.json") in routes
    for method, path in [*routes, ("GET", "/v1/no-such-endpoint")]:
        for headers in wrong:
            stranger = Api(api.base, None)
            status, err = stranger.call(method, path + "?token=" + api.token,
                                        {} if method == "POST" else None, headers=headers)
            assert status == 401 and err["error"]["code"] == "unauthorized", (method, path, headers, err)
            assert "Authorization: Bearer" in err["error"]["message"]
    # Nothing was captured, sealed or queued for any of them.
    assert agent.queue.totals() == queued  # type: ignore[union-attr]
    assert len(api.ok("GET", "/v1/sessions")["sessions"]) == 1  # only every_route's own


def test_a_simple_cross_origin_post_from_a_page_is_refused(kiosk: tuple[Agent, Api]) -> None:
    agent, api = kiosk
    queued = agent.queue.totals()  # type: ignore[union-attr]
    # What a browser sends for a <form> or fetch(..., {mode: "no-cors"}) POST: no preflight.
    for path, body in (("/v1/sessions", b'{"applicant_ref": "evil", "operator_id": "evil"}'),
                       ("/v1/devices/finger/capture", b'{"position": 2}')):
        status, headers, err = raw(api, (
            f"POST {path} HTTP/1.1\r\nHost: {host_of(api)}\r\nOrigin: http://ads.example\r\n"
            f"Sec-Fetch-Site: cross-site\r\nSec-Fetch-Mode: no-cors\r\nContent-Type: text/plain\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body)
        assert status == 403 and err["error"]["code"] == "forbidden", err
        no_cors(headers)
    # Even with the token (a page that stole it), anything a browser marks as a page's is refused.
    for marks in ({"Origin": "http://ads.example"}, {"Origin": "null"}, {"Sec-Fetch-Site": "cross-site"},
                  {"Sec-Fetch-Site": "same-site"}, {"Origin": f"http://{host_of(api)}"}):
        for method, path in every_route(api):
            status, err = api.call(method, path, {} if method == "POST" else None, headers=marks)
            assert status == 403 and err["error"]["code"] == "forbidden", (marks, method, path, err)
    assert agent.queue.totals() == queued  # type: ignore[union-attr]
    sessions = api.ok("GET", "/v1/sessions")["sessions"]
    assert "evil" not in {s["applicant_ref"] for s in sessions}
    # The app itself (no Origin; Sec-Fetch-Site none, if anything) is let in.
    assert api.call("GET", "/v1/status", headers={"Sec-Fetch-Site": "none"})[0] == 200


def test_a_preflight_gets_no_cors_approval(kiosk: tuple[Agent, Api]) -> None:
    _, api = kiosk
    for path in ("/v1/sessions", "/v1/devices/camera/preview.jpg", "/v1/status"):
        status, headers, _ = raw(api, (
            f"OPTIONS {path} HTTP/1.1\r\nHost: {host_of(api)}\r\nOrigin: http://ads.example\r\n"
            "Access-Control-Request-Method: POST\r\nAccess-Control-Request-Headers: authorization\r\n"
            "Sec-Fetch-Mode: cors\r\nSec-Fetch-Site: cross-site\r\n\r\n").encode())
        assert status == 403, (path, status)
        no_cors(headers)


def test_dns_rebinding_is_refused(kiosk: tuple[Agent, Api]) -> None:
    """A page on rebind.example, re-pointed at 127.0.0.1, is same-origin to the browser: only Host
    gives it away."""
    _, api = kiosk
    port = host_of(api).rsplit(":", 1)[1]
    for host in (f"rebind.example:{port}", "rebind.example", f"127.0.0.1:{int(port) + 1}",
                 f"localhost.rebind.example:{port}", ""):
        for method, path in every_route(api):
            status, headers, err = raw(api, (
                f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {api.token}\r\n"
                f"Content-Length: 0\r\n\r\n").encode())
            assert status == 403 and err["error"]["code"] == "forbidden", (host, method, path, err)
            assert "DNS rebinding" in err["error"]["message"]
    # Two Host headers (one right, one rebound) are refused too.
    status, _, _ = raw(api, (f"GET /v1/status HTTP/1.1\r\nHost: {host_of(api)}\r\nHost: rebind.example:{port}"
                             f"\r\nAuthorization: Bearer {api.token}\r\n\r\n").encode())
    assert status == 403
    for host in (host_of(api), f"localhost:{port}", f"LOCALHOST:{port}"):
        status, _, _ = raw(api, (f"GET /v1/status HTTP/1.1\r\nHost: {host}\r\n"
                                 f"Authorization: Bearer {api.token}\r\n\r\n").encode())
        assert status == 200, host


def post(api: Api, headers: str, body: bytes = b"") -> tuple[int, dict[str, str], Any]:
    return raw(api, (f"POST /v1/sessions HTTP/1.1\r\nHost: {host_of(api)}\r\n"
                     f"Authorization: Bearer {api.token}\r\n{headers}\r\n").encode() + body)


@pytest.mark.parametrize("length", ["-1", "abc", "+5", " -0", "1_0", "0x10", "5, 5"])
def test_a_bad_content_length_is_refused_at_once(kiosk: tuple[Agent, Api], length: str) -> None:
    # -1 once read the stream to its end: 300 MiB read, 800 MB resident. The connection stays
    # open here, so an agent that waits for its end fails the 5 s timeout.
    _, api = kiosk
    status, headers, err = post(api, f"Content-Length: {length}\r\n", b'{"applicant_ref": "a"}')
    assert status == 400 and "Content-Length" in err["error"]["message"], err
    assert headers.get("connection") == "close"


def test_oversized_duplicated_and_chunked_bodies_are_refused(kiosk: tuple[Agent, Api]) -> None:
    _, api = kiosk
    status, headers, err = post(api, "Content-Length: 1000000000\r\n")
    assert status == 413 and headers.get("connection") == "close", err
    status, _, err = post(api, "Content-Length: 2\r\nContent-Length: 40\r\n", b"{}")
    assert status == 400, err
    chunk = b'{"applicant_ref": "a", "operator_id": "b"}'
    status, headers, err = post(api, "Transfer-Encoding: chunked\r\n",
                                f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n0\r\n\r\n")
    assert status == 411 and "Content-Length" in err["error"]["message"], err
    assert headers.get("connection") == "close"
    assert api.ok("GET", "/v1/sessions")["sessions"] == []


def test_an_unread_body_is_never_taken_for_a_second_request(kiosk: tuple[Agent, Api]) -> None:
    _, api = kiosk
    inner = b'{"applicant_ref": "smuggled", "operator_id": "x"}'
    smuggled = (f"POST /v1/sessions HTTP/1.1\r\nHost: {host_of(api)}\r\nAuthorization: Bearer {api.token}\r\n"
                f"Content-Length: {len(inner)}\r\n\r\n").encode() + inner
    # The body of a GET (never read) and of a refused request (never read) hide a whole request.
    for first, expected in (("GET /v1/status", 200), ("GET /v1/sessions/nope", 404), ("PUT /v1/status", 405)):
        rest: list[bytes] = []
        status, headers, _ = raw(api, (f"{first} HTTP/1.1\r\nHost: {host_of(api)}\r\nAuthorization: Bearer "
                                       f"{api.token}\r\nContent-Length: {len(smuggled)}\r\n\r\n").encode()
                                 + smuggled, rest=rest)
        assert status == expected and headers.get("connection") == "close", (first, status, headers)
        assert rest == [b""], rest
    assert api.ok("GET", "/v1/sessions")["sessions"] == []


@pytest.mark.parametrize("body", [
    b"[" * 30000 + b"]" * 30000,
    b'{"applicant_ref": ' + b'{"a": ' * 5000 + b"1" + b"}" * 5000 + b"}",
    b'{"applicant_ref": ' + b"9" * 20000 + b"}",  # beyond Python's int digit limit
])
def test_hostile_json_is_a_400_not_a_500(kiosk: tuple[Agent, Api], body: bytes) -> None:
    _, api = kiosk
    status, _, err = post(api, f"Content-Length: {len(body)}\r\nContent-Type: application/json\r\n", body)
    assert status == 400 and err["error"]["code"] == "invalid", err
    # Strings full of brackets are not nesting.
    text = json.dumps({"applicant_ref": "[" * 60, "operator_id": "{" * 60}).encode()
    status, _, _ = post(api, f"Content-Length: {len(text)}\r\n", text)
    assert status == 201


def test_wrong_types_and_unknown_fields_in_an_open_session_are_400(kiosk: tuple[Agent, Api]) -> None:
    _, api = kiosk
    sid = api.ok("POST", "/v1/sessions", {"applicant_ref": "A-TYPES", "operator_id": "op"})["id"]
    for path, body in (
        (f"/v1/sessions/{sid}/exceptions", {"position": 2, "code": [], "reason": "r"}),  # was a 500
        (f"/v1/sessions/{sid}/exceptions", {"position": True, "code": "XX", "reason": "r"}),  # finger 1
        (f"/v1/sessions/{sid}/capture", {"item": "finger-1", "applicant_ref": "B-OTHER"}),
        ("/v1/devices/finger/capture", {"position": True}),
    ):
        status, err = api.call("POST", path, body)
        assert status == 400 and err["error"]["code"] == "invalid", (path, body, err)
    view = api.ok("GET", f"/v1/sessions/{sid}")
    assert view["exceptions"] == [] and view["next"] == "finger-1"


def test_previews_of_ended_sessions_are_not_served(kiosk: tuple[Agent, Api]) -> None:
    _, api = kiosk
    ended = {}
    for end in ("complete", "cancel"):
        sid = api.ok("POST", "/v1/sessions", {"applicant_ref": f"A-{end}", "operator_id": "op"})["id"]
        api.ok("POST", f"/v1/sessions/{sid}/capture")
        status, jpeg = api.call("GET", f"/v1/sessions/{sid}/items/finger-1/preview")
        assert status == 200 and jpeg[:2] == b"\xff\xd8"
        if end == "complete":
            for position in range(2, 11):
                api.ok("POST", f"/v1/sessions/{sid}/exceptions",
                       {"position": position, "code": "UP", "reason": "r"})
            api.ok("POST", f"/v1/sessions/{sid}/complete")
        else:
            api.ok("POST", f"/v1/sessions/{sid}/cancel", {"reason": "applicant left"})
        ended[end] = sid
    for end, sid in ended.items():
        status, err = api.call("GET", f"/v1/sessions/{sid}/items/finger-1/preview")
        assert status == 409 and err["error"]["code"] == "closed", (end, err)
        assert "previews of an ended session are not served" in err["error"]["message"]


@pytest.mark.parametrize(("problem", "expected"), [
    ("missing", "does not exist"),
    ("world-readable", "too open (mode 0644)"),
    ("group-writable", "too open (mode 0660)"),
    ("empty", "does not hold a token"),
])
def test_the_api_stays_off_without_a_safe_token_file(tmp_path: Path, broker: MosquittoBroker,
                                                     problem: str, expected: str) -> None:
    token_file = tmp_path / "api.token"
    if problem != "missing":
        write_token(token_file, {"world-readable": 0o644, "group-writable": 0o660, "empty": 0o600}[problem])
    if problem == "empty":
        token_file.write_text("short\n")
    agent = Agent(kiosk_config(tmp_path, broker, enabled=True, port=0, token_file=str(token_file)))
    agent.start()
    try:
        assert agent.local_api is not None and agent.local_api.server is None
        error = agent.local_api.error or ""
        assert str(token_file) in error and expected in error and "restart the agent" in error, error
        assert agent.link is not None  # the agent itself goes on capturing and delivering
    finally:
        agent.stop()


def test_tcp_without_a_token_file_is_an_invalid_config(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        agent_config(tmp_path, 1883, local_api={"enabled": True})
    assert any("local_api" in p and "token_file is required" in p for p in info.value.problems), info.value


def test_the_unix_socket_admits_listed_peers_or_the_token(tmp_path: Path, broker: MosquittoBroker) -> None:
    sock = tmp_path / "api.sock"
    token = write_token(tmp_path / "api.token")
    me = os.getuid()
    for settings, without_token, with_token in (
        ({"allowed_uids": [me]}, 200, 200),
        ({"allowed_uids": [me + 1], "allowed_gids": [os.getgid() + 1]}, 403, 403),
        ({"allowed_uids": [me + 1], "token_file": str(tmp_path / "api.token")}, 401, 200),
    ):
        agent = Agent(kiosk_config(tmp_path, broker, enabled=True, unix_socket=str(sock), **settings))
        agent.start()
        try:
            assert agent.local_api is not None and agent.local_api.server is not None, agent.local_api.error
            for path in ("/v1/status", "/v1/openapi.json", "/v1/sessions"):
                assert unix_request(str(sock), "GET", path)[0] == without_token, (settings, path)
                assert unix_request(str(sock), "GET", path, token=token)[0] == with_token, (settings, path)
        finally:
            agent.stop()


def test_the_openapi_document_declares_the_credential() -> None:
    document = json.loads((ROOT / "docs" / "openapi.json").read_text())
    assert document["security"] == [{"bearer": []}]
    assert document["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            assert {"401", "403"} <= set(operation["responses"]), (method, path)
