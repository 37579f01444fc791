"""Periodic telemetry and event publishing, on the MQTT link's thread.

Telemetry goes to <prefix>/<kiosk_id>/telemetry as one JSON object, retained, so a support
engineer (or `kiosk-agent remote --list`) sees the last known state of a kiosk that is
offline now. Events go to <prefix>/<kiosk_id>/events, not retained. Both are small and go
out before any capture in the same loop turn (see agent/transport/handler_chain.py).
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from agent import __version__
from agent.quality.analytics import latest_day, telemetry_aggregates
from agent.runtime import Runtime
from agent.transport.central_hints import CentralHints
from agent.transport.events import EventBus
from agent.transport.mqtt_link import BrokerLimits, MqttLink
from agent.update.outcome import announce
from agent.update.spool import spool_dir

log = logging.getLogger(__name__)

THERMAL_ROOT = Path("/sys/class/thermal")


def cpu_temperature_c(root: Path = THERMAL_ROOT) -> float | None:
    """The CPU's thermal zone in degrees Celsius (Raspberry Pi: cpu-thermal), None when absent."""
    zones = sorted(root.glob("thermal_zone*"))
    preferred = [z for z in zones if _read(z / "type") in ("cpu-thermal", "x86_pkg_temp", "soc_thermal")]
    for zone in preferred + zones:
        raw = _read(zone / "temp")
        if raw and raw.lstrip("-").isdigit():
            return int(raw) / 1000
    return None


def memory() -> dict[str, int | None]:
    info: dict[str, int] = {}
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("MemTotal", "MemAvailable"):
                info[key] = int(rest.split()[0]) * 1024
        rss_pages = int(Path("/proc/self/statm").read_text().split()[1])
        info["rss"] = rss_pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        pass
    return {"total_bytes": info.get("MemTotal"), "available_bytes": info.get("MemAvailable"),
            "agent_rss_bytes": info.get("rss")}


def system_uptime_s() -> float | None:
    try:
        return float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def snapshot(runtime: Runtime, publish_rate_per_s: float | None = None) -> dict[str, Any]:
    """Everything support needs at a glance; cheap (one small SQLite query, a few /proc reads)."""
    cfg = runtime.config
    stats = runtime.queue_stats()
    queue = stats.as_dict() if stats else None
    link = runtime.connection()
    counts = runtime.capture_counts()
    drain_s = None
    uplink = runtime.uplink()
    if queue and uplink is not None:
        # Captures wait for the cap, a window and the day's budget too (agent/transport/uplink.py).
        drain_s = uplink.drain_estimate_s(queue["pending_bytes"], queue["pending"], publish_rate_per_s)
    elif queue and queue["pending"] and publish_rate_per_s:
        drain_s = round(queue["pending"] / publish_rate_per_s, 1)
    try:
        disk = shutil.disk_usage(cfg.queue.path.parent)
        disk_info: dict[str, Any] = {"path": str(cfg.queue.path.parent), "free_bytes": disk.free,
                                     "total_bytes": disk.total}
    except OSError as exc:
        disk_info = {"path": str(cfg.queue.path.parent), "error": exc.strerror}
    return {
        "v": 1,
        "kiosk_id": cfg.kiosk.id,
        "site": cfg.kiosk.site,
        "at": time.time(),
        "version": __version__,
        "python": platform.python_version(),
        "uptime_s": round(time.time() - runtime.started_at, 1) if runtime.started_at else 0,
        "system_uptime_s": system_uptime_s(),
        "queue": queue,
        "backlog_drain_estimate_s": drain_s,
        "uplink": uplink.state() if uplink is not None else None,
        "captures_today": counts.captured_today,
        # Closed registrations by what the central side says (complete / incomplete / failed /
        # cancelled / unknown) and the statuses refused (agent/registration/central_status.py).
        "registrations_central": central.summary() if (central := runtime.central_status()) else None,
        "captures_refused": counts.refused,
        # Whether the clock can be believed (agent/clock/watch.py; cached, no command run here
        # more than once a minute).
        "clock": clock.state().manifest() if (clock := getattr(runtime, "clock", None)) else None,
        # The GNSS receiver's state and the position a registration would record now.
        "position": position.telemetry() if (position := getattr(runtime, "position", None)) else None,
        # ModemManager's view of the cellular link (agent/transport/modem.py), null without it.
        "modem": modem.state() if (modem := getattr(runtime, "modem", None)) else None,
        "publish_rate_per_s": publish_rate_per_s,
        "devices": [w.status().as_dict() for w in runtime.device_workers().values()],
        "disk": disk_info,
        "cpu_temperature_c": cpu_temperature_c(),
        "memory": memory(),
        "connection": {
            "connected": link.connected,
            "broker": f"{cfg.mqtt.host}:{cfg.mqtt.port}",
            "reconnects": link.reconnects,
            "certificate_expires_at": link.cert_expires_at.isoformat() if link.cert_expires_at else None,
        },
    }


class TelemetryPublisher:
    """A link handler: telemetry every ``interval_s`` and events as they come."""

    def __init__(self, runtime: Runtime, events: EventBus, interval_s: float,
                 acknowledged: Callable[[], int], hints: CentralHints | None = None) -> None:
        self.runtime = runtime
        #: The central side's latest hint (agent/transport/central_hints.py), in telemetry.
        self.hints = hints
        self.events = events
        self.interval_s = interval_s
        self._acknowledged = acknowledged
        self._next_at = 0.0
        self._last_count: tuple[float, int] | None = None
        #: The quality aggregates last sent on this connection (agent/quality/analytics.py).
        self._quality_sent: dict[str, Any] | None = None

    def on_connected(self, link: MqttLink, limits: BrokerLimits) -> None:
        self._next_at = 0.0  # a fresh connection reports at once
        self._quality_sent = None

    def on_disconnected(self, link: MqttLink) -> None:
        pass

    def on_message(self, link: MqttLink, message: mqtt.MQTTMessage) -> None:
        pass

    def on_puback(self, link: MqttLink, mid: int) -> None:
        pass

    def on_stopping(self, link: MqttLink) -> None:
        self._publish_events(link)

    def tick(self, link: MqttLink) -> bool:
        busy = self._publish_events(link)
        now = time.monotonic()
        if self.interval_s > 0 and now >= self._next_at:
            self._next_at = now + self.interval_s
            self.publish_now(link)
        return busy

    def publish_now(self, link: MqttLink) -> None:
        payload = snapshot(self.runtime, self._rate())
        # The privileged updater's last outcome, announced once as an event (it cannot emit one).
        payload["update"] = announce(spool_dir(self.runtime.config.state_dir), self.events.emit)
        if self.hints is not None:
            payload["central_hint"] = self.hints.state()  # e.g. "not_enrolled"; None: nothing said
        # Daily quality aggregates: all their days only when they changed since the last
        # telemetry on this connection (a busy kiosk's are a few KB, much for a cellular link
        # every minute), else their latest day, so that the retained message a collector
        # subscribing later is handed still holds the figures.
        quality = telemetry_aggregates(self.runtime)
        if quality is not None:
            payload["quality_stats"] = quality if quality != self._quality_sent else latest_day(quality)
        link.publish(self.runtime.topics.telemetry, json.dumps(payload, default=str).encode(), qos=1,
                     retain=True)
        self._quality_sent = quality

    def _rate(self) -> float | None:
        """Captures acknowledged per second since the previous telemetry."""
        now, count = time.monotonic(), self._acknowledged()
        previous, self._last_count = self._last_count, (now, count)
        if previous is None or now - previous[0] <= 0:
            return None
        return round((count - previous[1]) / (now - previous[0]), 3)

    def _publish_events(self, link: MqttLink) -> bool:
        batch = self.events.take()
        for i, event in enumerate(batch):
            try:
                link.publish(self.runtime.topics.events, json.dumps(event, default=str).encode(), qos=1)
            except OSError as exc:
                log.warning("cannot publish events now: %s; they wait for the next connection", exc)
                self.events.put_back(batch[i:])
                return False
        return bool(batch)
