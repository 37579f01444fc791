"""drivers/sbi_iris.py against the SBI emulator (tests/emulators/sbi_service.py) as a Double
iris camera, a real HTTP server: both eyes in one RCAPTURE, a missing eye as an exception, one
eye on its own sub id, the device's scores, and refusals (bad signature, wrong eye label)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from drivers.base import CaptureRequest, Modality
from drivers.errors import PermanentDeviceError
from drivers.sbi import DeviceUntrusted
from drivers.sbi_http import SbiProtocolError
from drivers.sbi_iris import SbiIrisConfig, SbiIrisDriver
from drivers.sbi_jws import EMPTY_HASH
from tests.emulators.sbi_iris import eye_image
from tests.emulators.sbi_pki import DevicePki
from tests.emulators.sbi_service import SbiService


@pytest.fixture(scope="module")
def pki() -> DevicePki:
    return DevicePki.make()


@pytest.fixture
def ca(pki: DevicePki, tmp_path: Path) -> Path:
    return pki.write_ca(tmp_path / "provider-ca.pem")


@pytest.fixture
def service(pki: DevicePki) -> Iterator[SbiService]:
    with SbiService(pki, bio_type="Iris", serial="SBI0000000003") as svc:
        yield svc


def iris(service: SbiService, ca: Path) -> SbiIrisDriver:
    config = SbiIrisConfig(trusted_certs=[ca], port_min=service.port, port_max=service.port,
                           capture_timeout_s=8.0, answer_grace_s=2.0)
    driver = SbiIrisDriver("iris", config)
    driver.open()
    return driver


def bios(service: SbiService) -> list[dict]:
    return [body["bio"][0] for method, body in service.requests if method == "RCAPTURE"]


def grey(png: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_GRAYSCALE)


def test_a_double_device_takes_both_eyes_in_one_capture_with_their_scores(service: SbiService,
                                                                            ca: Path) -> None:
    driver = iris(service, ca)
    assert driver.probe().model == "Emulated SBI Iris"
    assert [m for m, body in service.requests if m == "MOSIPDISC"][0] and \
        service.requests[0][1] == {"type": "Iris"}
    eyes = driver.capture_eyes(CaptureRequest(position=0, session="s1"))
    (bio,) = bios(service)
    assert bio["type"] == "Iris" and bio["deviceSubId"] == 3 and bio["count"] == 2
    assert bio["bioSubType"] == ["Right", "Left"] and bio["exception"] == []
    assert bio["previousHash"] == EMPTY_HASH
    assert sorted(eyes) == [1, 2]
    for label, name, score in ((1, "Right", 81), (2, "Left", 74)):
        image = eyes[label]
        assert image.modality is Modality.IRIS and image.position == label and image.ppi == 0
        assert image.quality == score and image.quality_detail["device_scores"] == {name: float(score)}
        assert image.quality_detail["assessor"] == "sbi-device"
        # Lossless from the device's JPEG 2000 to the kiosk's PNG: the very eye the device saw.
        assert np.array_equal(grey(image.image), eye_image(name))
    # The chain continued: the next capture of the session starts from the last hash.
    assert driver.chain_of("s1") != EMPTY_HASH


def test_a_missing_eye_is_an_exception_and_one_eye_goes_to_its_sub_id(service: SbiService,
                                                                       ca: Path) -> None:
    driver = iris(service, ca)
    eyes = driver.capture_eyes(CaptureRequest(position=0, exceptions=(2,)))
    assert sorted(eyes) == [1]
    first = bios(service)[0]
    assert first["count"] == 1 and first["bioSubType"] == ["Right"] and first["exception"] == ["Left"]
    left = driver.capture(CaptureRequest(position=2))
    second = bios(service)[1]
    assert second["deviceSubId"] == 1 and second["bioSubType"] == ["Left"] and second["exception"] == []
    assert left.position == 2 and left.quality == 74
    with pytest.raises(PermanentDeviceError, match="both eyes are exceptions"):
        driver.capture_eyes(CaptureRequest(position=0, exceptions=(1, 2)))
    with pytest.raises(PermanentDeviceError, match="not an eye label"):
        driver.capture(CaptureRequest(position=13))


def test_a_bad_signature_or_a_broken_chain_is_refused_and_the_chain_stays(service: SbiService,
                                                                          ca: Path) -> None:
    driver = iris(service, ca)
    service.faults.extend(["bad-signature", "alg-none", "broken-chain"])
    for _ in range(3):
        with pytest.raises(DeviceUntrusted, match="nothing kept"):
            driver.capture(CaptureRequest(position=1, session="s2"))
    assert driver.chain_of("s2") == EMPTY_HASH
    assert driver.capture(CaptureRequest(position=1, session="s2")).quality == 81


def test_a_record_labelled_with_the_other_eye_is_refused(service: SbiService, ca: Path) -> None:
    driver = iris(service, ca)
    service.faults.append("wrong-eye")
    with pytest.raises(SbiProtocolError, match="says Right but its record holds eye labels \\[2\\]"):
        driver.capture(CaptureRequest(position=1))


def test_an_iris_plan_item_is_judged_by_the_devices_score(service: SbiService, ca: Path) -> None:
    from agent.quality.config import QualityConfig
    from agent.registration.config import RegistrationConfig
    from agent.registration.judging import Judge
    from agent.registration.plan import plan_items

    items = plan_items("slaps-442-iris", True, "finger", "camera", "iris")
    assert [i.key for i in items][-3:] == ["face", "iris-right", "iris-left"]
    right, left = items[-2:]
    assert (right.position, left.position, right.device) == (1, 2, "iris")
    assert right.as_dict()["name"] == "right eye" and right.as_dict()["modality"] == "iris"
    image = iris(service, ca).capture(CaptureRequest(position=right.position))  # the device says 81
    for threshold, passed in ((80, True), (82, False)):
        judge = Judge(RegistrationConfig(iris_min_quality=threshold), QualityConfig())
        verdict = judge.judge(right, image, 0)
        checks = {c.name: c for c in verdict.detail.report.checks}
        assert verdict.passed is passed and verdict.score == 81
        assert checks["registration_min_quality"].passed is passed
        # The device's score against the score the kiosk asked of it (requested_score 40).
        assert checks["device_quality"].passed and checks["device_quality"].value == 81


def test_the_drivers_reader_refuses_hostile_iris_records() -> None:
    import struct

    from drivers.sbi_iso import read_iris
    from tests.emulators.sbi_iris import iris_record

    good = iris_record("Left", 74)
    assert [e.eye for e in read_iris(good)] == [2]
    image_at = 16 + 4 + 9 + 5 + 6  # general header, representation length, date, device, 1 quality block
    cases = {
        "record length": good[:-1],
        "not an ISO/IEC 19794-6:2011": b"IIR\x00030\x00" + good[8:],
        "size or data length": good[:image_at + 5] + struct.pack(">H", 40000) + good[image_at + 7:],
        "eye label 3": good[:image_at + 2] + b"\x03" + good[image_at + 3:],
    }
    longer = bytearray(good)
    struct.pack_into(">I", longer, image_at + 29, 2**31)  # image length far past the record
    cases["size or data length "] = bytes(longer)
    for why, data in cases.items():
        with pytest.raises(ValueError, match=why.strip()):
            read_iris(data)
