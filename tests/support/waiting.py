"""Waiting for a condition with a deadline that names what was awaited."""

from __future__ import annotations

import time


def wait_until(predicate, timeout_s: float = 30.0, interval_s: float = 0.05, what: str = "") -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what or predicate}")
        time.sleep(interval_s)
