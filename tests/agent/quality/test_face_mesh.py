"""The face mesh on mediapipe's models run by OpenCV (agent/quality/face_mesh.py): the same
points as mediapipe's own face mesh, model files checked before they are loaded, and any frame
a camera (or an attacker on its USB port) can send answered, or refused with a clear error."""

from __future__ import annotations

import importlib.util
import json
import os
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
from agent.quality.report import BadImage
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


def _shifted(frame: np.ndarray, dx: int, dy: int) -> np.ndarray:
    matrix = np.float32([[1, 0, dx], [0, 1, dy]])
    return cv2.warpAffine(frame, matrix, (frame.shape[1], frame.shape[0]), borderMode=cv2.BORDER_REPLICATE)


@pytest.mark.parametrize(("dx", "dy", "hint"), [
    (0, -160, "lower your head a little (the eyes are too high in the picture)"),
    (0, 200, "sit up straight (the eyes are too low in the picture)"),
    (-280, 0, "move to the centre of the picture"),
    (250, 0, "move to the centre of the picture"),
])
def test_a_face_the_frame_cuts_off_fails_its_framing(mesh: fm.FaceMesh, dx: int, dy: int, hint: str) -> None:
    """A tall person, or one leaning: the mesh places the cut-off part beyond the frame's
    edge. The skin measures then take what is inside it (a negative start wrapped around to
    an empty region and a ZeroDivisionError ended the capture), and the framing fails."""
    frame = _shifted(portrait(), dx, dy)
    points = mesh.find(frame)[0]
    assert points.min() < 0 or points[:, 0].max() > frame.shape[1] or points[:, 1].max() > frame.shape[0]
    report = FaceAssessor(FaceQualityConfig(**SMILE_ALLOWED), mesh=mesh).assess(frame).report
    assert not report.passed and hint in report.hints(), report.as_dict()
    values = {c.name: c.value for c in report.checks}
    assert values["luminance"] is not None and values["sharpness"] is not None, "measured on what is in frame"


def test_frames_of_other_layouts(mesh: fm.FaceMesh) -> None:
    """BGRA and one-channel frames are judged as their BGR and grey equivalents; anything not
    8-bit is refused with a clear error instead of being misread (16-bit read as no face)."""
    assessor = FaceAssessor(FaceQualityConfig(**SMILE_ALLOWED), mesh=mesh)
    bgr = portrait()
    plain = assessor.assess(bgr).report.as_dict()
    assert assessor.assess(cv2.cvtColor(bgr, cv2.COLOR_BGR2BGRA)).report.as_dict() == plain
    grey = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    assert assessor.assess(grey[:, :, None]).report.as_dict() == assessor.assess(grey).report.as_dict()
    for bad in (bgr.astype(np.uint16) * 257, bgr.astype(np.float32) / 255, bgr[:, :, :2],
                np.zeros((480, 640, 0), np.uint8), np.zeros((0, 640, 3), np.uint8)):
        with pytest.raises(BadImage, match="8-bit grey, BGR or BGRA"):
            assessor.assess(bad)
    # The mesh itself refuses what OpenCV would crash on (a zero-channel frame: SIGSEGV).
    for bad in (np.zeros((480, 640, 0), np.uint8), grey, bgr.astype(np.float32)):
        with pytest.raises(ValueError, match="8-bit BGR"):
            mesh.find(bad)


def test_a_model_path_that_is_no_regular_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A FIFO in a model's place hung the camera's open; a huge file would fill memory."""
    folder = _copy_models(tmp_path)
    monkeypatch.setattr(fm, "model_folder", lambda: folder)
    iris = folder / fm.MODELS["iris"][0]
    iris.unlink()
    os.mkfifo(iris)
    with pytest.raises(fm.LandmarksUnavailable, match=r"iris_landmark\.tflite.*not a regular file"):
        fm.load_face_mesh()
    iris.unlink()
    with iris.open("wb") as fh:
        fh.truncate(fm.MAX_MODEL_BYTES + 1)  # sparse: no disk used
    with pytest.raises(fm.LandmarksUnavailable, match="at most"):
        fm.load_face_mesh()
