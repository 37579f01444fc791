"""Fingerprint image quality on the kiosk: a 0..100 score built from NFIQ 2's ideas. Not NFIQ 2.

No certified NFIQ 2 build loads on the kiosks' Debian 12 (see docs/finger-quality.md), so the
built-in assessor measures what NFIQ 2 measures, in simpler ways, on 32 x 32 pixel blocks at
500 ppi (NFIQ 2's block size):

- foreground: blocks whose grey level varies like ridges do, after a light blur so sensor
  noise alone does not count as finger;
- contrast: the grey-level spread of the foreground;
- orientation certainty (like NFIQ 2's OCL): the coherence of the structure tensor;
- ridge frequency (like FDA): the share of blocks whose dominant period lies in the band
  real adult ridges have;
- ridge-valley clarity (like LCS/RVU): how much of a block's spectral energy sits in its one
  dominant ridge wave rather than spread out as noise or smudge.

NFIQ 2's actionable gates come first: an empty or too-low-contrast image, a uniform image,
too little foreground. Once they pass, the ridge flow must look like a finger's
(agent/quality/ridge_flow.py: smooth but curving, a finger's ridge period in millimetres, a
few singular points); a texture that fails scores 0, however clean its ridges. A certified
assessor replaces this one through ``quality.finger.assessor`` (``FingerAssessor`` below);
the report's ``assessor`` string always says which one measured.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import cv2
import numpy as np

from agent.quality.config import FingerQualityConfig, QualityConfig
from agent.quality.plugins import resolve_factory
from agent.quality.report import BadImage, Check, QualityReport, load_image
from agent.quality.ridge_flow import MIN_FLOW_BLOCKS, RidgeFlow, measure_flow, period_mm, tensor_sums
from agent.quality.slap import count_fingers

#: Version 2: the ridge-flow checks (agent/quality/ridge_flow.py) can fail a print and zero its score.
ASSESSOR = "kiosk-agent finger quality 2 (not NFIQ 2)"
#: NFIQ 2 works at 500 ppi; images at other resolutions are resampled to it first.
WORK_PPI = 500
BLOCK = 32
#: ppi assumed when a PNG has no pHYs chunk: what nearly every single-finger scanner produces.
DEFAULT_PPI = 500
#: Foreground at which area stops lowering the score: twice NFIQ 2's 50,000 px gate, about
#: the contact area of an adult fingertip pressed flat (~250 mm^2).
FULL_AREA_PX = 100_000

HINT_PRESS = "press the finger flat and firmly"
HINT_CLEAN = "clean the glass"
HINT_MOISTURE = "dry or moisten the finger"
HINT_PLACE = "place the whole finger on the glass"
#: The ridges do not flow like a finger's (a grating, a photo, a printout, an object).
HINT_NOT_A_PRINT = "no fingerprint pattern found: place the fingertip itself flat on the glass"
#: The flow is broken up: dirt, a dry or worn finger, a scratched glass.
HINT_BROKEN = "clean the glass and the finger, then press gently without sliding"


@runtime_checkable
class FingerAssessor(Protocol):
    """Anything that scores a greyscale fingerprint; a certified NFIQ 2 wrapper fits here."""

    def assess(self, gray: np.ndarray, ppi: int) -> QualityReport: ...


@dataclass(frozen=True)
class Measurements:
    """What the built-in assessor measured, before any threshold is applied."""

    mean: float
    std: float
    foreground_px: int  # at 500 ppi
    foreground_fraction: float
    contrast: float  # grey levels, 5th..95th percentile spread inside the foreground
    orientation_certainty: float  # 0..1
    ridge_frequency_in_band: float  # 0..1 share of foreground blocks
    ridge_period_px: float  # median, at 500 ppi
    clarity: float  # 0..1
    #: Interquartile mean of the blocks' periods, at 500 ppi: finer than the median, which
    #: can only take the few values 32 / (an FFT bin's radius).
    ridge_period_mean_px: float = 0.0
    #: The structure of the ridge flow (agent/quality/ridge_flow.py); None without foreground.
    flow: RidgeFlow | None = None


def _to_work_resolution(gray: np.ndarray, ppi: int) -> np.ndarray:
    # Ridge periods and the foreground gate are defined at 500 ppi; a 5 % tolerance avoids
    # resampling scanners that report 508 or 496 ppi.
    if ppi <= 0 or abs(ppi - WORK_PPI) <= 0.05 * WORK_PPI:
        return gray
    scale = WORK_PPI / ppi
    size = (max(1, round(gray.shape[1] * scale)), max(1, round(gray.shape[0] * scale)))
    return cv2.resize(gray, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)


def _blocks(a: np.ndarray) -> np.ndarray:
    """``a`` cut into whole BLOCK x BLOCK tiles: shape (rows, cols, BLOCK, BLOCK)."""
    rows, cols = a.shape[0] // BLOCK, a.shape[1] // BLOCK
    return a[:rows * BLOCK, :cols * BLOCK].reshape(rows, BLOCK, cols, BLOCK).swapaxes(1, 2)


def _interior(mask: np.ndarray) -> np.ndarray:
    """The blocks of ``mask`` whose four neighbours are in it too."""
    padded = np.pad(mask, 1, constant_values=False)
    return (mask & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:])


def _spectral_features(tiles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per tile (N, B, B): the dominant ridge period in px, and the share of AC energy in it."""
    window = np.outer(np.hanning(BLOCK), np.hanning(BLOCK)).astype(np.float32)
    centred = (tiles - tiles.mean(axis=(1, 2), keepdims=True)) * window
    power = np.abs(np.fft.fft2(centred)) ** 2
    power = np.fft.fftshift(power, axes=(1, 2))
    c = BLOCK // 2
    fy, fx = np.mgrid[-c:BLOCK - c, -c:BLOCK - c]
    radius = np.hypot(fx, fy)
    # Ignore the lowest rings (the finger's outline and pressure gradient, not ridges) and the
    # corners beyond Nyquist.
    usable = (radius >= 1.5) & (radius <= c)
    power = power * usable
    total = power.sum(axis=(1, 2)) + 1e-9
    flat = power.reshape(len(tiles), -1)
    peak = flat.argmax(axis=1)
    py, px = np.unravel_index(peak, (BLOCK, BLOCK))
    period = BLOCK / np.maximum(radius[py, px], 1e-6)
    # A clean ridge wave puts its energy in two symmetric peaks, each smeared over about 3 x 3
    # bins by the window; noise and smudge spread it over the whole plane.
    near = np.zeros_like(flat)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            for sign in (1, -1):
                yy = (c + sign * (py - c) + dy) % BLOCK
                xx = (c + sign * (px - c) + dx) % BLOCK
                near[np.arange(len(tiles)), yy * BLOCK + xx] = 1.0
    concentrated = (flat * near).sum(axis=1) / total
    return period, concentrated


def measure(gray: np.ndarray, ppi: int, *, foreground_min_std: float = 10.0,
            period_band: tuple[float, float] = (5.0, 15.0)) -> Measurements:
    """The built-in features of a 2-D uint8 fingerprint image (dark ridges on light)."""
    if gray.ndim != 2 or gray.dtype != np.uint8:
        raise BadImage(f"expected a 2-D 8-bit greyscale image, got {gray.dtype} {gray.shape}")
    work = _to_work_resolution(gray, ppi).astype(np.float32)
    if work.shape[0] < BLOCK or work.shape[1] < BLOCK:
        raise BadImage(f"image of {gray.shape[1]} x {gray.shape[0]} px is smaller than one "
                       f"{BLOCK} x {BLOCK} block at 500 ppi")
    mean, std = float(work.mean()), float(work.std())
    # sigma 1.5 px keeps about 60 % of a 9 px ridge wave but cuts white sensor noise ~5x.
    smooth = cv2.GaussianBlur(work, (0, 0), 1.5)
    tiles = _blocks(smooth)
    rows, cols = tiles.shape[:2]
    tile_std = tiles.std(axis=(2, 3))
    fg = tile_std >= foreground_min_std
    n_fg = int(fg.sum())
    fraction = n_fg / max(1, rows * cols)
    if n_fg == 0:
        return Measurements(mean, std, 0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    fg_all = fg

    raw_fg = _blocks(work)[fg]
    lo, hi = np.percentile(raw_fg, [5, 95])
    # Ridge features skip the blocks on the rim of the print: half of such a block is glass,
    # and the edge itself would read as a low-frequency, high-contrast "ridge".
    inner = _interior(fg)
    if inner.sum() >= 4:
        fg = inner

    gx = cv2.Sobel(smooth, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(smooth, cv2.CV_32F, 0, 1, ksize=3)
    # The structure tensor summed over the ridge-flow blocks (half a block), and over whole
    # blocks from those: the gradient products are formed once for both.
    fine = [tensor_sums(p[:rows * BLOCK, :cols * BLOCK]) for p in (gx * gx, gy * gy, gx * gy)]
    gxx, gyy, gxy = (_sum_2x2(f)[fg] for f in fine)
    coherence = np.sqrt((gxx - gyy) ** 2 + 4 * gxy ** 2) / (gxx + gyy + 1e-9)

    period, concentrated = _spectral_features(_blocks(work)[fg])
    in_band = (period >= period_band[0]) & (period <= period_band[1])
    return Measurements(
        mean=mean, std=std, foreground_px=n_fg * BLOCK * BLOCK, foreground_fraction=fraction,
        contrast=float(hi - lo), orientation_certainty=float(coherence.mean()),
        ridge_frequency_in_band=float(in_band.mean()), ridge_period_px=float(np.median(period)),
        clarity=float(concentrated.mean()), ridge_period_mean_px=_interquartile_mean(period),
        flow=measure_flow(*fine, fg_all),
    )


def _sum_2x2(a: np.ndarray) -> np.ndarray:
    return a[0::2, 0::2] + a[0::2, 1::2] + a[1::2, 0::2] + a[1::2, 1::2]


def _interquartile_mean(values: np.ndarray) -> float:
    lo, hi = np.percentile(values, [25, 75])
    middle = values[(values >= lo) & (values <= hi)]
    return float(middle.mean()) if middle.size else float(np.median(values))


def _ramp(value: float, low: float, high: float) -> float:
    """0 at ``low``, 1 at ``high``, linear between: how far a feature is from useless to good."""
    return min(1.0, max(0.0, (value - low) / (high - low)))


def score(m: Measurements) -> int:
    """0..100. Each feature maps to 0..1 between a useless and a good value (calibrated on
    synthetic prints, docs/finger-quality.md); the geometric mean makes one bad feature pull
    the score down, as one bad property makes a print useless to a matcher."""
    parts = [
        _ramp(m.contrast, 20, 90),
        _ramp(m.orientation_certainty, 0.2, 0.95),
        _ramp(m.ridge_frequency_in_band, 0.3, 0.95),
        _ramp(m.clarity, 0.1, 0.85),
    ]
    quality = math.prod(max(p, 1e-3) for p in parts) ** (1 / len(parts))
    # Area: less of the finger, fewer minutiae to match. Fixed, not the configurable gate, so
    # that the same image scores the same on every kiosk.
    area = _ramp(m.foreground_px, 0, FULL_AREA_PX)
    return int(round(100 * quality * area))


class BuiltinFingerAssessor:
    """The kiosk's own assessor; thresholds from ``FingerQualityConfig``."""

    def __init__(self, config: FingerQualityConfig | None = None) -> None:
        if config is None:
            config = FingerQualityConfig()
        self.config = config

    def assess(self, gray: np.ndarray, ppi: int) -> QualityReport:
        c = self.config
        m = measure(gray, ppi, foreground_min_std=c.foreground_min_std,
                    period_band=(c.ridge_period_min_px, c.ridge_period_max_px))
        empty = m.foreground_px == 0 or m.mean > 250
        gates = [
            # NFIQ 2's actionable gates first. No foreground at all means no finger, not a
            # faint one, so it gets the placing hint.
            Check("empty_or_low_contrast", round(m.contrast, 1), f">= {c.min_contrast:g}",
                  m.contrast >= c.min_contrast and not empty, HINT_PLACE if empty else HINT_PRESS,
                  "grey levels between the 5th and 95th percentile of the foreground"),
            Check("uniform_image", round(m.std, 2), f">= {c.min_std:g}", m.std >= c.min_std,
                  HINT_PLACE, "standard deviation of the whole image"),
            Check("foreground_px", m.foreground_px, f">= {c.min_foreground_px}",
                  m.foreground_px >= c.min_foreground_px, HINT_PLACE, "pixels at 500 ppi"),
        ]
        features = [
            ("orientation_certainty", m.orientation_certainty, c.min_orientation_certainty,
             HINT_CLEAN, "structure tensor coherence, mean over foreground blocks"),
            ("ridge_frequency", m.ridge_frequency_in_band, c.min_ridge_frequency_in_band,
             HINT_MOISTURE, f"share of blocks with a ridge period of {c.ridge_period_min_px:g}.."
                            f"{c.ridge_period_max_px:g} px (median {m.ridge_period_px:.1f} px)"),
            ("ridge_valley_clarity", m.clarity, c.min_clarity, HINT_MOISTURE,
             "share of block spectral energy in the dominant ridge wave"),
        ]
        no_finger = not (gates[0].passed and gates[1].passed)
        checks = list(gates)
        for name, value, minimum, hint, note in features:
            if no_finger:
                # Measured on nothing: a failure, but its hint would only distract from the gate's.
                checks.append(Check(name, None, f">= {minimum:g}", False, "", "not measured: no finger"))
            else:
                checks.append(Check(name, round(value, 3), f">= {minimum:g}", value >= minimum, hint, note))
        flow_checks = _flow_checks(m, c, measured=all(g.passed for g in gates),
                                   fingers=lambda: count_fingers(gray, ppi))
        not_a_print = all(g.passed for g in gates) and not all(fc.passed for fc in flow_checks)
        if not_a_print and any(not fc.passed and fc.hint == HINT_NOT_A_PRINT for fc in flow_checks):
            # A wall or noise also fails clarity and certainty, and "dry or moisten the finger"
            # sent to someone pressing a photo on the glass helps nobody: the one hint is that
            # no print was found (the checks still show every failure).
            checks = [_without_hint(ch) if ch.name in FEATURES else ch for ch in checks]
            flow_checks = [ch if ch.hint == HINT_NOT_A_PRINT else _without_hint(ch) for ch in flow_checks]
        checks += flow_checks
        # A texture that is not a print scores 0, as an empty glass does: its ridges may be
        # perfect, but there is no finger to match.
        total = 0 if no_finger or not_a_print else score(m)
        checks.append(Check("score", total, f">= {c.min_score}", total >= c.min_score,
                            _worst_hint(checks), "0..100, not NFIQ 2"))
        gates_passed = all(g.passed for g in gates)
        flow = m.flow
        return QualityReport(
            modality="finger", score=total, checks=tuple(checks), assessor=ASSESSOR,
            extra={"ppi": ppi, "foreground_fraction": round(m.foreground_fraction, 3),
                   "ridge_period_px": round(m.ridge_period_px, 2), "gates_passed": gates_passed,
                   "looks_like_a_print": not not_a_print,
                   **({"cores": flow.cores, "deltas": flow.deltas} if flow is not None else {})},
        )


def _flow_checks(m: Measurements, c: FingerQualityConfig, *, measured: bool,
                 fingers: Callable[[], int] = lambda: 1) -> list[Check]:
    """Does the texture flow like a finger's ridges (agent/quality/ridge_flow.py)? Judged only
    once the gates pass: on a fingertip alone a loop looks like an arch, and the gates' hint
    is the one to give."""
    period = period_mm(m.ridge_period_mean_px)
    lo_mm, hi_mm = c.ridge_period_min_mm, c.ridge_period_max_mm
    rules = [
        ("orientation_spread", f">= {c.min_orientation_spread:g}", HINT_NOT_A_PRINT,
         "1 - length of the mean doubled-angle ridge direction; 0 for a grating"),
        ("orientation_jump_deg", f"<= {c.max_orientation_jump_deg:g}", HINT_BROKEN,
         "mean angle between neighbouring 16 px blocks' ridge directions"),
        ("singular_points", f"<= {c.max_singular_points} cores and deltas each per finger",
         HINT_BROKEN, ""),
        ("ridge_period_mm", f"{lo_mm:g}..{hi_mm:g}", HINT_NOT_A_PRINT,
         f"interquartile mean of the blocks' ridge periods ({m.ridge_period_mean_px:.1f} px at 500 ppi)"),
    ]
    flow = m.flow
    if not measured or flow is None:
        return [Check(name, None, rule, False, "", "not measured: the gates above failed")
                for name, rule, _, _ in rules]
    if flow.blocks < MIN_FLOW_BLOCKS:
        # Enough foreground, but in scraps: no stretch of ridges to follow, so not a finger.
        return [Check(name, None, rule, False, HINT_NOT_A_PRINT,
                      "not measured: no connected area of ridges to follow") for name, rule, _, _ in rules]
    allowed = c.max_singular_points * flow.finger_areas
    if flow.cores > allowed or flow.deltas > allowed:
        # A slap of small fingertips covers little area, yet each finger may bring its own core
        # and delta: count the fingers lying apart on the glass (slap.py) before refusing.
        allowed = c.max_singular_points * max(flow.finger_areas, fingers())
    values_passed = [
        (round(flow.orientation_spread, 3), flow.orientation_spread >= c.min_orientation_spread, ""),
        (round(flow.orientation_jump_deg, 1), flow.orientation_jump_deg <= c.max_orientation_jump_deg, ""),
        (flow.cores + flow.deltas, flow.cores <= allowed and flow.deltas <= allowed,
         f"{flow.cores} cores, {flow.deltas} deltas; {flow.finger_areas} finger(s) of foreground"),
        (round(period, 3), lo_mm <= period <= hi_mm, ""),
    ]
    return [Check(name, value, rule, passed, hint, extra_note or note)
            for (name, rule, hint, note), (value, passed, extra_note)
            in zip(rules, values_passed, strict=True)]


#: NFIQ 2's minutiae gate, for a driver that reports a count but not the gate it applied.
MIN_MINUTIAE = 5
HINT_MINUTIAE = "place the finger flat on the sensor again, pressing a little harder"


def minutiae_check(detail: Mapping[str, Any]) -> Check | None:
    """The minutiae a driver counted (libfprint's NBIS: drivers/libfprint.py, which also says
    its ``min_minutiae`` gate) as a check of the report, so analytics see the count; None when
    the driver reports none. The detail is the device's data: anything but a plausible whole
    count is not one."""
    count, minimum = detail.get("minutiae"), detail.get("min_minutiae", MIN_MINUTIAE)
    if type(count) is not int or not 0 <= count <= 10_000:
        return None
    if type(minimum) is not int or not 1 <= minimum <= 200:
        minimum = MIN_MINUTIAE
    return Check("minutiae", count, f">= {minimum}", count >= minimum, HINT_MINUTIAE,
                 "minutiae the scanner's library found (libfprint: NBIS)")


#: The texture features above the ridge flow (their hints assume a finger is there).
FEATURES = frozenset({"orientation_certainty", "ridge_frequency", "ridge_valley_clarity"})


def _without_hint(check: Check) -> Check:
    return replace(check, hint="")


def _worst_hint(checks: list[Check]) -> str:
    failed = [c for c in checks if not c.passed and c.hint]
    return failed[0].hint if failed else HINT_PRESS


def load_assessor(config: FingerQualityConfig | None = None) -> FingerAssessor:
    """The assessor ``quality.finger.assessor`` names: "builtin" or a "module:callable" factory
    that is called with the FingerQualityConfig and returns a FingerAssessor."""
    if config is None or config.assessor == "builtin":
        return BuiltinFingerAssessor(config)
    factory = resolve_factory(config.assessor)
    assessor = factory(config)
    if not isinstance(assessor, FingerAssessor):
        raise TypeError(f"{config.assessor} returned {type(assessor).__name__}, which has no "
                        "assess(gray, ppi) method")
    return assessor


def file_ppi(path: Path, data: bytes) -> int:
    """The resolution a PNG declares in its pHYs chunk, else DEFAULT_PPI."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        from drivers.png_phys import png_ppi

        try:
            ppi = png_ppi(data)
        except ValueError as exc:
            raise BadImage(f"{path}: {exc}") from None
        if ppi > 0:
            return ppi
    return DEFAULT_PPI


def assess_file(path: Any, config: QualityConfig | None = None) -> QualityReport:
    """``kiosk-agent quality IMAGE --modality finger``: ``config`` is [quality] or None (defaults)."""
    gray = load_image(path, grey=True)
    ppi = file_ppi(Path(path), Path(path).read_bytes())
    finger_config = config.finger if config is not None else None
    return load_assessor(finger_config).assess(gray, ppi)
