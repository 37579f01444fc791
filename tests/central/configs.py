"""A receiver config file for the central tests that run the command line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.support.config import agent_config, keys_for, receiver_config, to_toml
from tests.support.hostile import KIOSK_A


def config_file(tmp_path: Path, store: str) -> Path:
    """A receiver config at ``tmp_path`` whose ``receiver.store`` is ``store``."""
    keys_for(tmp_path, KIOSK_A)
    config = receiver_config(tmp_path / "out", agent_config(tmp_path, 1883))
    raw: dict[str, Any] = config.model_dump(mode="json", exclude_none=True)
    raw["receiver"]["store"] = store
    path = tmp_path / "receiver.toml"
    path.write_text(to_toml(raw))
    return path
