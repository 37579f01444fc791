"""One capture, tried again while the person can fix what went wrong: the loop every capture
path shares (the capture service, registration sessions, ``kiosk-agent capture``).

A ``CaptureRetry`` from the driver (no finger, look at the camera) uses up an attempt and
the next one starts, up to ``max_attempts``; when every attempt ends that way the last
``CaptureRetry`` is raised, hint and all. Any other error ends the loop at once: no attempt
by the person fixes a device fault.

Each image is judged. Without a judge the first image is good enough; registration passes
one that runs the quality checks, so the loop stops at the first image that passes and
otherwise keeps the best scored. The caller hears of every attempt through the ``on_*``
callbacks (a log line, a line on stderr, a session event), on the loop's own thread.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from drivers import CapturedImage, CaptureRetry

T = TypeVar("T")


@dataclass(frozen=True)
class Verdict(Generic[T]):
    """A judge's view of one image; ``detail`` is whatever the judge wants kept with it."""

    passed: bool
    score: float
    detail: T


@dataclass(frozen=True)
class Kept(Generic[T]):
    """The image kept, its verdict, and how many attempts it took to get it (all of them)."""

    image: CapturedImage
    verdict: Verdict[T]
    attempts: int


def first_image(image: CapturedImage) -> Verdict[None]:
    """The judge for paths that take what the device gives: any image passes."""
    return Verdict(True, 0.0, None)


def _nothing(*args: Any) -> None:
    return None


def attempt_capture(
    take: Callable[[], CapturedImage],
    max_attempts: int,
    judge: Callable[[CapturedImage], Verdict[T]] = first_image,
    *,
    on_attempt: Callable[[int], None] = _nothing,
    on_retry: Callable[[int, CaptureRetry], None] = _nothing,
    on_judged: Callable[[int, CapturedImage, Verdict[T]], None] = _nothing,
) -> Kept[T]:
    """Up to ``max_attempts`` calls of ``take``: the first image ``judge`` passes, else the best.

    Raises the last ``CaptureRetry`` when no attempt gave an image; any other exception from
    ``take``, ``judge`` or a callback ends the loop and reaches the caller unchanged.
    """
    best: Kept[T] | None = None
    last_retry: CaptureRetry | None = None
    attempt = 0
    for attempt in range(1, max_attempts + 1):
        on_attempt(attempt)
        try:
            image = take()
        except CaptureRetry as retry:
            last_retry = retry
            on_retry(attempt, retry)
            continue
        verdict = judge(image)
        on_judged(attempt, image, verdict)
        if best is None or (verdict.passed, verdict.score) > (best.verdict.passed, best.verdict.score):
            best = Kept(image, verdict, attempt)
        if verdict.passed:
            break
    if best is None:
        assert last_retry is not None, "max_attempts must be at least 1"
        raise last_retry
    return Kept(best.image, best.verdict, attempt)
