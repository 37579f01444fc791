"""The cellular modem's state for telemetry, from ModemManager's ``mmcli --output-json``.

Optional: without ``mmcli`` (no ModemManager, a wired kiosk) nothing is run and telemetry's
``modem`` is null. Asked at most every ``interval_s`` (mmcli answers in milliseconds, but it
runs on the MQTT thread with telemetry, so each call has a short timeout and the answer is
cached). Only what support needs to tell "no signal" from "no money on the SIM": signal
quality, access technology, registration state, operator; never the IMEI or numbers.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Callable
from typing import Any

from agent.clock.watch import Runner, run_command


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value not in ("", "--") else None


def parse_modem(list_json: str | None, modem_json: str | None) -> dict[str, Any]:
    """What telemetry shows from ``mmcli -L`` and ``mmcli -m <path>`` (JSON each)."""
    try:
        modems = json.loads(list_json or "{}").get("modem-list", [])
    except (json.JSONDecodeError, AttributeError):
        return {"present": False, "error": "mmcli -L answered something that is not its JSON"}
    if not modems:
        return {"present": False, "error": None}
    try:
        modem = json.loads(modem_json or "{}").get("modem", {})
    except (json.JSONDecodeError, AttributeError):
        modem = None
    if not isinstance(modem, dict) or not modem:
        return {"present": True, "error": "mmcli did not describe the modem"}
    generic = modem.get("generic") if isinstance(modem.get("generic"), dict) else {}
    gpp = modem.get("3gpp") if isinstance(modem.get("3gpp"), dict) else {}
    signal = generic.get("signal-quality") if isinstance(generic.get("signal-quality"), dict) else {}
    try:
        quality: int | None = int(signal.get("value"))
    except (TypeError, ValueError):
        quality = None
    tech = generic.get("access-technologies")
    return {
        "present": True,
        "state": _text(generic.get("state")),
        "signal_quality_pct": quality,
        "signal_recent": signal.get("recent") == "yes",
        "access_technologies": [t for t in tech if isinstance(t, str)] if isinstance(tech, list) else [],
        "registration_state": _text(gpp.get("registration-state")),
        "operator": _text(gpp.get("operator-name")),
        "model": " ".join(filter(None, (_text(generic.get("manufacturer")),
                                        _text(generic.get("model"))))) or None,
        "error": None,
    }


class ModemWatch:
    def __init__(self, *, run: Runner = run_command, interval_s: float = 60.0, timeout_s: float = 2.0,
                 available: Callable[[], bool] = lambda: shutil.which("mmcli") is not None,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.run, self.interval_s, self.timeout_s = run, interval_s, timeout_s
        self.available, self.monotonic = available, monotonic
        self._lock = threading.Lock()
        self._state: dict[str, Any] | None = None
        self._at: float | None = None

    def state(self) -> dict[str, Any] | None:
        """The modem's state, or None when ModemManager is not installed."""
        with self._lock:
            if self._at is not None and self.monotonic() - self._at < self.interval_s:
                return self._state
            self._at = self.monotonic()
            if not self.available():
                self._state = None
                return None
            listing = self.run(["mmcli", "-L", "--output-json"], self.timeout_s)
            if listing is None:
                self._state = {"present": False, "error": "mmcli failed (is ModemManager running?)"}
                return self._state
            detail = None
            try:
                first = json.loads(listing).get("modem-list", [])[:1]
            except (json.JSONDecodeError, AttributeError):
                first = []
            if first and isinstance(first[0], str):
                detail = self.run(["mmcli", "-m", first[0], "--output-json"], self.timeout_s)
            self._state = parse_modem(listing, detail)
            return self._state
