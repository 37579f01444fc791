"""A longer run of the console in a real headless Chromium, under KIOSK_AGENT_SOAK=1 (`make
soak`) only: the default suite keeps its one short browser run (test_console_browser.py).

At both screen sizes (the kiosk's 800x480, a laptop's 1366x768) and in both languages, a
supervisor decides a batch of registrations one by one from the approvals page, approving
and rejecting in turn; then every approved one has reached the receiver, no rejected one
has, each decision is the supervisor's in the approvals store and the audit, and the pages
never grew wider than the screen."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from devtools.broker import MosquittoBroker
from tests.console import browser
from tests.console.support import PASSWORDS, SUPERVISOR, Client, ConsoleKiosk
from tests.support.waiting import wait_until

#: The long browser run is in the soak profile (KIOSK_AGENT_SOAK=1, make soak).
pytestmark = pytest.mark.soak_only

SIZES = ((800, 480), (1366, 768))
LANGUAGES = ("en", "ur")
#: Registrations decided per size and language: 48 in all.
BATCH = 12


def _sign_in(d: Any, kiosk: ConsoleKiosk, language: str) -> None:
    d.get(f"{kiosk.base}/signin?lang={language}")
    d.find_element("name", "name").send_keys(SUPERVISOR)
    d.find_element("name", "password").send_keys(PASSWORDS[SUPERVISOR])
    d.find_element("css selector", "form[action='/signin'] button").click()
    wait_until(lambda: "/signin" not in d.current_url, 15, what="signed in")
    assert d.find_element("tag name", "html").get_attribute("lang") == language


def _flash(d: Any) -> str:
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException

    try:
        return d.find_element("css selector", ".flash").text
    except (NoSuchElementException, StaleElementReferenceException):  # the next page not there yet
        return ""


def _fits(d: Any, width: int) -> bool:
    return d.execute_script("return document.documentElement.scrollWidth") <= width


def test_console_soak(tmp_path: Path, broker: MosquittoBroker) -> None:
    problem = browser.available()
    if problem:
        pytest.fail(problem)
    kiosk = ConsoleKiosk(tmp_path, broker, max_awaiting_approval=0)
    approved: list[str] = []
    rejected: list[str] = []
    try:
        for width, height in SIZES:
            for language in LANGUAGES:
                with browser.chromium(width, height) as driver:
                    d: Any = driver
                    _sign_in(d, kiosk, language)
                    batch = [kiosk.register(f"APP-{width}-{language}-{n}") for n in range(BATCH)]
                    d.get(kiosk.base + "/")
                    assert _fits(d, width), (width, language, "dashboard")
                    for n, sid in enumerate(batch):
                        d.get(kiosk.base + "/approvals")
                        assert _fits(d, width), (width, language, "approvals")
                        form = f"form:has(input[value='{sid}'])"
                        if n % 2 == 0:
                            d.find_element("css selector", f"{form} button.approve").click()
                            approved.append(sid)
                        else:
                            reason = d.find_element("css selector", f"{form} select[name=reason]")
                            reason.find_element("css selector", "option[value=quality]").click()
                            d.find_element("css selector", f"{form} button.reject").click()
                            rejected.append(sid)
                        wait_until(lambda sid=sid, d=d: sid in _flash(d), 15,
                                   what=f"the decision on {sid} said")
                    assert d.find_elements("css selector", "section.approval") == []  # none left awaiting
                    d.find_element("css selector", "form[action='/signout'] button").click()
                    wait_until(lambda d=d: "/signin" in d.current_url, 10, what="signed out")
        assert len(approved) == len(rejected) == len(SIZES) * len(LANGUAGES) * BATCH // 2
        wait_until(lambda: all(kiosk.received(sid) for sid in approved), 180,
                   what="every approved registration at the receiver")
        assert not any(kiosk.received(sid) for sid in rejected)
        approvals = kiosk.registrations.approvals
        for sid in approved:
            assert approvals.get(sid)["state"] == "approved"
        for sid in rejected:
            decision = approvals.get(sid)
            assert decision["state"] == "rejected" and decision["decided_by"] == f"console:{SUPERVISOR}"
        entries = kiosk.agent.console.audit_store.recent_audit(1000)  # type: ignore[union-attr]
        decided = {(e["command"], e["args"]["registration"]) for e in entries
                   if e["command"] in ("console.approve", "console.reject")}
        assert decided == ({("console.approve", s) for s in approved}
                           | {("console.reject", s) for s in rejected})
        # The registrations page agrees, in each language.
        client = Client(kiosk.base)
        client.sign_in(SUPERVISOR, PASSWORDS[SUPERVISOR])
        page = client.get(f"/registrations?q={rejected[-1]}")[2]
        assert "rejected (kept, not sent)" in page
        wait_until(lambda: "stored centrally: complete" in client.get(f"/registrations?q={approved[-1]}")[2],
                   60, what="central confirmation shown")
    finally:
        kiosk.stop()
