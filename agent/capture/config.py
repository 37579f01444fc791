"""The [capture] config section."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from agent.config_types import Section


class CaptureConfig(Section):
    #: "on-demand": captures are requested (registration app, remote command).
    #: "continuous": the agent captures by itself from every enabled device (demos, soak tests).
    mode: Literal["on-demand", "continuous"] = "on-demand"
    #: Continuous mode: captures per second across all devices; 0 = as fast as the path allows.
    rate_per_s: float = Field(1.0, ge=0)
    #: Continuous mode: stop capturing after this many captures; 0 = never.
    max_captures: int = Field(0, ge=0)
    #: Continuous mode: finger positions (ANSI/NIST 1..10) cycled through on finger devices.
    finger_positions: list[Annotated[int, Field(ge=0, le=10)]] = Field(
        default_factory=lambda: list(range(1, 11))
    )
    #: Attempts per capture when the person must retry (no finger, no face).
    max_attempts: int = Field(3, ge=1, le=20)
