"""The driver boundary for resolutions: a finger image without a plausible resolution never
becomes a capture, and every finger PNG a driver hands over says its resolution (pHYs)."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from drivers import CapturedImage, CaptureRequest, Modality, PermanentDeviceError
from drivers.base import FINGER_PPI
from drivers.errors import ImplausibleResolution
from drivers.sim_finger import SimFingerConfig, SimFingerDriver


def finger_image(ppi: int) -> CapturedImage:
    return CapturedImage(Modality.FINGER, 2, "png", b"\x89PNG", 320, 400, ppi)


@pytest.mark.parametrize("ppi", [0, -500, 249, 1001, 5080])
def test_a_finger_image_without_a_plausible_resolution_is_refused(ppi: int) -> None:
    with pytest.raises(ImplausibleResolution, match=f"position 2 declares {ppi} ppi.*250..1000"):
        finger_image(ppi)


def test_the_refusal_is_a_permanent_device_error() -> None:
    # The capture worker marks a device failed on PermanentDeviceError (its config must
    # change); retrying would only produce the same unusable image.
    with pytest.raises(PermanentDeviceError):
        finger_image(0)


@pytest.mark.parametrize("ppi", [250, 450, 500, 508, 512, 1000])
def test_real_scanner_resolutions_pass(ppi: int) -> None:
    assert finger_image(ppi).ppi == ppi and ppi in FINGER_PPI


def test_a_camera_frame_needs_no_resolution() -> None:
    assert CapturedImage(Modality.FACE, 0, "jpeg", b"\xff\xd8", 640, 480, 0).ppi == 0


@pytest.mark.parametrize("ppi", [500, 1000])
def test_simulated_scanner_pngs_carry_their_resolution(ppi: int) -> None:
    driver = SimFingerDriver("finger", SimFingerConfig.model_validate({"ppi": ppi, "width": 128,
                                                                         "height": 160}))
    driver.open()
    try:
        shots = [driver.capture(CaptureRequest(position=2)), driver.capture(CaptureRequest(position=13))]
    finally:
        driver.close()
    for shot in shots:
        # Read by Pillow, not by drivers/png_phys.py which wrote the chunk.
        with Image.open(io.BytesIO(shot.image)) as img:
            assert [round(d) for d in img.info["dpi"]] == [ppi, ppi]
            assert img.mode == "L" and img.size == (shot.width, shot.height)
