from __future__ import annotations

import cv2
import numpy as np
import pytest
from pydantic import ValidationError

from drivers import (
    CaptureRequest,
    CaptureRetry,
    DeviceDisconnected,
    TransientDeviceError,
    driver_class,
)
from drivers.fingerprint_synth import synthesize
from drivers.sim_camera import SimCameraConfig, SimCameraDriver
from drivers.sim_finger import SimFingerConfig, SimFingerDriver


def finger(**kw) -> SimFingerDriver:  # type: ignore[no-untyped-def]
    driver = SimFingerDriver("finger", SimFingerConfig(**kw))
    driver.open()
    return driver


def decode(data: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)


def test_finger_image_is_a_500ppi_png_of_the_stated_size() -> None:
    shot = finger().capture(CaptureRequest(position=2))
    image = decode(shot.image)
    assert shot.image_format == "png" and shot.ppi == 500 and shot.position == 2
    assert image.shape == (shot.height, shot.width) == (400, 320) and image.dtype == np.uint8


def test_finger_has_ridges_at_the_expected_period() -> None:
    image = synthesize(4).astype(np.float64)
    patch = image[150:278, 96:224]  # the middle of the fingertip
    assert patch.std() > 40, "ridges and valleys must contrast"
    spectrum = np.abs(np.fft.fftshift(np.fft.fft2(patch - patch.mean())))
    fy, fx = np.unravel_index(np.argmax(spectrum), spectrum.shape)
    radius = np.hypot(fy - 64, fx - 64) / 128  # cycles per pixel
    assert 1 / 12 < radius < 1 / 7, f"dominant period {1 / radius:.1f} px, want about 9"
    background = image[:10, :10]
    assert background.std() < 5 and background.mean() > 200


def test_repeated_captures_vary_but_match_the_same_finger() -> None:
    driver = finger()
    a, b = (decode(driver.capture(CaptureRequest(position=1)).image) for _ in range(2))
    other = decode(finger(seed=9).capture(CaptureRequest(position=1)).image)
    assert not np.array_equal(a, b)

    def best_corr(x: np.ndarray, y: np.ndarray) -> float:
        # Search a small shift range: the simulated finger moves between captures.
        crop = x[120:280, 90:230].astype(np.float32)
        return float(cv2.matchTemplate(y.astype(np.float32), crop, cv2.TM_CCOEFF_NORMED).max())

    assert best_corr(a, b) > best_corr(a, other) + 0.15


@pytest.mark.parametrize("fault, error, hint", [
    ("no-finger", CaptureRetry, "place your finger"),
    ("too-messy", CaptureRetry, "wipe"),
    ("timeout", TransientDeviceError, None),
])
def test_scripted_faults(fault: str, error: type[Exception], hint: str | None) -> None:
    driver = finger(faults=[fault])
    with pytest.raises(error) as info:
        driver.capture(CaptureRequest())
    if hint:
        assert hint in info.value.hint  # type: ignore[attr-defined]
    driver.capture(CaptureRequest())  # the script is used up: back to normal


def test_disconnect_persists_until_reopened() -> None:
    driver = finger()
    driver.inject("disconnect")
    for _ in range(2):
        with pytest.raises(DeviceDisconnected):
            driver.capture(CaptureRequest())
    assert not driver.health().ok
    driver.close()
    driver.open()
    assert driver.health().ok
    driver.capture(CaptureRequest())


def test_unknown_faults_rejected() -> None:
    with pytest.raises(ValidationError):
        SimFingerConfig(faults=["melt"])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="unknown fault"):
        finger().inject("melt")


def test_camera_gives_a_jpeg_face() -> None:
    camera = SimCameraDriver("camera", SimCameraConfig(faults=["no-face"]))
    camera.open()
    with pytest.raises(CaptureRetry, match="look straight"):
        camera.capture(CaptureRequest())
    shot = camera.capture(CaptureRequest())
    frame = decode(shot.image)
    assert shot.image_format == "jpeg" and frame.shape == (480, 640, 3)
    # A face is there: OpenCV's stock frontal-face detector finds exactly one.
    cascade = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")
    faces = cascade.detectMultiScale(cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY), 1.1, 5)
    assert len(faces) == 1


def test_capture_needs_an_open_device() -> None:
    driver = SimFingerDriver("finger", SimFingerConfig())
    with pytest.raises(TransientDeviceError, match="not open"):
        driver.capture(CaptureRequest())


def test_registry_knows_the_simulators() -> None:
    assert driver_class("sim-finger") is SimFingerDriver
    assert driver_class("sim-camera") is SimCameraDriver
    with pytest.raises(KeyError, match="known drivers"):
        driver_class("nope")
