"""mediapipe is installed without its declared dependencies (requirements-nodeps.txt), for its
model files alone: these tests prove the face mesh (agent/quality/face_mesh.py) runs with none
of those left out, imports nothing of mediapipe (nor protobuf), and that the OpenCV loaded is
the headless build the project declares."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import cv2
import numpy as np
import pytest

from drivers.sim_camera import draw_face
from tests.support.paths import ROOT

pytestmark = pytest.mark.skipif(importlib.util.find_spec("mediapipe") is None,
                                reason="mediapipe has no wheel for this platform or Python")

#: mediapipe's declared dependencies the face mesh never imports: left out on purpose.
LEFT_OUT = {"jax", "jaxlib", "matplotlib", "sentencepiece", "sounddevice", "opencv-contrib-python",
            "absl-py", "attrs", "flatbuffers"}
#: Their import names, blocked in the child below (absl-py is absl, attrs is attr and attrs).
BLOCKED = ("jax", "jaxlib", "matplotlib", "sentencepiece", "sounddevice", "absl", "attr", "attrs",
           "flatbuffers")
#: Never loaded by the path, installed or not.
HEAVY = ("jax", "jaxlib", "matplotlib", "sentencepiece", "sounddevice")


def _run_path(tmp_path: Path, block: tuple[str, ...]) -> dict:
    """The landmarks path in a fresh process: the face mesh and a whole face report."""
    image = tmp_path / "face.png"
    cv2.imwrite(str(image), draw_face(640, 480, np.random.default_rng(0)))
    script = (
        "import json, sys\n"
        f"for name in {block!r}:\n"
        "    sys.modules[name] = None  # importing it now raises ImportError\n"
        "import cv2\n"
        "from agent.quality import face_mesh\n"
        "from agent.quality.face import FaceAssessor\n"
        f"frame = cv2.imread({str(image)!r})\n"
        "mesh = face_mesh.load_face_mesh()\n"
        "points = [len(face) for face in mesh.find(frame)]\n"
        "report = FaceAssessor(mesh=mesh).assess(frame).report\n"
        "print(json.dumps({'points': points, 'path': report.extra['path'],\n"
        "                  'contrib': hasattr(cv2, 'ximgproc'),\n"
        "                  'modules': sorted(n for n, m in sys.modules.items() if m is not None)}))\n"
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=180,
                         cwd=ROOT)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout.splitlines()[-1])


def test_the_face_mesh_runs_with_what_mediapipe_is_given_only(tmp_path: Path) -> None:
    out = _run_path(tmp_path, BLOCKED)
    assert out["points"] == [478] and out["path"] == "landmarks"


def test_the_path_imports_none_of_the_left_out_packages(tmp_path: Path) -> None:
    out = _run_path(tmp_path, ())
    assert out["points"] == [478]
    loaded = {name.split(".")[0] for name in out["modules"]}
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))
    # The models are files; mediapipe's runtime (~48 MB) and protobuf are not loaded.
    assert not loaded & {"mediapipe", "google"}, sorted(loaded & {"mediapipe", "google"})
    # OpenCV's contrib build writes into the same cv2 package; its files must not be the ones
    # loaded (they need libGL.so.1 and ~20 MB more memory): docs/face-quality.md, "Landmarks".
    assert not out["contrib"], "cv2 is the contrib build: pip install --force-reinstall --no-deps " \
                               "opencv-python-headless==4.11.0.86"


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~;\[ (]", requirement, maxsplit=1)[0].strip().lower().replace("_", "-")


def test_what_mediapipe_declares_is_left_out_or_declared_by_the_project() -> None:
    """A mediapipe upgrade that declares something new fails here until it is sorted."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    ours = {_name(r) for r in project["dependencies"] + project["optional-dependencies"]["landmarks"]}
    assert "mediapipe" not in ours  # it comes from requirements-nodeps.txt, with --no-deps
    nodeps = (ROOT / "requirements-nodeps.txt").read_text()
    assert f"mediapipe=={metadata.version('mediapipe')};" in nodeps
    declared = {_name(r) for r in metadata.requires("mediapipe") or [] if "extra ==" not in r}
    assert declared - LEFT_OUT <= ours, sorted(declared - LEFT_OUT - ours)
    assert not LEFT_OUT & ours
