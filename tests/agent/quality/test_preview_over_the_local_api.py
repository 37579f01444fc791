"""The live preview's face hints through the real local API: a running agent with the
simulated camera, ``GET /v1/devices/camera/preview.mjpeg?fps=15&checks=1`` as the registration
app asks for it, every part's ``X-Face-Hints`` following the scene in front of the camera,
judged on the landmarks path. The scene changes as a person would change it: the simulated
camera's own frames, lit from one side, then moved off centre (the camera's ``preview`` is
wrapped for that; the frames, the API, the stream and the checks are the real ones)."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from agent.config import load_config
from agent.daemon import Agent
from devtools.broker import MosquittoBroker
from tests.support.config import security_section, to_toml
from tests.support.local_api import Api, local_api_section

SHADOW = "light the face evenly (one side is in shadow)"
ASIDE = "move to the centre of the picture"


def _shadow_on_one_side(frame: np.ndarray) -> np.ndarray:
    """The light from the image's left: the right half in shadow (x 0.55), as in
    tests/agent/quality/test_face_landmarks.py."""
    x = np.arange(frame.shape[1], dtype=np.float32)
    gain = 1 - 0.45 / (1 + np.exp(-(x - frame.shape[1] / 2) / 12))
    return np.clip(frame * gain[None, :, None], 0, 255).astype(np.uint8)


def _aside(frame: np.ndarray) -> np.ndarray:
    shift = np.float32([[1, 0, 150], [0, 1, 0]])
    return cv2.warpAffine(frame, shift, (frame.shape[1], frame.shape[0]), borderMode=cv2.BORDER_REPLICATE)


SCENES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "facing the camera": lambda frame: frame, "lit from one side": _shadow_on_one_side, "off centre": _aside}


class Parts:
    """The parts' headers of a multipart/x-mixed-replace stream, one at a time."""

    def __init__(self, stream: Any) -> None:
        self.stream, self.buffer = stream, b""

    def next(self) -> dict[str, str]:
        while True:
            start = self.buffer.find(b"--kiosk-frame\r\n")
            end = self.buffer.find(b"\r\n\r\n", start)
            if start >= 0 and end >= 0:
                head = self.buffer[start + 15:end].decode()
                headers = dict(line.split(": ", 1) for line in head.split("\r\n"))
                stop = end + 4 + int(headers["Content-Length"])
                if len(self.buffer) >= stop:
                    self.buffer = self.buffer[stop:]
                    return headers
            chunk = self.stream.read1(65536)
            assert chunk, "the preview stream ended"
            self.buffer += chunk

    def hints_after_change(self, old: list[str], limit: int = 30) -> list[list[str]]:
        """Parts until the hints differ from ``old`` (frames already in flight show the old
        scene), then five more: the new scene's hints, part by part."""
        for _ in range(limit):
            hints = json.loads(self.next()["X-Face-Hints"])
            if hints != old:
                return [hints] + [json.loads(self.next()["X-Face-Hints"]) for _ in range(5)]
        raise AssertionError(f"the hints stayed {old} for {limit} parts")


@pytest.fixture
def agent(tmp_path: Path, broker: MosquittoBroker) -> Any:
    raw = {
        "security": security_section(tmp_path, "kiosk-p1"),
        "kiosk": {"id": "kiosk-p1", "site": "test-site", "state_dir": str(tmp_path / "state")},
        "mqtt": {"host": "127.0.0.1", "port": broker.port, "allow_plaintext": True},
        "queue": {"min_free_bytes": 0},
        "capture": {"mode": "on-demand"},
        "devices": {"camera": {"driver": "sim-camera", "seed": 3}},
        "local_api": local_api_section(tmp_path),
    }
    (tmp_path / "agent.toml").write_text(to_toml(raw))
    running = Agent(load_config(tmp_path / "agent.toml"))
    running.start()
    try:
        yield running
    finally:
        running.stop()


def test_the_preview_hints_follow_the_scene_on_the_landmarks_path(
        agent: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    api = Api.for_agent(agent)
    camera = agent.workers["camera"].driver
    scene = ["facing the camera"]
    drawn = camera.preview
    monkeypatch.setattr(camera, "preview", lambda: SCENES[scene[0]](drawn()))
    assert agent.config.local_api.preview_fps == 5  # the default; the app asks for 15
    request = urllib.request.Request(api.base + "/v1/devices/camera/preview.mjpeg?fps=15&checks=1",
                                     headers=api.headers())
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.headers["Content-Type"].startswith("multipart/x-mixed-replace")
        parts = Parts(response)
        facing = [parts.next() for _ in range(3)]
        assert [json.loads(p["X-Face-Hints"]) for p in facing] == [[], [], []]
        assert [p["X-Face-Passed"] for p in facing] == ["true"] * 3
        scene[0] = "lit from one side"
        # Uneven light is a landmarks check: the Haar path has no such hint to give.
        assert parts.hints_after_change([]) == [[SHADOW]] * 6
        scene[0] = "off centre"
        assert parts.hints_after_change([SHADOW]) == [[ASIDE]] * 6
        scene[0] = "facing the camera"
        assert parts.hints_after_change([ASIDE]) == [[]] * 6
    report = api.ok("GET", "/v1/devices/camera/checks")  # the full report of one live frame
    assert report["extra"]["path"] == "landmarks"
    assert report["extra"]["landmarks"].startswith("face mesh (mediapipe")
    assert {"yaw", "eyes_open", "lighting_balance"} <= {c["name"] for c in report["checks"]}
