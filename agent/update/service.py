"""The agent's unit as the updater sees it: restart it, and judge its health from what the
service manager holds.

The unit is Type=notify, so systemd reports it ``active`` only after the agent's READY=1, and
its StatusText is the agent's own status line (agent/daemon.py ``status_line``):
``connected; 3 queued; finger online, face online``. That is the health gate's evidence: no
extra channel from the agent to the updater is needed.
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass

UNIT = "kiosk-agent.service"


@dataclass(frozen=True)
class Health:
    active: str
    status: str

    @property
    def connected(self) -> bool:
        return self.status.startswith("connected;")

    def devices(self) -> dict[str, str]:
        parts = self.status.split("; ", 2)
        if len(parts) < 3 or parts[2] == "no devices":
            return {}
        found = {}
        for item in parts[2].split(", "):
            name, _, state = item.rpartition(" ")
            if name:
                found[name] = state
        return found

    def healthy_devices(self) -> set[str]:
        return {name for name, state in self.devices().items() if state == "online"}


class Service:
    def __init__(self, systemctl: str = "systemctl", unit: str = UNIT) -> None:
        self.systemctl, self.unit = systemctl, unit

    def _run(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run([self.systemctl, *args, self.unit], capture_output=True, text=True,
                              timeout=timeout)

    def health(self) -> Health:
        try:
            done = self._run("show", "-p", "ActiveState", "-p", "StatusText", timeout=15)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return Health("unknown", f"systemctl show failed: {exc}")
        fields = dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)
        return Health(fields.get("ActiveState", "unknown"), fields.get("StatusText", ""))

    def restart(self, timeout: float) -> str | None:
        """Restart; None when systemctl accepted it, else why not."""
        try:
            done = self._run("restart", timeout=timeout)
        except subprocess.TimeoutExpired:
            return f"systemctl restart took more than {timeout:.0f} s"
        except OSError as exc:
            return f"cannot run systemctl: {exc}"
        return None if done.returncode == 0 else (done.stderr.strip() or f"exit {done.returncode}")[:300]

    def wait_healthy(self, needed_devices: set[str], timeout: float) -> str | None:
        """None once the unit is active, connected and has ``needed_devices`` online; else the
        reason it did not within ``timeout``."""
        deadline = time.monotonic() + timeout
        health = self.health()
        while time.monotonic() < deadline:
            health = self.health()
            missing = needed_devices - health.healthy_devices()
            if health.active == "active" and health.connected and not missing:
                return None
            if health.active == "failed":
                break
            time.sleep(0.5)
        missing = sorted(needed_devices - health.healthy_devices())
        if health.active != "active":
            return f"the agent did not become ready (unit {health.active}: {health.status or 'no status'})"
        if not health.connected:
            return f"no broker connection within {timeout:.0f} s ({health.status})"
        return f"devices healthy before the update are not back: {', '.join(missing)}"
