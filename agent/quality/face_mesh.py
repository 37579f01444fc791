"""The face mesh: 478 facial landmarks per face, from mediapipe's models run by OpenCV.

mediapipe's own runtime cost the agent about 48 MB of resident memory on the first face (its
graph, interpreter and 60 MB of native code) against a 100 MB budget for the whole agent
(issue #20). Its three models are plain TensorFlow Lite files that OpenCV's dnn module reads,
so this module runs them itself, as mediapipe's static-image face mesh does, and imports
nothing of mediapipe (about 21 MB; docs/face-quality.md, "Landmarks"):

1. Face detection (BlazeFace, short range): the frame letterboxed to a square and scaled to
   128 x 128, values -1..1; 896 fixed anchors (16 x 16 cells of 2 at stride 8, 8 x 8 cells of
   6 at stride 16), each regressing a box and six key points in 1/128 units of the square;
   scores through a sigmoid, kept from 0.5, overlapping boxes (IoU > 0.3) merged by their
   scores' weights.
2. The mesh (468 points): a square 1.5 times the face's box, turned so the eyes (key points 0
   and 1) are level, cut to 192 x 192, values 0..1; points in the cut, mapped back. A face
   whose presence score is under 0.5 is dropped.
3. The irises (5 points each, numbered 468-472 and 473-477 after the mesh): around each eye's
   corners (33-133, 362-263) a square 2.3 times their distance, levelled, 64 x 64, values 0..1.
   The model was trained on one eye; the other eye is mirrored in and its points mirrored back.

Checked against mediapipe 0.10.18's FaceMesh (refine_landmarks, its newer attention model) on
the test images (the portrait straight, turned 20 degrees either way, small, shifted; two
faces; simulated faces): mean point distance 1.6 to 2.3 px on faces about 300 px high, iris
points within 1.8 px; tests/agent/quality/test_face_mesh.py keeps that comparison.

The model files come from the installed mediapipe wheel (pinned in requirements-nodeps.txt),
read by path, and must match the SHA-256 digests below: a different or damaged file is not
loaded (LandmarksUnavailable, and the face checks fall back to the Haar cascades and say so).
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
import os
import stat
import threading
from importlib import metadata
from pathlib import Path

import cv2
import numpy as np

#: Points per face: the mesh's 468 and five on each iris.
MESH_POINTS = 478

#: The model files inside the mediapipe package, and their digests (mediapipe 0.10.18).
MODELS = {
    "detector": ("modules/face_detection/face_detection_short_range.tflite",
                 "bbff11cebd1eb27a1e004cae0b0e63ec8c551cbf34a4451148b4908b8db3eca8"),
    "mesh": ("modules/face_landmark/face_landmark.tflite",
             "1055cb9d4a9ca8b8c688902a3a5194311138ba256bcc94e336d8373a5f30c814"),
    "iris": ("modules/iris_landmark/iris_landmark.tflite",
             "d1744d2a09c25f501d39eba4faff47e53ecca8852c5ce19bce8eeac39357521f"),
}

DETECTOR_SIZE, MESH_SIZE, IRIS_SIZE = 128, 192, 64
#: The largest model file read (the three are 0.2 to 2.6 MB).
MAX_MODEL_BYTES = 16 * 1024 * 1024
MIN_SCORE = 0.5  # detection and presence, as mediapipe's min_detection_confidence default
MERGE_IOU = 0.3
MESH_SCALE, IRIS_SCALE = 1.5, 2.3
#: Each eye's corners, image-left first: they set the iris cut's centre, size and angle.
EYE_CORNERS = ((33, 133), (362, 263))
#: Which eye is mirrored in (the iris model's training eye is the other one), and the
#: iris points that trade places when mirrored (the ones at its left and right).
MIRRORED_EYE = 1
MIRRORED_ORDER = (0, 3, 2, 1, 4)


#: Head pitch from this mesh's points (agent/quality/landmarks.py ``head_pose``) less that from
#: mediapipe's refined mesh on the same frames, against which the pose limits were set: the
#: two models place the nose tip and the chin a few pixels apart. Mean of 25 frames (the
#: portrait turned, scaled, shifted and mirrored, and twelve simulated faces): -3.5 degrees,
#: standard deviation 1.1 (yaw: -0.2, sd 1.2, so none there). The face checks add it back;
#: tests/agent/quality/test_face_mesh.py keeps the comparison.
PITCH_BIAS_DEG = -3.5


class LandmarksUnavailable(RuntimeError):
    """The face mesh cannot run here; the message says why and what to do."""


def mediapipe_version() -> str:
    try:
        return metadata.version("mediapipe")
    except metadata.PackageNotFoundError:
        return "not installed"


def model_folder() -> Path:
    """The installed mediapipe package's folder, found without importing it."""
    spec = importlib.util.find_spec("mediapipe")
    if spec is None or not spec.submodule_search_locations:
        raise LandmarksUnavailable(
            "the face mesh models are not installed (requirements-nodeps.txt installs mediapipe 0.10.18, "
            "which carries them, on Linux x86_64 and aarch64 with Python < 3.13); the face checks use "
            "the Haar cascades")
    return Path(list(spec.submodule_search_locations)[0])


def _load(folder: Path, name: str) -> cv2.dnn.Net:
    relative, digest = MODELS[name]
    path = folder / relative
    try:
        data = _read_regular(path)
    except OSError as exc:
        raise LandmarksUnavailable(f"cannot read the face mesh's {name} model {path}: {exc.strerror}; "
                                   "reinstall the agent's dependencies") from None
    if hashlib.sha256(data).hexdigest() != digest:
        raise LandmarksUnavailable(
            f"the face mesh's {name} model {path} is not the one this agent was checked with "
            f"(SHA-256 differs; mediapipe {mediapipe_version()} installed, 0.10.18 expected): "
            "reinstall the agent's dependencies (requirements-nodeps.txt)")
    try:
        return cv2.dnn.readNetFromTFLite(np.frombuffer(data, np.uint8))
    except cv2.error as exc:
        raise LandmarksUnavailable(
            f"OpenCV {cv2.__version__} cannot load the face mesh's {name} model "
            f"({str(exc).strip().splitlines()[-1]}); reinstall the agent's dependencies, or set "
            'quality.face.landmarks = "off"') from None


def _read_regular(path: Path) -> bytes:
    """A model file's bytes: a regular file of at most MAX_MODEL_BYTES (a FIFO or a device
    put in its place would hang the camera's open, or fill memory), else OSError."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_MODEL_BYTES:
            raise OSError(0, f"not a regular file of at most {MAX_MODEL_BYTES:,} bytes")
        with os.fdopen(os.dup(fd), "rb") as fh:
            return fh.read(MAX_MODEL_BYTES + 1)
    finally:
        os.close(fd)


def _anchors() -> np.ndarray:
    """The detector's anchor centres (896 x 2), in units of its square input."""
    centres = []
    for stride, per_cell in ((8, 2), (16, 6)):
        cells = DETECTOR_SIZE // stride
        for y in range(cells):
            for x in range(cells):
                centres += [((x + 0.5) / cells, (y + 0.5) / cells)] * per_cell
    return np.array(centres, np.float64)


class FaceMesh:
    """Faces and their 478 landmarks, one frame at a time (every frame judged on its own, so
    a report never depends on the frames before it). Thread-safe: one frame at a time."""

    def __init__(self, max_faces: int = 2) -> None:
        folder = model_folder()
        self._detector, self._mesh, self._iris = (_load(folder, n) for n in ("detector", "mesh", "iris"))
        # One inference each: an OpenCV that parses a model but cannot run it fails here, at
        # the camera's open, with the fallback, not at every frame.
        for name, net, size in (("detector", self._detector, DETECTOR_SIZE), ("mesh", self._mesh, MESH_SIZE),
                                ("iris", self._iris, IRIS_SIZE)):
            try:
                self._run(net, np.zeros((1, 3, size, size), np.float32))
            except cv2.error as exc:
                raise LandmarksUnavailable(
                    f"OpenCV {cv2.__version__} loads but cannot run the face mesh's {name} model "
                    f"({str(exc).strip().splitlines()[-1]}); reinstall the agent's dependencies, or set "
                    'quality.face.landmarks = "off"') from None
        self._anchors = _anchors()
        self._lock = threading.Lock()
        self.max_faces = max_faces
        self.pitch_bias_deg = PITCH_BIAS_DEG
        self.version = mediapipe_version()
        self.describe = f"face mesh (mediapipe {self.version} models, OpenCV {cv2.__version__} dnn)"

    def find(self, bgr: np.ndarray) -> list[np.ndarray]:
        """The landmarks of every face found (up to ``max_faces``, the most certain first),
        each (478, 2) in frame pixels; ``bgr`` an 8-bit BGR frame (ValueError otherwise:
        OpenCV would crash on some shapes rather than raise)."""
        if bgr.dtype != np.uint8 or bgr.ndim != 3 or bgr.shape[2] != 3 or bgr.size == 0:
            raise ValueError(f"the face mesh takes 8-bit BGR frames, not {bgr.dtype} {bgr.shape}")
        with self._lock:
            faces = []
            for box, eyes in self._detect(bgr)[: self.max_faces]:
                points = self._landmarks(bgr, box, eyes)
                if points is not None:
                    faces.append(points)
            return faces

    # --- the three models -------------------------------------------------------------------

    @staticmethod
    def _run(net: cv2.dnn.Net, blob: np.ndarray) -> dict[str, np.ndarray]:
        net.setInput(blob)
        names = net.getUnconnectedOutLayersNames()
        return dict(zip(names, net.forward(names), strict=True))

    def _detect(self, bgr: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """Faces as (box x0, y0, x1, y1; the two eyes' key points), in frame pixels."""
        # Scaled first, then letterboxed: the work and memory stay those of 128 x 128 pixels
        # whatever size of frame a camera sends.
        height, width = bgr.shape[:2]
        scale = DETECTOR_SIZE / max(height, width)
        small = cv2.resize(bgr, (max(1, round(width * scale)), max(1, round(height * scale))),
                           interpolation=cv2.INTER_AREA)
        top, left = (DETECTOR_SIZE - small.shape[0]) // 2, (DETECTOR_SIZE - small.shape[1]) // 2
        square = cv2.copyMakeBorder(small, top, DETECTOR_SIZE - small.shape[0] - top, left,
                                    DETECTOR_SIZE - small.shape[1] - left, cv2.BORDER_CONSTANT, value=0)
        blob = cv2.dnn.blobFromImage(square, 1 / 127.5, mean=(127.5,) * 3, swapRB=True)  # -1..1
        out = self._run(self._detector, blob)
        raw = out["regressors"].reshape(-1, 16).astype(np.float64) / DETECTOR_SIZE
        side = DETECTOR_SIZE / scale  # the square's side in frame pixels
        top, left = top / scale, left / scale
        logits = np.clip(out["classificators"].reshape(-1).astype(np.float64), -100, 100)
        scores = 1 / (1 + np.exp(-logits))
        keep = np.flatnonzero(scores >= MIN_SCORE)
        if keep.size == 0:
            return []
        anchors = self._anchors[keep]
        centre, size = raw[keep, 0:2] + anchors, raw[keep, 2:4]
        boxes = np.hstack([centre - size / 2, centre + size / 2]) * side - (left, top, left, top)
        eyes = (raw[keep, 4:8].reshape(-1, 2, 2) + anchors[:, None, :]) * side - (left, top)
        order = np.argsort(-scores[keep])
        boxes, eyes, weights = boxes[order], eyes[order], scores[keep][order]
        faces = []
        while len(boxes):
            group = _iou(boxes[0], boxes) > MERGE_IOU
            group[0] = True
            w = weights[group] / weights[group].sum()
            faces.append((w @ boxes[group], np.tensordot(w, eyes[group], axes=1)))
            boxes, eyes, weights = boxes[~group], eyes[~group], weights[~group]
        return [(box, eye) for box, eye in faces
                if np.isfinite(box).all() and np.isfinite(eye).all() and box[2] > box[0] and box[3] > box[1]]

    def _landmarks(self, bgr: np.ndarray, box: np.ndarray, eyes: np.ndarray) -> np.ndarray | None:
        centre = (box[:2] + box[2:]) / 2
        side = MESH_SCALE * max(box[2] - box[0], box[3] - box[1])
        cut, matrix = _cut(bgr, centre, side, _level(eyes[0], eyes[1]), MESH_SIZE)
        out = self._run(self._mesh, cv2.dnn.blobFromImage(cut, 1 / 255.0, swapRB=True))
        # Two outputs: the points (1,404 values) and the presence score (one).
        points, presence = sorted(out.values(), key=np.size, reverse=True)
        if 1 / (1 + math.exp(-float(np.clip(presence.ravel()[0], -100, 100)))) < MIN_SCORE:
            return None
        mesh = _to_frame(matrix, points.reshape(-1, 3)[:, :2].astype(np.float64))
        irises = [self._iris_points(bgr, mesh[a], mesh[b], mirrored=i == MIRRORED_EYE)
                  for i, (a, b) in enumerate(EYE_CORNERS)]
        result = np.vstack([mesh, *irises])
        return result if result.shape == (MESH_POINTS, 2) and np.all(np.isfinite(result)) else None

    def _iris_points(self, bgr: np.ndarray, start: np.ndarray, end: np.ndarray, mirrored: bool) -> np.ndarray:
        side = max(IRIS_SCALE * float(np.linalg.norm(end - start)), 1.0)
        cut, matrix = _cut(bgr, (start + end) / 2, side, _level(start, end), IRIS_SIZE)
        if mirrored:
            cut = cv2.flip(cut, 1)
        out = self._run(self._iris, cv2.dnn.blobFromImage(cut, 1 / 255.0, swapRB=True))
        points = out["output_iris"].reshape(5, 3)[:, :2].astype(np.float64)
        if mirrored:
            points[:, 0] = IRIS_SIZE - points[:, 0]
            points = points[list(MIRRORED_ORDER)]
        return _to_frame(matrix, points)


def load_face_mesh() -> FaceMesh:
    """The face mesh, or LandmarksUnavailable saying why not."""
    return FaceMesh()


# --- geometry -----------------------------------------------------------------------------


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    x0, y0 = np.maximum(box[0], boxes[:, 0]), np.maximum(box[1], boxes[:, 1])
    x1, y1 = np.minimum(box[2], boxes[:, 2]), np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    union = (box[2] - box[0]) * (box[3] - box[1]) + areas - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def _level(start: np.ndarray, end: np.ndarray) -> float:
    """The angle (radians, image y down) that turns the line start-end level."""
    return math.atan2(float(end[1] - start[1]), float(end[0] - start[0]))


def _cut(bgr: np.ndarray, centre: np.ndarray, side: float, angle: float,
         size: int) -> tuple[np.ndarray, np.ndarray]:
    """The square of ``side`` px around ``centre``, turned by ``angle``, as size x size pixels,
    and the matrix from the cut's pixels to the frame's."""
    c, s = math.cos(angle) * side / size, math.sin(angle) * side / size
    half = size / 2
    matrix = np.array([[c, -s, centre[0] - c * half + s * half],
                       [s, c, centre[1] - s * half - c * half]])
    cut = cv2.warpAffine(bgr, matrix, (size, size), flags=cv2.WARP_INVERSE_MAP | cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_CONSTANT)
    return cut, matrix


def _to_frame(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ matrix[:, :2].T + matrix[:, 2]
