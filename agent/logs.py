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


#: Characters a log message may not carry as they are: a newline followed by "<2>" was a
#: second journal entry at CRIT priority (a kiosk's cancel reason, logged by the receiver);
#: escape sequences move an operator's terminal. Shown escaped instead (\n, \x1b, \u2028).
_UNSAFE = {c: f"\\x{c:02x}" for c in (*range(0x00, 0x09), *range(0x0a, 0x20), 0x7f, *range(0x80, 0xa0))}
_UNSAFE.update({0x0a: "\\n", 0x0d: "\\r", 0x2028: "\\u2028", 0x2029: "\\u2029"})


def printable_message(text: str) -> str:
    """``text`` with control and line-separator characters escaped: one line, no escapes."""
    return text.translate(_UNSAFE)


class SafeFormatter(logging.Formatter):
    """A message is one line whatever its arguments hold; a traceback keeps its lines, each
    marked by ``continuation`` so that none can pass for an entry of its own."""

    continuation = "  "

    def format(self, record: logging.LogRecord) -> str:
        saved = record.msg, record.args
        record.msg, record.args = printable_message(record.getMessage()), None
        try:
            text = super().format(record)
        finally:
            record.msg, record.args = saved
        first, *rest = text.split("\n")
        return "\n".join([first, *(self.continuation + line for line in rest)])


class JournalFormatter(SafeFormatter):
    def format(self, record: logging.LogRecord) -> str:
        priority = _PRIORITY.get(record.levelno, 6)
        # Every line of a traceback carries the priority: journald reads a prefix per line.
        self.continuation = f"<{priority}>  "
        return f"<{priority}>{record.name}: {super().format(record)}"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        body = {"ts": self.formatTime(record), "level": record.levelname, "logger": record.name,
                "message": record.getMessage(), "thread": record.threadName}
        if record.exc_info:
            body["exception"] = self.formatException(record.exc_info)
        return json.dumps(body)


class _Stderr(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is when a line is logged, not the stream it was at
    set-up: a command run in-process (tests, the demo) may swap and close it afterwards."""

    @property  # type: ignore[override]
    def stream(self):  # type: ignore[no-untyped-def]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # type: ignore[no-untyped-def]
        pass


def setup_logging(level: str = "INFO", fmt: str = "auto") -> None:
    if fmt == "auto":
        fmt = "journal" if os.environ.get("JOURNAL_STREAM") else "text"
    handler = _Stderr()
    if fmt == "journal":
        handler.setFormatter(JournalFormatter("%(message)s"))
    elif fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(SafeFormatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
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
        self.setFormatter(SafeFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))

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
