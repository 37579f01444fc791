"""The live preview's face hints: the local API's MJPEG stream (agent/registration/http.py
``Stream``) over a real socket, every frame judged by the face checks as the local API does
(agent/registration/local_api.py ``_frame``), the hints in each part's headers as they change,
at 15 frames per second or more on one core."""

from __future__ import annotations

import http.server
import json
import os
import threading
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import cv2
import numpy as np
import pytest

from agent.quality.face import FaceAssessor
from agent.registration.http import Stream
from drivers.sim_camera import draw_face


def _frames() -> list[tuple[np.ndarray, list[str]]]:
    """Three frames in turn, and the hints each must show."""
    good = draw_face(640, 480, np.random.default_rng(4))
    soft = cv2.GaussianBlur(good, (0, 0), 3.0)
    shift = np.float32([[1, 0, 150], [0, 1, 0]])
    aside = cv2.warpAffine(good, shift, (640, 480), borderMode=cv2.BORDER_REPLICATE)
    return [(good, []), (soft, ["hold still"]), (aside, ["move to the centre of the picture"])]


@pytest.fixture
def one_core() -> Iterator[None]:
    """The whole process (the agent's threads, mediapipe's, the test's reader) on one core."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(before)})
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        yield
    finally:
        cv2.setNumThreads(threads)
        os.sched_setaffinity(0, before)


def _serve(next_frame: Any, stopping: threading.Event) -> http.server.ThreadingHTTPServer:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            Stream(next_frame, 30, stopping).write(self)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _parts(stream: Any, count: int) -> list[dict[str, str]]:
    """The headers of the first ``count`` parts of a multipart/x-mixed-replace stream."""
    buffer, parts = b"", []
    while len(parts) < count:
        chunk = stream.read1(65536)
        if not chunk:
            break
        buffer += chunk
        while True:
            start = buffer.find(b"--kiosk-frame\r\n")
            end = buffer.find(b"\r\n\r\n", start)
            if start < 0 or end < 0:
                break
            headers = dict(line.split(": ", 1) for line in buffer[start + 15:end].decode().split("\r\n"))
            length = int(headers["Content-Length"])
            if len(buffer) < end + 4 + length:
                break
            parts.append(headers)
            buffer = buffer[end + 4 + length:]
    return parts


def test_the_preview_shows_the_hints_as_they_change_at_15_fps_on_one_core(one_core: None) -> None:
    frames = _frames()
    assessor = FaceAssessor()
    assessor.assess(frames[0][0])  # the face mesh loads once, when the camera opens
    shown = iter(range(10**9))

    def next_frame() -> tuple[bytes, dict[str, Any]]:
        frame, _ = frames[next(shown) % len(frames)]
        report = assessor.assess(frame).report.as_dict()
        ok, jpeg = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 80])
        assert ok
        return jpeg.tobytes(), report

    stopping = threading.Event()
    server = _serve(next_frame, stopping)
    count = 45
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/preview.mjpeg"
        with urllib.request.urlopen(url, timeout=30) as response:
            started, cpu = time.perf_counter(), time.process_time()
            parts = _parts(response, count)
            wall, used = time.perf_counter() - started, time.process_time() - cpu
            stopping.set()
    finally:
        stopping.set()
        server.shutdown()
        server.server_close()
    assert len(parts) == count
    hints = [json.loads(part["X-Face-Hints"]) for part in parts]
    assert hints == [frames[i % 3][1] for i in range(count)]  # each frame's own hints, in turn
    assert [part["X-Face-Passed"] for part in parts[:3]] == ["true", "false", "false"]
    # The rate one core gives: CPU time of every thread of this process. Wall time says the
    # same on a free core; on a shared machine it says how busy the machine was.
    per_cpu_second = count / used
    assert per_cpu_second >= 15, f"{per_cpu_second:.1f} frames per CPU second ({count / wall:.1f}/s wall)"
