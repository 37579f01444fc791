"""The face mesh on mediapipe's models run by OpenCV (agent/quality/face_mesh.py): the same
points as mediapipe's own face mesh, model files checked before they are loaded, and any frame
a camera (or an attacker on its USB port) can send answered without an exception."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
import tracemalloc
from pathlib import Path

import cv2
import numpy as np
import pytest

from agent.quality import face_mesh as fm
from agent.quality import landmarks as lm
from agent.quality.config import FaceQualityConfig
from agent.quality.face import FaceAssessor
from drivers.sim_camera import draw_face
from tests.support.faces import SMILE_ALLOWED, no_face, portrait, two_faces
from tests.support.paths import ROOT

pytestmark = pytest.mark.skipif(importlib.util.find_spec("mediapipe") is None,
                                reason="mediapipe has no wheel for this platform or Python")


def _turned(frame: np.ndarray, degrees: float) -> np.ndarray:
    h, w = frame.shape[:2]
    matrix = cv2.getRotationMatrix2D((w / 2, h / 2), degrees, 1.0)
    return cv2.warpAffine(frame, matrix, (w, h), borderMode=cv2.BORDER_REPLICATE)


def _images() -> dict[str, np.ndarray]:
    p = portrait()
    return {"portrait": p, "turned +20": _turned(p, 20), "turned -20": _turned(p, -20),
            "small": cv2.resize(cv2.resize(p, (320, 240)), (640, 480)), "shifted": np.roll(p, 100, axis=1),
            "two faces": two_faces(), "simulated 0": draw_face(640, 480, np.random.default_rng(0)),
            "simulated 1": draw_face(640, 480, np.random.default_rng(1))}


#: mediapipe's own FaceMesh (static images, refine_landmarks) on the same frames, in a child
#: process so that this one never imports mediapipe (test_face_landmarks.py checks that). Its
#: package __init__ files import what requirements-nodeps.txt leaves out (matplotlib): the two
#: packages are registered bare over the installed files, and the face mesh imported from them.
REFERENCE = """
import importlib.machinery, importlib.util, json, os, sys, types
import numpy as np
root = list(importlib.util.find_spec("mediapipe").submodule_search_locations)[0]
for name, sub in (("mediapipe", ""), ("mediapipe.python.solutions", "python/solutions")):
    package = types.ModuleType(name)
    package.__path__ = [os.path.join(root, sub)]
    package.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=True)
    package.__spec__.submodule_search_locations = package.__path__
    sys.modules[name] = package
import mediapipe.python.solutions.face_mesh as mp_mesh
frames = np.load(sys.argv[1])
out = {}
with mp_mesh.FaceMesh(static_image_mode=True, max_num_faces=2, refine_landmarks=True,
                      min_detection_confidence=0.5) as mesh:
    for name in frames.files:
        frame = frames[name]
        h, w = frame.shape[:2]
        result = mesh.process(frame[:, :, ::-1].copy())
        faces = result.multi_face_landmarks or ()
        out[name] = [[(p.x * w, p.y * h) for p in face.landmark] for face in faces]
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def mesh() -> fm.FaceMesh:
    return fm.load_face_mesh()


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[np.ndarray]]:
    frames = tmp_path_factory.mktemp("frames") / "frames.npz"
    np.savez(frames, **_images())
    run = subprocess.run([sys.executable, "-c", REFERENCE, str(frames)], capture_output=True, text=True,
                         timeout=300, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-2000:]
    return {name: [np.array(face) for face in faces] for name, faces in json.loads(run.stdout).items()}


def test_the_points_are_mediapipes(mesh: fm.FaceMesh, reference: dict[str, list[np.ndarray]]) -> None:
    """Same faces, mesh points within 3 px on average (faces about 300 px high; measured 1.6
    to 2.3: mediapipe's refined mesh is a newer model), every iris point within 2.5 px
    (measured 1.8 at worst; 4.3 with the wrong eye mirrored)."""
    for name, frame in _images().items():
        ours, theirs = mesh.find(frame), reference[name]
        assert len(ours) == len(theirs), name
        for points in ours:
            assert points.shape == (fm.MESH_POINTS, 2)
            match = min(theirs, key=lambda t: float(np.linalg.norm(t.mean(0) - points.mean(0))))
            distance = np.linalg.norm(points - match, axis=1)
            assert distance[:468].mean() < 3.0, (name, distance[:468].mean())
            assert distance[468:].max() < 2.5, (name, distance[468:].round(1))


def test_the_pose_is_mediapipes(mesh: fm.FaceMesh, reference: dict[str, list[np.ndarray]]) -> None:
    """With the pitch bias added back (face_mesh.PITCH_BIAS_DEG), head pitch within 3 degrees
    of mediapipe's mesh on each frame (measured 2.2 at worst; 5.6 without it), yaw within 4
    (measured 3.1, on the portrait turned 20 degrees)."""
    for name, frame in _images().items():
        size = (frame.shape[1], frame.shape[0])
        for points in mesh.find(frame):
            match = min(reference[name], key=lambda t: float(np.linalg.norm(t.mean(0) - points.mean(0))))
            ours, theirs = lm.head_pose(points, size), lm.head_pose(match, size)
            assert ours is not None and theirs is not None
            assert abs(ours.pitch - mesh.pitch_bias_deg - theirs.pitch) < 3.0, (name, ours, theirs)
            assert abs(ours.yaw - theirs.yaw) < 4.0, (name, ours, theirs)


def test_no_face_and_two_faces(mesh: fm.FaceMesh) -> None:
    assert mesh.find(no_face()) == []
    assert len(mesh.find(two_faces())) == 2
    one = fm.FaceMesh(max_faces=1)
    assert len(one.find(two_faces())) == 1


@pytest.mark.parametrize("shape", [(1, 1, 3), (2, 3, 3), (7, 2000, 3), (2000, 7, 3), (480, 640, 3)])
@pytest.mark.parametrize("fill", ["black", "white", "noise"])
def test_any_frame_is_answered(mesh: fm.FaceMesh, shape: tuple[int, int, int], fill: str) -> None:
    rng = np.random.default_rng(7)
    frame = {"black": np.zeros(shape, np.uint8), "white": np.full(shape, 255, np.uint8),
             "noise": rng.integers(0, 256, shape, dtype=np.uint8)}[fill]
    faces = mesh.find(frame)
    assert all(f.shape == (fm.MESH_POINTS, 2) and np.isfinite(f).all() for f in faces)


def test_a_huge_frame_costs_no_copy_of_itself(mesh: fm.FaceMesh) -> None:
    """A camera (or a device posing as one) may send any size: the detector scales the frame
    down before it pads it, so no frame-sized square is ever made (the frame is 34 MB, its square
    46 MB, which the first version made)."""
    frame = cv2.resize(portrait(), (4000, 3000), interpolation=cv2.INTER_NEAREST)
    tracemalloc.start()
    try:
        faces = mesh.find(frame)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(faces) == 1
    assert peak < 8 * 2**20, f"{peak / 2**20:.1f} MB allocated for a {frame.nbytes / 2**20:.0f} MB frame"


def _copy_models(tmp_path: Path) -> Path:
    folder = tmp_path / "mediapipe"
    for relative, _ in fm.MODELS.values():
        target = folder / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(fm.model_folder() / relative, target)
    return folder


def test_a_changed_model_file_is_not_loaded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            caplog: pytest.LogCaptureFixture) -> None:
    folder = _copy_models(tmp_path)
    monkeypatch.setattr(fm, "model_folder", lambda: folder)
    assert fm.load_face_mesh().find(portrait())  # the copies as they are: loaded
    model = folder / fm.MODELS["mesh"][0]
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0x01  # one weight, one bit
    model.write_bytes(bytes(data))
    with pytest.raises(fm.LandmarksUnavailable, match=r"face_landmark\.tflite is not the one .*SHA-256"):
        fm.load_face_mesh()
    # The face checks go on without landmarks and say why (the setting's "auto").
    report = FaceAssessor(FaceQualityConfig(**SMILE_ALLOWED)).assess(portrait()).report
    assert report.extra["path"] == "haar" and "SHA-256" in report.extra["landmarks_unavailable"]
    assert any("face checks without landmarks" in r.getMessage() for r in caplog.records)


def test_a_missing_model_file_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = _copy_models(tmp_path)
    (folder / fm.MODELS["iris"][0]).unlink()
    monkeypatch.setattr(fm, "model_folder", lambda: folder)
    with pytest.raises(fm.LandmarksUnavailable, match=r"cannot read .*iris_landmark\.tflite"):
        fm.load_face_mesh()
