"""`kiosk-agent remote` for a person: replies as indented lines, and a no-reply message that
says what the kiosk's retained status tells (and never promises a later delivery)."""

from __future__ import annotations

from agent.remote.cli import _Requester, no_reply_message, reply_error_text
from agent.remote.output import render, reply_text


def test_a_status_reply_reads_as_lines() -> None:
    reply = {"ok": True, "result": {
        "kiosk_id": "van-07", "connected": True, "cert_expires_at": None,
        "queue": {"pending": 3, "by_state": {"queued": 3, "sent": 0}},
        "devices": [{"name": "finger", "state": "online"}, {"name": "camera", "state": "offline"}],
        "states": ["rejected"], "events": [],
    }}
    assert reply_text(reply).splitlines() == [
        "kiosk_id: van-07",
        "connected: yes",
        "cert_expires_at: -",
        "queue:",
        "  pending: 3",
        "  by_state:",
        "    queued: 3",
        "    sent: 0",
        "devices:",
        "  - name: finger",
        "    state: online",
        "  - name: camera",
        "    state: offline",
        "states: rejected",
        "events: (none)",
    ]


def test_long_lists_and_plain_results() -> None:
    assert render(list(range(30)))[:2] == ["- 0", "- 1"]
    assert render({"purged": 0}) == ["purged: 0"] and render({}) == ["(nothing)"]
    assert reply_text({"ok": True, "result": "done"}) == "done"


def _handler(connected: bool, state: str | None) -> _Requester:
    handler = _Requester("t", b"", "r", "id", "kiosk/van-07/status")
    handler.connected, handler.kiosk_state = connected, state
    return handler


def test_no_reply_says_why() -> None:
    assert "could not be reached" in no_reply_message("van-07", 30, _handler(False, None))
    unknown = no_reply_message("van-7", 30, _handler(True, None))
    assert "no kiosk 'van-7' has reported to this broker (a typo?" in unknown and "--list" in unknown
    offline = no_reply_message("van-07", 30, _handler(True, "offline"))
    assert "the kiosk is offline" in offline and "not delivered later" in offline
    online = no_reply_message("van-07", 30, _handler(True, "online"))
    assert "status says online" in online


def test_control_characters_in_a_reply_reach_no_terminal() -> None:
    """A reply is unsigned: any broker client that saw the command (its reply_to is in it) can
    answer first. Escape sequences in its keys or values (a window title, a cleared screen, a
    fake line) were printed as they came; now they show as escapes, each on its own line."""
    hostile = "\x1b]0;title\x07\x1b[2J\x1b[31mfake\x1b[0m\r\nline\u202egnp.exe\x9b"
    text = reply_text({"ok": True, "result": {hostile: hostile, "list": [hostile], "n": [{"k": hostile}]}})
    assert not any(ch in text for ch in "\x1b\x07\r\x9b\u202e")
    assert len(text.splitlines()) == len(render({"a": 1, "list": [1], "n": [{"k": 1}]}))
    assert "\\x1b]0;title" in text and "\\u202egnp.exe" in text
    assert reply_text({"ok": True, "result": {"name": "Zoë 李"}}) == "name: Zoë 李"


def test_control_characters_in_an_error_reply_or_a_status_reach_no_terminal() -> None:
    """The refusal line and the kiosk's retained state come from any broker client too."""
    hostile = "\x1b[2J\x1b]0;owned\x07\r\nok\u202e"
    line = reply_error_text({"ok": False, "error": {"code": hostile, "message": hostile}})
    assert not any(ch in line for ch in "\x1b\x07\r\n\u202e") and "\\x1b[2J" in line
    assert reply_error_text({"ok": False, "error": "not a dict"}) == "error: None: None"
    said = no_reply_message("van-07", 30, _handler(True, hostile))
    assert not any(ch in said for ch in "\x1b\x07\r\n\u202e") and "\\x1b]0;owned" in said
