"""Face-locator and region masks.

EMO: the face-locator mask of a clip is the union of its (expanded) per-frame face boxes.
Hallo: the reference image's expanded face box, plus three attention-region masks from
face-mesh landmarks (Hallo's ``get_mask`` in hallo/utils/util.py): a face box from the
silhouette points (expanded by ``face_expand_ratio``), a lip box (expanded by 2.0),
both blurred at 64x64 (Gaussian 51 / 31, min-max normalised); ``full`` = 1 - face,
``face`` = face - lip (clamped at 0), ``lip`` = lip. Per UNet level they are resized to
H/8, H/16, H/32, H/64 and flattened (``region_masks_per_level``).

Masks are float32 torch tensors in [0, 1]; [H, W] unless stated.
"""
from __future__ import annotations

import warnings
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .face import Face, NoFaceError

# face-mesh indices used by Hallo (hallo/utils/util.py)
SILHOUETTE_IDS = [10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377,
                  152, 148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109]
LIP_IDS = [61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291, 146, 91, 181, 84, 17, 314, 405, 321, 375]


def _box_of(box_or_face):
    if isinstance(box_or_face, Face):
        return box_or_face.box_xyxy
    return box_or_face


def expand_box(box, H: int, W: int, expand_ratio: float = 1.2) -> np.ndarray:
    """Scale an xyxy box about its centre and clip it to the image."""
    x0, y0, x1, y1 = [float(v) for v in _box_of(box)]
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    hw, hh = (x1 - x0) * expand_ratio / 2, (y1 - y0) * expand_ratio / 2
    return np.array([max(0.0, cx - hw), max(0.0, cy - hh), min(float(W), cx + hw), min(float(H), cy + hh)], np.float32)


def face_box_mask(box, H: int, W: int, expand_ratio: float = 1.2) -> torch.Tensor:
    """Binary [H, W] mask of the expanded box (pixels the box touches are 1)."""
    x0, y0, x1, y1 = expand_box(box, H, W, expand_ratio)
    mask = torch.zeros(H, W, dtype=torch.float32)
    r0, r1 = int(np.floor(y0)), int(np.ceil(y1))
    c0, c1 = int(np.floor(x0)), int(np.ceil(x1))
    mask[max(r0, 0):min(r1, H), max(c0, 0):min(c1, W)] = 1.0
    return mask


def union_mask(boxes: Sequence, H: int, W: int, expand: float = 1.2, if_missing: str = "error") -> torch.Tensor:
    """EMO's clip mask: union of the expanded boxes (``Face`` objects or xyxy boxes; None
    entries are skipped). With no box at all: ``if_missing="error"`` raises NoFaceError,
    ``"full_frame"`` warns and returns an all-ones mask."""
    present = [b for b in boxes if b is not None]
    if not present:
        if if_missing == "full_frame":
            warnings.warn("no face in any frame: using a full-frame face mask", stacklevel=2)
            return torch.ones(H, W)
        raise NoFaceError(f"no face in any of the {len(boxes)} frames; cannot build a face mask "
                          "(choose the full-frame fallback to continue without one)")
    out = torch.zeros(H, W)
    for b in present:
        out = torch.maximum(out, face_box_mask(b, H, W, expand))
    return out


def clip_masks(faces: Sequence, H: int, W: int, clip_len: int, expand: float = 1.2,
               if_missing: str = "error") -> torch.Tensor:
    """[T, H, W] MASK-shaped tensor: each frame gets the union mask of its clip of ``clip_len``."""
    t = len(faces)
    out = torch.zeros(t, H, W)
    for a in range(0, t, clip_len):
        out[a:a + clip_len] = union_mask(faces[a:a + clip_len], H, W, expand, if_missing)
    return out


def latent_mask(mask, factor: int = 8, mode: str = "max") -> torch.Tensor:
    """Downsample a [H, W] or [B, H, W] mask by ``factor`` (``"max"``: any covered pixel;
    ``"area"``: coverage fraction)."""
    m = torch.as_tensor(mask, dtype=torch.float32)
    squeeze = m.ndim == 2
    m4 = m[None, None] if squeeze else m[:, None]
    if m4.shape[-1] % factor or m4.shape[-2] % factor:
        raise ValueError(f"mask size {tuple(m4.shape[-2:])} is not divisible by {factor}")
    if mode == "max":
        out = F.max_pool2d(m4, factor)
    elif mode == "area":
        out = F.avg_pool2d(m4, factor)
    else:
        raise ValueError(f"mode must be 'max' or 'area', got {mode!r}")
    return out[0, 0] if squeeze else out[:, 0]


# ----------------------------------------------------------------------------- Hallo regions
def _hallo_expand_region(region, image_w, image_h, expand_ratio):
    """Hallo's ``expand_region``: grow about the centre, shift back inside the image."""
    min_x, max_x, min_y, max_y = region
    min_x, max_x = _expand_axis(min_x, max_x, expand_ratio, image_w)
    min_y, max_y = _expand_axis(min_y, max_y, expand_ratio, image_h)
    return round(min_x), round(max_x), round(min_y), round(max_y)


def _expand_axis(lo, hi, ratio: float, limit: int):
    """One axis of ``expand_region``: grow about the midpoint, then shift back into [0, limit]."""
    mid, side = (hi + lo) // 2, (hi - lo) * ratio
    lo, hi = mid - side // 2, mid + side // 2
    if lo < 0:
        hi, lo = hi - lo, 0
    if hi > limit:
        lo, hi = lo - (hi - limit), limit
    return lo, hi


def _landmark_box_mask(points: np.ndarray, H: int, W: int, expand_ratio: float) -> np.ndarray:
    lo = np.round(points[:, :2].min(0))
    hi = np.round(points[:, :2].max(0))
    x0, x1, y0, y1 = _hallo_expand_region([lo[0], hi[0], lo[1], hi[1]], W, H, expand_ratio)
    mask = np.zeros((H, W), np.float32)
    mask[max(y0, 0):max(y1, 0), max(x0, 0):max(x1, 0)] = 1.0
    return mask


def _gaussian_kernel(ksize: int) -> np.ndarray:
    sigma = 0.3 * ((ksize - 1) * 0.5 - 1) + 0.8  # OpenCV's default sigma for a kernel size
    x = np.arange(ksize) - (ksize - 1) / 2
    k = np.exp(-(x ** 2) / (2 * sigma ** 2))
    return k / k.sum()


def _blur_mask(mask: np.ndarray, ksize: int, size: int = 64) -> np.ndarray:
    """Hallo's ``blur_mask``: resize to size x size, Gaussian blur, min-max normalise to [0, 1]."""
    from scipy.ndimage import convolve1d

    small = F.interpolate(torch.from_numpy(mask)[None, None], size=(size, size), mode="bilinear",
                          align_corners=False)[0, 0].numpy()
    k = _gaussian_kernel(ksize)
    blurred = convolve1d(convolve1d(small, k, axis=0, mode="mirror"), k, axis=1, mode="mirror")
    lo, hi = blurred.min(), blurred.max()
    return ((blurred - lo) / (hi - lo)).astype(np.float32) if hi > lo else np.zeros_like(blurred)


def hallo_region_masks(face: Face, H: int, W: int, face_expand_ratio: float = 1.2,
                       lip_expand_ratio: float = 2.0, blur_size: int = 64) -> dict:
    """Hallo's masks for one reference face, all [H, W]: ``face_locator`` (binary expanded
    face box), ``lip_box`` (binary expanded lip box) and the blurred attention regions ``full`` / ``face`` / ``lip`` (computed at
    Hallo's ``blur_size`` x ``blur_size`` working resolution, then resized bilinearly)."""
    if face is None:
        raise NoFaceError("no face: Hallo's region masks need a face")
    if face.landmarks is not None and len(face.landmarks) >= 468:
        lm = face.landmarks
        face_box = _landmark_box_mask(lm[SILHOUETTE_IDS], H, W, face_expand_ratio)
        lip_box = _landmark_box_mask(lm[LIP_IDS], H, W, lip_expand_ratio)
    else:
        warnings.warn("face has no landmarks: region masks are approximated from the face box", stacklevel=2)
        face_box = face_box_mask(face, H, W, face_expand_ratio).numpy()
        x0, y0, x1, y1 = face.box_xyxy
        w, h = x1 - x0, y1 - y0
        lip = np.array([x0 + 0.25 * w, y0 + 0.65 * h, x1 - 0.25 * w, y0 + 0.9 * h])
        lip_box = face_box_mask(lip, H, W, lip_expand_ratio).numpy()
    blur_face = _blur_mask(face_box, 51, blur_size)
    blur_lip = _blur_mask(lip_box, 31, blur_size)
    small = {
        "full": torch.from_numpy(1.0 - blur_face),
        "face": torch.from_numpy(np.clip(blur_face - blur_lip, 0.0, 1.0)),
        "lip": torch.from_numpy(blur_lip),
    }
    out = {k: v.clamp(0, 1) for k, v in region_masks_at(small, H, W).items()}
    out["face_locator"] = torch.from_numpy(face_box)
    out["lip_box"] = torch.from_numpy(lip_box)
    return out


def mask_box(mask: torch.Tensor) -> tuple[int, int, int, int] | None:
    """(x0, y0, x1, y1), ends exclusive, around a mask's pixels > 0.5 ([H, W]); None when it has none."""
    ys, xs = torch.nonzero(mask > 0.5, as_tuple=True)
    if ys.numel() == 0:
        return None
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def regions_from_box_mask(mask: torch.Tensor) -> dict:
    """Hallo's masks approximated from a face-box mask [H, W] alone (no landmarks: the face is
    the box, the lip its lower middle); an empty mask counts as the whole frame."""
    h, w = mask.shape
    box = np.array(mask_box(mask) or (0, 0, w, h), np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the no-landmarks approximation is the point here
        return hallo_region_masks(Face(box, 1.0, image_size=(h, w)), h, w, face_expand_ratio=1.0)


def region_masks_per_level(masks: dict, H: int, levels: int = 4) -> dict:
    """Each region mask resized (area average) to H/8, H/16, ..., and flattened to
    [1, h*w] as Hallo feeds them (level i -> H / 2**(3+i)). Square latents only."""
    out = {}
    for key in ("full", "face", "lip"):
        m = torch.as_tensor(masks[key], dtype=torch.float32)
        if m.shape[-1] != m.shape[-2]:
            raise ValueError(f"region masks must be square (Hallo reshapes them to squares), got {tuple(m.shape)}")
        per = []
        for i in range(levels):
            side = H // (8 * 2 ** i)
            if side < 1:
                raise ValueError(f"image height {H} is too small for {levels} mask levels")
            per.append(F.interpolate(m[None, None], size=(side, side), mode="area")[0, 0].reshape(1, -1))
        out[key] = per
    return out


def region_masks_at(masks: dict, H: int, W: Optional[int] = None) -> dict:
    """Region masks resized to the image size [H, W] (bilinear), e.g. for display."""
    W = H if W is None else W
    return {k: F.interpolate(torch.as_tensor(v)[None, None].float(), size=(H, W), mode="bilinear",
                             align_corners=False)[0, 0] for k, v in masks.items() if k in ("full", "face", "lip")}
