"""The OpenCV camera driver on real video and image files written by the tests: best-frame
selection with the agent's face judge, the no-face retry, capture without a judge, and a source
that disappears and returns (offline, then online again through the agent's DeviceWorker)."""

from __future__ import annotations

import functools
import http.server
import shutil
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from agent.capture.workers import DeviceWorker
from agent.config import FaceQualityConfig, validate_config
from agent.quality.face import token_from_capture
from agent.quality.judge import face_judge_maker
from drivers import (
    CaptureRequest,
    CaptureRetry,
    DeviceDisconnected,
    Modality,
    PermanentDeviceError,
    driver_class,
)
from drivers.opencv_camera import OpenCvCameraConfig, OpenCvCameraDriver
from tests.support.faces import SMILE_ALLOWED, blurred, no_face, portrait
from tests.support.waiting import wait_until


def write_video(path: Path, frames: Iterable[np.ndarray], fps: float = 10.0) -> Path:
    """An MJPG .avi, the codec every OpenCV build can write and read back."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (640, 480))
    assert writer.isOpened(), "this OpenCV build cannot write MJPG"
    try:
        for frame in frames:
            writer.write(frame)
    finally:
        writer.release()
    return path


def camera(source: Path | str, quality: FaceQualityConfig | None = None, *, judged: bool = True,
           **settings: object) -> OpenCvCameraDriver:
    """A camera on ``source`` with the agent's face judge (``quality``'s thresholds), as the agent
    builds it; ``judged=False``: without a judge."""
    config = OpenCvCameraConfig.model_validate({"source": str(source), "warmup_frames": 0, **settings})
    driver = OpenCvCameraDriver("camera", config)
    if judged:
        driver.make_judge = face_judge_maker(quality or FaceQualityConfig(**SMILE_ALLOWED))
    return driver


@pytest.fixture
def opened() -> Iterator[list[OpenCvCameraDriver]]:
    """Drivers to close after the test, whatever it asserted."""
    drivers: list[OpenCvCameraDriver] = []
    yield drivers
    for driver in drivers:
        driver.close()


def test_registered_and_validated_by_the_config() -> None:
    assert driver_class("opencv") is OpenCvCameraDriver
    config = validate_config({"kiosk": {"id": "k1"}, "mqtt": {"allow_plaintext": True}, "devices": {"cam": {
        "driver": "opencv", "source": "/dev/v4l/by-id/usb-Logitech_C920_ABC123-video-index0",
        "width": 1280, "height": 720, "fps": 15}}})
    device = config.devices["cam"]
    assert isinstance(device, OpenCvCameraConfig) and device.width == 1280
    with pytest.raises(Exception, match="devices.cam.sauce"):
        validate_config({"kiosk": {"id": "k1"}, "mqtt": {"allow_plaintext": True},
                         "devices": {"cam": {"driver": "opencv", "sauce": "0"}}})
    info = OpenCvCameraDriver("cam", device).probe()
    assert info.serial == "usb-Logitech_C920_ABC123-video-index0" and info.extra["kind"] == "device"


def test_capture_from_a_video_returns_the_frame_and_its_report(tmp_path: Path,
                                                               opened: list[OpenCvCameraDriver]) -> None:
    video = write_video(tmp_path / "person.avi", [no_face()] * 3 + [portrait()] * 8)
    driver = camera(video, frames_after_pass=2)
    opened.append(driver)
    info = driver.open()
    assert info.driver == "opencv" and driver.health().ok
    image = driver.capture(CaptureRequest(timeout_s=5))
    assert image.modality is Modality.FACE and image.image_format == "jpeg"
    frame = cv2.imdecode(np.frombuffer(image.image, np.uint8), cv2.IMREAD_COLOR)
    assert frame.shape == (480, 640, 3) == (image.height, image.width, 3)
    detail = image.quality_detail
    assert detail["passed"] is True and image.quality is not None and image.quality >= 50
    assert detail["frames_analysed"] == 3 + 3  # three without a face, then 1 + frames_after_pass
    assert detail["token_image"] is True and detail["token"]["width"] >= 240
    token = cv2.imdecode(np.frombuffer(driver.last_token or b"", np.uint8), cv2.IMREAD_COLOR)
    assert token.shape[:2] == (detail["token"]["height"], detail["token"]["width"])
    assert token_from_capture(image.image, detail) is not None


def test_the_best_frame_wins(tmp_path: Path, opened: list[OpenCvCameraDriver]) -> None:
    # Blurred frames first: the driver must not settle for them while a sharp one comes later.
    video = write_video(tmp_path / "focus.avi", [blurred()] * 4 + [portrait()] * 2)
    driver = camera(video, frames_after_pass=0)
    opened.append(driver)
    driver.open()
    image = driver.capture(CaptureRequest(timeout_s=5))
    assert image.quality_detail["passed"] is True
    assert image.quality_detail["frames_analysed"] == 5


def test_no_frame_passes_returns_the_best_with_its_failed_checks(tmp_path: Path,
                                                                 opened: list[OpenCvCameraDriver]) -> None:
    video = write_video(tmp_path / "soft.avi", [blurred()] * 5)
    driver = camera(video)
    opened.append(driver)
    driver.open()
    started = time.monotonic()
    image = driver.capture(CaptureRequest(timeout_s=1.0))
    assert time.monotonic() - started < 5
    detail = image.quality_detail
    assert detail["passed"] is False and image.quality is not None and image.quality < 50
    assert [c["name"] for c in detail["checks"] if not c["passed"]] == ["sharpness"]
    assert detail["hints"] == ["hold still"]
    assert detail["frames_analysed"] > 5  # the video rewound and was read again until the timeout


def test_no_face_within_the_timeout_asks_the_person(tmp_path: Path, opened: list[OpenCvCameraDriver]) -> None:
    video = write_video(tmp_path / "empty.avi", [no_face()] * 4)
    driver = camera(video)
    opened.append(driver)
    driver.open()
    with pytest.raises(CaptureRetry) as caught:
        driver.capture(CaptureRequest(timeout_s=0.3))
    assert caught.value.hint == "look straight at the camera"


def test_an_image_file_is_a_source(tmp_path: Path, opened: list[OpenCvCameraDriver]) -> None:
    still = tmp_path / "portrait.png"
    cv2.imwrite(str(still), portrait())
    driver = camera(still)
    opened.append(driver)
    driver.open()
    image = driver.capture(CaptureRequest(timeout_s=5))
    assert image.quality_detail["passed"] is True and image.quality_detail["frames_analysed"] == 1


def test_thresholds_are_handed_to_the_driver(tmp_path: Path, opened: list[OpenCvCameraDriver]) -> None:
    still = tmp_path / "portrait.png"
    cv2.imwrite(str(still), portrait())
    driver = camera(still, FaceQualityConfig(min_eye_distance_px=200, **SMILE_ALLOWED))
    opened.append(driver)
    driver.open()
    detail = driver.capture(CaptureRequest(timeout_s=1)).quality_detail
    assert [c["name"] for c in detail["checks"] if not c["passed"]] == ["eye_distance"]


def test_without_a_judge_the_sharpest_frame_is_taken_unjudged(tmp_path: Path,
                                                              opened: list[OpenCvCameraDriver]) -> None:
    video = write_video(tmp_path / "person.avi", [blurred(), portrait(), blurred()] * 3)
    driver = camera(video, judged=False, frames_after_pass=2)
    opened.append(driver)
    assert driver.probe().extra["kind"] == "video"
    driver.open()
    assert driver.preview().shape == (480, 640, 3)
    image = driver.capture(CaptureRequest(timeout_s=5))
    detail = image.quality_detail
    assert image.quality is None and detail["judged"] is False and "no face judge" in detail["note"]
    assert detail["frames_analysed"] == 3 and "checks" not in detail and driver.last_token is None
    taken = cv2.imdecode(np.frombuffer(image.image, np.uint8), cv2.IMREAD_COLOR).astype(int)
    assert np.abs(taken - portrait()).mean() < np.abs(taken - blurred()).mean()  # the sharp frame


def test_missing_source_and_missing_yunet_model(tmp_path: Path) -> None:
    driver = camera(tmp_path / "nothing.avi")
    with pytest.raises(DeviceDisconnected):
        driver.open()
    assert not driver.health().ok
    driver.close()
    driver.close()  # twice is fine
    still = tmp_path / "portrait.png"
    cv2.imwrite(str(still), portrait())
    yunet = camera(still, FaceQualityConfig(yunet_model=tmp_path / "face_detection_yunet.onnx"))
    with pytest.raises(PermanentDeviceError, match="quality.face.yunet_model"):
        yunet.open()
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a network")
    yunet.make_judge = face_judge_maker(FaceQualityConfig(yunet_model=junk))
    with pytest.raises(PermanentDeviceError, match="cannot load the YuNet model"):
        yunet.open()


def test_a_source_that_disappears_goes_offline_and_comes_back(tmp_path: Path) -> None:
    video = write_video(tmp_path / "camera.avi", [portrait()] * 4)
    spare = tmp_path / "spare.avi"
    shutil.copyfile(video, spare)
    worker = DeviceWorker("camera", camera(video, frames_after_pass=0), reopen_min_s=0.05, reopen_max_s=0.2)
    worker.start()
    try:
        assert worker.wait_first_open(10) and worker.state == "online"
        first = worker.submit(lambda d: d.capture(CaptureRequest(timeout_s=2))).result(10)
        assert first.quality_detail["passed"] is True
        video.unlink()  # the camera is unplugged
        with pytest.raises(DeviceDisconnected):
            worker.submit(lambda d: d.capture(CaptureRequest(timeout_s=2))).result(10)
        assert worker.state == "offline" and "camera.avi" in worker.error
        time.sleep(0.3)  # several reopen attempts fail meanwhile; the worker keeps going
        assert worker.state == "offline"
        shutil.copyfile(spare, video)  # plugged back in
        wait_until(lambda: worker.state == "online", 10, what="the camera back online")
        image = worker.submit(lambda d: d.capture(CaptureRequest(timeout_s=2))).result(10)
        assert image.quality_detail["passed"] is True
    finally:
        worker.stop()
    assert worker.state == "stopped"


def test_an_http_stream_is_a_source(tmp_path: Path, opened: list[OpenCvCameraDriver]) -> None:
    """A video served over HTTP on loopback, read through FFmpeg as an IP camera would be."""
    write_video(tmp_path / "stream.avi", [portrait()] * 6)
    handler = functools.partial(_QuietHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, name="test-http", daemon=True)
    thread.start()
    try:
        driver = camera(f"http://127.0.0.1:{server.server_address[1]}/stream.avi", frames_after_pass=1)
        opened.append(driver)
        assert driver.probe().extra["kind"] == "stream"
        driver.open()
        image = driver.capture(CaptureRequest(timeout_s=5))
        assert image.quality_detail["passed"] is True and image.quality_detail["frames_analysed"] == 2
        driver.close()
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        return None  # keep the request log out of the test output
