"""Test configs: kiosk and receiver configs on a test broker, their keys, a small TOML writer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agent.config import AgentConfig, validate_config
from agent.security.keys import RECEIPT_KEY_NAME, KeySet, provision
from receiver.config import ReceiverConfig, ReceiverServiceConfig


def keys_for(tmp_path: Path, kiosk_id: str) -> KeySet:
    """Kiosk and central keys under tmp_path/keys, the kiosk enrolled (made once per test)."""
    directory = tmp_path / "keys"
    keys = KeySet(directory / "kiosk.key", directory / "central.key", directory / "kiosks")
    return keys if keys.kiosk_key.exists() else provision(directory, kiosk_id)


def security_section(tmp_path: Path, kiosk_id: str) -> dict[str, Any]:
    keys = keys_for(tmp_path, kiosk_id)
    return {"kiosk_key": str(keys.kiosk_key), "central_public_key": str(keys.central_public),
            "receipt_keys": [str(keys.receipt_public)]}


def agent_config(tmp_path: Path, port: int, **overrides: Any) -> AgentConfig:
    """A kiosk config on the given broker port with one simulated finger scanner."""
    raw: dict[str, Any] = {
        "security": security_section(tmp_path, "kiosk-t1"),
        "kiosk": {"id": "kiosk-t1", "site": "test-site"},
        "mqtt": {"host": "127.0.0.1", "port": port, "reconnect_min_s": 0.1, "reconnect_max_s": 1.0,
                 "receipt_timeout_s": 5.0, "allow_plaintext": True},
        "queue": {"path": str(tmp_path / "queue.db"), "min_free_bytes": 0},
        "capture": {"mode": "continuous", "rate_per_s": 0, "max_captures": 10},
        "devices": {"finger": {"driver": "sim-finger", "seed": 3}},
    }
    for section, values in overrides.items():
        if isinstance(values, dict) and isinstance(raw.get(section), dict):
            raw[section] = {**raw[section], **values}
        else:
            raw[section] = values
    return validate_config(raw, "test")


def receiver_config(out_dir: Path, config: AgentConfig, name: str = "r1") -> ReceiverServiceConfig:
    """The central side for a config made by agent_config (same keys folder)."""
    directory = config.security.kiosk_key.parent
    return ReceiverServiceConfig(
        mqtt=config.mqtt.model_copy(update={"client_id": None}),
        receiver=ReceiverConfig(output_dir=out_dir, name=name, central_private_key=directory / "central.key",
                                receipt_signing_key=directory / RECEIPT_KEY_NAME,
                                kiosk_keys_dir=directory / "kiosks"),
    )


def to_toml(raw: dict[str, Any], prefix: str = "") -> str:
    """Enough of a TOML writer for test configs (tables of scalars and lists)."""
    lines, tables = [], []
    for key, value in raw.items():
        if isinstance(value, dict):
            tables.append((f"{prefix}{key}", value))
        else:
            lines.append(f"{key} = {_toml_value(value)}")
    out = "\n".join(lines) + "\n"
    for name, table in tables:
        out += f"\n[{name}]\n" + to_toml(table, f"{name}.")
    return out


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'
