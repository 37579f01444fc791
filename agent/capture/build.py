"""Drivers built from the config, with the agent-wide settings each needs."""

from __future__ import annotations

from typing import Any

from agent.quality.config import FaceQualityConfig
from agent.quality.judge import face_judge_maker
from drivers import Driver, driver_class


def build_driver(name: str, dev_cfg: Any, face: FaceQualityConfig) -> Driver:
    """A driver for a [devices.NAME] table, given the agent-wide settings it needs.

    Cameras that judge faces while the person is in front of them get the agent's face checks
    with the [quality.face] thresholds; the judge is built when the camera opens.
    """
    driver = driver_class(dev_cfg.driver)(name, dev_cfg)
    if hasattr(driver, "make_judge"):
        driver.make_judge = face_judge_maker(face)
    return driver
