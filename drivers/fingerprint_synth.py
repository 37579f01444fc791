"""Synthetic fingerprints for the simulated scanner.

No public fingerprint image ships in a package, so the simulator grows its own prints:

1. A ridge orientation field from a zero-pole model: each core adds half the angle of
   ``z - core``, each delta subtracts half the angle of ``z - delta``. One core and one delta
   make a loop, two of each a whorl; an arch has no singularity and gets a smooth bump.
2. Gaussian noise is filtered again and again with a bank of Gabor filters (16 orientations,
   ridge period about 9 px at 500 ppi); each pixel takes the responses of the two filters
   nearest its local ridge direction, blended, and tanh squashes the result back to -1..1
   after every pass. The noise settles into ridges along the field, with ridge endings and bifurcations
   where the noise happened to put them.
3. A soft elliptical fingertip mask with uneven pressure, dark ridges on a light background.

Measured on the development machine (2 cores, Python 3.11, OpenCV 4.14, numpy 2.4), 320 x 400
px: ``synthesize`` 0.26-0.35 s (median 0.28 s; 8 passes x 16 filters of 27 x 27 px make up
almost all of it) and ``vary`` 2.5 ms (99th percentile 3.8 ms). So the simulator synthesises
one master per finger and derives every capture from it with ``vary``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np

ORIENTATIONS = 16
PASSES = 8
#: Ridge period at 500 ppi; real adult fingers are about 8-11 px.
RIDGE_PERIOD_PX = 9.0
BACKGROUND = 225  # an empty, clean platen
RIDGE_DEPTH = 190  # how much darker than the background a ridge in full contact is

PatternKind = Literal["arch", "loop", "whorl"]
#: Rough population frequencies (loops are most common), so a pool of seeds looks realistic.
_KIND_WEIGHTS: dict[PatternKind, float] = {"loop": 0.55, "whorl": 0.3, "arch": 0.15}


@dataclass(frozen=True)
class Pattern:
    """Where a print's singular points are, in pixel coordinates (x + iy, y pointing down)."""

    kind: PatternKind
    cores: tuple[complex, ...]
    deltas: tuple[complex, ...]
    #: The whole finger turned on the glass, radians.
    tilt: float


def _rng(seed: int, stream: int) -> np.random.Generator:
    # Separate streams so that, say, changing the mask never changes the pattern of a seed.
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    return np.random.default_rng([seed, stream])


def choose_pattern(seed: int, width: int, height: int) -> Pattern:
    """The pattern class and singular points of the finger ``seed``."""
    rng = _rng(seed, 1)
    kinds = list(_KIND_WEIGHTS)
    kind: PatternKind = kinds[rng.choice(len(kinds), p=list(_KIND_WEIGHTS.values()))]
    cx, cy = width / 2, height / 2
    tilt = float(rng.uniform(-0.15, 0.15))
    if kind == "arch":
        return Pattern(kind, (), (), tilt)
    core = complex(cx + rng.uniform(-0.08, 0.08) * width, cy - rng.uniform(0.02, 0.12) * height)
    # The delta sits out to the side and a little below; the loop opens away from it.
    side = rng.choice([-1.0, 1.0])
    delta = core + complex(side * rng.uniform(0.24, 0.32) * width, rng.uniform(0.06, 0.16) * height)
    if kind == "loop":
        return Pattern(kind, (core,), (delta,), tilt)
    # A whorl: a second core just below the first and a delta on each side.
    core2 = core + complex(rng.uniform(-0.04, 0.04) * width, rng.uniform(0.06, 0.12) * height)
    delta2 = complex(2 * core.real - delta.real + rng.uniform(-0.04, 0.04) * width,
                     delta.imag + rng.uniform(-0.04, 0.04) * height)
    return Pattern(kind, (core, core2), (delta, delta2), tilt)


def orientation_field(pattern: Pattern, width: int, height: int) -> np.ndarray:
    """Ridge direction in radians (modulo pi) at every pixel."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    if pattern.kind == "arch":
        # Ridges cross the finger and rise over its middle, most strongly near the top.
        u = (xx - width / 2) / width
        theta = 0.6 * np.sin(2 * math.pi * u) * np.exp(-4 * ((yy - 0.35 * height) / height) ** 2)
    else:
        z = xx + 1j * yy
        theta = np.zeros((height, width))
        for core in pattern.cores:
            theta += np.angle(z - core)
        for delta in pattern.deltas:
            theta -= np.angle(z - delta)
        theta /= 2
    return np.mod(theta + pattern.tilt, math.pi)


def gabor_bank(period: float) -> np.ndarray:
    """``ORIENTATIONS`` zero-mean Gabor kernels; kernel k passes ridges at angle k*pi/N."""
    sigma = 0.45 * period
    aspect = 0.7  # < 1: longer along the ridge, which keeps ridges continuous
    half = int(math.ceil(2.2 * sigma / aspect))
    kernels = []
    for k in range(ORIENTATIONS):
        # OpenCV's theta is the direction the wave travels: across the ridge.
        normal = k * math.pi / ORIENTATIONS + math.pi / 2
        kernel = cv2.getGaborKernel((2 * half + 1, 2 * half + 1), sigma, normal, period, aspect, 0,
                                    ktype=cv2.CV_32F)
        kernel -= kernel.mean()  # a DC response would drift the image to all dark or all light
        kernels.append(kernel / np.abs(kernel).sum())
    return np.stack(kernels)


def _grow_ridges(theta: np.ndarray, period: float, rng: np.random.Generator) -> np.ndarray:
    """Noise filtered along the orientation field until it settles into ridges, -1..1."""
    height, width = theta.shape
    # Blend the two filters nearest each pixel's direction: hard bins leave visible seams.
    position = theta / math.pi * ORIENTATIONS
    lower = np.floor(position).astype(np.intp) % ORIENTATIONS
    upper = (lower + 1) % ORIENTATIONS
    weight = (position - np.floor(position)).astype(np.float32)
    bank = gabor_bank(period)
    field = rng.standard_normal((height, width)).astype(np.float32)
    # One filter's response at a time, each kept only where it is a pixel's lower or upper
    # neighbour: the simulator runs inside the agent, and all sixteen at once were 8 MB of
    # its peak memory (320 x 400 px) for nothing.
    response, lo, hi = (np.empty((height, width), np.float32) for _ in range(3))
    for _ in range(PASSES):
        for k, kernel in enumerate(bank):
            cv2.filter2D(field, cv2.CV_32F, kernel, dst=response, borderType=cv2.BORDER_REFLECT)
            np.copyto(lo, response, where=lower == k)
            np.copyto(hi, response, where=upper == k)
        mixed = lo + weight * (hi - lo)
        field = np.tanh(mixed * (2.0 / (mixed.std() + 1e-6)))
    return field


def _finger_mask(width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """Contact strength 0..1: an ellipse with a soft rim and uneven pressure inside."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    cx = width * (0.5 + rng.uniform(-0.03, 0.03))
    cy = height * (0.52 + rng.uniform(-0.03, 0.03))
    ax, ay = width * rng.uniform(0.36, 0.44), height * rng.uniform(0.40, 0.46)
    radius = np.sqrt(((xx - cx) / ax) ** 2 + ((yy - cy) / ay) ** 2)
    # The rim of a fingertip touches the glass lightly, so the print fades out over ~8% of it.
    mask = np.clip((1.0 - radius) / 0.08, 0.0, 1.0)
    coarse = rng.uniform(0.75, 1.0, size=(4, 3)).astype(np.float32)
    pressure = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    return mask * np.clip(pressure, 0.6, 1.0)


def synthesize(seed: int, width: int = 320, height: int = 400, ppi: int = 500) -> np.ndarray:
    """The master print of finger ``seed`` (>= 0): uint8 greyscale, dark ridges on light.

    The same arguments always give the same image.
    """
    pattern = choose_pattern(seed, width, height)
    theta = orientation_field(pattern, width, height)
    rng = _rng(seed, 2)
    period = RIDGE_PERIOD_PX * ppi / 500 * rng.uniform(0.92, 1.08)
    ridges = (_grow_ridges(theta, period, rng) + 1) / 2  # 0 valley .. 1 ridge
    contact = _finger_mask(width, height, rng)
    image = BACKGROUND - RIDGE_DEPTH * ridges * contact
    return np.clip(image, 0, 255).astype(np.uint8)


def vary(master: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Another capture of the same finger: placement, pressure and sensor noise differ."""
    height, width = master.shape
    matrix = cv2.getRotationMatrix2D((width / 2, height / 2), rng.uniform(-5, 5), 1.0)
    matrix[:, 2] += rng.uniform(-0.04, 0.04, size=2) * (width, height)
    moved = cv2.warpAffine(master, matrix, (width, height), flags=cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_CONSTANT, borderValue=BACKGROUND)
    ink = (BACKGROUND - moved.astype(np.float32)) / RIDGE_DEPTH  # 0 clean glass .. 1 full ridge
    # Pressing harder widens ridges (gamma < 1 lifts mid greys) and darkens them.
    ink = np.power(np.clip(ink, 0, 1), rng.uniform(0.75, 1.3)) * rng.uniform(0.85, 1.05)
    image = BACKGROUND + rng.uniform(-8, 8) - RIDGE_DEPTH * ink
    image += 3.5 * rng.standard_normal(image.shape, dtype=np.float32)
    return np.clip(image, 0, 255).astype(np.uint8)
