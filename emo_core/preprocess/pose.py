"""Head rotation and rotation speed (EMO's speed conditioning), in degrees per frame.

Rotation per frame comes from the Tasks landmarker's facial transformation matrix when
every face has one; otherwise from a rigid (Kabsch) alignment of the face-mesh 3D
landmarks of each frame to those of the first frame with a face, using points on the
rigid upper face (forehead, brows, eye corners, nose, cheeks), so mouth and jaw motion
do not count as head motion. Frames without a face repeat the nearest frame's rotation.

The bucket encoding (s_d = tanh((w - c_d) / r_d * 3)) lives with the model
(emo_core/models/speed.py); this module only measures speeds.
"""
from __future__ import annotations

from typing import Iterable, Optional, Sequence

import numpy as np

from .face import Face, NoFaceError

# rigid upper-face points of the 468/478-point face mesh
RIGID_IDS = sorted(set([
    10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 93, 234, 127, 162, 21, 54, 103, 67, 109,  # upper silhouette
    70, 63, 105, 66, 107, 336, 296, 334, 293, 300,                                        # brows
    33, 133, 362, 263, 130, 359,                                                          # eye corners
    1, 4, 5, 6, 168, 197, 195, 98, 327, 2,                                                # nose
    50, 280, 117, 346, 118, 347,                                                          # cheeks
]))


def kabsch_rotation(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Proper rotation R (3x3) minimising ||R (src - mean) * s - (dst - mean)|| (scale-free)."""
    a = np.asarray(src, np.float64)
    b = np.asarray(dst, np.float64)
    a = a - a.mean(0)
    b = b - b.mean(0)
    u, _, vt = np.linalg.svd(a.T @ b)
    d = np.sign(np.linalg.det(vt.T @ u.T))
    return vt.T @ np.diag([1.0, 1.0, d]) @ u.T


def _matrix_rotation(matrix: np.ndarray) -> np.ndarray:
    """Nearest proper rotation of the 3x3 block of a 4x4 pose matrix (removes scale)."""
    u, _, vt = np.linalg.svd(np.asarray(matrix, np.float64)[:3, :3])
    r = u @ vt
    if np.linalg.det(r) < 0:
        u[:, -1] *= -1
        r = u @ vt
    return r


def rotation_angle_deg(r: np.ndarray) -> np.ndarray:
    """Rotation angle in degrees of one [3, 3] or many [..., 3, 3] rotation matrices."""
    tr = np.trace(np.asarray(r), axis1=-2, axis2=-1)
    return np.degrees(np.arccos(np.clip((tr - 1.0) / 2.0, -1.0, 1.0)))


def _fill_missing(values: list, what: str) -> list:
    idx = [i for i, v in enumerate(values) if v is not None]
    if not idx:
        raise NoFaceError(f"no face in any of the {len(values)} frames: cannot measure {what}")
    out = list(values)
    for i in range(len(out)):
        if out[i] is None:
            nearest = min(idx, key=lambda j: (abs(j - i), j))
            out[i] = out[nearest]
    return out


def head_rotations(faces: Sequence[Optional[Face]], use_matrix: Optional[bool] = None) -> np.ndarray:
    """[T, 3, 3] head rotation of every frame.

    ``use_matrix``: None = use the transformation matrices when every detected face has
    one; True/False forces the choice. Landmark-based rotations are relative to the first
    frame with a face (speeds only need differences).
    """
    present = [f for f in faces if f is not None]
    if not present:
        raise NoFaceError(f"no face in any of the {len(faces)} frames: cannot measure head rotation")
    if use_matrix is None:
        use_matrix = all(f.transformation_matrix is not None for f in present)
    rots: list = []
    if use_matrix:
        for f in faces:
            if f is not None and f.transformation_matrix is None:
                raise ValueError("use_matrix=True but a face has no transformation matrix")
            rots.append(None if f is None else _matrix_rotation(f.transformation_matrix))
    else:
        ref = None
        for f in faces:
            if f is None:
                rots.append(None)
                continue
            if f.landmarks is None or len(f.landmarks) < 468:
                raise ValueError("head rotation needs face-mesh landmarks (468/478 points) for every face")
            pts = f.landmarks[RIGID_IDS].astype(np.float64)
            if ref is None:
                ref = pts
            rots.append(kabsch_rotation(ref, pts))
    return np.stack(_fill_missing(rots, "head rotation")).astype(np.float64)


def _smooth(x: np.ndarray, smooth) -> np.ndarray:
    if not smooth or smooth <= 1:
        return x
    from scipy.ndimage import uniform_filter1d

    return uniform_filter1d(x, size=int(smooth), mode="nearest")


def rotation_speed(rotations: np.ndarray, smooth: int = 5) -> np.ndarray:
    """Degrees per frame between successive rotations ([T] out; frame 0 repeats frame 1),
    smoothed with a centred moving average of ``smooth`` frames (0/1: none)."""
    r = np.asarray(rotations, np.float64)
    if r.ndim != 3 or r.shape[1:] != (3, 3):
        raise ValueError(f"rotations must be [T, 3, 3], got {r.shape}")
    t = r.shape[0]
    if t < 2:
        return np.zeros(t, np.float32)
    rel = np.einsum("tij,tkj->tik", r[1:], r[:-1])  # R_t R_{t-1}^T
    speed = rotation_angle_deg(rel)
    speed = np.concatenate([speed[:1], speed])
    return _smooth(speed, smooth).astype(np.float32)


def constant_speed(value: float, num_frames: int) -> np.ndarray:
    """A constant target speed (degrees per frame) for ``num_frames`` frames."""
    if value < 0:
        raise ValueError(f"speed must be >= 0 degrees per frame, got {value}")
    return np.full(int(num_frames), float(value), np.float32)


def target_speed_from_video(frames: Iterable, analyzer, smooth: int = 5, src_fps: Optional[float] = None,
                            dst_fps: Optional[float] = None, reduce: str = "none"):
    """Head-rotation speed measured on a driving video.

    ``frames``: RGB uint8 frames; ``analyzer``: a FaceAnalyzer. With ``src_fps`` and
    ``dst_fps`` the speeds are rescaled to degrees per *output* frame. ``reduce``:
    ``"none"`` -> [T] series, ``"mean"`` / ``"median"`` -> one float.
    """
    faces = analyzer.analyze_video(frames)
    speed = rotation_speed(head_rotations(faces), smooth=smooth)
    if src_fps and dst_fps:
        speed = (speed * float(src_fps) / float(dst_fps)).astype(np.float32)
    if reduce == "mean":
        return float(np.mean(speed))
    if reduce == "median":
        return float(np.median(speed))
    if reduce != "none":
        raise ValueError(f"reduce must be 'none', 'mean' or 'median', got {reduce!r}")
    return speed
