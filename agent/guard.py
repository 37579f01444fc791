"""Thread boundaries: where an unexpected error is logged and the thread goes on.

Device workers, the MQTT loop, command workers, hot-plug and continuous capture each run for
the agent's lifetime; one bug in one item of work must not end them silently. Everything
that is expected (driver errors, queue errors) is handled where it happens; this guard is
only for what nobody expected, so it logs the traceback at ERROR.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def log_and_continue(log: logging.Logger, what: str, *args: object) -> Iterator[None]:
    """Run the block; an unexpected ``Exception`` is logged (``what % args``, with its
    traceback) and swallowed. ``BaseException`` (SystemExit, KeyboardInterrupt) passes."""
    try:
        yield
    except Exception:
        log.exception(what, *args)
