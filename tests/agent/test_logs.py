from __future__ import annotations

import logging

import pytest

from agent.logs import setup_logging


def test_journal_format_under_systemd(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("JOURNAL_STREAM", "8:12345")
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        setup_logging("INFO", "auto")
        logging.getLogger("agent.test").warning("device %s offline", "finger")
        logging.getLogger("agent.test").debug("not shown at INFO")
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    err = capsys.readouterr().err
    # journald adds the time itself; the <4> prefix carries the priority (warning).
    assert err == "<4>agent.test: device finger offline\n"


def test_text_format_has_timestamps(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        setup_logging("DEBUG", "auto")
        logging.getLogger("agent.test").info("hello")
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    line = capsys.readouterr().err
    assert line[:2] == "20" and "INFO    agent.test: hello" in line


def test_a_message_cannot_forge_a_journal_entry_or_move_a_terminal() -> None:
    """Red team: a kiosk's cancel reason "x\\n<2>..." became a second journal entry at CRIT
    priority in the receiver's log. Now the message stays one line, its controls escaped;
    a traceback keeps its lines, each carrying the entry's own priority."""
    import sys

    from agent.logs import JournalFormatter, SafeFormatter, printable_message

    hostile = "x\n<2>kiosk-agent: forged\r\x1b[2J\u2028end"
    record = logging.LogRecord("receiver", logging.INFO, __file__, 1, "cancelled: %s", (hostile,), None)
    journal = JournalFormatter("%(message)s").format(record)
    assert journal.count("\n") == 0 and "\x1b" not in journal and "\u2028" not in journal
    assert journal == "<6>receiver: cancelled: " + printable_message(hostile)
    assert "\\n<2>kiosk-agent: forged" in journal
    text = SafeFormatter("%(levelname)s %(message)s").format(record)
    assert "\n" not in text and "\x1b" not in text
    assert record.getMessage().endswith("end"), "the record itself is left as it was"
    try:
        raise ValueError("boom")
    except ValueError:
        failed = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", None, sys.exc_info())
    lines = JournalFormatter("%(message)s").format(failed).split("\n")
    assert len(lines) > 2 and all(line.startswith("<3>") for line in lines), lines
