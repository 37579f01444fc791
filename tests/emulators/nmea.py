"""A GNSS receiver speaking NMEA 0183 over a pty, with scripted fixes, no-fix periods,
jumps and garbage.

Its sentences are built here with their own small encoder (not pynmea2's, which the driver
parses with), so a bug shared by both cannot hide. Each epoch (every ``interval_s``) it sends
GGA, GSA, GSV and RMC, as a u-blox receiver does by default. The test sets what the sky looks
like (``fix`` / ``no_fix``) and may push raw bytes (``send_raw``: garbage, bad checksums).
"""

from __future__ import annotations

import os
import threading
import tty
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta


def checksum(body: str) -> str:
    value = 0
    for ch in body.encode("ascii"):
        value ^= ch
    return f"{value:02X}"


def sentence(body: str) -> bytes:
    return f"${body}*{checksum(body)}\r\n".encode("ascii")


def _lat(value: float) -> tuple[str, str]:
    deg = int(abs(value))
    return f"{deg:02d}{(abs(value) - deg) * 60:07.4f}", "N" if value >= 0 else "S"


def _lon(value: float) -> tuple[str, str]:
    deg = int(abs(value))
    return f"{deg:03d}{(abs(value) - deg) * 60:07.4f}", "E" if value >= 0 else "W"


@dataclass
class Sky:
    lat: float = 0.0
    lon: float = 0.0
    fix: bool = False
    quality: int = 1
    satellites: int = 9
    hdop: float = 0.9
    #: The receiver's own UTC time for the next epoch.
    utc: datetime = datetime(2026, 11, 28, 12, 0, 0, tzinfo=UTC)


def epoch(sky: Sky) -> bytes:
    t = sky.utc
    hhmmss = t.strftime("%H%M%S") + f".{t.microsecond // 10000:02d}"
    ddmmyy = t.strftime("%d%m%y")
    if sky.fix:
        lat, ns = _lat(sky.lat)
        lon, ew = _lon(sky.lon)
        gga = (f"GPGGA,{hhmmss},{lat},{ns},{lon},{ew},{sky.quality},{sky.satellites:02d},"
               f"{sky.hdop:.1f},1620.0,M,-20.1,M,,")
        gsa = f"GPGSA,A,3,01,03,08,11,14,17,19,22,28,,,,1.6,{sky.hdop:.1f},1.3"
        rmc = f"GPRMC,{hhmmss},A,{lat},{ns},{lon},{ew},0.02,31.7,{ddmmyy},,,A"
    else:
        gga = f"GPGGA,{hhmmss},,,,,0,00,99.9,,,,,,"
        gsa = "GPGSA,A,1,,,,,,,,,,,,,99.9,99.9,99.9"
        rmc = f"GPRMC,{hhmmss},V,,,,,,,{ddmmyy},,,N"
    gsv = "GPGSV,1,1,04,01,40,083,46,03,63,279,44,08,12,321,38,11,25,045,41"
    return b"".join(sentence(s) for s in (gga, gsa, gsv, rmc))


class NmeaEmulator:
    """The receiver's end of a pty; ``path`` is what the driver opens."""

    def __init__(self, interval_s: float = 0.05) -> None:
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)
        # Nobody may be reading (the driver not started, or reconnecting): a real receiver's
        # output is then lost, never held up, so a full pty buffer drops instead of blocking.
        os.set_blocking(self._master, False)
        self.path = os.ttyname(self._slave)
        self.interval_s = interval_s
        # The receiver's time starts at the present (the satellites' time), so the agent's
        # clock check finds the test machine's clock right.
        self.sky = Sky(utc=datetime.now(UTC).replace(microsecond=0))
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="nmea-emulator", daemon=True)

    def __enter__(self) -> NmeaEmulator:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        os.close(self._master)
        os.close(self._slave)

    def fix(self, lat: float, lon: float, **fields: object) -> None:
        with self._lock:
            self.sky.lat, self.sky.lon, self.sky.fix = lat, lon, True
            for key, value in fields.items():
                setattr(self.sky, key, value)

    def no_fix(self) -> None:
        with self._lock:
            self.sky.fix = False

    def send_raw(self, data: bytes) -> None:
        with self._lock:
            self._write(data)

    def _write(self, data: bytes) -> None:
        try:
            os.write(self._master, data)
        except BlockingIOError:
            pass

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            with self._lock:
                data = epoch(self.sky)
                self.sky.utc += timedelta(seconds=self.interval_s)
                try:
                    self._write(data)
                except OSError:
                    return
