"""A print must look like a print: the ridge-flow gate of the finger score
(agent/quality/ridge_flow.py, wired in agent/quality/finger.py).

Prints come from the simulated scanner's generator (drivers/fingerprint_synth.py), whose
singular points are known. Things that are not prints are made honestly: sine gratings,
scikit-image's photograph of a brick wall (bundled with the package), uniform noise, an empty
glass, a patchwork of grating tiles, and prints grown on a field with too many singular points
or at a ridge period no finger has.
"""

from __future__ import annotations

import math
import statistics
import time
from functools import cache

import cv2
import numpy as np
import pytest
from skimage import data as skdata

from agent.config import ConfigError, validate_config
from agent.quality import finger as fq
from agent.quality import ridge_flow as rf
from agent.quality.config import FingerQualityConfig
from agent.quality.report import Check, QualityReport
from drivers import CaptureRequest
from drivers import fingerprint_synth as fs
from drivers.sim_finger import SimFingerConfig, SimFingerDriver
from tests.support.soak import SOAK

#: Synthetic fingers that must pass (seeds 0..N-1 hold arches, loops and whorls).
FINGERS = 50 if SOAK else 20
FLOW_CHECKS = ("orientation_spread", "orientation_jump_deg", "singular_points", "ridge_period_mm")


@cache
def capture(seed: int) -> np.ndarray:
    """Finger ``seed`` as the simulated scanner takes it: 320 x 400 px at 500 ppi."""
    return fs.vary(fs.synthesize(seed, 320, 400), np.random.default_rng(seed))


def check(report: QualityReport, name: str) -> Check:
    return next(c for c in report.checks if c.name == name)


def failed_flow(report: QualityReport) -> set[str]:
    return {c.name for c in report.failed() if c.name in FLOW_CHECKS}


def grating(period: float, angle: float, size: int = 400) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size]
    wave = np.sin(2 * math.pi * (xx * math.cos(angle) + yy * math.sin(angle)) / period)
    return (128 + 90 * wave).astype(np.uint8)


def test_synthetic_prints_pass_across_many_fingers() -> None:
    assessor = fq.BuiltinFingerAssessor()
    kinds = set()
    for seed in range(FINGERS):
        report = assessor.assess(capture(seed), 500)
        assert report.passed, (seed, [(c.name, c.value) for c in report.failed()])
        assert report.extra["looks_like_a_print"] is True
        pattern = fs.choose_pattern(seed, 320, 400)
        kinds.add(pattern.kind)
        # Poincaré finds the generator's cores (arch 0, loop 1, whorl 2); a delta may lie
        # outside the finger's contact area, so at most the generator's.
        assert report.extra["cores"] == len(pattern.cores), seed
        assert report.extra["deltas"] <= len(pattern.deltas), seed
    assert kinds == {"arch", "loop", "whorl"}


@pytest.mark.parametrize(("period", "angle"), [(9.0, 0.0), (9.0, 0.3), (8.0, 1.2), (11.0, 2.5)])
def test_a_sine_grating_is_not_a_print(period: float, angle: float) -> None:
    report = fq.BuiltinFingerAssessor().assess(grating(period, angle), 500)
    # Every texture check is perfect: only the flow gives it away.
    assert all(check(report, n).passed for n in ("orientation_certainty", "ridge_frequency",
                                                 "ridge_valley_clarity"))
    assert failed_flow(report) == {"orientation_spread"}
    assert check(report, "orientation_spread").value < 0.01
    assert report.score == 0 and not report.passed
    assert report.hints()[0] == fq.HINT_NOT_A_PRINT
    assert report.extra["looks_like_a_print"] is False


@pytest.mark.parametrize("ppi", [300, 500, 700, 1000])
def test_a_photo_of_a_brick_wall_is_not_a_print(ppi: int) -> None:
    report = fq.BuiltinFingerAssessor().assess(skdata.brick(), ppi)
    assert not report.passed and report.score == 0
    assert {"orientation_jump_deg", "ridge_period_mm"} <= failed_flow(report)
    # Its ridge frequency fails too, but "dry or moisten the finger" would send the officer astray.
    assert not check(report, "ridge_frequency").passed
    assert report.hints() == [fq.HINT_NOT_A_PRINT]


def test_noise_and_an_empty_glass_are_not_prints() -> None:
    assessor = fq.BuiltinFingerAssessor()
    rng = np.random.default_rng(0)
    noise = assessor.assess(rng.integers(0, 256, (400, 400)).astype(np.uint8), 500)
    assert not noise.passed and noise.score == 0
    assert {"orientation_jump_deg", "singular_points"} <= failed_flow(noise)
    assert not check(noise, "orientation_certainty").passed
    assert noise.hints() == [fq.HINT_NOT_A_PRINT]
    blank = np.clip(fs.BACKGROUND + rng.normal(0, 3.5, (400, 400)), 0, 255).astype(np.uint8)
    empty = assessor.assess(blank, 500)
    # No finger: the flow is not measured, and the one hint is the gate's.
    assert all(check(empty, n).value is None and not check(empty, n).passed for n in FLOW_CHECKS)
    assert empty.hints() == [fq.HINT_PLACE]


def test_the_flow_is_judged_only_once_the_gates_pass() -> None:
    # Only the fingertip touched: the foreground gate fails and says what to do. On so little
    # finger the flow means little (a loop's tip looks like an arch), so it is not judged, and
    # the print keeps its score, below a whole one's, instead of being called "not a print".
    tip = np.full_like(capture(1), fs.BACKGROUND)
    tip[:140] = capture(1)[:140]
    strict = FingerQualityConfig(min_orientation_spread=0.5)
    report = fq.BuiltinFingerAssessor(strict).assess(tip, 500)
    assert not check(report, "foreground_px").passed
    assert all(check(report, n).value is None for n in FLOW_CHECKS)
    assert report.score > 0 and report.hints() == [fq.HINT_PLACE]


def test_scraps_of_ridges_are_not_a_print() -> None:
    # Grating tiles on a checkerboard: enough foreground for the gates and perfect texture, but
    # no connected area of ridges to follow. (Mid grey between them: the blur does not bleed
    # the tiles into their neighbours then.)
    img = np.full((400, 400), 128, np.uint8)
    texture = grating(9.0, 0.7)
    for y in range(0, 384, 32):
        for x in range((y // 32) % 2 * 32, 384, 64):
            img[y:y + 32, x:x + 32] = texture[y:y + 32, x:x + 32]
    report = fq.BuiltinFingerAssessor().assess(img, 500)
    assert all(check(report, n).passed for n in ("foreground_px", "orientation_certainty",
                                                 "ridge_frequency", "ridge_valley_clarity"))
    assert failed_flow(report) == set(FLOW_CHECKS)
    assert all(check(report, n).value is None for n in FLOW_CHECKS)
    assert report.score == 0 and report.hints()[0] == fq.HINT_NOT_A_PRINT


def test_broken_flow_fails_on_the_jump_between_blocks() -> None:
    # Perfect ridges in 48 px tiles, each tile turned at random: texture without flow.
    rng = np.random.default_rng(3)
    img = np.zeros((400, 400), np.uint8)
    for y in range(0, 400, 48):
        for x in range(0, 400, 48):
            img[y:y + 48, x:x + 48] = grating(9.0, rng.uniform(0, math.pi))[y:y + 48, x:x + 48]
    # Only the jump is judged here (the tiles' corners also make singular points).
    lenient = FingerQualityConfig(max_singular_points=1000)
    report = fq.BuiltinFingerAssessor(lenient).assess(img, 500)
    assert failed_flow(report) == {"orientation_jump_deg"}
    assert check(report, "orientation_jump_deg").value > 14
    assert report.hints()[0] == fq.HINT_BROKEN and report.score == 0


def _grown(pattern: fs.Pattern, period: float = 9.0, size: int = 400) -> np.ndarray:
    theta = fs.orientation_field(pattern, size, size)
    ridges = (fs._grow_ridges(theta, period, np.random.default_rng(1)) + 1) / 2
    contact = fs._finger_mask(size, size, np.random.default_rng(2))
    return np.clip(fs.BACKGROUND - fs.RIDGE_DEPTH * ridges * contact, 0, 255).astype(np.uint8)


def test_too_many_singular_points_for_one_finger() -> None:
    # Ridges grown along a smooth field with four cores and four deltas: no finger has that.
    cores = (complex(120, 120), complex(280, 130), complex(130, 280), complex(270, 270))
    deltas = (complex(200, 200), complex(200, 80), complex(80, 200), complex(320, 200))
    report = fq.BuiltinFingerAssessor().assess(_grown(fs.Pattern("whorl", cores, deltas, 0.0)), 500)
    assert failed_flow(report) == {"singular_points"}
    assert check(report, "singular_points").value > 4
    assert report.hints()[0] == fq.HINT_BROKEN and report.score == 0


@pytest.mark.parametrize("grown_at", [300, 760])
def test_a_ridge_period_no_finger_has(grown_at: int) -> None:
    # Prints grown with ridges 0.27 mm and 0.75 mm apart (declared 500 ppi): within the texture
    # band of 5..15 px, so only the period in millimetres says no finger has them. The same
    # mistake as a print declared at a resolution it was not scanned at.
    img = fs.synthesize(5, 400, 400, ppi=grown_at)
    report = fq.BuiltinFingerAssessor().assess(img, 500)
    assert failed_flow(report) == {"ridge_period_mm"}, check(report, "ridge_period_mm")
    assert check(report, "ridge_frequency").passed
    assert report.hints()[0] == fq.HINT_NOT_A_PRINT and report.score == 0
    if grown_at == 300:  # at its true resolution the same image is a print (a 760 ppi one is too small)
        assert fq.BuiltinFingerAssessor().assess(img, grown_at).passed


def test_a_slap_of_four_fingers_is_allowed_four_fingers_of_singular_points() -> None:
    driver = SimFingerDriver("finger", SimFingerConfig(seed=3))
    driver.open()
    try:
        shot = driver.capture(CaptureRequest(position=13))
    finally:
        driver.close()
    gray = cv2.imdecode(np.frombuffer(shot.image, np.uint8), cv2.IMREAD_GRAYSCALE)
    report = fq.BuiltinFingerAssessor().assess(gray, 500)
    assert report.passed, [(c.name, c.value, c.note) for c in report.failed()]
    m = fq.measure(gray, 500)
    assert m.flow is not None and m.flow.finger_areas >= 3
    # More cores or deltas than one finger may have: allowed only because there are four.
    assert max(m.flow.cores, m.flow.deltas) > FingerQualityConfig().max_singular_points


def test_the_thresholds_are_the_configs() -> None:
    strict = FingerQualityConfig(min_orientation_spread=0.99, ridge_period_min_mm=0.6)
    report = fq.BuiltinFingerAssessor(strict).assess(capture(0), 500)
    assert {"orientation_spread", "ridge_period_mm"} <= failed_flow(report)
    assert check(report, "ridge_period_mm").threshold == "0.6..0.7"
    raw = {"kiosk": {"id": "k1"}, "mqtt": {"allow_plaintext": True},
           "quality": {"finger": {"ridge_period_min_mm": 0.8}}}
    with pytest.raises(ConfigError) as err:
        validate_config(raw)
    assert any("ridge_period_min_mm must be less than ridge_period_max_mm" in p for p in err.value.problems)


def test_the_flow_adds_about_a_millisecond() -> None:
    img = capture(1)
    smooth = cv2.GaussianBlur(img.astype(np.float32), (0, 0), 1.5)
    gx = cv2.Sobel(smooth, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(smooth, cv2.CV_32F, 0, 1, ksize=3)
    rows, cols = img.shape[0] // fq.BLOCK, img.shape[1] // fq.BLOCK
    fine = [rf.tensor_sums(p[:rows * fq.BLOCK, :cols * fq.BLOCK]) for p in (gx * gx, gy * gy, gx * gy)]
    fg = fq._blocks(smooth).std(axis=(2, 3)) >= 10
    rf.measure_flow(*fine, fg)
    times = []
    for _ in range(30):
        start = time.perf_counter()
        rf.measure_flow(*fine, fg)
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    print(f"ridge flow, 400 x 400 px at 500 ppi: median {median * 1000:.2f} ms")
    assert median < 0.01  # ~0.7 ms on the 2-core development machine
