"""Does the ridge texture flow like a fingerprint's? The structure gate of the finger score.

The texture features of agent/quality/finger.py (coherence, ridge period, spectral clarity)
are all local: a plain sine grating has perfect ridges everywhere and scores 100. A finger's
ridges are more than locally clean; they *flow*:

- **the orientation field is smooth** (neighbouring 16 px blocks point almost the same way)
  **but not constant** (ridges curve around a core, over an arch, between deltas). A grating
  has one orientation everywhere; noise, gravel and grass point every way at once;
- **the ridge period is a finger's** in millimetres, whatever the scanner's resolution:
  about 0.4-0.6 mm for adults, down to ~0.3 mm for children;
- **singular points are few**: the Poincaré index of the orientation field around a small
  loop is +1/2 at a core, -1/2 at a delta and 0 elsewhere. A finger has at most two cores
  and two deltas (a whorl); a texture that is not a print has many, or a field so noisy that
  the count means nothing.

Everything works on the blurred 500 ppi image and its Sobel gradients that finger.py has
already computed, on 16 x 16 px blocks (twice as fine as NFIQ 2's 32 px, so a core's curl is
resolved): a few small numpy operations, about a millisecond at 400 x 400 px.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

#: Orientation field block: 16 px at 500 ppi is about two ridge periods.
FLOW_BLOCK = 16
#: The area one finger covers at most, px at 500 ppi: the singular-point allowance is per
#: finger, so a 4-finger slap may have four times as many as one fingertip.
FINGER_AREA_PX = 150_000
MM_PER_INCH = 25.4
#: Fewer interior blocks than this (3 x 3) is no area of ridges to follow.
MIN_FLOW_BLOCKS = 9


@dataclass(frozen=True)
class RidgeFlow:
    """The structure of the ridge flow over the foreground's interior."""

    #: 1 - |mean doubled-angle unit vector|: 0 for one orientation everywhere (a grating),
    #: towards 1 for every orientation equally (a whorl, noise).
    orientation_spread: float
    #: Mean angle between neighbouring blocks' ridge directions, degrees (0..90); small when
    #: the flow is continuous.
    orientation_jump_deg: float
    cores: int
    deltas: int
    #: Fingers' worth of foreground: the singular-point allowance is this many times per finger.
    finger_areas: int
    #: Blocks the flow was measured on; 0 when the foreground had no interior.
    blocks: int


def tensor_sums(product: np.ndarray) -> np.ndarray:
    """A gradient product summed over each FLOW_BLOCK x FLOW_BLOCK block (whole blocks only)."""
    rows, cols = product.shape[0] // FLOW_BLOCK, product.shape[1] // FLOW_BLOCK
    # INTER_AREA over whole blocks is their mean, and much faster than a numpy reshape-sum.
    means = cv2.resize(product[:rows * FLOW_BLOCK, :cols * FLOW_BLOCK], (cols, rows),
                       interpolation=cv2.INTER_AREA)
    return means * float(FLOW_BLOCK * FLOW_BLOCK)


def _erode(mask: np.ndarray, steps: int) -> np.ndarray:
    out = mask.astype(np.uint8)
    if steps > 0:
        out = cv2.erode(out, np.ones((3, 3), np.uint8), iterations=steps, borderType=cv2.BORDER_CONSTANT,
                        borderValue=0)
    return out.astype(bool)


def _wrap(d: np.ndarray) -> np.ndarray:
    """Angle differences of orientations (modulo pi) into -pi/2..pi/2."""
    return (d + math.pi / 2) % math.pi - math.pi / 2


def measure_flow(gxx: np.ndarray, gyy: np.ndarray, gxy: np.ndarray, fg: np.ndarray) -> RidgeFlow:
    """The ridge flow from the structure tensor's sums on FLOW_BLOCK px blocks (``tensor_sums``
    of gx*gx, gy*gy, gx*gy at 500 ppi) and finger.py's foreground mask on blocks twice as big.

    The mask is refined onto the flow blocks and eroded, so the print's rim (where ridges meet
    glass) does not read as a change of direction or a singular point.
    """
    b = FLOW_BLOCK
    rows, cols = gxx.shape
    fg = np.repeat(np.repeat(fg, 2, axis=0), 2, axis=1)
    if fg.shape != (rows, cols):
        raise ValueError(f"foreground {fg.shape} does not cover the flow blocks {(rows, cols)}")
    # Doubled-angle vectors: a ridge at angle t and at t + pi are the same ridge, and averaging
    # (cos 2t, sin 2t) is how orientations are averaged. Made unit length, so every block
    # counts once whatever its contrast (a pressure gradient must not steer the mean).
    vx, vy = gxx - gyy, 2 * gxy
    inner = _erode(fg, 1)
    blocks = int(inner.sum())
    if blocks < MIN_FLOW_BLOCKS:
        return RidgeFlow(0.0, 90.0, 0, 0, 1, blocks)
    norm = np.hypot(vx, vy) + 1e-9
    ux, uy = vx / norm, vy / norm
    spread = max(0.0, 1.0 - float(math.hypot(ux[inner].mean(), uy[inner].mean())))

    # Continuity on the raw block field: noise disagrees with its neighbours, a print does not.
    theta = 0.5 * np.arctan2(vy, vx)
    jumps = []
    for d, both in ((_wrap(theta[:, 1:] - theta[:, :-1]), inner[:, 1:] & inner[:, :-1]),
                    (_wrap(theta[1:, :] - theta[:-1, :]), inner[1:, :] & inner[:-1, :])):
        jumps.append(np.abs(d[both]))
    jump = float(np.degrees(np.concatenate(jumps).mean())) if any(j.size for j in jumps) else 90.0

    # Singular points on a lightly smoothed field (a sensor speck must not make a core), only
    # well inside the foreground: the rim and the smoothing across it would fake them.
    sx = cv2.GaussianBlur((ux * fg).astype(np.float32), (0, 0), 1.0)
    sy = cv2.GaussianBlur((uy * fg).astype(np.float32), (0, 0), 1.0)
    smooth = 0.5 * np.arctan2(sy, sx)
    cores, deltas = _singular_points(smooth, _erode(fg, 2))
    finger_areas = max(1, math.ceil(int(fg.sum()) * b * b / FINGER_AREA_PX))
    return RidgeFlow(round(spread, 4), round(jump, 2), cores, deltas, finger_areas, blocks)


def _singular_points(theta: np.ndarray, mask: np.ndarray) -> tuple[int, int]:
    """Cores and deltas: the Poincaré index around each 2 x 2 loop of blocks inside ``mask``;
    neighbouring loops that all see the same point count once."""
    a, b_, c, d = theta[:-1, :-1], theta[:-1, 1:], theta[1:, 1:], theta[1:, :-1]
    index = (_wrap(b_ - a) + _wrap(c - b_) + _wrap(d - c) + _wrap(a - d)) / (2 * math.pi)
    inside = mask[:-1, :-1] & mask[:-1, 1:] & mask[1:, 1:] & mask[1:, :-1]
    counts = []
    for sign in (1, -1):
        found = ((sign * index > 0.25) & inside).astype(np.uint8)
        n, _ = cv2.connectedComponents(found, connectivity=8)
        counts.append(n - 1)
    return counts[0], counts[1]


def period_mm(period_px_at_500: float) -> float:
    """A ridge period measured at 500 ppi, in millimetres."""
    return period_px_at_500 * MM_PER_INCH / 500
