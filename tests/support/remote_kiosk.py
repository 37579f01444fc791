"""A kiosk with remote management on, for the remote command tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import tomli_w

from agent.config import load_config
from agent.daemon import Agent
from agent.security.keys import public_path
from tests.support.config import security_section
from tests.support.remote_client import make_operator_key
from tests.support.waiting import wait_until

KIOSK = "kiosk-r1"


def kiosk_raw(tmp_path: Path, port: int, protocol: str = "5", **extra: Any) -> dict[str, Any]:
    keys = tmp_path / "operators"
    keys.mkdir(exist_ok=True)
    ops = {name: {"public_key": str(public_path(make_operator_key(keys, name))), "roles": [role]}
           for name, role in (("ada", "admin"), ("otto", "operator"), ("vera", "viewer"))}
    raw: dict[str, Any] = {
        "kiosk": {"id": KIOSK, "site": "hall-2"},
        "mqtt": {"host": "127.0.0.1", "port": port, "protocol": protocol, "reconnect_min_s": 0.1,
                 "reconnect_max_s": 0.5, "connect_timeout_s": 2.0, "allow_plaintext": True},
        "queue": {"path": str(tmp_path / "queue.db"), "min_free_bytes": 0},
        "capture": {"mode": "on-demand"},
        "security": security_section(tmp_path, KIOSK),
        "remote": {"operators": ops, "rollback_timeout_s": 3.0, "command_timeout_s": 20.0},
        "telemetry": {"interval_s": 0.5},
        "devices": {"finger": {"driver": "sim-finger", "seed": 4}},
    }
    for section, values in extra.items():
        raw[section] = {**raw.get(section, {}), **values}
    return raw


def start_kiosk(tmp_path: Path, raw: dict[str, Any]) -> Agent:
    path = tmp_path / "agent.toml"
    path.write_text(tomli_w.dumps(raw))
    agent = Agent(load_config(path, environ={}), path)
    agent.start()
    wait_until(lambda: agent.link is not None and agent.link.connected, 10, what="agent connected")
    return agent
