"""Exponential backoff with full jitter.

A fleet of kiosks that lost one cell tower together would otherwise reconnect in lockstep
(paho's own reconnect delay has no jitter). Full jitter draws each delay uniformly from
[0, min(cap, base * 2**attempt)], spreading the herd.
"""

from __future__ import annotations

import random


class Backoff:
    def __init__(self, base_s: float, cap_s: float, rng: random.Random | None = None) -> None:
        self.base_s = base_s
        self.cap_s = cap_s
        self.attempt = 0
        self._rng = rng or random.Random()

    def next_delay(self) -> float:
        ceiling = min(self.cap_s, self.base_s * (2 ** min(self.attempt, 32)))
        self.attempt += 1
        return self._rng.uniform(0, ceiling)

    def reset(self) -> None:
        self.attempt = 0
