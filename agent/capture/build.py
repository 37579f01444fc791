"""Drivers built from the config, with the agent-wide settings each needs."""

from __future__ import annotations

from typing import Any

from agent.config import AgentConfig
from drivers import Driver, Modality, driver_class


def build_driver(name: str, dev_cfg: Any, config: AgentConfig) -> Driver:
    """A driver for a [devices.NAME] table, given the agent-wide settings it needs.

    Cameras judge faces while the person is in front of them, so they get [quality.face].
    """
    driver = driver_class(dev_cfg.driver)(name, dev_cfg)
    if driver.modality is Modality.FACE and hasattr(driver, "quality_config"):
        driver.quality_config = config.quality.face
    return driver
