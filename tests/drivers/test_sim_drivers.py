"""The simulated finger scanner and camera: real images, scripted faults, life cycle."""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator

import cv2
import numpy as np
import pytest
from pydantic import ValidationError

from drivers import (
    CaptureRequest,
    CaptureRetry,
    DeviceDisconnected,
    Modality,
    TransientDeviceError,
    driver_class,
)
from drivers.fingerprint_synth import (
    BACKGROUND,
    choose_pattern,
    orientation_field,
    synthesize,
    vary,
)
from drivers.sim_camera import SimCameraConfig, SimCameraDriver
from drivers.sim_common import SimDevice
from drivers.sim_finger import SimFingerConfig, SimFingerDriver

# Fault tests do not look at the image, so a small print keeps them fast.
SMALL = {"width": 128, "height": 160}


def finger(device_id: str = "finger", **config: object) -> SimFingerDriver:
    driver = SimFingerDriver(device_id, SimFingerConfig.model_validate(config))
    driver.open()
    return driver


def camera(**config: object) -> SimCameraDriver:
    driver = SimCameraDriver("camera", SimCameraConfig.model_validate(config))
    driver.open()
    return driver


def decode(data: bytes) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert image is not None, "OpenCV could not decode the image"
    return image


@pytest.fixture(scope="module")
def scanner() -> Iterator[SimFingerDriver]:
    """One full-size scanner shared by the image tests: each new finger costs ~0.3 s."""
    driver = finger(seed=7)
    yield driver
    driver.close()


def dominant_period(patch: np.ndarray) -> float:
    """The strongest spatial period of a square patch, in pixels, from its radial spectrum."""
    size = patch.shape[0]
    window = np.outer(np.hanning(size), np.hanning(size))
    spectrum = np.abs(np.fft.fftshift(np.fft.fft2((patch - patch.mean()) * window)))
    yy, xx = np.indices(spectrum.shape)
    radius = np.hypot(yy - size // 2, xx - size // 2).round().astype(int)
    profile = np.bincount(radius.ravel(), spectrum.ravel()) / np.bincount(radius.ravel())
    peak = 3 + int(np.argmax(profile[3 : size // 2]))  # skip what is left of the mean
    return size / peak


def centre(image: np.ndarray, size: int = 128) -> np.ndarray:
    top, left = (image.shape[0] - size) // 2, (image.shape[1] - size) // 2
    return image[top : top + size, left : left + size].astype(np.float64)


def best_match(a: np.ndarray, b: np.ndarray) -> float:
    """Peak normalised correlation of the middle of ``a`` anywhere in ``b`` (fingers move)."""
    return float(cv2.matchTemplate(b.astype(np.float32), centre(a, 112).astype(np.float32),
                                   cv2.TM_CCOEFF_NORMED).max())


# --- fingerprint synthesis ---------------------------------------------------------------


def seed_of_kind(kind: str) -> int:
    return next(s for s in range(100) if choose_pattern(s, 320, 400).kind == kind)


def poincare_index(theta: np.ndarray, point: complex, radius: int) -> float:
    """How many half turns the ridge direction makes along a circle round ``point``."""
    angles = np.linspace(0, 2 * math.pi, 64, endpoint=False)
    xs = np.round(point.real + radius * np.cos(angles)).astype(int)
    ys = np.round(point.imag + radius * np.sin(angles)).astype(int)
    samples = theta[ys, xs]
    steps = np.diff(np.append(samples, samples[0]))
    steps = (steps + math.pi / 2) % math.pi - math.pi / 2  # directions are modulo pi
    return float(steps.sum() / math.pi)


def test_seeds_give_arches_loops_and_whorls() -> None:
    kinds = {choose_pattern(seed, 320, 400).kind for seed in range(30)}
    assert kinds == {"arch", "loop", "whorl"}


@pytest.mark.parametrize("kind, cores, deltas", [("arch", 0, 0), ("loop", 1, 1), ("whorl", 2, 2)])
def test_orientation_field_has_the_singular_points_of_its_pattern(kind: str, cores: int,
                                                                  deltas: int) -> None:
    pattern = choose_pattern(seed_of_kind(kind), 320, 400)
    assert (len(pattern.cores), len(pattern.deltas)) == (cores, deltas)
    theta = orientation_field(pattern, 320, 400)
    assert theta.shape == (400, 320) and 0 <= theta.min() and theta.max() < math.pi
    for core in pattern.cores:
        assert poincare_index(theta, core, 6) == pytest.approx(1, abs=0.05)
    for delta in pattern.deltas:
        assert poincare_index(theta, delta, 6) == pytest.approx(-1, abs=0.05)
    assert poincare_index(theta, complex(60, 360), 12) == pytest.approx(0, abs=0.05)


def test_synthesis_is_deterministic_per_seed() -> None:
    a, b, other = synthesize(11, 128, 160), synthesize(11, 128, 160), synthesize(12, 128, 160)
    assert a.dtype == np.uint8 and a.shape == (160, 128)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, other)
    with pytest.raises(ValueError, match="seed"):
        synthesize(-1)


@pytest.mark.parametrize("kind", ["arch", "loop", "whorl"])
def test_print_has_dark_ridges_about_9_px_apart_on_light_glass(kind: str) -> None:
    image = synthesize(seed_of_kind(kind))
    patch = centre(image)
    assert 7.5 <= dominant_period(patch) <= 10.5
    assert patch.std() > 40, "ridges and valleys must contrast"
    # Ridges are dark: inside the finger the mean is far below the empty glass around it.
    corners = np.concatenate([image[:12, :12].ravel(), image[-12:, -12:].ravel()])
    assert corners.min() >= BACKGROUND - 2 and corners.std() < 1
    assert patch.mean() < BACKGROUND - 60


def test_ridge_period_follows_resolution() -> None:
    coarse = dominant_period(centre(synthesize(3, 256, 256, ppi=500)))
    fine = dominant_period(centre(synthesize(3, 256, 256, ppi=1000)))
    assert fine / coarse == pytest.approx(2, rel=0.2)


def test_vary_moves_and_presses_differently_but_keeps_the_finger() -> None:
    master = synthesize(5, 192, 240)
    rng = np.random.default_rng(0)
    one, two = vary(master, rng), vary(master, rng)
    assert one.shape == master.shape and one.dtype == np.uint8
    assert not np.array_equal(one, two) and not np.array_equal(one, master)
    assert best_match(one, two) > 0.5


# --- the finger scanner -----------------------------------------------------------------


def test_finger_capture_is_a_png_of_the_configured_size(scanner: SimFingerDriver) -> None:
    shot = scanner.capture(CaptureRequest(position=2))
    image = decode(shot.image)
    assert shot.image[:8] == b"\x89PNG\r\n\x1a\n" and shot.image_format == "png"
    assert (shot.modality, shot.position, shot.ppi, shot.quality) == (Modality.FINGER, 2, 500, None)
    assert image.shape == (shot.height, shot.width) == (400, 320) and image.dtype == np.uint8
    assert 7.5 <= dominant_period(centre(image)) <= 10.5

    small = finger(width=200, height=256).capture(CaptureRequest(position=1))
    assert decode(small.image).shape == (small.height, small.width) == (256, 200)


def test_captures_of_one_finger_differ_yet_match(scanner: SimFingerDriver) -> None:
    first, second = (scanner.capture(CaptureRequest(position=1)) for _ in range(2))
    assert first.image != second.image
    a, b = decode(first.image), decode(second.image)
    same = best_match(a, b)
    other_finger = best_match(a, decode(scanner.capture(CaptureRequest(position=6)).image))
    other_person = best_match(a, decode(finger(seed=8).capture(CaptureRequest(position=1)).image))
    assert same > 0.5, f"two captures of one finger correlate only {same:.2f}"
    assert same > other_finger + 0.25 and same > other_person + 0.25


def test_pool_keeps_a_bounded_number_of_masters_and_rebuilds_them_identically() -> None:
    driver = finger(pool_size=2, **SMALL)
    first = driver.master(1).copy()
    driver.master(2)
    driver.master(3)  # drops finger 1, the least recently used
    assert len(driver._masters) == 2 and 1 not in driver._masters
    assert np.array_equal(driver.master(1), first)


# --- faults and life cycle, both drivers --------------------------------------------------


def make(kind: str, **config: object) -> SimDevice:
    return finger(**SMALL, **config) if kind == "finger" else camera(width=320, height=240, **config)


@pytest.mark.parametrize("kind, fault, reason, hint", [
    ("finger", "no-finger", "no finger", "place your finger flat on the glass"),
    ("finger", "too-messy", "image too smudged", "wipe the finger and the glass"),
    ("camera", "no-face", "no face", "look straight at the camera"),
])
def test_person_fixable_faults_ask_for_a_retry_with_a_hint(kind: str, fault: str, reason: str,
                                                           hint: str) -> None:
    driver = make(kind, faults=[fault])
    with pytest.raises(CaptureRetry) as info:
        driver.capture(CaptureRequest())
    assert info.value.reason == reason and info.value.hint.startswith(hint)
    assert driver.health().ok
    driver.capture(CaptureRequest())  # the script is used up: back to normal


@pytest.mark.parametrize("kind", ["finger", "camera"])
def test_timeout_is_transient_and_passes(kind: str) -> None:
    driver = make(kind, faults=["timeout", "ok", "timeout"])
    with pytest.raises(TransientDeviceError) as info:
        driver.capture(CaptureRequest())
    assert not isinstance(info.value, DeviceDisconnected)
    driver.capture(CaptureRequest())
    with pytest.raises(TransientDeviceError):
        driver.capture(CaptureRequest())
    driver.capture(CaptureRequest())


@pytest.mark.parametrize("kind", ["finger", "camera"])
def test_disconnect_lasts_until_closed_and_reopened(kind: str) -> None:
    driver = make(kind, faults=["disconnect"])
    driver.inject("timeout")
    for _ in range(3):
        with pytest.raises(DeviceDisconnected):
            driver.capture(CaptureRequest())
    assert not driver.health().ok
    assert driver.pending_faults() == ["timeout"], "an unplugged device must not use up the script"
    driver.close()
    assert not driver.health().ok
    driver.open()
    assert driver.health().ok
    with pytest.raises(TransientDeviceError):
        driver.capture(CaptureRequest())  # the scripted timeout, now that it is back
    driver.capture(CaptureRequest())


def test_capture_needs_an_open_device() -> None:
    driver = SimFingerDriver("finger", SimFingerConfig(**SMALL))
    assert not driver.health().ok
    with pytest.raises(TransientDeviceError, match="not open") as info:
        driver.capture(CaptureRequest())
    assert not isinstance(info.value, DeviceDisconnected)
    driver.open()
    driver.close()
    with pytest.raises(TransientDeviceError, match="not open"):
        driver.capture(CaptureRequest())


def test_probe_identifies_without_opening() -> None:
    driver = SimFingerDriver("left-scanner", SimFingerConfig(seed=4))
    info = driver.probe()
    assert (info.driver, info.model) == ("sim-finger", "SimFinger 500")
    assert info.serial == driver.probe().serial == SimFingerDriver(
        "left-scanner", SimFingerConfig(seed=4)).probe().serial
    assert info.serial != SimFingerDriver("left-scanner", SimFingerConfig(seed=5)).probe().serial
    assert info.serial != SimFingerDriver("right-scanner", SimFingerConfig(seed=4)).probe().serial
    assert not driver.health().ok, "probe() must not open the device"
    assert driver.open() == info


def test_inject_from_other_threads() -> None:
    driver = finger(**SMALL)
    threads = [threading.Thread(target=driver.inject, args=("no-finger",) * 50) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert driver.pending_faults() == ["no-finger"] * 400
    with pytest.raises(CaptureRetry):
        driver.capture(CaptureRequest())
    assert len(driver.pending_faults()) == 399


def test_unknown_faults_are_rejected() -> None:
    with pytest.raises(ValidationError, match="faults"):
        SimFingerConfig.model_validate({"faults": ["ok", "melt"]})
    with pytest.raises(ValidationError, match="faults"):
        SimCameraConfig.model_validate({"faults": ["no-finger"]})  # a finger fault, not a camera's
    driver = finger(**SMALL)
    with pytest.raises(ValueError, match="unknown fault"):
        driver.inject("timeout", "melt")
    assert driver.pending_faults() == [], "a rejected inject() must add nothing"


def test_config_rejects_nonsense() -> None:
    with pytest.raises(ValidationError, match="seed"):
        SimFingerConfig(seed=-1)
    with pytest.raises(ValidationError, match="colour"):
        SimCameraConfig.model_validate({"colour": "blue"})
    with pytest.raises(ValidationError, match="driver"):
        SimFingerConfig.model_validate({"driver": "sim-camera"})


# --- the camera ----------------------------------------------------------------------------


def test_camera_gives_a_jpeg_face_with_eyes_far_enough_apart() -> None:
    cam = camera(seed=2)
    shot = cam.capture(CaptureRequest())
    frame = decode(shot.image)
    assert shot.image[:2] == b"\xff\xd8" and shot.image_format == "jpeg"
    assert (shot.modality, shot.ppi, shot.width, shot.height) == (Modality.FACE, 0, 640, 480)
    assert frame.shape == (480, 640, 3)
    grey = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
    faces = cascade("frontalface_default").detectMultiScale(grey, 1.1, 5)
    assert len(faces) == 1, "OpenCV's stock detector must find exactly one face"
    x, y, w, h = faces[0]
    eyes = cascade("eye").detectMultiScale(grey[y : y + h // 2, x : x + w], 1.1, 5)
    assert len(eyes) == 2
    (x1, y1), (x2, y2) = ((ex + ew / 2, ey + eh / 2) for ex, ey, ew, eh in eyes)
    assert abs(x1 - x2) >= 90 and abs(y1 - y2) < 10, "ICAO: eyes level and >= 90 px apart"
    assert grey[:40, :40].mean() > 170, "background must be light"
    assert cam.capture(CaptureRequest()).image != shot.image


def cascade(name: str) -> cv2.CascadeClassifier:
    classifier = cv2.CascadeClassifier(f"{cv2.data.haarcascades}haarcascade_{name}.xml")
    assert not classifier.empty()
    return classifier


def test_registry_knows_the_simulators() -> None:
    for name, cls, modality in [("sim-finger", SimFingerDriver, Modality.FINGER),
                                ("sim-camera", SimCameraDriver, Modality.FACE)]:
        assert driver_class(name) is cls
        assert (cls.name, cls.modality, cls.vendor) == (name, modality, "kiosk-agent simulator")
        assert cls.config_model.model_validate({"driver": name}).driver == name

