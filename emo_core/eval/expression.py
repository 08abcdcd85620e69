"""Expression features for E-FID (Fréchet distance over per-frame expression vectors).

EMO computes E-FID on the expression coefficients of a 3D face reconstruction. Which
extractor produced a number is part of its protocol, because numbers from different
extractors are not comparable:

- ``CoefficientModelExpression``: a 3D-face model the user has (e.g. a Deep3DFaceRecon-style
  network returning 257 coefficients, expression = coefficients 80..143) wrapped as a callable
  on 224x224 RGB face crops; this is the paper's protocol when the model is the paper's.
- ``BlendshapeExpression``: the 52 ARKit-style blendshape scores of MediaPipe's face
  landmarker, when the face analysis provides them (``Face.blendshapes``).
- ``LandmarkExpressionProxy``: a clearly named proxy that needs only the 478-point face mesh:
  the lips, eyes and brows (92 points, 3D), with head pose removed by a similarity (Kabsch)
  alignment to the video's mean shape, scaled by the outer-eye-corner distance, and the
  video's mean shape subtracted, so identity (face shape) is removed and what remains is how
  the expression moves.

Every extractor returns ``(features [N, D] for the frames that have a usable face, skipped)``.
"""
from __future__ import annotations

import numpy as np

# MediaPipe face-mesh indices (478-point topology)
LIPS = [61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291, 185, 40, 39, 37, 0, 267, 269, 270, 409,
        78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308, 191, 80, 81, 82, 13, 312, 311, 310, 415]
LEFT_EYE = [263, 249, 390, 373, 374, 380, 381, 382, 362, 466, 388, 387, 386, 385, 384, 398]
RIGHT_EYE = [33, 7, 163, 144, 145, 153, 154, 155, 133, 246, 161, 160, 159, 158, 157, 173]
LEFT_BROW = [276, 283, 282, 295, 285, 300, 293, 334, 296, 336]
RIGHT_BROW = [46, 53, 52, 65, 55, 70, 63, 105, 66, 107]
EXPRESSION_POINTS = LIPS + LEFT_EYE + RIGHT_EYE + LEFT_BROW + RIGHT_BROW
EYE_OUTER = (33, 263)
# stable points (forehead, nose bridge, cheeks, eye corners) used to estimate head pose
RIGID_POINTS = [10, 151, 9, 8, 168, 6, 197, 195, 5, 4, 1, 234, 454, 127, 356, 33, 133, 263, 362, 152]


def kabsch_similarity(src: np.ndarray, dst: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Scale s, rotation R, translation t with s * src @ R.T + t ~= dst (least squares)."""
    mu_s, mu_d = src.mean(0), dst.mean(0)
    a, b = src - mu_s, dst - mu_d
    u, sig, vt = np.linalg.svd(a.T @ b)
    d = np.sign(np.linalg.det(vt.T @ u.T))
    corr = np.diag([1.0] * (src.shape[1] - 1) + [d])
    rot = vt.T @ corr @ u.T
    scale = float((sig * np.diag(corr)).sum() / max((a ** 2).sum(), 1e-12))
    return scale, rot, mu_d - scale * mu_s @ rot.T


def _canonical_orientation(shape: np.ndarray) -> np.ndarray:
    """Rotate a face shape so x runs from the right to the left outer eye corner and y from
    the chin (152) towards the forehead (10): a frame that does not depend on the head pose."""
    x = shape[EYE_OUTER[1]] - shape[EYE_OUTER[0]]
    x = x / np.linalg.norm(x)
    up = shape[10] - shape[152]
    y = up - (up @ x) * x
    y = y / np.linalg.norm(y)
    axes = np.stack([x, y, np.cross(x, y)])
    centred = shape - shape[RIGID_POINTS].mean(0)
    return centred @ axes.T


def _landmarks(face):
    lm = getattr(face, "landmarks", None) if face is not None else None
    if lm is None:
        return None
    lm = np.asarray(lm, dtype=np.float64)
    if lm.ndim != 2 or lm.shape[0] < 468:
        return None
    return lm


class LandmarkExpressionProxy:
    name = "landmark-expression-proxy"
    protocol = {
        "network": "landmark expression proxy (NOT 3DMM): mediapipe face mesh, 92 lip/eye/brow points x 3, "
                   "pose removed by similarity alignment, per-video mean shape removed",
        "crop": "none (landmarks in pixels)",
    }

    def __call__(self, frames, faces) -> tuple[np.ndarray, int]:
        lms = [_landmarks(f) for f in faces]
        idx = [i for i, lm in enumerate(lms) if lm is not None]
        skipped = len(faces) - len(idx)
        if not idx:
            return np.zeros((0, len(EXPRESSION_POINTS) * 3)), skipped
        stack = np.stack([lms[i] for i in idx])                     # [N, P, 3]
        # normalise each frame: eye-corner distance 1, centred
        eye = np.linalg.norm(stack[:, EYE_OUTER[0]] - stack[:, EYE_OUTER[1]], axis=-1)
        stack = (stack - stack[:, RIGID_POINTS].mean(1, keepdims=True)) / eye[:, None, None]
        template = _canonical_orientation(stack[0])
        for _ in range(2):  # align to the mean shape, re-estimate the mean once
            aligned = []
            for lm in stack:
                s, r, t = kabsch_similarity(lm[RIGID_POINTS], template[RIGID_POINTS])
                aligned.append(s * lm @ r.T + t)
            aligned = np.stack(aligned)
            template = _canonical_orientation(aligned.mean(0))
        pts = aligned[:, EXPRESSION_POINTS] - template[EXPRESSION_POINTS]
        return pts.reshape(len(idx), -1), skipped


class BlendshapeExpression:
    name = "mediapipe-blendshapes"
    protocol = {"network": "mediapipe face landmarker blendshapes (52 scores)", "crop": "mediapipe"}

    def __call__(self, frames, faces) -> tuple[np.ndarray, int]:
        rows = []
        for f in faces:
            bs = getattr(f, "blendshapes", None) if f is not None else None
            if bs is not None:
                rows.append(np.asarray(list(bs.values()) if isinstance(bs, dict) else bs, np.float64))
        skipped = len(faces) - len(rows)
        return (np.stack(rows) if rows else np.zeros((0, 52))), skipped


class CoefficientModelExpression:
    """A user's 3D face model: ``model(crops uint8 [N, size, size, 3] RGB) -> [N, C]``;
    ``coeff_slice`` picks the expression part (Deep3DFaceRecon: 80..144 of 257)."""

    def __init__(self, model, name: str, coeff_slice=(80, 144), crop_size: int = 224, crop_scale: float = 1.3):
        self.model = model
        self.name = name
        self.coeff_slice = coeff_slice
        self.crop_size = crop_size
        self.crop_scale = crop_scale
        self.protocol = {"network": f"3D face model {name}, expression coefficients {coeff_slice}",
                         "crop": f"square face box x{crop_scale}", "input_size": crop_size}

    def __call__(self, frames, faces) -> tuple[np.ndarray, int]:
        from .video_io import crop_box, square_box

        crops = [crop_box(fr, square_box(f.box_xyxy, self.crop_scale), self.crop_size)
                 for fr, f in zip(frames, faces) if f is not None]
        skipped = len(faces) - len(crops)
        if not crops:
            return np.zeros((0, 0)), skipped
        coeffs = np.asarray(self.model(np.stack(crops)), dtype=np.float64)
        if self.coeff_slice is not None:
            coeffs = coeffs[:, self.coeff_slice[0]:self.coeff_slice[1]]
        return coeffs, skipped


def make_expression_extractor(kind: str = "auto", faces_sample=None, model=None):
    """'3dmm' (needs ``model``), 'blendshapes', 'landmarks', or 'auto' (3dmm if a model is
    given, blendshapes if the faces carry them, else the landmark proxy)."""
    if kind == "3dmm" or (kind == "auto" and model is not None):
        if model is None:
            raise ValueError("expression kind '3dmm' needs a 3D face model")
        return model if isinstance(model, CoefficientModelExpression) else CoefficientModelExpression(model, "user")
    if kind == "blendshapes" or (kind == "auto" and faces_sample and any(
            getattr(f, "blendshapes", None) is not None for f in faces_sample if f is not None)):
        return BlendshapeExpression()
    if kind in ("auto", "landmarks"):
        return LandmarkExpressionProxy()
    raise ValueError(f"unknown expression extractor {kind!r}: use auto, 3dmm, blendshapes or landmarks")
