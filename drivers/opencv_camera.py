"""Cameras through OpenCV: V4L2 devices, network streams, and video or image files.

``source`` is a device index ("0"), a device path (/dev/video0, or the stable
/dev/v4l/by-id/... link udev makes), an RTSP or HTTP(S) URL, or a video or image file (tests
and demos; a video rewinds at its end). ``capture()`` reads frames for up to the capture
timeout, has the face judge (drivers/base.py ``FaceJudge``) judge each, and returns the best
frame: the first that passes every check, or a better passing one among the next
``frames_after_pass`` frames; when none passes, the best failing one with its failed checks,
so the capture session (agent/capture/service.py) can decide to retry. ``CaptureRetry`` is raised
only when no face at all was seen.

The judge comes from whoever builds the driver, through ``make_judge`` before ``open()``: the
agent's is the ICAO checks of agent/quality/face.py with the ``[quality.face]`` thresholds
(agent/capture/build.py). Without one the camera judges nothing: ``capture()`` returns the
sharpest of ``1 + frames_after_pass`` frames and says so in ``quality_detail``.

A source that cannot be opened or read raises ``DeviceDisconnected``: the device worker
(agent/capture/workers.py) marks it offline, closes it and reopens it with backoff, and the agent
keeps running.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from typing import Any, Literal

import cv2
import numpy as np
from pydantic import Field

from drivers.base import (
    CapturedImage,
    CaptureRequest,
    DeviceInfo,
    Driver,
    DriverConfig,
    FaceJudge,
    FaceVerdict,
    Health,
    MakeFaceJudge,
    Modality,
)
from drivers.errors import CaptureRetry, DeviceDisconnected, PermanentDeviceError
from drivers.face_image import encode_jpeg, token_image

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
_URL = re.compile(r"^(rtsp|rtsps|http|https)://", re.IGNORECASE)


class OpenCvCameraConfig(DriverConfig):
    driver: Literal["opencv"] = "opencv"
    #: Device index ("0"), /dev/video* or /dev/v4l/by-id/* path, rtsp:// or http(s):// URL,
    #: or a video or image file.
    source: str = "0"
    #: Requested frame size and rate; the camera may pick the nearest it supports. 0: its default.
    width: int = Field(640, ge=0, le=8192)
    height: int = Field(480, ge=0, le=8192)
    fps: float = Field(0.0, ge=0, le=240)
    #: Frames read and dropped after opening, while auto exposure and white balance settle.
    warmup_frames: int = Field(5, ge=0, le=300)
    #: After the first frame that passes every check, look at up to this many more and keep
    #: the best: a moment more for a steadier frame, not the whole timeout.
    frames_after_pass: int = Field(5, ge=0, le=300)
    #: Failed reads in a row before the camera counts as gone (streams drop single frames).
    max_read_failures: int = Field(3, ge=1, le=100)
    #: RTSP/HTTP sources: longest wait to connect or for one frame before the camera counts as gone.
    stream_timeout_s: float = Field(5.0, gt=0, le=120)
    #: JPEG quality of the full frame and of the token image.
    jpeg_quality: int = Field(95, ge=10, le=100)


class OpenCvCameraDriver(Driver):
    name = "opencv"
    modality = Modality.FACE
    vendor = "OpenCV VideoCapture"
    config_model = OpenCvCameraConfig
    config: OpenCvCameraConfig

    def __init__(self, device_id: str, config: OpenCvCameraConfig) -> None:
        super().__init__(device_id, config)
        #: Makes the face judge on the first open(); set before then (the agent always does).
        #: None: captures are not judged.
        self.make_judge: MakeFaceJudge | None = None
        #: The ISO 19794-5 token image (JPEG) of the last capture, None when it had no face.
        #: It can also be rebuilt from the capture: its JPEG and ``quality_detail["token"]``.
        self.last_token: bytes | None = None
        self._cap: Any = None  # cv2.VideoCapture, or None for an image file
        self._still: np.ndarray | None = None
        self._judge: FaceJudge | None = None

    # --- the source ------------------------------------------------------------------------

    def _kind(self) -> str:
        source = self.config.source
        if source.isdigit():
            return "index"
        if _URL.match(source):
            return "stream"
        if source.startswith("/dev/"):
            return "device"
        return "image" if source.lower().endswith(IMAGE_SUFFIXES) else "video"

    def _path_gone(self) -> bool:
        """A device node or file that vanished: an unplugged camera, a removed file."""
        return self._kind() in ("device", "image", "video") and not os.path.exists(self.config.source)

    def probe(self) -> DeviceInfo:
        source = self.config.source
        kind = self._kind()
        # The by-id link names the camera (vendor, model, serial); plain indices name nothing.
        serial = os.path.basename(source) if kind == "device" else source
        return DeviceInfo(driver=self.name, model=f"OpenCV {kind}", serial=serial,
                          firmware=cv2.__version__, extra={"source": source, "kind": kind})

    def open(self) -> DeviceInfo:
        self.close()
        cfg = self.config
        if self._judge is None and self.make_judge is not None:
            try:
                self._judge = self.make_judge()
            except PermanentDeviceError as exc:
                raise PermanentDeviceError(f"{self.device_id}: {exc}") from None
        if self._path_gone():
            raise DeviceDisconnected(f"{self.device_id}: {cfg.source} does not exist")
        kind = self._kind()
        if kind == "image":
            self._still = cv2.imread(cfg.source, cv2.IMREAD_COLOR)
            if self._still is None:
                raise DeviceDisconnected(f"{self.device_id}: cannot read image {cfg.source}")
            return self.probe()
        self._cap = self._open_capture(kind)
        try:
            for _ in range(cfg.warmup_frames):
                self._read()
        except BaseException:
            self.close()  # open() leaves nothing behind when it fails
            raise
        return self.probe()

    def _open_capture(self, kind: str) -> Any:
        cfg = self.config
        if kind == "index":
            cap = cv2.VideoCapture(int(cfg.source), cv2.CAP_V4L2)
        elif kind == "device":
            # V4L2 takes the path itself, so a by-id link keeps following the same camera.
            cap = cv2.VideoCapture(os.path.realpath(cfg.source), cv2.CAP_V4L2)
        elif kind == "stream":
            # Without these, FFmpeg waits about 30 s on a dead camera, holding the device thread
            # (and the agent's shutdown) that long.
            ms = int(cfg.stream_timeout_s * 1000)
            cap = cv2.VideoCapture(cfg.source, cv2.CAP_FFMPEG,
                                   [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms])
        else:
            cap = cv2.VideoCapture(cfg.source)
        if not cap.isOpened():
            cap.release()
            raise DeviceDisconnected(f"{self.device_id}: OpenCV cannot open {cfg.source}")
        if kind in ("index", "device"):
            if cfg.width and cfg.height:
                cap.set(cv2.CAP_PROP_FRAME_WIDTH, cfg.width)
                cap.set(cv2.CAP_PROP_FRAME_HEIGHT, cfg.height)
            if cfg.fps:
                cap.set(cv2.CAP_PROP_FPS, cfg.fps)
            cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # the newest frame, not a stale queued one
        return cap

    def _read(self) -> np.ndarray:
        """One frame; DeviceDisconnected after max_read_failures failed reads in a row."""
        if self._still is not None:
            return self._still
        if self._cap is None:
            raise DeviceDisconnected(f"{self.device_id}: camera not open")
        for attempt in range(self.config.max_read_failures):
            ok, frame = self._cap.read()
            if ok and frame is not None:
                return frame
            if self._kind() == "video" and attempt == 0:
                self._cap.set(cv2.CAP_PROP_POS_FRAMES, 0)  # end of a demo video: start again
            elif attempt + 1 < self.config.max_read_failures:
                time.sleep(0.05)
        raise DeviceDisconnected(f"{self.device_id}: no frame from {self.config.source} "
                                 f"after {self.config.max_read_failures} reads")

    def preview(self) -> np.ndarray:
        if self._path_gone():
            raise DeviceDisconnected(f"{self.device_id}: {self.config.source} is gone")
        return self._read()

    def health(self) -> Health:
        if self._cap is None and self._still is None:
            return Health(False, "not open")
        if self._path_gone():
            return Health(False, f"{self.config.source} is gone")
        if self._cap is not None and not self._cap.isOpened():
            return Health(False, "capture closed")
        return Health(True)

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
        self._cap = None
        self._still = None

    # --- capture ---------------------------------------------------------------------------

    def capture(self, request: CaptureRequest) -> CapturedImage:
        if self._path_gone():
            # A removed file or device node: reads from an already open handle could go on.
            raise DeviceDisconnected(f"{self.device_id}: {self.config.source} is gone")
        if self._cap is None and self._still is None:
            raise DeviceDisconnected(f"{self.device_id}: camera not open")
        timeout = request.timeout_s if request.timeout_s is not None else self.config.capture_timeout_s
        deadline = time.monotonic() + timeout
        if self._judge is None:
            return self._unjudged(deadline)
        session = self._best_frame(self._judge, deadline)
        if not session.any_face:
            raise CaptureRetry("no face", session.first_hint or "look straight at the camera")
        assert session.best is not None  # _best_frame judges at least one frame
        verdict, frame = session.best
        self.last_token = None
        detail: dict[str, Any] = {**verdict.report, "frames_analysed": session.frames}
        if verdict.token is not None:
            self.last_token = encode_jpeg(token_image(frame, verdict.token), self.config.jpeg_quality)
            detail["token"] = verdict.token
        detail["token_image"] = self.last_token is not None
        return self._captured(frame, verdict.score, detail)

    def _best_frame(self, judge: FaceJudge, deadline: float) -> _Session:
        """Judge frames until the deadline, or until enough of them have passed."""
        session = _Session()
        passing = 0
        while True:
            frame = self._read()
            verdict = judge(frame)
            session.add(verdict, frame)
            if verdict.passed:
                passing += 1
                if passing > self.config.frames_after_pass:
                    break
            if self._still is not None:
                break  # a still image gives the same frame again: once is enough
            if time.monotonic() >= deadline:
                break
        return session

    def _unjudged(self, deadline: float) -> CapturedImage:
        """No judge: the sharpest of the next few frames, with nothing checked and a note saying so."""
        best, best_sharpness, frames = None, -1.0, 0
        while True:
            frame = self._read()
            frames += 1
            sharpness = _sharpness(frame)
            if sharpness > best_sharpness:
                best, best_sharpness = frame, sharpness
            if self._still is not None or frames > self.config.frames_after_pass:
                break
            if time.monotonic() >= deadline:
                break
        assert best is not None
        self.last_token = None
        detail = {"judged": False, "frames_analysed": frames, "token_image": False,
                  "note": f"no face judge: the sharpest of {frames} frame(s), no face or ICAO checks"}
        return self._captured(best, None, detail)

    def _captured(self, frame: np.ndarray, score: int | None, detail: dict[str, Any]) -> CapturedImage:
        height, width = frame.shape[:2]
        return CapturedImage(modality=Modality.FACE, position=0, image_format="jpeg",
                             image=encode_jpeg(frame, self.config.jpeg_quality), width=width,
                             height=height, ppi=0, quality=score, quality_detail=detail)


def _sharpness(frame: np.ndarray) -> float:
    """Variance of the Laplacian over the whole frame: enough to tell a blurred frame from a
    steady one of the same scene, which is all the unjudged capture compares."""
    grey = frame if frame.ndim == 2 else cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
    return float(cv2.Laplacian(grey, cv2.CV_64F).var())


@dataclass
class _Session:
    """What one capture has seen so far: the best frame, and whether any face at all."""

    best: tuple[FaceVerdict, np.ndarray] | None = None
    frames: int = 0
    any_face: bool = False
    first_hint: str = ""

    def add(self, verdict: FaceVerdict, frame: np.ndarray) -> None:
        self.frames += 1
        self.any_face = self.any_face or verdict.faces > 0
        if not self.first_hint and verdict.hints:
            self.first_hint = verdict.hints[0]
        if self.best is None or verdict.score > self.best[0].score:
            self.best = (verdict, frame)
