"""Logging set-up: journald-friendly under systemd, timestamped on a terminal.

Under systemd (JOURNAL_STREAM is set) journald adds its own timestamps, so lines carry none;
a ``<N>`` syslog priority prefix lets journald store the right level.
"""

from __future__ import annotations

import json
import logging
import os
import sys

_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


class JournalFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        priority = _PRIORITY.get(record.levelno, 6)
        return f"<{priority}>{record.name}: {super().format(record)}"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        body = {"ts": self.formatTime(record), "level": record.levelname, "logger": record.name,
                "message": record.getMessage(), "thread": record.threadName}
        if record.exc_info:
            body["exception"] = self.formatException(record.exc_info)
        return json.dumps(body)


def setup_logging(level: str = "INFO", fmt: str = "auto") -> None:
    if fmt == "auto":
        fmt = "journal" if os.environ.get("JOURNAL_STREAM") else "text"
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "journal":
        handler.setFormatter(JournalFormatter("%(message)s"))
    elif fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        if not isinstance(old, RecentLogs):
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # amqtt and transitions are chatty at INFO; their warnings still show.
    for noisy in ("amqtt", "transitions"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


class RecentLogs(logging.Handler):
    """The last lines logged, for the `diagnostics` remote command.

    Logs never carry biometric data or secrets (see docs/security.md), so recent lines are
    safe to send to support.
    """

    def __init__(self, capacity: int = 500) -> None:
        super().__init__(logging.INFO)
        import collections

        self.lines: collections.deque[str] = collections.deque(maxlen=capacity)
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append(self.format(record))
        except Exception:
            self.handleError(record)


def recent_logs() -> RecentLogs:
    """The root logger's RecentLogs handler, attached on first use."""
    root = logging.getLogger()
    for handler in root.handlers:
        if isinstance(handler, RecentLogs):
            return handler
    handler = RecentLogs()
    root.addHandler(handler)
    return handler
