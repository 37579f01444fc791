"""Synthetic fingerprints for the simulated scanner.

No public fingerprint image ships in a package, so the simulator grows its own: an
orientation field from a zero-pole model (cores and deltas give arches, loops and whorls),
then Gaussian noise shaped by repeated Gabor filtering along that field at a ridge period of
about 9 px (500 ppi), squashed with tanh into ridges and valleys inside an elliptical
fingertip. The result has ridge endings and bifurcations like a real print.

Cost on the development machine: about 0.1-0.2 s per master print (16 orientations x 8
passes on 320 x 400), so the simulator keeps a small pool of masters and derives each capture
from one with ``vary`` (a few milliseconds).
"""

from __future__ import annotations

import math

import cv2
import numpy as np

ORIENTATIONS = 16
PASSES = 8
RIDGE_PERIOD_PX = 9.0


def orientation_field(seed: int, width: int, height: int) -> np.ndarray:
    """Ridge orientation (radians, modulo pi) at every pixel from a zero-pole model."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    z = xx + 1j * yy
    cx, cy = width / 2, height / 2
    kind = rng.integers(0, 3)  # 0 arch-like, 1 loop, 2 whorl
    cores, deltas = [], []
    if kind >= 1:
        cores.append(complex(cx + rng.uniform(-0.1, 0.1) * width, cy - rng.uniform(0.0, 0.15) * height))
        deltas.append(complex(cx + rng.choice([-1, 1]) * rng.uniform(0.2, 0.3) * width,
                              cy + rng.uniform(0.25, 0.35) * height))
    if kind == 2:
        cores.append(cores[0] + complex(rng.uniform(-0.05, 0.05) * width, rng.uniform(0.08, 0.14) * height))
        deltas.append(complex(2 * cx - deltas[0].real, deltas[0].imag))
    theta = np.zeros((height, width))
    for core in cores:
        theta += np.angle(z - core)
    for delta in deltas:
        theta -= np.angle(z - delta)
    theta = theta / 2
    if kind == 0:  # gentle arch: ridges across the finger, bending over the middle
        theta = 0.35 * np.sin((xx - cx) / width * math.pi) * np.exp(-((yy - cy * 0.8) / height) ** 2 * 4)
    return np.mod(theta + rng.uniform(-0.15, 0.15), math.pi)


def _gabor_bank(period: float) -> list[np.ndarray]:
    sigma = period * 0.5
    size = int(period * 1.6) | 1
    bank = []
    for k in range(ORIENTATIONS):
        # The kernel's wave runs across the ridge, i.e. perpendicular to the ridge direction.
        angle = k * math.pi / ORIENTATIONS + math.pi / 2
        kernel = cv2.getGaborKernel((size, size), sigma, angle, period, 1.0, 0, ktype=cv2.CV_32F)
        kernel -= kernel.mean()
        bank.append(kernel / np.abs(kernel).sum())
    return bank


def synthesize(seed: int, width: int = 320, height: int = 400) -> np.ndarray:
    """A master fingerprint: uint8 greyscale, dark ridges on a light background."""
    rng = np.random.default_rng(seed + 1_000_003)
    theta = orientation_field(seed, width, height)
    bins = np.round(theta / math.pi * ORIENTATIONS).astype(np.int64) % ORIENTATIONS
    period = RIDGE_PERIOD_PX * rng.uniform(0.92, 1.08)
    bank = _gabor_bank(period)
    image = rng.standard_normal((height, width)).astype(np.float32)
    masks = [bins == k for k in range(ORIENTATIONS)]
    for _ in range(PASSES):
        out = np.empty_like(image)
        for k, kernel in enumerate(bank):
            response = cv2.filter2D(image, -1, kernel, borderType=cv2.BORDER_REFLECT)
            out[masks[k]] = response[masks[k]]
        image = np.tanh(out / (out.std() + 1e-6) * 1.5)
    return _render(image, rng, width, height)


def _render(field: np.ndarray, rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    mask = np.zeros((height, width), np.float32)
    axes = (int(width * rng.uniform(0.36, 0.44)), int(height * rng.uniform(0.40, 0.46)))
    cv2.ellipse(mask, (width // 2, int(height * 0.52)), axes, 0, 0, 360, 1.0, -1)
    mask = cv2.GaussianBlur(mask, (0, 0), 6)
    ridges = (field + 1) / 2  # 0 valley .. 1 ridge
    background = 225.0
    ink = background - ridges * 185.0
    image = background * (1 - mask) + ink * mask
    return np.clip(image, 0, 255).astype(np.uint8)


def vary(master: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A new capture of the same finger: placement, pressure and sensor noise differ."""
    height, width = master.shape
    angle = rng.uniform(-6, 6)
    shift = rng.uniform(-0.04, 0.04, size=2) * (width, height)
    matrix = cv2.getRotationMatrix2D((width / 2, height / 2), angle, 1.0)
    matrix[:, 2] += shift
    moved = cv2.warpAffine(master, matrix, (width, height), flags=cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_CONSTANT, borderValue=225)
    pressure = rng.uniform(0.85, 1.1)  # harder press: darker, wider ridges
    image = 225 - (225 - moved.astype(np.float32)) * pressure
    image += rng.normal(0, 4, size=image.shape).astype(np.float32)
    return np.clip(image, 0, 255).astype(np.uint8)
