"""Simulated fingerprint scanner: synthetic 500 ppi prints with scriptable faults.

Each finger (device seed + finger position) has one master print, synthesised when first
asked for (about 0.3 s) and kept in memory; every capture is a cheap variation of it, so
two captures of one finger match each other and not another finger, as a matcher expects.
"""

from __future__ import annotations

import zlib
from collections import OrderedDict
from typing import Literal, get_args

import numpy as np
from pydantic import Field

from drivers.base import CapturedImage, CaptureRequest, Modality
from drivers.errors import CaptureRetry
from drivers.fingerprint_synth import synthesize, vary
from drivers.sim_common import SimConfig, SimDevice, encode

FingerFault = Literal["ok", "no-finger", "too-messy", "timeout", "disconnect"]


class SimFingerConfig(SimConfig):
    driver: Literal["sim-finger"] = "sim-finger"
    #: Image width in pixels (320 px is 16 mm at 500 ppi, a typical single-finger platen).
    width: int = Field(320, ge=128, le=1600)
    #: Image height in pixels.
    height: int = Field(400, ge=128, le=1600)
    #: Resolution reported with the image; the ridge period scales with it (~9 px at 500).
    ppi: int = Field(500, ge=250, le=1000)
    #: How many master prints (one per finger position) to keep in memory; the least recently
    #: used one is dropped beyond that and synthesised again, identically, when next needed.
    pool_size: int = Field(10, ge=1, le=64)
    #: Scripted faults, one per capture attempt, then "ok" for ever.
    faults: list[FingerFault] = Field(default_factory=list)


class SimFingerDriver(SimDevice):
    name = "sim-finger"
    modality = Modality.FINGER
    model = "SimFinger 500"
    config_model = SimFingerConfig
    fault_names = frozenset(get_args(FingerFault))
    config: SimFingerConfig

    def __init__(self, device_id: str, config: SimFingerConfig) -> None:
        super().__init__(device_id, config, config.faults)
        self._masters: OrderedDict[int, np.ndarray] = OrderedDict()
        self._rng = np.random.default_rng(config.seed)

    def capture(self, request: CaptureRequest) -> CapturedImage:
        fault = self._begin_capture()
        if fault == "no-finger":
            raise CaptureRetry("no finger", "place your finger flat on the glass")
        if fault == "too-messy":
            raise CaptureRetry("image too smudged",
                               "wipe the finger and the glass, then press gently without rolling")
        image = vary(self.master(request.position), self._rng)
        return CapturedImage(
            modality=Modality.FINGER, position=request.position, image_format="png",
            image=encode(image, ".png"), width=image.shape[1], height=image.shape[0],
            ppi=self.config.ppi,
        )

    def master(self, position: int) -> np.ndarray:
        """The master print of the finger at ``position`` (read-only: it is shared)."""
        if position in self._masters:
            self._masters.move_to_end(position)
            return self._masters[position]
        # A hash rather than arithmetic so any (seed, position) pair names a distinct finger.
        finger_seed = zlib.crc32(f"{self.config.seed}:{position}".encode())
        master = synthesize(finger_seed, self.config.width, self.config.height, self.config.ppi)
        master.flags.writeable = False
        self._masters[position] = master
        if len(self._masters) > self.config.pool_size:
            self._masters.popitem(last=False)
        return master
