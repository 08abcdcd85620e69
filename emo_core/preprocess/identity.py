"""Identity embedding for Hallo weights: insightface's ArcFace recognition model run with
onnxruntime after the standard 5-point alignment (no insightface package needed).

Hallo feeds ``face["embedding"]`` of insightface's ``FaceAnalysis`` (the raw, not
L2-normalised, 512-d output of ``glintr100.onnx``) to its ImageProjModel. Alignment
follows insightface's ``norm_crop``: a similarity transform (Umeyama) from the five points
(eyes, nose tip, mouth corners) to the ArcFace 112x112 template, bilinear warp with a
black border; the network input is RGB, (x - 127.5) / 127.5, NCHW.

Without the model file: a warning and a zero embedding of the width the model's identity
tokens take (``dim``; Hallo also uses zeros when it finds no face), never a crash. An ArcFace
file whose output is not ``dim`` wide is a CheckpointError saying both widths.
"""
from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Optional

import numpy as np

from .face import Face, as_rgb_uint8

log = logging.getLogger(__name__)

# insightface's arcface_dst (112x112), image-left eye first
ARCFACE_TEMPLATE = np.array([
    [38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041],
], np.float32)
MODEL_FILES = ("glintr100.onnx", "w600k_r50.onnx")
EMBED_DIM = 512


def umeyama_similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """2x3 similarity transform (rotation, uniform scale, translation) mapping src -> dst
    in the least-squares sense (Umeyama 1991, as skimage's SimilarityTransform)."""
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    n = src.shape[0]
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s_c, d_c = src - mu_s, dst - mu_d
    cov = d_c.T @ s_c / n
    u, sig, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(cov) < 0:
        d[-1] = -1
    r = u @ np.diag(d) @ vt
    var_s = (s_c ** 2).sum() / n
    scale = (sig * d).sum() / var_s if var_s > 0 else 1.0
    t = mu_d - scale * r @ mu_s
    return np.concatenate([scale * r, t[:, None]], axis=1).astype(np.float64)


def warp_affine(image: np.ndarray, matrix: np.ndarray, size: int = 112) -> np.ndarray:
    """cv2.warpAffine(image, matrix, (size, size)) with bilinear sampling and a zero border:
    out(x, y) = image(M^-1 [x, y, 1]). Float32 [size, size, C] out."""
    img = np.asarray(image, np.float32)
    h, w = img.shape[:2]
    full = np.vstack([matrix, [0, 0, 1]])
    inv = np.linalg.inv(full)[:2]
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64)
    sx = inv[0, 0] * xs + inv[0, 1] * ys + inv[0, 2]
    sy = inv[1, 0] * xs + inv[1, 1] * ys + inv[1, 2]
    x0, y0 = np.floor(sx).astype(int), np.floor(sy).astype(int)
    fx, fy = (sx - x0)[..., None], (sy - y0)[..., None]
    padded = np.zeros((h + 2, w + 2, img.shape[2]), np.float32)
    padded[1:-1, 1:-1] = img

    def at(yy, xx):
        return padded[np.clip(yy + 1, 0, h + 1), np.clip(xx + 1, 0, w + 1)]

    out = (at(y0, x0) * (1 - fx) * (1 - fy) + at(y0, x0 + 1) * fx * (1 - fy)
           + at(y0 + 1, x0) * (1 - fx) * fy + at(y0 + 1, x0 + 1) * fx * fy)
    return out.astype(np.float32)


def align_face(image, points5: np.ndarray, size: int = 112) -> np.ndarray:
    """ArcFace crop [size, size, 3] float32 (0..255) from 5 points (image-left eye first)."""
    template = ARCFACE_TEMPLATE * (size / 112.0)
    m = umeyama_similarity(points5, template)
    return warp_affine(as_rgb_uint8(image), m, size)


class FaceEmbedder:
    """512-d identity embedding with an ArcFace onnx model found in ``models_dir``
    (``glintr100.onnx``, Hallo's, preferred; else ``w600k_r50.onnx``; or ``model_path``).

    ``embed`` returns the raw embedding (as Hallo uses it); ``normalize=True`` gives the
    L2-normalised one. Without a model file: one warning, then zeros of ``dim`` (the width
    the model's identity projection takes, ``EmoConfig.identity_dim``).
    """

    def __init__(self, models_dir=None, model_path=None, providers=None,
                 input_mean: float = 127.5, input_std: float = 127.5, normalize: bool = False,
                 dim: int | None = EMBED_DIM):
        self.dim = int(dim or EMBED_DIM)
        self.model_path = self._find(models_dir, model_path)
        self.providers = providers or ["CPUExecutionProvider"]
        self.input_mean, self.input_std = float(input_mean), float(input_std)
        self.normalize = normalize
        self._session = None
        self._warned = False

    @staticmethod
    def _find(models_dir, model_path) -> Optional[Path]:
        if model_path is not None:
            p = Path(model_path).expanduser()
            return p if p.is_file() else None
        if models_dir is None:
            return None
        d = Path(models_dir).expanduser()
        for name in MODEL_FILES:
            for cand in (d / name, d / "models" / name):
                if cand.is_file():
                    return cand
        return None

    @property
    def available(self) -> bool:
        return self.model_path is not None

    def _warn_missing(self):
        if not self._warned:
            msg = ("ArcFace model not found (looked for glintr100.onnx / w600k_r50.onnx): identity tokens "
                   "will be zeros. Put glintr100.onnx from https://huggingface.co/fudan-generative-ai/hallo "
                   "(face_analysis/models/) into the face models folder.")
            warnings.warn(msg, stacklevel=3)
            log.warning(msg)
            self._warned = True

    def _get_session(self):
        if self._session is None:
            import onnxruntime as ort

            opts = ort.SessionOptions()
            opts.log_severity_level = 3
            try:
                self._session = ort.InferenceSession(str(self.model_path), sess_options=opts, providers=self.providers)
            except Exception as exc:  # onnxruntime's InvalidProtobuf / Fail / InvalidGraph
                from ..checkpoints import CheckpointError

                reason = str(exc).splitlines()[0] if str(exc) else ""
                raise CheckpointError(f"{self.model_path}: not a usable ONNX model, expected insightface's ArcFace "
                                      f"recognition model (glintr100.onnx or w600k_r50.onnx) "
                                      f"({type(exc).__name__}: {reason})") from exc
        return self._session

    def embed_aligned(self, crop: np.ndarray) -> np.ndarray:
        """Embedding of an already aligned 112x112 RGB crop (float 0..255 or uint8)."""
        sess = self._get_session()
        x = (np.asarray(crop, np.float32) - self.input_mean) / self.input_std
        x = np.ascontiguousarray(x.transpose(2, 0, 1)[None])
        inp = sess.get_inputs()[0]
        out = sess.run(None, {inp.name: x})[0].reshape(-1).astype(np.float32)
        if out.shape[0] != self.dim:
            from ..checkpoints import CheckpointError

            raise CheckpointError(f"{self.model_path} gives {out.shape[0]}-d face embeddings but this model's identity "
                                  f"tokens take {self.dim}-d ones: use the ArcFace model it was trained with "
                                  "(Hallo: glintr100.onnx, 512-d)")
        if self.normalize:
            out = out / max(float(np.linalg.norm(out)), 1e-12)
        return out

    def embed(self, image, face: Optional[Face]) -> np.ndarray:
        """np.float32[dim] identity embedding of ``face`` in ``image`` (zeros, with a warning,
        when there is no model file or no face/points)."""
        if not self.available:
            self._warn_missing()
            return np.zeros(self.dim, np.float32)
        if face is None or (face.landmarks is None and face.keypoints is None):
            warnings.warn("no face landmarks for the identity embedding: using zeros", stacklevel=2)
            return np.zeros(self.dim, np.float32)
        crop = align_face(image, face.five_points())
        return self.embed_aligned(crop)
