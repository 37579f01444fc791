"""Face quality: frames analysed per second at 640 x 480 on one core, against raw OpenCV.

The agent's side is what the camera driver does with every frame: decode (as a camera
backend does), convert to grey, find the face and its eyes, and run every check
(agent/quality/face.py). The raw side, in the same run and on the same frames, is OpenCV's
JPEG decode, the grey conversion and the same Haar face cascade with the same parameters:
the least any face check must do. Both run with OpenCV limited to one thread, rounds
alternating, and the best round of each counts (the least disturbed by other processes).
The token image and the JPEG of the chosen frame are made once per capture, not per frame;
their cost is reported separately.

The frames are the simulated camera's faces (drivers/sim_camera.py): the astronaut
photograph of the tests comes from scikit-image, a test-only dependency.

    python -m bench.face_quality [--frames N]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import cv2
import numpy as np

from agent.quality.face import FaceAssessor, encode_jpeg, token_geometry, token_image
from agent.quality.face_detect import HaarDetector
from drivers.sim_camera import draw_face

WIDTH, HEIGHT = 640, 480
#: Distinct frames cycled through: a little head movement and lighting change between them.
DISTINCT = 16
ROUNDS = 3
TARGET_FPS = 25.0
TARGET_RATIO = 0.7


def frames(count: int = DISTINCT) -> list[bytes]:
    rng = np.random.default_rng(7)
    return [encode_jpeg(draw_face(WIDTH, HEIGHT, rng), 90) for _ in range(count)]


def _raw(jpegs: list[bytes], n: int, detector: HaarDetector) -> float:
    started = time.perf_counter()
    for i in range(n):
        frame = cv2.imdecode(np.frombuffer(jpegs[i % len(jpegs)], np.uint8), cv2.IMREAD_COLOR)
        detector.detect_faces(cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY))
    return n / (time.perf_counter() - started)


def _agent(jpegs: list[bytes], n: int, assessor: FaceAssessor) -> tuple[float, int]:
    passed = 0
    started = time.perf_counter()
    for i in range(n):
        frame = cv2.imdecode(np.frombuffer(jpegs[i % len(jpegs)], np.uint8), cv2.IMREAD_COLOR)
        passed += assessor.assess(frame).report.passed
    return n / (time.perf_counter() - started), passed


def _per_capture_ms(jpegs: list[bytes], assessor: FaceAssessor, n: int = 20) -> float:
    """Token image and the two JPEGs, done once for the frame a capture keeps."""
    frame = cv2.imdecode(np.frombuffer(jpegs[0], np.uint8), cv2.IMREAD_COLOR)
    face = assessor.assess(frame).face
    if face is None:
        raise RuntimeError("the benchmark frame has no face: drivers/sim_camera.py changed?")
    started = time.perf_counter()
    for _ in range(n):
        encode_jpeg(token_image(frame, token_geometry(face)), 95)
        encode_jpeg(frame, 95)
    return (time.perf_counter() - started) / n * 1000


def run(sizes: Any = None, frames_per_round: int | None = None) -> dict[str, Any]:
    """The figures for bench/last-run.json; ``sizes`` (quick or full) sets the frame count."""
    n = frames_per_round or (600 if getattr(sizes, "mode", "quick") == "full" else 200)
    jpegs = frames()
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)  # the target is for one core; OpenCV would otherwise use them all
    try:
        assessor = FaceAssessor()
        detector = HaarDetector(assessor.cfg.min_face_px)
        _raw(jpegs, 10, detector)  # warm the caches and the allocator
        _agent(jpegs, 10, assessor)
        raw_rounds, agent_rounds, passed = [], [], 0
        for _ in range(ROUNDS):
            raw_rounds.append(_raw(jpegs, n, detector))
            fps, passed = _agent(jpegs, n, assessor)
            agent_rounds.append(fps)
        capture_ms = _per_capture_ms(jpegs, assessor)
    finally:
        cv2.setNumThreads(threads)
    agent_fps, raw_fps = max(agent_rounds), max(raw_rounds)
    ratio = round(agent_fps / raw_fps, 3)
    return {
        "face_quality": {
            "frame": f"{WIDTH}x{HEIGHT} JPEG, simulated camera face",
            "frames_per_round": n, "rounds": ROUNDS, "opencv": cv2.__version__, "opencv_threads": 1,
            "agent_fps_rounds": [round(v, 1) for v in agent_rounds],
            "raw_fps_rounds": [round(v, 1) for v in raw_rounds],
            "frames_passed": f"{passed}/{n}",
            "per_capture_token_and_jpeg_ms": round(capture_ms, 2),
            "targets": {
                "face_fps": {"target": f">= {TARGET_FPS}", "value": round(agent_fps, 1),
                             "met": agent_fps >= TARGET_FPS},
                "face_ratio_vs_haar": {"target": f">= {TARGET_RATIO}", "value": ratio,
                                       "met": ratio >= TARGET_RATIO},
            },
        },
        "face_fps": round(agent_fps, 1),
        "face_raw_haar_fps": round(raw_fps, 1),
        "face_ratio_vs_haar": ratio,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.face_quality", description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=200, help="frames per round (default 200)")
    args = parser.parse_args(argv)
    print(json.dumps(run(frames_per_round=args.frames), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
