"""What the face checks measure on facial landmarks: pose, eyes, mouth, gaze, regions.

The landmarks come from the face mesh (agent/quality/face_mesh.py): 478 points per face in
the numbering of mediapipe's canonical face mesh, the last ten on the irises. The measures
below are plain functions of the points (an (N, 2) array of frame pixels), so they are tested
on the geometry itself as well as on images (tests/agent/quality/test_face_landmarks.py;
docs/face-quality.md says what each test proves).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

# Mesh numbering (the topology of mediapipe's canonical face mesh). "A" is the eye on the image's
# left, which in a camera frame that is not mirrored is the person's right eye.
IRIS_A, IRIS_B = 468, 473
#: Eye contours: the two corners, then three upper/lower lid pairs, outer to inner.
EYE_A = {"corners": (33, 133), "lids": ((160, 144), (159, 145), (158, 153))}
EYE_B = {"corners": (263, 362), "lids": ((387, 373), (386, 374), (385, 380))}
EYE_OUTLINE_A = (33, 246, 161, 160, 159, 158, 157, 173, 133, 155, 154, 153, 145, 144, 163, 7)
EYE_OUTLINE_B = (263, 466, 388, 387, 386, 385, 384, 398, 362, 382, 381, 380, 374, 373, 390, 249)
MOUTH_CORNERS = (61, 291)
LIP_INNER = (13, 14)  # the upper lip's lower edge, the lower lip's upper edge, at the middle
NOSE_TIP, NASION, CHIN, MESH_TOP = 1, 168, 152, 10
CHEEKS = (234, 454)  # the face's outline at about eye height, image left and right

#: A generic adult face in millimetres for cv2.solvePnP (x to the image's right, y down, z away
#: from the camera; the nose tip at the origin). Our own round figures from adult anthropometry
#: (eye corners about 88 and 32 mm apart, the nose tip 30-40 mm in front of the eyes, the chin
#: 68 mm below it); a generic model, so the angles are good to a few degrees, which is what a
#: "face the camera" check needs. Only points that stay put when the expression changes: the
#: mouth corners (a smile) would read as a nod.
POSE_MODEL: dict[int, tuple[float, float, float]] = {
    NOSE_TIP: (0.0, 0.0, 0.0),
    NASION: (0.0, -44.0, 28.0),
    33: (-44.0, -40.0, 40.0),
    263: (44.0, -40.0, 40.0),
    133: (-16.0, -39.0, 32.0),
    362: (16.0, -39.0, 32.0),
    CHIN: (0.0, 68.0, 25.0),
}


# --- what is measured on the points -------------------------------------------------------


@dataclass(frozen=True)
class Pose:
    """Head rotation in degrees. yaw > 0: the nose points to the image's right; pitch > 0:
    the chin is raised (nose up); roll > 0: the eye line falls to the image's right."""

    yaw: float
    pitch: float
    roll: float


def head_pose(points: np.ndarray, frame_size: tuple[int, int]) -> Pose | None:
    """Yaw, pitch and roll by cv2.solvePnP of POSE_MODEL on the landmarks.

    The camera is a pinhole with the focal length equal to the frame's larger side (a
    webcam's field of view, about 55 degrees) and no distortion. Yaw and pitch are measured
    against the line from the face to the camera, not the camera's axis: a person at the
    edge of the picture who looks into the lens faces the camera.
    """
    width, height = frame_size
    ids = list(POSE_MODEL)
    model = np.array([POSE_MODEL[i] for i in ids], np.float64)
    image = np.ascontiguousarray(points[ids, :2], np.float64)
    focal = float(max(width, height))
    camera = np.array([[focal, 0, width / 2], [0, focal, height / 2], [0, 0, 1]], np.float64)
    # Start from a frontal face where the nose is, at the distance its eye corners give: the
    # solver's own start can land on the mirror solution (a face seen from behind).
    span = float(np.linalg.norm(points[33, :2] - points[263, :2])) or 1.0
    depth = focal * 88.0 / span
    nose = points[NOSE_TIP, :2]
    tvec = np.array([[(nose[0] - width / 2) * depth / focal], [(nose[1] - height / 2) * depth / focal],
                     [depth]], np.float64)
    rvec = np.zeros((3, 1), np.float64)
    ok, rvec, tvec = cv2.solvePnP(model, image, camera, None, rvec, tvec, useExtrinsicGuess=True,
                                  flags=cv2.SOLVEPNP_ITERATIVE)
    if not ok:
        return None
    rotation, _ = cv2.Rodrigues(rvec)
    # R maps the face's axes to the camera's (a face square to the camera's axis has R = I).
    forward = -rotation[:, 2]  # where the nose points, in camera coordinates
    to_camera = -tvec.ravel()  # from the face to the lens
    yaw = _azimuth(forward) - _azimuth(to_camera)
    pitch = _elevation(forward) - _elevation(to_camera)
    across = rotation[:, 0]
    roll = math.degrees(math.atan2(across[1], across[0]))
    return Pose(yaw, pitch, roll)


def _azimuth(v: np.ndarray) -> float:
    """Degrees to the image's right of a direction pointing back at the camera (-z)."""
    return math.degrees(math.atan2(v[0], -v[2]))


def _elevation(v: np.ndarray) -> float:
    """Degrees upwards (y is down in the image)."""
    return math.degrees(math.atan2(-v[1], math.hypot(v[0], v[2])))


def eye_centres(points: np.ndarray) -> tuple[tuple[float, float], tuple[float, float]]:
    """The iris centres, image-left first."""
    a, b = points[IRIS_A, :2], points[IRIS_B, :2]
    first, second = (a, b) if a[0] <= b[0] else (b, a)
    return (float(first[0]), float(first[1])), (float(second[0]), float(second[1]))


def _eye_aspect(points: np.ndarray, eye: dict[str, Any]) -> float:
    c0, c1 = (points[i, :2] for i in eye["corners"])
    width = float(np.linalg.norm(c1 - c0))
    if width < 1e-6:
        return 0.0
    lids = [float(np.linalg.norm(points[u, :2] - points[d, :2])) for u, d in eye["lids"]]
    return sum(lids) / len(lids) / width


def eye_aspect_ratio(points: np.ndarray) -> float:
    """Lid opening over eye width, of the less open eye (a wink fails too); open eyes about
    0.25-0.35, closed ones below 0.1."""
    return min(_eye_aspect(points, EYE_A), _eye_aspect(points, EYE_B))


def eye_distance(points: np.ndarray) -> float:
    a, b = eye_centres(points)
    return math.dist(a, b)


def mouth_opening(points: np.ndarray) -> float:
    """Gap between the lips at the middle over the mouth's width (0 when closed)."""
    width = math.dist(points[MOUTH_CORNERS[0], :2], points[MOUTH_CORNERS[1], :2])
    gap = math.dist(points[LIP_INNER[0], :2], points[LIP_INNER[1], :2])
    return gap / width if width > 1e-6 else 0.0


def smile(points: np.ndarray) -> float:
    """How far the mouth corners rise above the middle of the lips, over the eye distance.

    Measured along the face's own vertical (perpendicular to the eye line), so a tilted head
    does not read as a smile. About 0 for a neutral mouth; a smile lifts the corners.
    """
    (ax, ay), (bx, by) = eye_centres(points)
    across = np.array([bx - ax, by - ay])
    norm = float(np.linalg.norm(across))
    if norm < 1e-6:
        return 0.0
    up = np.array([across[1], -across[0]]) / norm  # perpendicular to the eye line, towards the brow
    middle = (points[LIP_INNER[0], :2] + points[LIP_INNER[1], :2]) / 2
    corners = (points[MOUTH_CORNERS[0], :2] + points[MOUTH_CORNERS[1], :2]) / 2
    return float(np.dot(corners - middle, up)) / norm


def gaze_offset(points: np.ndarray) -> float:
    """Where the irises sit between the eye corners, across: 0 in the middle, signed (> 0: to
    the image's right), as a share of the eye's width, the mean of both eyes.

    Both irises move the same way when the person looks aside; the mean cancels a squint's
    opposite movements. Up and down is not measured: the lids follow the iris.
    """
    offsets = []
    for eye, iris in ((EYE_A, IRIS_A), (EYE_B, IRIS_B)):
        c0, c1 = (points[i, :2] for i in eye["corners"])
        left, right = (c0, c1) if c0[0] <= c1[0] else (c1, c0)
        span = right - left
        length2 = float(np.dot(span, span))
        if length2 < 1e-6:
            return 0.0
        share = float(np.dot(points[iris, :2] - left, span)) / length2
        offsets.append(share - 0.5)
    return sum(offsets) / len(offsets)


def eye_regions(points: np.ndarray, frame_shape: tuple[int, ...]) -> list[tuple[int, int, int, int]]:
    """Around each eye, the area a spectacle lens covers: the eye outline's box widened by a
    quarter of its width each side and by its width up and down. x0, y0, x1, y1."""
    height, width = frame_shape[:2]
    boxes = []
    for outline in (EYE_OUTLINE_A, EYE_OUTLINE_B):
        pts = points[list(outline), :2]
        x0, y0 = pts.min(axis=0)
        x1, y1 = pts.max(axis=0)
        w = x1 - x0
        boxes.append((int(max(0, x0 - 0.25 * w)), int(max(0, y0 - 0.5 * w)),
                      int(min(width, x1 + 0.25 * w)), int(min(height, y1 + 0.5 * w))))
    return boxes


def cheek_regions(points: np.ndarray, frame_shape: tuple[int, ...]) -> list[tuple[int, int, int, int]]:
    """The two cheeks (image left, image right): from the face's outline to the inner eye
    corner, from below the eyes to the mouth corners. Skin only, no eye, brow or nostril."""
    height, width = frame_shape[:2]
    (ax, ay), (bx, by) = eye_centres(points)
    distance = math.dist((ax, ay), (bx, by))
    top = max(ay, by) + 0.25 * distance
    bottom = max(points[MOUTH_CORNERS[0], 1], points[MOUTH_CORNERS[1], 1])
    inner_a, inner_b = points[EYE_A["corners"][1], 0], points[EYE_B["corners"][1], 0]
    out_a, out_b = points[CHEEKS[0], 0], points[CHEEKS[1], 0]
    inset = 0.15 * distance  # the outline itself is often hair, ear or background
    boxes = [(out_a + inset, top, inner_a, bottom), (inner_b, top, out_b - inset, bottom)]
    return [(int(max(0, x0)), int(max(0, y0)), int(min(width, x1)), int(min(height, y1)))
            for x0, y0, x1, y1 in boxes]


def face_height(points: np.ndarray) -> float:
    """From the top of the mesh (the upper forehead) to the chin, pixels."""
    return math.dist(points[MESH_TOP, :2], points[CHIN, :2])


def face_box(points: np.ndarray) -> tuple[int, int, int, int]:
    """A box like the Haar cascade's around the same face (x, y, w, h), so the regions the
    photometric checks take as shares of a box (face.py) cover the same skin on either path:
    cheek to cheek widened by 4 % each side, square, its top a little above the mesh's."""
    a, b = points[CHEEKS[0], :2], points[CHEEKS[1], :2]
    width = 1.08 * math.dist(a, b)
    centre_x = (a[0] + b[0]) / 2
    top = points[MESH_TOP, 1] - 0.045 * width
    return int(round(centre_x - width / 2)), int(round(top)), int(round(width)), int(round(width))
