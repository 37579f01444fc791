"""Helpers for tests that run the agent as a separate process or inspect its files."""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.support.config import security_section, to_toml
from tests.support.paths import ROOT


def stored_ids(out_dir: Path) -> set[str]:
    return {p.stem for p in out_dir.glob("*/*.json")}


def queue_ids(path: Path) -> set[str]:
    db = sqlite3.connect(path)
    try:
        return {row[0] for row in db.execute("SELECT id FROM items")}
    finally:
        db.close()


def queued_while_running(path: Path) -> int:
    """Items in a queue another process is writing; -1 before its schema exists."""
    try:
        return len(queue_ids(path)) if path.exists() else -1
    except sqlite3.OperationalError:  # "no such table": the agent is still creating it
        return -1


def write_config(tmp_path: Path, port: int, *, kiosk_id: str = "kiosk-p1", level: str = "INFO",
                 **capture: Any) -> Path:
    raw = {
        "kiosk": {"id": kiosk_id},
        "mqtt": {"host": "127.0.0.1", "port": port, "keepalive_s": 5, "reconnect_min_s": 0.1,
                 "reconnect_max_s": 1.0, "receipt_timeout_s": 5.0, "allow_plaintext": True},
        "queue": {"path": str(tmp_path / "queue.db"), "min_free_bytes": 0},
        "capture": {"mode": "continuous", "rate_per_s": 0, **capture},
        "logging": {"level": level, "format": "text"},
        "security": security_section(tmp_path, kiosk_id),
        "devices": {"finger": {"driver": "sim-finger", "seed": 5}},
    }
    path = tmp_path / "agent.toml"
    path.write_text(to_toml(raw))
    return path


class NotifySocket:
    """The datagram socket systemd gives a Type=notify service ($NOTIFY_SOCKET), so a test
    knows, as systemd does, when the agent is ready: its stop-signal handlers installed and
    its components started (READY=1)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.messages: list[str] = []

    def wait_for(self, line: str, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while line not in self.messages:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {line} on {self.path} within {timeout_s:.0f} s "
                                     f"(got {self.messages[-5:]})")
            self.sock.settimeout(remaining)
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            self.messages += data.decode(errors="replace").splitlines()

    def close(self) -> None:
        self.sock.close()
        self.path.unlink(missing_ok=True)


def catches(pid: int, signum: int) -> bool:
    """Whether process ``pid`` has a handler installed for ``signum``, as the kernel sees it
    (the SigCgt mask of /proc/PID/status; bit N-1 is signal N)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:  # gone
        return False
    for line in status.splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (signum - 1) & 1)
    return False


def spawn_agent(config_path: Path, log_path: Path,
                notify: NotifySocket | None = None) -> subprocess.Popen[bytes]:
    """``python -m agent run``; with ``notify``, as systemd runs it (wait for READY=1 before
    signalling it: the test then stops a started agent, not one still loading)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("WATCHDOG_USEC", None)
    if notify is not None:
        env["NOTIFY_SOCKET"] = str(notify.path)
    with log_path.open("ab") as log:
        return subprocess.Popen([sys.executable, "-m", "agent", "run", "--config", str(config_path)],
                                stdout=log, stderr=log, env=env)
