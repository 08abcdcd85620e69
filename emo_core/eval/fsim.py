"""F-SIM: ArcFace cosine similarity between generated frames and the reference portrait.

EMO reports F-SIM next to the ground-truth value (the same number computed on the real video
against its own reference frame), because a talking face is never identical to its still
reference; ``evaluate`` reports both when a reference video is given.

Protocol: the largest face of each frame is detected, aligned and embedded by
``emo_core.preprocess.identity.FaceEmbedder`` (insightface ArcFace, 512-d); similarity is the
cosine to the reference image's embedding, averaged over frames. Frames without a face are
skipped and counted.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FSIM_PROTOCOL = {
    "network": "ArcFace 512-d (insightface, via preprocess.identity.FaceEmbedder)",
    "crop": "insightface 5-point alignment of the largest face",
    "aggregation": "mean cosine over frames with a face, then over videos (frame-weighted)",
}


def cosine_similarity(a, b) -> float:
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"embeddings differ in size: {a.shape[0]} vs {b.shape[0]}")
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 or nb == 0:
        raise ValueError("cannot compare a zero embedding")
    return float(a @ b / (na * nb))


@dataclass
class FsimResult:
    mean: float
    per_frame: np.ndarray     # NaN where no face
    frames_with_face: int
    skipped_frames: int


def face_similarity(embed, frames, faces, reference_embedding) -> FsimResult:
    """``embed(image, face) -> vector``; ``faces`` one Face or None per frame."""
    if len(frames) != len(faces):
        raise ValueError(f"{len(frames)} frames but {len(faces)} face results")
    sims = np.full(len(frames), np.nan)
    for i, (frame, face) in enumerate(zip(frames, faces)):
        if face is not None:
            sims[i] = cosine_similarity(embed(frame, face), reference_embedding)
    valid = np.isfinite(sims)
    if not valid.any():
        raise ValueError("no face found in any frame")
    return FsimResult(float(sims[valid].mean()), sims, int(valid.sum()), int((~valid).sum()))
