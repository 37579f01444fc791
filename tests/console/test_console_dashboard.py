"""The dashboard over plain HTTP against a real agent: what it shows (kiosk, backlog, disk,
version), the agent's own clock judgement (injected: the clock watch's commands and time,
never the machine's clock), a device's Test button, and the language change, each action in
the audit with who did it."""

from __future__ import annotations

import json
import re
import shutil

from agent import __version__
from agent.clock.watch import ClockWatch
from agent.console.figures import human_bytes
from tests.console.support import OFFICER, PASSWORDS, SUPERVISOR, Client, ConsoleKiosk, audit

CHRONY_SYNCED = """Reference ID    : C0A80001 (ntp.example)
Stratum         : 3
Ref time (UTC)  : Tue Dec 01 18:00:00 2026
System time     : 0.000012345 seconds fast of NTP time
Leap status     : Normal
"""


def figure(page: str, name: str) -> str:
    found = re.search(rf'data-figure="{re.escape(name)}">([^<]*)<', page)
    assert found, f"no figure {name} on the page"
    return found.group(1)


def _inject(watch: ClockWatch, chrony: str | None, now: float | None = None) -> None:
    """What chronyc says (timedatectl says nothing) and, with ``now``, what the clock reads."""
    watch.run = lambda argv, timeout: chrony if argv[0] == "chronyc" else None
    if now is not None:
        watch.clock = lambda: now
    watch.state(fresh=True)


def test_dashboard_shows_the_agents_clock_judgement(kiosk: ConsoleKiosk) -> None:
    watch = kiosk.agent.clock
    real_run, real_clock = watch.run, watch.clock
    client = Client(kiosk.base)
    client.sign_in(OFFICER, PASSWORDS[OFFICER])
    try:
        _inject(watch, CHRONY_SYNCED)
        page = client.get("/")[2]
        assert figure(page, "clock_state") == "trusted"
        assert figure(page, "clock_source") == "chrony (time server)"
        assert figure(page, "clock_reason") == ""
        live = json.loads(client.get("/figures.json")[2])
        assert live["clock_state"] == "trusted" and live["clock_source"] == "chrony (time server)"

        _inject(watch, None)  # neither chrony nor timedatectl answers, no GNSS
        page = client.get("/")[2]
        assert figure(page, "clock_state").startswith("not confirmed")
        assert figure(page, "clock_source") == "none"
        assert "not synchronised" in figure(page, "clock_reason")
        assert "New registrations are stopped" not in page  # untrusted is recorded, not refused

        # Synchronised, says chrony, but before this release's date: wrong, and the clock rule
        # stops new registrations under its own title (not its id).
        _inject(watch, CHRONY_SYNCED, now=1_600_000_000.0)
        page = client.get("/")[2]
        assert figure(page, "clock_state") == "wrong"
        assert "before this release&#x27;s date" in figure(page, "clock_reason")
        assert "The kiosk&#x27;s clock is wrong" in page and ">clock_wrong<" not in page
        assert json.loads(client.get("/figures.json")[2])["clock_state"] == "wrong"
        status, body = kiosk.api.call("POST", "/v1/sessions", {"applicant_ref": "APP-3", "operator_id": "op"})
        assert status == 409 and body["error"]["rules"][0]["rule"] == "clock_wrong"
        # In Urdu: the state, the source, the reason, the rule's title, what is wrong and what
        # to do, all translated; the dates and figures as the agent gave them.
        assert client.post("/language", {"language": "ur"})[0] == 303
        page = client.get("/")[2]
        assert figure(page, "clock_state") == "غلط" and figure(page, "clock_source") == "chrony (ٹائم سرور)"
        assert "کیوسک کی گھڑی غلط ہے" in page
        reason = figure(page, "clock_reason")
        assert "ریلیز کی تاریخ" in reason and "2020-09-13" in reason and "release" not in reason
        assert "درست تاریخ اور وقت لگائیں" in page and "set the correct date" not in page
        assert "ریلیز کی تاریخ" in json.loads(client.get("/figures.json")[2])["clock_reason"]
    finally:
        watch.run, watch.clock = real_run, real_clock
        watch.state(fresh=True)  # the module's latest judgement back to the machine's own


def test_dashboard_figures(kiosk: ConsoleKiosk) -> None:
    client = Client(kiosk.base)
    client.sign_in(OFFICER, PASSWORDS[OFFICER])
    page = client.get("/")[2]
    cfg = kiosk.config
    assert f"<h1>{cfg.kiosk.id}</h1><p>{cfg.kiosk.site}</p>" in page
    assert f"Agent version {__version__}" in page
    assert figure(page, "backlog_bytes") == "0 B" and figure(page, "backlog_oldest") == "—"

    kiosk.register()
    before = shutil.disk_usage(cfg.state_dir).free
    page = client.get("/")[2]
    after = shutil.disk_usage(cfg.state_dir).free
    stats = kiosk.agent.queue_stats()
    assert stats is not None and stats.pending == 4 and stats.pending_bytes > 1024
    assert figure(page, "backlog_bytes") == human_bytes(stats.pending_bytes)
    assert re.fullmatch(r"\d+ s", figure(page, "backlog_oldest")), figure(page, "backlog_oldest")
    # Free disk moves with everything else on the machine: the page's figure lies between what
    # was measured just before and just after (to its one decimal of rounding).
    shown = _bytes(figure(page, "disk_free"))
    assert min(before, after) * 0.99 <= shown <= max(before, after) * 1.01
    # Registrations left: free disk less the queue's reserve and the low-disk rule's limit,
    # over one registration's size.
    per = cfg.console.registration_size_mb * 2**20
    reserve = cfg.queue.min_free_bytes + cfg.console.min_free_disk_mb * 2**20
    left = int(figure(page, "registrations_left"))
    assert int(max(0, min(before, after) - reserve) // per) - 1 <= left
    assert left <= int(max(0, max(before, after) - reserve) // per) + 1


def _bytes(text: str) -> float:
    number, unit = text.split()
    return float(number) * {"B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30}[unit]


def test_device_test_button_says_what_happened_and_is_audited(kiosk: ConsoleKiosk) -> None:
    client = Client(kiosk.base)
    client.sign_in(OFFICER, PASSWORDS[OFFICER])
    page = client.get("/")[2]
    assert 'name="device" value="finger"' in page and 'name="device" value="camera"' in page
    status, headers, _, _ = client.post("/devices/test", {"device": "finger"})
    assert status == 303 and headers["location"] == "/"
    page = client.get("/")[2]
    assert "finger answered: working." in page
    assert "finger answered" not in client.get("/")[2]  # said once
    # Unplugged: the same button says so, with what to do.
    worker = kiosk.agent.device_workers()["camera"]
    worker.submit(lambda driver: setattr(driver, "_unplugged", True)).result(timeout=10)
    assert client.post("/devices/test", {"device": "camera"})[0] == 303
    assert "camera did not pass its test (disconnected). Check its cable" in client.get("/")[2]
    # No such device: refused, nothing audited for it.
    status, _, page, _ = client.post("/devices/test", {"device": "nope"})
    assert status == 404 and "no such page" in page
    tests = [e for e in audit(kiosk) if e["command"] == "console.device_test"]
    assert [(e["operator"], e["args"], e["result"]) for e in reversed(tests)] == [
        (f"console:{OFFICER}", {"device": "finger"}, "ok"),
        (f"console:{OFFICER}", {"device": "camera"}, "error")]


def test_language_change_is_audited(kiosk: ConsoleKiosk) -> None:
    client = Client(kiosk.base)
    client.sign_in(SUPERVISOR, PASSWORDS[SUPERVISOR])
    client.get("/")
    assert client.post("/language", {"language": "ur"})[0] == 303
    page = client.get("/")[2]
    assert 'lang="ur" dir="rtl"' in page
    assert client.post("/language", {"language": "xx"})[0] == 400
    changes = [e for e in audit(kiosk) if e["command"] == "console.language"]
    assert [(e["operator"], e["args"], e["result"]) for e in changes] == [
        (f"console:{SUPERVISOR}", {"language": "ur"}, "ok")]

