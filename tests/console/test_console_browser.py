"""The operator console end to end in a real headless Chromium against a real agent, broker and
receiver: sign in, live backlog figures, a blocking rule refusing a new session, approving a
registration and watching it leave, a cross-site form post refused, idle sign-out."""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devtools.broker import MosquittoBroker
from tests.console import browser
from tests.console.support import PASSWORDS, SUPERVISOR, ConsoleKiosk
from tests.support.waiting import wait_until


def _attacker_site(target: str, registration: str) -> tuple[http.server.ThreadingHTTPServer, str]:
    """Another web page, as one open in the kiosk's browser would be: it posts a form to the
    console by itself."""
    page = (f'<!doctype html><form id="f" method="post" action="{target}/approvals/approve">'
            f'<input name="id" value="{registration}"><input name="csrf" value="guessed"></form>'
            '<script>document.getElementById("f").submit()</script>').encode()

    class Evil(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Evil)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    # localhost on another port: another origin, but the same *site*, so the browser sends even
    # a SameSite=Strict cookie with its post; what stops it is the console's Origin and CSRF
    # checks (a page of another local web service, or one a local process serves).
    return server, f"http://localhost:{server.server_address[1]}/"


@pytest.fixture
def kiosk(tmp_path: Path, broker: MosquittoBroker) -> Iterator[ConsoleKiosk]:
    problem = browser.available()
    if problem:
        pytest.fail(problem)
    k = ConsoleKiosk(tmp_path, broker, max_awaiting_approval=2)
    try:
        yield k
    finally:
        k.stop()


def _figure(driver: Any, name: str) -> str:
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException

    try:
        return driver.find_element("css selector", f'[data-figure="{name}"]').text
    except (NoSuchElementException, StaleElementReferenceException):  # the page is reloading
        return ""


def test_console_in_chromium(kiosk: ConsoleKiosk) -> None:
    with browser.chromium() as driver:
        d: Any = driver
        # Sign in.
        d.get(kiosk.base + "/signin")
        d.find_element("name", "name").send_keys(SUPERVISOR)
        d.find_element("name", "password").send_keys(PASSWORDS[SUPERVISOR])
        d.find_element("css selector", "form[action='/signin'] button").click()
        wait_until(lambda: d.current_url.rstrip("/") == kiosk.base, 10, what="the dashboard")
        assert _figure(d, "backlog_captures") == "0" and "Connected" in _figure(d, "connection")

        # Live figures: a registration taken meanwhile shows up without reloading the page.
        d.execute_script("window.notReloaded = true")
        sid = kiosk.register()
        wait_until(lambda: _figure(d, "held") == "4", 15, what="the live held figure")
        assert _figure(d, "backlog_captures") == "4" and d.execute_script("return window.notReloaded") is True
        # A second one, and the blocking rule (at most two awaiting approval) holds: the page says so...
        second = kiosk.register("APP-2")
        wait_until(lambda: "New registrations are stopped" in d.page_source, 15, what="the blocking rule")
        assert "Too many registrations await approval" in d.page_source
        # ... and the registration app is refused a new session, with the rule.
        status, body = kiosk.api.call("POST", "/v1/sessions", {"applicant_ref": "APP-9", "operator_id": "op"})
        assert status == 409 and body["error"]["rules"][0]["rule"] == "approvals_pending"

        # Approve it and watch it leave.
        d.find_element("link text", "Approvals").click()
        wait_until(lambda: sid in d.page_source and "APP-1" in d.page_source, 10, what="the approvals page")
        d.find_element("css selector", f"form:has(input[value='{sid}']) button.approve").click()
        # The click submits a form: the answer is a new page, loaded after click() returns.
        wait_until(lambda: "approved: it is being sent" in d.page_source, 10, what="the approval's answer")
        wait_until(lambda: kiosk.received(sid), 30, what="the approved registration at the receiver")
        d.find_element("link text", "Dashboard").click()
        wait_until(lambda: _figure(d, "held") == "4" and _figure(d, "backlog_captures") == "4", 20,
                   what="the approved one gone from the backlog on the dashboard")
        assert "New registrations are stopped" not in d.page_source

        # A cross-site page's form: refused, nothing changed.
        evil, url = _attacker_site(kiosk.base, second)
        try:
            d.get(url)
            wait_until(lambda: "Nothing was changed" in d.page_source, 10, what="the refusal page")
        finally:
            evil.shutdown()
            evil.server_close()
        assert kiosk.registrations.approvals.get(second)["state"] == "awaiting"

        # Idle sign-out: the open dashboard goes to the sign-in form by itself.
        console = kiosk.agent.console
        assert console is not None
        d.get(kiosk.base + "/")
        # Longer than the page's 2 s refresh: the refresh itself must not keep the session alive.
        console.sessions.idle_timeout_s = 3
        started = time.monotonic()
        wait_until(lambda: "/signin?expired=1" in d.current_url, 15, what="idle sign-out")
        assert time.monotonic() - started >= 2.5
        assert "You were signed out" in d.page_source
        d.get(kiosk.base + "/approvals")
        assert "/signin" in d.current_url
