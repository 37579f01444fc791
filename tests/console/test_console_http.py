"""The operator console over plain HTTP against a real agent: sign-in and lockout, expired and
forged sessions, CSRF, cross-site posts, wrong Host, oversized and chunked forms, roles,
approval holding captures on the kiosk until a supervisor approves, blocking rules, TLS.

Each refusal is checked for its clear message and for nothing having changed."""

from __future__ import annotations

import json
import ssl
from pathlib import Path

import pytest

from agent.config import validate_config
from devtools.broker import MosquittoBroker
from tests.console.support import OFFICER, PASSWORDS, SUPERVISOR, Client, ConsoleKiosk, audit
from tests.support.certs import CA
from tests.support.waiting import wait_until


def test_sign_in_cookie_flags_and_wrong_passwords_lock_the_account(kiosk: ConsoleKiosk) -> None:
    client = Client(kiosk.base)
    status, headers, _, _ = client.get("/")
    assert status == 303 and headers["location"] == "/signin"
    status, headers, page, cookies = client.get("/signin")
    assert status == 200 and "csrf" in page
    assert "script-src 'self'" in headers["content-security-policy"] and headers["x-frame-options"] == "DENY"
    # Wrong passwords: a clear message, no session.
    for _ in range(kiosk.config.console.max_failures - 1):
        status, _, page, cookies = client.post("/signin", {"name": OFFICER, "password": "guess-guess-guess"})
        assert status == 401 and "Wrong user name or password" in page and "kc_session" not in client.cookies
    status, _, page, _ = client.post("/signin", {"name": OFFICER, "password": "guess-guess-guess"})
    assert status == 429 and "locked" in page
    # Locked: the right password does not open it either.
    status, _, page, _ = client.post("/signin", {"name": OFFICER, "password": PASSWORDS[OFFICER]})
    assert status == 429 and "kc_session" not in client.cookies
    # Another account is not affected; its session cookie is HttpOnly, SameSite=Strict.
    status, headers, _, cookies = client.sign_in(SUPERVISOR, PASSWORDS[SUPERVISOR])
    assert status == 303 and headers["location"] == "/"
    session_cookie = next(c for c in cookies if c.startswith("kc_session="))
    assert "HttpOnly" in session_cookie and "SameSite=Strict" in session_cookie and "Path=/" in session_cookie
    assert client.get("/")[0] == 200
    # An unknown name: refused the same way.
    stranger = Client(kiosk.base)
    stranger.get("/signin")
    status, _, page, _ = stranger.post("/signin", {"name": "nobody", "password": "guess-guess-guess"})
    assert status == 401 and "Wrong user name or password" in page
    # The audit: who signed in, the refusals, and never a password.
    entries = audit(kiosk)
    text = json.dumps(entries)
    assert PASSWORDS[OFFICER] not in text and "guess-guess-guess" not in text
    assert any(e["command"] == "console.sign_in" and e["operator"] == f"console:{SUPERVISOR}"
               and e["result"] == "ok" for e in entries)
    assert any(e.get("code") == "locked" and e["operator"] == f"console:{OFFICER}" for e in entries)
    # The lockout is in the file, not in memory: it outlives a restart.
    users = json.loads(kiosk.config.console.users_file.read_text())["users"]  # type: ignore[union-attr]
    assert users[OFFICER]["locked_until"] > 0
    assert kiosk.config.console.users_file.stat().st_mode & 0o777 == 0o600  # type: ignore[union-attr]


def test_forged_and_expired_sessions_change_nothing(kiosk: ConsoleKiosk) -> None:
    sid = kiosk.register()
    forger = Client(kiosk.base)
    forger.get("/signin")
    forger.cookies["kc_session"] = "A" * 43
    status, headers, _, _ = forger.get("/approvals")
    assert status == 303 and headers["location"] == "/signin?expired=1"
    status, _, page, _ = forger.post("/approvals/approve", {"id": sid})
    assert status == 401 and "sign in again" in page and "Nothing was changed" in page
    assert kiosk.registrations.approvals.get(sid)["state"] == "awaiting"

    client = Client(kiosk.base)
    client.sign_in(SUPERVISOR, PASSWORDS[SUPERVISOR])
    console = kiosk.agent.console
    assert console is not None
    now = [1000.0]
    console.sessions.clock = lambda: now[0]
    assert client.get("/approvals")[0] == 200  # activity at t=1000
    now[0] += console.config.idle_timeout_s - 1
    assert client.get("/figures.json")[0] == 200  # not activity: the idle clock runs on
    now[0] += 2
    status, _, page, _ = client.post("/approvals/approve", {"id": sid})
    assert status == 401 and "Nothing was changed" in page
    assert kiosk.registrations.approvals.get(sid)["state"] == "awaiting"
    assert client.get("/figures.json")[0] == 401


def test_csrf_origin_host_and_framing_refusals(kiosk: ConsoleKiosk) -> None:
    sid = kiosk.register()
    client = Client(kiosk.base)
    client.sign_in(SUPERVISOR, PASSWORDS[SUPERVISOR])
    client.get("/approvals")
    # No CSRF token, a wrong one, another session's.
    other = Client(kiosk.base)
    other.sign_in(OFFICER, PASSWORDS[OFFICER])
    other.get("/")
    for token in (None, "x" * 43, other.csrf):
        fields = {"id": sid} | ({"csrf": token} if token else {})
        status, _, page, _ = client.post("/approvals/approve", fields, csrf=False)
        assert status == 403 and "expired or did not come from the console" in page, token
    # A cross-site page's form (its Origin), a fetch from another site, a null origin.
    for headers in ({"Origin": "http://evil.example"}, {"Origin": "null"},
                    {"Sec-Fetch-Site": "cross-site"}, {"Sec-Fetch-Site": "same-site"},
                    {"Origin": kiosk.base.replace("localhost", "127.0.0.2")}):
        status, _, page, _ = client.post("/approvals/approve", {"id": sid}, headers=headers)
        assert status == 403 and "did not come from the console" in page, headers
    # A name rebound to 127.0.0.1 (DNS rebinding) is not the console's.
    status, _, page, _ = client.request("GET", "/", headers={"Host": f"attacker.example:{client.port}"})
    assert status == 403 and "not the console" in page
    assert kiosk.registrations.approvals.get(sid)["state"] == "awaiting"
    # The sign-in form has its CSRF token too (login CSRF): without the cookie's, refused.
    fresh = Client(kiosk.base)
    status, _, _, _ = fresh.post("/signin", {"name": SUPERVISOR, "password": PASSWORDS[SUPERVISOR]},
                                 csrf=False)
    assert status == 403 and "kc_session" not in fresh.cookies
    # The genuine form works.
    status, headers, _, _ = client.post("/approvals/approve", {"id": sid})
    assert status == 303 and kiosk.registrations.approvals.get(sid)["state"] == "approved"


def test_oversized_chunked_and_malformed_forms(kiosk: ConsoleKiosk) -> None:
    client = Client(kiosk.base)
    client.sign_in(OFFICER, PASSWORDS[OFFICER])
    client.get("/")
    big = "a" * 10_000
    status, headers, page, _ = client.post("/devices/test", {"device": big})
    assert status == 413 and "too large" in page and "Nothing was changed" in page
    assert headers.get("connection") == "close"
    status, _, page, _ = client.request("POST", "/devices/test", b"5\r\nabcde\r\n0\r\n\r\n", {
        "Transfer-Encoding": "chunked", "Content-Type": "application/x-www-form-urlencoded",
        "Origin": kiosk.base})
    assert status == 411
    status, _, _, _ = client.request("POST", "/devices/test", b"{}", {
        "Content-Type": "application/json", "Origin": kiosk.base, "Content-Length": "2"})
    assert status == 415
    status, _, _, _ = client.request("POST", "/devices/test", b"csrf=a&csrf=b", {
        "Content-Type": "application/x-www-form-urlencoded", "Origin": kiosk.base})
    assert status == 400
    status, _, _, _ = client.request("DELETE", "/")
    assert status == 405
    assert not any(e["command"] == "console.device_test" for e in audit(kiosk))


def test_roles_approval_holds_captures_until_approved_and_rejected_ones_stay(kiosk: ConsoleKiosk) -> None:
    approved, rejected = kiosk.register("APP-APPROVE"), kiosk.register("APP-REJECT")
    stats = kiosk.agent.queue_stats()
    # Each: finger 1, the face, its token image and the manifest, all held on the kiosk.
    assert stats is not None and stats.by_state.get("held") == 2 * 4 and stats.by_state["queued"] == 0
    officer = Client(kiosk.base)
    officer.sign_in(OFFICER, PASSWORDS[OFFICER])
    status, _, page, _ = officer.get("/approvals")
    assert status == 403 and "Only a supervisor" in page
    status, _, page, _ = officer.get("/registrations")
    assert status == 200 and approved in page and "awaiting approval" in page
    assert "APP-APPROVE" not in page  # applicant references: supervisors only
    officer.get("/")
    status, _, _, _ = officer.post("/approvals/approve", {"id": approved})
    assert status == 403
    # Nothing has left the kiosk meanwhile: the receiver has not a single file.
    assert not [f for f in kiosk.out.rglob("*") if f.is_file()] if kiosk.out.exists() else True

    supervisor = Client(kiosk.base)
    supervisor.sign_in(SUPERVISOR, PASSWORDS[SUPERVISOR])
    status, _, page, _ = supervisor.get("/approvals")
    assert "APP-APPROVE" in page and "APP-REJECT" in page
    assert supervisor.post("/approvals/approve", {"id": approved})[0] == 303
    assert supervisor.post("/approvals/reject", {"id": rejected, "reason": "identity"})[0] == 303
    # Deciding again: refused with a clear message.
    status, _, page, _ = supervisor.post("/approvals/approve", {"id": rejected})
    assert status == 409 and "does not await approval" in page
    wait_until(lambda: kiosk.received(approved), 30, what="the approved registration at the receiver")
    stats = kiosk.agent.queue_stats()
    assert stats is not None and stats.by_state.get("withheld") == 4 and not stats.by_state.get("held")
    assert not kiosk.received(rejected)
    entries = audit(kiosk)
    assert any(e["command"] == "console.approve" and e["operator"] == f"console:{SUPERVISOR}"
               and e["args"]["registration"] == approved for e in entries)
    assert any(e["command"] == "console.reject" and e["args"]["registration"] == rejected for e in entries)
    assert kiosk.registrations.approvals.get(rejected)["decided_by"] == f"console:{SUPERVISOR}"
    # The registrations page follows it to the central side's word.
    wait_until(lambda: "stored centrally: complete" in supervisor.get(f"/registrations?q={approved}")[2], 30,
               what="central confirmation shown")
    page = supervisor.get(f"/registrations?q={rejected}")[2]
    assert "rejected (kept, not sent)" in page and approved not in page


def test_blocking_rule_refuses_new_sessions_with_what_to_do(tmp_path: Path, broker: MosquittoBroker) -> None:
    kiosk = ConsoleKiosk(tmp_path, broker, max_awaiting_approval=1)
    try:
        kiosk.register()
        status, body = kiosk.api.call("POST", "/v1/sessions", {"applicant_ref": "APP-2", "operator_id": "op"})
        assert status == 409 and body["error"]["code"] == "blocked"
        [rule] = body["error"]["rules"]
        assert rule["rule"] == "approvals_pending" and "supervisor" in rule["action"]
        client = Client(kiosk.base)
        client.sign_in(OFFICER, PASSWORDS[OFFICER])
        page = client.get("/")[2]
        assert "New registrations are stopped" in page and "Too many registrations await approval" in page
    finally:
        kiosk.stop()


def test_tls_listener_secure_cookie(tmp_path: Path, broker: MosquittoBroker) -> None:
    ca = CA(tmp_path, "console-ca")
    cert, key = ca.issue("console", server=True)
    kiosk = ConsoleKiosk(tmp_path, broker, tls={"cert_file": str(cert), "key_file": str(key)})
    try:
        assert kiosk.base.startswith("https://")
        context = ssl.create_default_context(cafile=str(ca.path))
        client = Client(kiosk.base, context)
        status, headers, _, cookies = client.sign_in(SUPERVISOR, PASSWORDS[SUPERVISOR])
        assert status == 303
        session_cookie = next(c for c in cookies if c.startswith("__Host-kc_session="))
        assert "Secure" in session_cookie and "HttpOnly" in session_cookie
        assert "SameSite=Strict" in session_cookie
        assert "max-age" in headers["strict-transport-security"]
        assert client.get("/")[0] == 200
        plain = Client(kiosk.base.replace("https://", "http://"))
        with pytest.raises(Exception):  # noqa: B017 - plain HTTP to a TLS port gets no page
            plain.get("/signin")
    finally:
        kiosk.stop()


def test_beyond_loopback_needs_tls(tmp_path: Path) -> None:
    from agent.config import ConfigError
    raw = {"kiosk": {"id": "k", "state_dir": str(tmp_path)}, "mqtt": {"allow_plaintext": True},
           "console": {"enabled": True, "host": "0.0.0.0"}}
    with pytest.raises(ConfigError, match="console.tls|console"):
        validate_config(raw, "test")
