"""Screenshots of every console page for docs/console.md, in English and Urdu, on a 7-inch
800x480 kiosk screen and a 1366x768 laptop, from a real agent in headless Chromium.

    .venv/bin/python -m tests.console.screenshots      # writes docs/console/*.png
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

from devtools.broker import MosquittoBroker
from tests.console import browser
from tests.console.support import PASSWORDS, SUPERVISOR, ConsoleKiosk
from tests.support.paths import ROOT
from tests.support.waiting import wait_until

OUT = ROOT / "docs" / "console"
SIZES = ((800, 480), (1366, 768))
PAGES = (("signin", "/signin"), ("dashboard", "/"), ("registrations", "/registrations"),
         ("approvals", "/approvals"))


def main() -> int:
    problem = browser.available()
    if problem:
        print(problem, file=sys.stderr)
        return 1
    OUT.mkdir(parents=True, exist_ok=True)
    broker = MosquittoBroker()
    broker.start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            kiosk = ConsoleKiosk(Path(tmp), broker, max_awaiting_approval=2)
            try:
                delivered = kiosk.register("APP-2026-0101")
                kiosk.registrations.approve(delivered, "console:sam")
                wait_until(lambda: kiosk.received(delivered), 30, what="the first registration delivered")
                kiosk.register("APP-2026-0102")
                kiosk.register("APP-2026-0103")
                for width, height in SIZES:
                    with browser.chromium(width, height) as driver:
                        shoot(driver, kiosk, width, height)
            finally:
                kiosk.stop()
    finally:
        broker.close()
    print(f"screenshots in {OUT}")
    return 0


def shoot(d: Any, kiosk: ConsoleKiosk, width: int, height: int) -> None:
    for language in ("en", "ur"):
        d.get(f"{kiosk.base}/signin?lang={language}")
        d.save_screenshot(str(OUT / f"signin-{language}-{width}x{height}.png"))
        d.find_element("name", "name").send_keys(SUPERVISOR)
        d.find_element("name", "password").send_keys(PASSWORDS[SUPERVISOR])
        d.find_element("css selector", "form[action='/signin'] button").click()
        wait_until(lambda: "/signin" not in d.current_url, 10, what="signed in")
        for name, path in PAGES[1:]:
            d.get(kiosk.base + path)
            d.save_screenshot(str(OUT / f"{name}-{language}-{width}x{height}.png"))
        d.find_element("css selector", "form[action='/signout'] button").click()


if __name__ == "__main__":
    sys.exit(main())
