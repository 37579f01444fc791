"""GNSS receivers: NMEA 0183 over a serial line, and gpsd's JSON protocol on localhost.

Both keep the latest **fix** (position, quality, satellites, HDOP, the fix's own UTC time and
when it was read), and drop it the moment the receiver says it has none: a position is never
kept past the receiver's own "no fix". How old a fix may be before it stops counting is the
caller's to decide (agent/position/service.py, ``position.max_age_s``).

NMEA sentences are parsed by pynmea2 (checksums verified: a sentence with a bad or missing
checksum is counted and dropped, as is anything that is not a sentence). A fix needs an
RMC with status ``A`` (it carries the date) and a GGA with a fix quality above 0; GSA gives
the fix type (2D/3D) and GSV the satellites in view. Lines are read at most 256 bytes long
(a sentence is at most 82): a line without an end from a broken receiver cannot grow memory.

gpsd (``gpsd -n /dev/ttyACM0``) speaks JSON over TCP: the client sends ``?WATCH`` and reads
TPV reports (mode, lat, lon, time, eph) and SKY reports (satellites), each line at most 64 KiB.
"""

from __future__ import annotations

import json
import logging
import math
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import pynmea2

log = logging.getLogger(__name__)

#: No consumer-grade receiver reports its accuracy in GGA/RMC; HDOP times this typical user
#: range error (metres) is the usual estimate, and is labelled as such in the manifest.
UERE_M = 5.0
MAX_NMEA_LINE = 256
MAX_GPSD_LINE = 64 * 1024


@dataclass(frozen=True)
class Fix:
    lat: float
    lon: float
    #: GGA fix quality (1 GPS, 2 DGPS, 4 RTK, ...) or gpsd's mode (2: 2D, 3: 3D).
    quality: int
    satellites: int | None
    hdop: float | None
    #: Estimated horizontal accuracy, metres (gpsd's eph, or HDOP x UERE_M).
    accuracy_m: float | None
    #: The fix's own time, UTC seconds (from the receiver, not the kiosk's clock).
    fix_time: float
    #: time.monotonic() when it was read.
    received: float
    source: str


@dataclass
class GnssStatus:
    """What a receiver reports, for telemetry and ``kiosk-agent devices``."""

    source: str
    connected: bool = False
    fix: Fix | None = None
    fix_type: str = "none"        # none | 2d | 3d
    satellites_in_view: int | None = None
    sentences: int = 0
    bad_sentences: int = 0
    error: str = ""

    def as_dict(self, now: float | None = None) -> dict[str, Any]:
        now = time.monotonic() if now is None else now
        fix = self.fix
        return {"source": self.source, "connected": self.connected, "fix_type": self.fix_type,
                "satellites_in_view": self.satellites_in_view, "sentences": self.sentences,
                "bad_sentences": self.bad_sentences, "error": self.error or None,
                "fix": None if fix is None else {
                    "lat": round(fix.lat, 7), "lon": round(fix.lon, 7), "quality": fix.quality,
                    "satellites": fix.satellites, "hdop": fix.hdop, "accuracy_m": fix.accuracy_m,
                    "fix_time": _iso(fix.fix_time), "age_s": round(now - fix.received, 1)}}


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class NmeaState:
    """The fix an NMEA stream describes, sentence by sentence (no I/O: fed lines).

    A fix is made from the GGA and the RMC of one epoch (the same time of day, in either
    order): GGA has the quality, satellites and HDOP, RMC the date. Pairing by time, rather
    than taking the last date seen, keeps a fix at midnight from getting yesterday's date."""

    def __init__(self, source: str = "nmea", monotonic: Callable[[], float] = time.monotonic) -> None:
        self.status = GnssStatus(source)
        self.monotonic = monotonic
        self._gga: Any = None
        self._rmc: Any = None

    def feed(self, line: str) -> None:
        try:
            msg = pynmea2.parse(line.strip(), check=True)
        except (pynmea2.ParseError, pynmea2.ChecksumError, pynmea2.SentenceTypeError, ValueError,
                AttributeError, TypeError):
            self.status.bad_sentences += 1
            return
        self.status.sentences += 1
        kind = type(msg).__name__
        try:
            if kind == "GGA":
                self._gga = msg
                if int(msg.gps_qual or 0) == 0:
                    self._lost()
                else:
                    self._pair()
            elif kind == "RMC":
                self._rmc = msg
                if msg.status != "A":
                    self._lost()
                else:
                    self._pair()
            elif kind == "GSA":
                self.status.fix_type = {"2": "2d", "3": "3d"}.get(str(msg.mode_fix_type), "none")
                if self.status.fix_type == "none":
                    self._lost()
            elif kind == "GSV":
                self.status.satellites_in_view = int(msg.num_sv_in_view) if msg.num_sv_in_view else None
        except (ValueError, TypeError, AttributeError):
            # Well-formed sentence, nonsense fields (a receiver's garbage with a valid checksum).
            self.status.bad_sentences += 1

    def _pair(self) -> None:
        gga, rmc = self._gga, self._rmc
        if gga is None or rmc is None or rmc.status != "A" or not gga.timestamp \
                or gga.timestamp != rmc.timestamp or not rmc.datestamp:
            return  # the other half of this epoch has not come yet
        if not gga.lat or not gga.lon:
            self._lost()
            return
        lat, lon = float(gga.latitude), float(gga.longitude)
        if not (-90 <= lat <= 90 and -180 <= lon <= 180) or math.isnan(lat) or math.isnan(lon):
            self.status.bad_sentences += 1
            return
        when = datetime.combine(rmc.datestamp, gga.timestamp).replace(tzinfo=UTC).timestamp()
        hdop = float(gga.horizontal_dil) if gga.horizontal_dil else None
        sats = int(gga.num_sats) if gga.num_sats else None
        self.status.fix = Fix(lat, lon, int(gga.gps_qual), sats, hdop,
                              round(hdop * UERE_M, 1) if hdop is not None else None,
                              when, self.monotonic(), self.status.source)

    def _lost(self) -> None:
        self.status.fix = None


class _Reader:
    """A background thread that keeps a GnssStatus up to date, reconnecting on errors."""

    def __init__(self, name: str) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._session()
            except Exception as exc:  # noqa: BLE001 - a receiver that fails is retried, never fatal
                self.status.connected = False
                self.status.fix = None
                self.status.error = f"{type(exc).__name__}: {exc}"[:300]
                self._stop.wait(2.0)

    def _session(self) -> None:
        raise NotImplementedError

    status: GnssStatus


class NmeaReceiver(_Reader):
    """NMEA 0183 from a serial port (or any pyserial URL), 4800 or 9600 baud usually."""

    def __init__(self, port: str, baud: int = 9600, monotonic: Callable[[], float] = time.monotonic) -> None:
        super().__init__("gnss-nmea")
        self.port, self.baud = port, baud
        self.state = NmeaState("nmea", monotonic)
        self.status = self.state.status

    def _session(self) -> None:
        import serial

        with serial.serial_for_url(self.port, baudrate=self.baud, timeout=0.5) as line:
            self.status.connected, self.status.error = True, ""
            buffer, skipping = b"", False
            while not self._stop.is_set():
                chunk = line.read(256)
                if not chunk:
                    continue
                buffer += chunk
                while b"\n" in buffer:
                    raw, buffer = buffer.split(b"\n", 1)
                    if skipping:  # the end of an over-long line, already counted
                        skipping = False
                    elif len(raw) <= MAX_NMEA_LINE:
                        self.state.feed(raw.decode("ascii", "replace"))
                    else:
                        self.status.bad_sentences += 1
                if len(buffer) > MAX_NMEA_LINE:  # no end of line in sight: garbage, counted once
                    if not skipping:
                        self.status.bad_sentences += 1
                    buffer, skipping = b"", True


class GpsdClient(_Reader):
    """gpsd's JSON protocol (https://gpsd.io/gpsd_json.html), on localhost by default."""

    def __init__(self, host: str = "127.0.0.1", port: int = 2947,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        super().__init__("gnss-gpsd")
        self.host, self.port = host, port
        self.monotonic = monotonic
        self.status = GnssStatus("gpsd")

    def _session(self) -> None:
        with socket.create_connection((self.host, self.port), timeout=5) as sock:
            sock.settimeout(0.5)
            sock.sendall(b'?WATCH={"enable":true,"json":true};\n')
            self.status.connected, self.status.error = True, ""
            buffer = b""
            while not self._stop.is_set():
                try:
                    chunk = sock.recv(4096)
                except TimeoutError:
                    continue
                if not chunk:
                    raise ConnectionError("gpsd closed the connection")
                buffer += chunk
                while b"\n" in buffer:
                    raw, buffer = buffer.split(b"\n", 1)
                    self.feed(raw)
                if len(buffer) > MAX_GPSD_LINE:
                    buffer = b""
                    self.status.bad_sentences += 1

    def feed(self, raw: bytes) -> None:
        try:
            report = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError):
            self.status.bad_sentences += 1
            return
        if not isinstance(report, dict):
            self.status.bad_sentences += 1
            return
        self.status.sentences += 1
        kind = report.get("class")
        if kind == "SKY":
            sats = report.get("satellites")
            if isinstance(sats, list):
                self.status.satellites_in_view = len(sats)
                used = sum(1 for s in sats if isinstance(s, dict) and s.get("used"))
                if self.status.fix is not None:
                    self.status.fix = replace(self.status.fix, satellites=used)
            hdop = report.get("hdop")
            if isinstance(hdop, (int, float)) and self.status.fix is not None:
                self.status.fix = replace(self.status.fix, hdop=float(hdop))
        elif kind == "TPV":
            self._on_tpv(report)

    def _on_tpv(self, report: dict[str, Any]) -> None:
        mode = report.get("mode")
        self.status.fix_type = {2: "2d", 3: "3d"}.get(mode, "none") if isinstance(mode, int) else "none"
        lat, lon, when = report.get("lat"), report.get("lon"), report.get("time")
        if self.status.fix_type == "none" or not all(isinstance(v, (int, float)) for v in (lat, lon)) \
                or not isinstance(when, str):
            self.status.fix = None
            return
        try:
            fix_time = datetime.fromisoformat(when.replace("Z", "+00:00")).timestamp()
        except ValueError:
            self.status.bad_sentences += 1
            self.status.fix = None
            return
        if not (-90 <= lat <= 90 and -180 <= lon <= 180):
            self.status.bad_sentences += 1
            self.status.fix = None
            return
        eph = report.get("eph")
        if not isinstance(eph, (int, float)):
            epx, epy = report.get("epx"), report.get("epy")
            both = isinstance(epx, (int, float)) and isinstance(epy, (int, float))
            eph = math.hypot(epx, epy) if both else None
        old = self.status.fix
        self.status.fix = Fix(float(lat), float(lon), mode, old.satellites if old else None,
                              old.hdop if old else None, round(eph, 1) if eph is not None else None,
                              fix_time, self.monotonic(), "gpsd")
