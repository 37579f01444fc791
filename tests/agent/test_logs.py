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
