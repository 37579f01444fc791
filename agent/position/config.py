"""The [position] config section: the GNSS receiver and the kiosk's assigned area."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from agent.config_types import Section


class AreaConfig(Section):
    """Where this kiosk is assigned to work: a centre and a radius."""

    lat: float = Field(ge=-90, le=90)
    lon: float = Field(ge=-180, le=180)
    radius_m: float = Field(gt=0)
    #: "flag": registrations outside are taken and marked so (outside_area in the manifest);
    #: "refuse": new registrations are refused while the kiosk is outside.
    outside: Literal["flag", "refuse"] = "flag"


class PositionConfig(Section):
    """A GNSS receiver (vans). ``source = "none"`` (the default): no position is recorded."""

    source: Literal["none", "nmea", "gpsd"] = "none"
    #: nmea: the receiver's serial port (or a pyserial URL) and its rate.
    port: str = ""
    baud: int = 9600
    #: gpsd: where it listens (its default; keep it on the kiosk itself).
    gpsd_host: str = "127.0.0.1"
    gpsd_port: int = 2947
    #: A fix older than this is not the kiosk's position any more: the manifest says "no fix".
    max_age_s: float = Field(default=10.0, gt=0)
    area: AreaConfig | None = None

    @model_validator(mode="after")
    def _port_for_nmea(self) -> PositionConfig:
        if self.source == "nmea" and not self.port:
            raise ValueError("position.port is required with source = \"nmea\" (e.g. /dev/ttyACM0)")
        return self
