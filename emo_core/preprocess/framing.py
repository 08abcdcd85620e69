"""Face-aware framing of a photo for the model, and paste-back of the animated face into it.

The model wants a square portrait of ``size`` pixels with the face in the middle. A photo of
any size and shape is prepared in three steps:

1. **Find the face on the whole photo** (``find_face``): every detection is checked and the
   credible ones are ranked by detector confidence, never by box area (a large background
   box must not win). A detection is *credible* when

   * its detector score is at least ``min_score`` (default 0.6);
   * the landmark model found the face's 478-point mesh inside it (when the analyzer computes
     landmarks; with ``landmarks=False`` the detector's 6 keypoints are used instead);
   * its geometry is a face's: eye distance 15-80 % of the box width, the mouth below the eyes
     by 0.3-2.5 eye distances, the eye line within 45 degrees of horizontal (upright), and the
     detector's eye / nose / mouth keypoints within 0.35 eye distances (on average) of the
     landmarks' (an upside-down face gets an upright-looking mesh that misses them).

   Without a credible face, ``if_no_face="error"`` raises :class:`NoCredibleFaceError` naming
   each refused box and why (and, when the face is found after turning the photo by 90/180/270
   degrees, saying so); ``"full_frame"`` warns and falls back to the centre square of the photo
   with the whole square as the face region.

2. **Frame** (``framing_for_face``): a square of side ``max(box w, h) * (1 + 2 * margin)``
   centred on the face box (``margin`` default 0.5: the face box is half the square's side,
   leaving room for hair, chin and shoulders). Along each axis where the square fits inside
   the photo it is moved the least needed to lie inside it; where it cannot fit it stays
   centred on the face and reaches past the border. ``Framing`` keeps that square in the
   photo's pixels (it may extend past the border).

3. **Crop** (``crop_portrait``): the square is cut out, the part past the border filled by
   repeating the edge pixels (``pad_mode="edge"``) or by mirroring (``"reflect"``), and
   resized (bicubic, antialiased) to ``size``.

**Paste-back** (``PasteBack`` / ``paste_back``): generated frames [T, S, S, 3] are resized to
the square's size in the photo and blended into copies of the photo with a feathered edge:
``alpha`` rises from 0 at the square's edges to 1 at ``feather * side`` pixels inside
(smoothstep); edges that lie on or past the photo's border are not feathered (nothing of the
photo is there to blend with). Outside the square the output is the photo exactly, at least
``feather * side`` pixels inside every feathered edge it is the generated frame exactly.
Frames are processed ``chunk`` at a time (``PasteBack.iter`` yields them), so a long video at
the photo's resolution never has to sit in memory.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field, replace
from typing import Iterator, Optional

import numpy as np
import torch
import torch.nn.functional as F

from .. import checks
from .face import Face, FaceAnalyzer, NoFaceError, as_rgb_uint8

DEFAULT_MARGIN = 0.5
MAX_MARGIN = 5.0
DEFAULT_FEATHER = 0.1
DEFAULT_MIN_SCORE = 0.6
PAD_MODES = ("edge", "reflect")
MODES = ("face", "center", "none")

# geometry of a credible face (eye distance and mouth height in the face's own frame)
EYE_TO_BOX_WIDTH = (0.15, 0.8)
MOUTH_BELOW_EYES = (0.3, 2.5)  # in eye distances, along the face's down axis
MAX_ROLL_DEG = 45.0
MAX_DISAGREEMENT = 0.35  # mean detector-keypoint to landmark distance, in eye distances


class NoCredibleFaceError(NoFaceError):
    """The photo has no detection that passes the credibility checks (see the module docstring)."""


@dataclass(frozen=True)
class Framing:
    """Where the prepared portrait comes from in the original photo.

    ``box``: (x0, y0, x1, y1) integer pixels of the photo; it may extend past the border (that
    part was filled per ``pad_mode``). ``image_size``: the photo's (H, W). ``size``: the prepared
    portrait's (H, W). ``face_box`` / ``score``: the chosen face in photo pixels and its detector
    score (None / 0.0 when no face was used: centre crop or full-frame fallback). ``mode``:
    "face", "center", "none" or "full_frame" (the no-face fallback).
    """

    box: tuple
    image_size: tuple
    size: tuple
    pad_mode: str = "edge"
    face_box: Optional[tuple] = None
    score: float = 0.0
    mode: str = "face"
    other_faces: tuple = field(default=(), compare=False)  # (box, score, reason or None) of the detections not used

    def __post_init__(self):
        x0, y0, x1, y1 = self.box
        if x1 <= x0 or y1 <= y0:
            raise ValueError(f"empty framing box {self.box}")
        if self.pad_mode not in PAD_MODES:
            raise ValueError(f"pad_mode must be one of {PAD_MODES}, got {self.pad_mode!r}")

    @property
    def width(self) -> int:
        return int(self.box[2] - self.box[0])

    @property
    def height(self) -> int:
        return int(self.box[3] - self.box[1])

    @property
    def scale(self) -> tuple:
        """(x, y) portrait pixels per photo pixel."""
        return self.size[1] / self.width, self.size[0] / self.height

    @property
    def padded(self) -> bool:
        h, w = self.image_size
        x0, y0, x1, y1 = self.box
        return x0 < 0 or y0 < 0 or x1 > w or y1 > h

    def to_portrait(self, points) -> np.ndarray:
        """Photo pixel coordinates [..., 2 or 3] -> prepared-portrait pixels (z scaled like x)."""
        p = np.array(points, np.float32, copy=True)
        sx, sy = self.scale
        p[..., 0] = (p[..., 0] - self.box[0]) * sx
        p[..., 1] = (p[..., 1] - self.box[1]) * sy
        if p.shape[-1] > 2:
            p[..., 2:] *= sx
        return p

    def face_in_portrait(self, face: Face) -> Face:
        """``face`` (photo pixels) in the prepared portrait's pixels."""
        box = self.to_portrait(np.asarray(face.box_xyxy, np.float32).reshape(2, 2)).reshape(4)
        return Face(box, face.score,
                    landmarks=None if face.landmarks is None else self.to_portrait(face.landmarks),
                    transformation_matrix=face.transformation_matrix,
                    keypoints=None if face.keypoints is None else self.to_portrait(face.keypoints),
                    image_size=tuple(self.size))

    def describe(self) -> str:
        """One line: which face, where, and the crop."""
        h, w = self.image_size
        x0, y0, x1, y1 = self.box
        pad = f", padded ({self.pad_mode})" if self.padded else ""
        crop = f"crop [{x0}, {y0}, {x1}, {y1}] ({x1 - x0}x{y1 - y0}{pad})"
        extra = f"; {len(self.other_faces)} other detection(s) not used" if self.other_faces else ""
        if self.face_box is None:
            return f"{self.mode} framing of the {w}x{h} photo: {crop} -> {self.size[1]}x{self.size[0]}{extra}"
        fb = [round(float(v)) for v in self.face_box]
        return (f"face score {self.score:.2f} box {fb} in the {w}x{h} photo: {crop} -> "
                f"{self.size[1]}x{self.size[0]}{extra}")


@dataclass
class FramedPortrait:
    """``portrait`` [h, w, 3] float32 0..1 (the model's input); ``framing``; ``face`` in the
    portrait's pixels (None when not detected: ``detect=False``; score 0 for full-frame)."""

    portrait: torch.Tensor
    framing: Framing
    face: Optional[Face]


# ---------------------------------------------------------------------------- credibility
def _roll_and_shape(points: np.ndarray) -> tuple:
    """(eye distance, roll degrees, mouth below the eye midpoint in eye distances) of five points."""
    left_eye, right_eye, _, mouth_l, mouth_r = points[:5]
    eye = right_eye - left_eye
    d = float(np.hypot(*eye))
    if d < 1e-3:
        return 0.0, 0.0, 0.0
    down = np.array([-eye[1], eye[0]]) / d  # the eye line turned 90 degrees towards the chin
    mouth = (mouth_l + mouth_r) / 2 - (left_eye + right_eye) / 2
    return d, math.degrees(math.atan2(eye[1], eye[0])), float(mouth @ down) / d


def _disagreement(face: Face) -> Optional[float]:
    """Mean distance, in eye distances, between the detector's eyes / nose / mouth keypoints and
    the same points of the landmark mesh (None without both). An upside-down face gets an
    upright-looking mesh whose mouth lands far from the detector's."""
    if face.landmarks is None or len(face.landmarks) < 468 or face.keypoints is None or len(face.keypoints) < 4:
        return None
    mesh = face.five_points()
    d = float(np.hypot(*(mesh[1] - mesh[0])))
    if d < 1e-3:
        return None
    points = np.stack([mesh[0], mesh[1], mesh[2], (mesh[3] + mesh[4]) / 2])
    return float(np.linalg.norm(points - face.keypoints[:4, :2], axis=1).mean()) / d


def refusal_reason(face: Face, *, min_score: float = DEFAULT_MIN_SCORE,
                   require_landmarks: bool = True) -> Optional[str]:
    """Why ``face`` is not a credible face (None when it is); see the module docstring."""
    if face.score < min_score:
        what = "found by the landmark model only" if face.score == 0 else f"detector score {face.score:.2f}"
        return f"{what}, below the minimum {min_score:.2f}"
    if face.landmarks is None and require_landmarks:
        return "no facial landmarks found in it"
    if face.landmarks is None and face.keypoints is None:
        return "neither landmarks nor keypoints"
    x0, y0, x1, y1 = [float(v) for v in face.box_xyxy]
    bw, bh = max(x1 - x0, 1.0), max(y1 - y0, 1.0)
    if face.landmarks is not None:
        cx, cy = face.landmarks[:, :2].mean(0)
        if not (x0 - 0.25 * bw <= cx <= x1 + 0.25 * bw and y0 - 0.25 * bh <= cy <= y1 + 0.25 * bh):
            return "its landmarks belong to another face"
    d, roll, mouth = _roll_and_shape(face.five_points())
    off = _disagreement(face)
    if off is not None and off > MAX_DISAGREEMENT:
        return (f"the landmarks and the detector disagree on where the eyes, nose and mouth are ({off:.2f} eye "
                "distances apart: an upside-down or partial face?)")
    if not EYE_TO_BOX_WIDTH[0] <= d / bw <= EYE_TO_BOX_WIDTH[1]:
        return f"eye distance {d:.0f} px does not fit a {bw:.0f} px face box"
    if abs(roll) > MAX_ROLL_DEG:
        return f"the face is turned by {roll:.0f} degrees in the picture (not upright)"
    if not MOUTH_BELOW_EYES[0] <= mouth <= MOUTH_BELOW_EYES[1]:
        return "the mouth is not below the eyes"
    return None


def choose_face(faces, *, min_score: float = DEFAULT_MIN_SCORE, require_landmarks: bool = True):
    """(the credible face with the highest detector score or None, [(face, reason or None), ...] for
    every other detection: the refused with their reason, the other credible ones with None)."""
    credible, refused = [], []
    for f in faces:
        reason = refusal_reason(f, min_score=min_score, require_landmarks=require_landmarks)
        if reason:
            refused.append((f, reason))
        else:
            credible.append(f)
    credible.sort(key=lambda f: f.score, reverse=True)
    return (credible[0] if credible else None), [(f, None) for f in credible[1:]] + refused


def _box_list(box) -> list:
    return [round(float(v)) for v in box]


def _upright_hint(img: np.ndarray, analyzer: FaceAnalyzer, min_score: float, require_landmarks: bool) -> str:
    """A hint when a credible face appears after turning the photo (it is sideways or upside down)."""
    for k, how in ((2, "upside down: turn it by 180 degrees"),
                   (1, "on its side: turn it by 90 degrees counter-clockwise"),  # np.rot90 turns counter-clockwise
                   (3, "on its side: turn it by 90 degrees clockwise")):
        turned = np.ascontiguousarray(np.rot90(img, k))
        faces = analyzer.detect_all(turned, landmarks_for="all" if require_landmarks else "none")
        best, _ = choose_face(faces, min_score=min_score, require_landmarks=require_landmarks)
        if best is not None:
            return f"; the photo seems to be {how} (a face is found then)"
    return ""


def find_face(image, analyzer: FaceAnalyzer, *, min_score: float = DEFAULT_MIN_SCORE,
              if_no_face: str = "error") -> tuple:
    """(credible face in ``image``'s pixels or None, [(other detection, reason or None), ...]).

    None only with ``if_no_face="full_frame"`` (after a warning); ``"error"`` raises
    :class:`NoCredibleFaceError` with every refused detection and its reason."""
    if if_no_face not in ("error", "full_frame"):
        raise ValueError(f"if_no_face must be 'error' or 'full_frame', got {if_no_face!r}")
    img = as_rgb_uint8(image)
    h, w = img.shape[:2]
    require = getattr(analyzer, "want_landmarks", True)
    faces = analyzer.detect_all(img, landmarks_for="all" if require else "none")
    best, others = choose_face(faces, min_score=min_score, require_landmarks=require)
    if best is not None:
        return best, others
    if others:  # all refused
        listed = "; ".join(f"box {_box_list(f.box_xyxy)} score {f.score:.2f}: {r}" for f, r in others)
        what = f"no credible face in the {w}x{h} image ({len(others)} detection(s) refused: {listed})"
    else:
        what = f"no face found in the {w}x{h} image"
    if if_no_face == "full_frame":
        warnings.warn(f"{what}: using the centre of the photo as the face region", stacklevel=2)
        return None, others
    hint = _upright_hint(img, analyzer, min_score, require)
    raise NoCredibleFaceError(f"{what}{hint}. Use a clear, upright, front-facing photo of a person, or choose "
                              "the full-frame fallback")


# ---------------------------------------------------------------------------- framing
def _fit_axis(start: float, side: int, extent: int) -> int:
    """Integer origin of a ``side`` span starting near ``start``: moved inside [0, extent] when it fits."""
    o = int(round(start))
    if side <= extent:
        o = min(max(o, 0), extent - side)
    return o


def framing_for_face(face_box, image_size, size, *, margin: float = DEFAULT_MARGIN, pad_mode: str = "edge",
                     score: float = 0.0, other_faces=()) -> Framing:
    """The square around ``face_box`` (photo pixels) of side ``max(w, h) * (1 + 2 * margin)``,
    moved inside the photo along each axis where it fits; ``size``: the portrait's side (int)
    or (H, W)."""
    margin = checks.number(margin, "margin", low=0.0, high=MAX_MARGIN)
    h, w = image_size
    x0, y0, x1, y1 = [float(v) for v in face_box]
    side = max(2, int(round(max(x1 - x0, y1 - y0) * (1 + 2 * margin))))
    ox = _fit_axis((x0 + x1) / 2 - side / 2, side, w)
    oy = _fit_axis((y0 + y1) / 2 - side / 2, side, h)
    size = (size, size) if isinstance(size, int) else tuple(size)
    return Framing((ox, oy, ox + side, oy + side), (h, w), size, pad_mode,
                   tuple(float(v) for v in face_box), float(score), "face", tuple(other_faces))


def center_framing(image_size, size, *, mode: str = "center", pad_mode: str = "edge", other_faces=()) -> Framing:
    """The photo's centre square (the pre-framing behaviour; also the full-frame fallback)."""
    h, w = image_size
    side = min(h, w)
    x0, y0 = (w - side) // 2, (h - side) // 2
    size = (size, size) if isinstance(size, int) else tuple(size)
    return Framing((x0, y0, x0 + side, y0 + side), (h, w), size, pad_mode, mode=mode, other_faces=tuple(other_faces))


def _as_float_image(image) -> torch.Tensor:
    """[H, W, C] (or [1, H, W, C]) uint8 / float 0..1, numpy or torch -> float32 [H, W, 3] CPU tensor."""
    t = image.detach().cpu() if isinstance(image, torch.Tensor) else torch.from_numpy(np.array(image))
    if t.ndim == 4 and t.shape[0] == 1:
        t = t[0]
    if t.ndim != 3 or t.shape[-1] < 3:
        raise ValueError(f"expected an RGB image [H, W, 3], got shape {tuple(t.shape)}")
    t = t[..., :3]
    return t.float() / 255.0 if t.dtype == torch.uint8 else t.float()


def _resize(chw: torch.Tensor, hw) -> torch.Tensor:
    """[N, C, h, w] -> [N, C, H, W] bicubic (antialiased when shrinking), clamped to 0..1."""
    if tuple(chw.shape[-2:]) == tuple(hw):
        return chw
    return F.interpolate(chw, size=tuple(hw), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)


def crop_portrait(image, framing: Framing) -> torch.Tensor:
    """The framing's box cut from ``image`` (past the border: ``framing.pad_mode``), resized to
    ``framing.size``: float32 [h, w, 3] 0..1."""
    img = _as_float_image(image)
    h, w = img.shape[:2]
    if (h, w) != tuple(framing.image_size):
        fh, fw = framing.image_size
        raise ValueError(f"the image is {w}x{h} but the framing is for a {fw}x{fh} photo")
    x0, y0, x1, y1 = framing.box
    cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if cx1 <= cx0 or cy1 <= cy0:
        raise ValueError(f"framing box {framing.box} lies outside the {w}x{h} photo")
    part = img[cy0:cy1, cx0:cx1].numpy()
    pads = ((cy0 - y0, y1 - cy1), (cx0 - x0, x1 - cx1), (0, 0))
    if any(p for pair in pads for p in pair):
        part = np.pad(part, pads, mode=framing.pad_mode)
    crop = torch.from_numpy(np.ascontiguousarray(part)).permute(2, 0, 1)[None]
    return _resize(crop, framing.size)[0].permute(1, 2, 0).contiguous()


def _round_down(v: int, multiple: int) -> int:
    return max(multiple, v // multiple * multiple)


def frame_portrait(image, size: int, *, mode: str = "face", analyzer: Optional[FaceAnalyzer] = None, models_dir=None,
                   margin: float = DEFAULT_MARGIN, if_no_face: str = "error", min_score: float = DEFAULT_MIN_SCORE,
                   pad_mode: str = "edge", multiple: int = 64, detect: bool = True) -> FramedPortrait:
    """Photo -> the model's portrait, its ``Framing`` and the face in the portrait's pixels.

    ``mode``: "face" (find the face on the whole photo and frame it; see the module
    docstring), "center" (the centre square) or "none" (the whole photo, resized to multiples
    of ``multiple``). ``size``: the portrait's side (the long side for "none"); 0 keeps the
    crop's own size, rounded down to ``multiple``. With ``detect`` (always in "face" mode)
    the face is looked up (on the whole photo for "face", on the prepared portrait otherwise)
    with the same credibility rules; ``analyzer`` (or a new one on ``models_dir``) does it."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if size < 0 or size % multiple:
        raise ValueError(f"size {size} is not a multiple of {multiple} (the network downsamples by {multiple})")
    img = _as_float_image(image)
    h, w = img.shape[:2]
    own = analyzer is None and (detect or mode == "face")
    analyzer = FaceAnalyzer(models_dir=models_dir) if own else analyzer
    try:
        face, framing = None, None
        if mode == "face":
            face, notes = find_face(img, analyzer, min_score=min_score, if_no_face=if_no_face)
            others = tuple((_box_list(f.box_xyxy), round(f.score, 3), r) for f, r in notes)
            if face is not None:
                framing = framing_for_face(face.box_xyxy, (h, w), size or 1, margin=margin, pad_mode=pad_mode,
                                           score=face.score, other_faces=others)
                if not size:
                    framing = replace(framing, size=(_round_down(framing.width, multiple),) * 2)
            else:
                framing = center_framing((h, w), size or _round_down(min(h, w), multiple), mode="full_frame",
                                         pad_mode=pad_mode, other_faces=others)
        elif mode == "center":
            framing = center_framing((h, w), size or _round_down(min(h, w), multiple), pad_mode=pad_mode)
        else:
            scale = size / max(h, w)  # the long side becomes ``size``, the other the nearest multiple
            th, tw = (max(multiple, round(v * scale / multiple) * multiple) if size else _round_down(v, multiple)
                      for v in (h, w))
            framing = Framing((0, 0, w, h), (h, w), (th, tw), pad_mode, mode="none")
        portrait = crop_portrait(img, framing)
        if face is not None:
            face = framing.face_in_portrait(face)
        elif framing.mode == "full_frame":
            face = Face.full_frame(*framing.size)
        elif detect:
            face, _ = find_face(portrait, analyzer, min_score=min_score, if_no_face=if_no_face)
            face = Face.full_frame(*framing.size) if face is None else face
    finally:
        if own:
            analyzer.close()
    return FramedPortrait(portrait, framing, face)


# ---------------------------------------------------------------------------- paste-back
def _ramp(n: int, feather: int, low_open: bool, high_open: bool) -> torch.Tensor:
    """[n] weights: smoothstep from 0 at each feathered end to 1 ``feather`` pixels inside."""
    wgt = torch.ones(n)
    if feather <= 0:
        return wgt
    pos = torch.arange(n, dtype=torch.float32) + 0.5
    for open_, dist in ((low_open, pos), (high_open, n - pos)):
        if open_:
            t = (dist / feather).clamp(0, 1)
            wgt = wgt * t * t * (3 - 2 * t)
    return wgt


class PasteBack:
    """Blends generated frames into the original photo (see the module docstring).

    ``image``: the photo [H, W, 3] (uint8 or float 0..1, numpy or torch) the framing was made
    from; the output has its dtype (uint8 stays uint8; anything else gives float32 0..1) as a
    torch tensor [T, H, W, 3]. ``feather``: fraction of the square's side (0 = hard edge)."""

    def __init__(self, image, framing: Framing, *, feather: float = DEFAULT_FEATHER, chunk: int = 8):
        feather = checks.number(feather, "feather", low=0.0, high=0.5)
        src = image.detach().cpu() if isinstance(image, torch.Tensor) else torch.from_numpy(np.array(image))
        src = src[0] if src.ndim == 4 and src.shape[0] == 1 else src
        if src.ndim != 3 or src.shape[-1] < 3:
            raise ValueError(f"expected the original photo [H, W, 3], got shape {tuple(src.shape)}")
        self.uint8 = src.dtype == torch.uint8
        self.image = src[..., :3].contiguous() if self.uint8 else src[..., :3].float().contiguous()
        h, w = self.image.shape[:2]
        if (h, w) != tuple(framing.image_size):
            raise ValueError(f"the original image is {w}x{h} but the framing was made for a "
                             f"{framing.image_size[1]}x{framing.image_size[0]} photo: pass the photo the portrait was "
                             "prepared from")
        self.framing, self.chunk = framing, max(1, int(chunk))
        x0, y0, x1, y1 = framing.box
        self.visible = (max(x0, 0), max(y0, 0), min(x1, w), min(y1, h))
        vx0, vy0, vx1, vy1 = self.visible
        f = int(round(feather * min(framing.width, framing.height)))
        ax = _ramp(framing.width, f, x0 > 0, x1 < w)[vx0 - x0: vx1 - x0]
        ay = _ramp(framing.height, f, y0 > 0, y1 < h)[vy0 - y0: vy1 - y0]
        self.alpha = (ay[:, None] * ax[None, :])[..., None]  # [vh, vw, 1]
        region = self.image[vy0:vy1, vx0:vx1]
        self.base = region.float() / 255.0 if self.uint8 else region

    def iter(self, frames) -> Iterator[torch.Tensor]:
        """Yields the pasted frames ``chunk`` at a time (frames [T, h, w, 3], the portrait's size)."""
        fr = frames.detach().cpu() if isinstance(frames, torch.Tensor) else torch.from_numpy(np.asarray(frames).copy())
        fr = fr[None] if fr.ndim == 3 else fr
        if fr.ndim != 4 or tuple(fr.shape[1:3]) != tuple(self.framing.size):
            raise ValueError(f"generated frames are {tuple(fr.shape)} but the framing's portrait is "
                             f"{self.framing.size[1]}x{self.framing.size[0]}: paste back the frames made from it")
        x0, y0 = self.framing.box[:2]
        vx0, vy0, vx1, vy1 = self.visible
        for i in range(0, fr.shape[0], self.chunk):
            part = fr[i:i + self.chunk, ..., :3]
            part = part.float() / 255.0 if part.dtype == torch.uint8 else part.float()
            big = _resize(part.permute(0, 3, 1, 2), (self.framing.height, self.framing.width)).permute(0, 2, 3, 1)
            gen = big[:, vy0 - y0: vy1 - y0, vx0 - x0: vx1 - x0]
            mixed = torch.lerp(self.base.expand_as(gen), gen, self.alpha)
            out = self.image.expand(part.shape[0], *self.image.shape).clone()
            out[:, vy0:vy1, vx0:vx1] = (mixed * 255.0 + 0.5).clamp(0, 255).to(torch.uint8) if self.uint8 else mixed
            yield out

    def __call__(self, frames) -> torch.Tensor:
        return torch.cat(list(self.iter(frames)))


def paste_back(frames, image, framing: Framing, *, feather: float = DEFAULT_FEATHER, chunk: int = 8) -> torch.Tensor:
    """Generated frames [T, S, S, 3] + the original photo + its Framing -> [T, H, W, 3] at the
    photo's size (see :class:`PasteBack`)."""
    return PasteBack(image, framing, feather=feather, chunk=chunk)(frames)
