"""Face analysis behind one small interface, with two MediaPipe backends.

* ``"tasks"``: the MediaPipe Tasks API (``FaceDetector`` + ``FaceLandmarker``), the only API of
  mediapipe >= 0.10.30 / 1.x. It needs two model files, looked up in ``search_dirs``, in
  ``models_dir`` and in :func:`default_models_dir` (``$EMO_MODELS_DIR/emo/face_analysis``;
  inside ComfyUI its ``models/emo/face_analysis``), and downloaded into ``models_dir`` (default:
  that folder) on first use through :mod:`emo_core.hub` (temporary file renamed when complete,
  sha256 checked, a clear error naming file, destination and URL when offline):

  - ``face_landmarker.task`` (3.7 MB; Hallo's ``face_landmarker_v2_with_blendshapes.task`` is
    accepted too): 478 landmarks and a 4x4 facial transformation matrix (head pose). The bundle
    also holds the BlazeFace detector, which is used from it when no detector file is present.
  - ``blaze_face_short_range.tflite`` (230 kB): boxes, scores and 6 keypoints; only downloaded
    when landmarks are off and no landmarker bundle is present (mediapipe < 0.10.30 wheels
    also ship it as ``face_detection_short_range.tflite``).

  ``$EMO_FACE_MODELS_URL`` replaces the download location (a mirror serving the same file names).
  Frames far from square are also searched in overlapping square tiles (the detector sees a
  letterboxed 128x128 copy, where faces in a wide frame would shrink to a few pixels).
* ``"solutions"``: the legacy ``mediapipe.solutions`` API (``FaceDetection`` + ``FaceMesh``),
  whose models are inside the wheel. Removed in mediapipe >= 0.10.30 / 1.x.
* ``"auto"``: tasks, unless the installed mediapipe still has solutions and the tasks model
  files are not already on disk.

mediapipe is imported lazily; without it a clear ImportError explains the options.
Images are ``uint8`` RGB ``[H, W, 3]``; all coordinates are pixels.
"""
from __future__ import annotations

import atexit
import logging
import os
import sys
import warnings
import weakref
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional

import numpy as np

log = logging.getLogger(__name__)

DETECTOR_FILE = "blaze_face_short_range.tflite"
LANDMARKER_FILES = ("face_landmarker.task", "face_landmarker_v2_with_blendshapes.task")
BUNDLE_DETECTOR = "face_detector.tflite"  # the detector inside a FaceLandmarker .task bundle
MIRROR_ENV = "EMO_FACE_MODELS_URL"
FACE_SUBFOLDER = ("emo", "face_analysis")

# face-mesh indices (478-point topology) for the five ArcFace points, image-left first
_EYE_IMG_LEFT = (33, 133, 160, 159, 158, 144, 145, 153)   # subject's right eye
_EYE_IMG_RIGHT = (362, 263, 387, 386, 385, 373, 374, 380)  # subject's left eye
_NOSE_TIP = 1
_MOUTH_IMG_LEFT, _MOUTH_IMG_RIGHT = 61, 291


class NoFaceError(ValueError):
    """No face was found where one is required."""


@dataclass
class Face:
    """One detected face. ``box_xyxy`` float pixels; ``landmarks`` [N, 3] pixels (z in the
    x scale) or None; ``transformation_matrix`` 4x4 (Tasks landmarker) or None;
    ``keypoints`` the detector's 6 points [6, 2] pixels (eyes, nose, mouth, ears) or None."""

    box_xyxy: np.ndarray
    score: float
    landmarks: Optional[np.ndarray] = None
    transformation_matrix: Optional[np.ndarray] = None
    keypoints: Optional[np.ndarray] = None
    image_size: tuple = field(default=(0, 0))  # (H, W)

    @property
    def area(self) -> float:
        x0, y0, x1, y1 = self.box_xyxy
        return float(max(0.0, x1 - x0) * max(0.0, y1 - y0))

    def five_points(self) -> np.ndarray:
        """[5, 2]: image-left eye, image-right eye, nose tip, image-left / -right mouth corner."""
        if self.landmarks is not None and len(self.landmarks) >= 468:
            lm = self.landmarks[:, :2]
            return np.stack([
                lm[list(_EYE_IMG_LEFT)].mean(0), lm[list(_EYE_IMG_RIGHT)].mean(0),
                lm[_NOSE_TIP], lm[_MOUTH_IMG_LEFT], lm[_MOUTH_IMG_RIGHT],
            ]).astype(np.float32)
        if self.keypoints is not None:
            # BlazeFace: 0 subject-right eye (image left), 1 subject-left eye, 2 nose, 3 mouth
            k = self.keypoints
            eyes = k[1] - k[0]
            half_mouth = 0.4 * eyes
            return np.stack([k[0], k[1], k[2], k[3] - half_mouth, k[3] + half_mouth]).astype(np.float32)
        raise ValueError("this face has neither landmarks nor detector keypoints")

    @classmethod
    def full_frame(cls, height: int, width: int) -> "Face":
        return cls(np.array([0, 0, width, height], np.float32), 0.0, image_size=(height, width))


def _import_mediapipe():
    try:
        import mediapipe as mp
    except ImportError as exc:
        raise ImportError(
            "face analysis needs the 'mediapipe' package: pip install -r requirements.txt (or pip install "
            "'mediapipe>=0.10.30') into this Python. Inside ComfyUI you can instead wire core's MediaPipe "
            f"Face Landmarker (FACE_LANDMARKS) into EMO Face Mask / EMO Speed. ({exc})"
        ) from exc
    return mp


def has_solutions() -> bool:
    """True when the installed mediapipe still ships the legacy ``mediapipe.solutions`` API."""
    try:
        mp = _import_mediapipe()
        return hasattr(mp, "solutions") and hasattr(mp.solutions, "face_mesh")
    except Exception:  # an import failure of any kind means "not usable"
        return False


def as_rgb_uint8(image) -> np.ndarray:
    """Validate/convert to contiguous uint8 RGB [H, W, 3] (float input is read as 0..1)."""
    if hasattr(image, "detach"):
        image = image.detach().cpu().numpy()
    img = np.asarray(image)
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    if img.ndim != 3 or img.shape[-1] not in (3, 4):
        raise ValueError(f"expected an RGB image [H, W, 3], got shape {img.shape}")
    img = img[..., :3]
    if img.dtype != np.uint8:
        if np.issubdtype(img.dtype, np.floating):
            img = np.clip(img * 255.0 + 0.5, 0, 255)
        img = img.astype(np.uint8)
    return np.ascontiguousarray(img)


def default_models_dir() -> Path:
    """Where face model files are looked up and downloaded: inside ComfyUI (its ``folder_paths``
    module already loaded; never imported here) ComfyUI's ``models/emo/face_analysis``, else
    ``$EMO_MODELS_DIR/emo/face_analysis`` (default ``~/.cache/emo_portrait/models/emo/face_analysis``)."""
    comfy_folders = sys.modules.get("folder_paths")
    if getattr(comfy_folders, "models_dir", None):
        return Path(comfy_folders.models_dir).joinpath(*FACE_SUBFOLDER)
    root = Path(os.environ.get("EMO_MODELS_DIR") or Path.home() / ".cache" / "emo_portrait" / "models").expanduser()
    return root.joinpath(*FACE_SUBFOLDER)


def model_url(name: str) -> str:
    """Download URL of a face model file: ``$EMO_FACE_MODELS_URL/<name>`` when that mirror is
    set, else the public URL in :data:`emo_core.hub.KNOWN_FILES`."""
    from emo_core import hub

    mirror = os.environ.get(MIRROR_ENV, "").strip()
    return f"{mirror.rstrip('/')}/{name}" if mirror else hub.KNOWN_FILES[name].url


def _bundled_detector_tflite(mp) -> Optional[Path]:
    p = Path(os.path.dirname(mp.__file__)) / "modules" / "face_detection" / "face_detection_short_range.tflite"
    return p if p.is_file() else None


def print_progress(name: str):
    """Default download progress: one line on stderr, rewritten in place every 5 %."""
    shown = [-5]

    def cb(done: int, total: Optional[int]) -> None:
        if not total or shown[0] >= 100:
            return
        pct = min(100, int(100 * done / total))
        if pct >= shown[0] + 5 or pct == 100:
            shown[0] = pct
            print(f"\rdownloading {name}: {pct:3d}% of {total / 1e6:.1f} MB", end="\n" if pct == 100 else "",
                  file=sys.stderr, flush=True)

    return cb


def _box_from_points(points: np.ndarray) -> np.ndarray:
    return np.array([points[:, 0].min(), points[:, 1].min(), points[:, 0].max(), points[:, 1].max()], np.float32)


def _square_crop(img: np.ndarray, box, scale: float = 2.0):
    """Square crop of side ``scale * max(box w, h)`` centred on the box, zero-padded outside
    the image. Returns (crop, (x0, y0, side)) with (x0, y0) the crop origin in the image."""
    x0, y0, x1, y1 = [float(v) for v in box]
    side = int(round(max(x1 - x0, y1 - y0, 8.0) * scale))
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    ox, oy = int(round(cx - side / 2)), int(round(cy - side / 2))
    h, w = img.shape[:2]
    crop = np.zeros((side, side, 3), np.uint8)
    sx0, sy0, sx1, sy1 = max(ox, 0), max(oy, 0), min(ox + side, w), min(oy + side, h)
    if sx1 > sx0 and sy1 > sy0:
        crop[sy0 - oy: sy1 - oy, sx0 - ox: sx1 - ox] = img[sy0:sy1, sx0:sx1]
    return crop, (ox, oy, side)


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def _merge_duplicates(faces: list, iou: float = 0.4) -> list:
    """One face per place: of overlapping detections (IoU above ``iou``) the best-scored one."""
    kept: list = []
    for f in sorted(faces, key=lambda f: f.score, reverse=True):
        if all(_iou(f.box_xyxy, k.box_xyxy) <= iou for k in kept):
            kept.append(f)
    return kept


_OPEN: "weakref.WeakSet[FaceAnalyzer]" = weakref.WeakSet()


@atexit.register
def _close_open_analyzers() -> None:
    """Close analyzers still open at exit while mediapipe can still close them (its own
    finalizers fail noisily once the interpreter is tearing down)."""
    for analyzer in list(_OPEN):
        analyzer.close()


class FaceAnalyzer:
    """Largest-face detection with landmarks; see the module docstring for the backends.

    ``models_dir``: where the Tasks model files are looked up and downloaded (default
    :func:`default_models_dir`, which is also looked in when another ``models_dir`` is given);
    ``search_dirs``: further folders looked in first, never written (e.g. Hallo's
    ``face_analysis/models``). ``landmarks=False`` skips the landmark
    model (boxes and keypoints only). ``download=False`` never fetches model files (a missing
    one raises :class:`emo_core.hub.ModelFileMissing`). ``progress_callback(file_name, done,
    total)`` follows a download (default: a progress line on stderr).
    """

    def __init__(self, backend: str = "auto", models_dir=None, *, landmarks: bool = True,
                 min_confidence: float = 0.5, max_faces: int = 5, download: bool = True,
                 search_dirs: Iterable = (), progress_callback=None):
        if backend not in ("auto", "tasks", "solutions"):
            raise ValueError(f"backend must be 'auto', 'tasks' or 'solutions', got {backend!r}")
        self.models_dir = Path(models_dir).expanduser() if models_dir is not None else None
        self.search_dirs = [Path(d).expanduser() for d in search_dirs if d is not None]
        self.want_landmarks = landmarks
        self.min_confidence = float(min_confidence)
        self.max_faces = int(max_faces)
        self.download = download
        self.progress_callback = progress_callback
        self.mp = _import_mediapipe()
        self.backend = self._pick(backend)
        self._detector = None
        self._landmarker = None
        _OPEN.add(self)

    # ------------------------------------------------------------------ setup
    def _models_dir(self) -> Path:
        return self.models_dir if self.models_dir is not None else default_models_dir()

    def _find(self, names) -> Optional[Path]:
        """First of ``names`` in ``search_dirs``, ``models_dir``, then the default folder."""
        for d in self.search_dirs + [self._models_dir(), default_models_dir()]:
            for name in names:
                if (d / name).is_file():
                    return d / name
        return None

    def _local_tasks_files(self) -> bool:
        if self._find(LANDMARKER_FILES) is not None:
            return True
        return not self.want_landmarks and self._find([DETECTOR_FILE]) is not None

    def _pick(self, backend: str) -> str:
        if backend == "solutions":
            if not has_solutions():
                raise ImportError(
                    f"mediapipe {getattr(self.mp, '__version__', '?')} has no 'mediapipe.solutions' API "
                    "(removed in 0.10.30 / 1.x); use backend='tasks' (its model files are downloaded on first use)"
                )
            return "solutions"
        if backend == "tasks":
            return "tasks"
        if self._local_tasks_files():
            return "tasks"
        return "solutions" if has_solutions() else "tasks"

    def _fetch(self, name: str) -> Path:
        """``name`` from the search folders or ``models_dir``, else downloaded into ``models_dir``."""
        from emo_core import hub

        found = self._find([name])
        if found is not None:
            return found
        info = hub.KNOWN_FILES[name]
        url, dest = model_url(name), self._models_dir() / name
        if not self.download:
            raise hub.ModelFileMissing(f"model file {name} is missing and downloads are switched off.\n"
                                       f"  Put the file at: {dest}\n  Get it from:     {url}")
        if self.progress_callback is not None:
            cb = lambda done, total: self.progress_callback(name, done, total)  # noqa: E731
        else:
            cb = print_progress(name)
        log.info("downloading %s from %s to %s", name, url, dest)
        return hub.ensure_file(url, dest, info.sha256, cb, timeout=120.0)

    def _landmarker_file(self) -> Path:
        return self._find(LANDMARKER_FILES) or self._fetch(LANDMARKER_FILES[0])

    def _detector_options(self, BaseOptions):
        """The BlazeFace short-range model: its own file, else the one inside the landmarker
        bundle (the same bytes), else the copy in an older mediapipe wheel, else a download."""
        path = self._find([DETECTOR_FILE])
        if path is not None:
            return BaseOptions(model_asset_path=str(path))
        bundle = self._find(LANDMARKER_FILES)
        if bundle is None and self.want_landmarks:
            bundle = self._landmarker_file()
        if bundle is not None:
            with zipfile.ZipFile(bundle) as zf:
                return BaseOptions(model_asset_buffer=zf.read(BUNDLE_DETECTOR))
        bundled = _bundled_detector_tflite(self.mp)
        if bundled is not None:
            return BaseOptions(model_asset_path=str(bundled))
        return BaseOptions(model_asset_path=str(self._fetch(DETECTOR_FILE)))

    def _tasks_detector(self):
        if self._detector is None:
            from mediapipe.tasks.python import BaseOptions, vision

            opts = vision.FaceDetectorOptions(base_options=self._detector_options(BaseOptions),
                                              min_detection_confidence=self.min_confidence)
            self._detector = vision.FaceDetector.create_from_options(opts)
        return self._detector

    def _tasks_landmarker(self):
        if self._landmarker is None:
            from mediapipe.tasks.python import BaseOptions, vision

            opts = vision.FaceLandmarkerOptions(
                base_options=BaseOptions(model_asset_path=str(self._landmarker_file())), num_faces=self.max_faces,
                min_face_detection_confidence=self.min_confidence,
                output_facial_transformation_matrixes=True)
            self._landmarker = vision.FaceLandmarker.create_from_options(opts)
        return self._landmarker

    def _solutions_models(self):
        if self._detector is None:
            sol = self.mp.solutions
            self._detector = [sol.face_detection.FaceDetection(model_selection=m, min_detection_confidence=self.min_confidence)
                              for m in (0, 1)]
            if self.want_landmarks:
                self._landmarker = sol.face_mesh.FaceMesh(static_image_mode=True, max_num_faces=self.max_faces,
                                                          refine_landmarks=True, min_detection_confidence=0.3)
        return self._detector, self._landmarker

    # ------------------------------------------------------------------ raw detections
    def detect_all(self, image, landmarks_for: str = "largest") -> list[Face]:
        """All faces (boxes, scores, keypoints), largest first.

        Landmarks are computed on a square crop around each face (so small faces in large
        frames work) for the largest face only (``"largest"``), every face (``"all"``) or
        none (``"none"``); the landmark model runs on the whole frame when the detector
        found nothing.
        """
        img = as_rgb_uint8(image)
        h, w = img.shape[:2]
        faces = self._detect_tasks(img) if self.backend == "tasks" else self._detect_solutions(img)
        for f in faces:
            f.image_size = (h, w)
        faces.sort(key=lambda f: f.area, reverse=True)
        if not self.want_landmarks or landmarks_for == "none":
            return faces
        if not faces:
            meshes = self._mesh(img)
            faces = [Face(_box_from_points(lm), 0.0, landmarks=lm, transformation_matrix=m, image_size=(h, w))
                     for lm, m in meshes]
            faces.sort(key=lambda f: f.area, reverse=True)
            return faces
        for f in faces if landmarks_for == "all" else faces[:1]:
            crop, (x0, y0, side) = _square_crop(img, f.box_xyxy, scale=2.0)
            meshes = self._mesh(crop)
            if not meshes:
                continue
            # the mesh whose centre is nearest the crop centre belongs to this face
            lm, matrix = min(meshes, key=lambda mm: float(np.sum((mm[0][:, :2].mean(0) - side / 2) ** 2)))
            f.landmarks = (lm + np.array([x0, y0, 0], np.float32)).astype(np.float32)
            f.transformation_matrix = matrix
        return faces

    def _detect_tasks(self, img) -> list[Face]:
        """BlazeFace on the whole frame and, for a frame far from square, on overlapping square
        tiles too: the short-range model sees a letterboxed 128x128 copy of the frame, where a
        face in a wide photo shrinks to a few pixels. Duplicates are merged by overlap."""
        h, w = img.shape[:2]
        faces = self._detect_tasks_at(img, 0, 0)
        side, long = min(h, w), max(h, w)
        if long > 1.25 * side:
            n = int(np.ceil(2 * long / side)) - 1  # tiles overlapping by about half
            for i in range(n):
                o = int(round(i * (long - side) / (n - 1)))
                if w > h:
                    faces += self._detect_tasks_at(np.ascontiguousarray(img[:, o:o + side]), o, 0)
                else:
                    faces += self._detect_tasks_at(np.ascontiguousarray(img[o:o + side]), 0, o)
        return _merge_duplicates(faces)

    def _detect_tasks_at(self, img, ox: int, oy: int) -> list[Face]:
        mp = self.mp
        h, w = img.shape[:2]
        faces = []
        for d in self._tasks_detector().detect(mp.Image(image_format=mp.ImageFormat.SRGB, data=img)).detections:
            bb = d.bounding_box
            kp = np.array([[k.x * w + ox, k.y * h + oy] for k in d.keypoints], np.float32) if d.keypoints else None
            box = [bb.origin_x + ox, bb.origin_y + oy, bb.origin_x + bb.width + ox, bb.origin_y + bb.height + oy]
            faces.append(Face(np.array(box, np.float32), float(d.categories[0].score), keypoints=kp))
        return faces

    def _detect_solutions(self, img) -> list[Face]:
        h, w = img.shape[:2]
        detectors, _ = self._solutions_models()
        faces = []
        for det in detectors:  # short range first; full range only if nothing was found
            res = det.process(img)
            for d in res.detections or []:
                rb = d.location_data.relative_bounding_box
                kp = np.array([[k.x * w, k.y * h] for k in d.location_data.relative_keypoints], np.float32)
                box = np.array([rb.xmin * w, rb.ymin * h, (rb.xmin + rb.width) * w, (rb.ymin + rb.height) * h], np.float32)
                faces.append(Face(box, float(d.score[0]), keypoints=kp))
            if faces:
                break
        return faces

    def _mesh(self, img) -> list:
        """[(landmarks [N, 3] pixels of ``img``, 4x4 matrix or None), ...]."""
        h, w = img.shape[:2]
        img = np.ascontiguousarray(img)
        if self.backend == "tasks":
            mp = self.mp
            res = self._tasks_landmarker().detect(mp.Image(image_format=mp.ImageFormat.SRGB, data=img))
            mats = list(res.facial_transformation_matrixes or [])
            return [(np.array([[p.x * w, p.y * h, p.z * w] for p in lms], np.float32),
                     np.asarray(mats[i], np.float32) if i < len(mats) else None)
                    for i, lms in enumerate(res.face_landmarks)]
        _, mesh = self._solutions_models()
        res = mesh.process(img)
        return [(np.array([[p.x * w, p.y * h, p.z * w] for p in lms.landmark], np.float32), None)
                for lms in res.multi_face_landmarks or []]

    # ------------------------------------------------------------------ public API
    def analyze(self, image, if_missing: str = "none") -> Optional[Face]:
        """The largest face, or per ``if_missing`` when there is none:
        ``"none"`` -> None, ``"error"`` -> NoFaceError, ``"full_frame"`` -> a warning and a
        full-image Face (score 0, no landmarks)."""
        if if_missing not in ("none", "error", "full_frame"):
            raise ValueError(f"if_missing must be 'none', 'error' or 'full_frame', got {if_missing!r}")
        img = as_rgb_uint8(image)
        faces = self.detect_all(img)
        if not faces:
            h, w = img.shape[:2]
            if if_missing == "error":
                raise NoFaceError(
                    f"no face found in the {w}x{h} image (backend {self.backend}); use a clear, front-facing "
                    "portrait, or choose the full-frame fallback")
            if if_missing == "full_frame":
                warnings.warn(f"no face found in the {w}x{h} image: using the whole frame as the face region", stacklevel=2)
                return Face.full_frame(h, w)
            return None
        if len(faces) > 1:
            msg = f"{len(faces)} faces found; using the largest ({faces[0].area:.0f} px^2 box at {np.round(faces[0].box_xyxy, 1).tolist()})"
            warnings.warn(msg, stacklevel=2)
            log.info(msg)
        return faces[0]

    def analyze_video(self, frames: Iterable) -> list[Optional[Face]]:
        """``analyze`` per frame (None where no face); at most one multi-face warning."""
        out = []
        warned = False
        for frame in frames:
            with warnings.catch_warnings(record=True) as rec:
                warnings.simplefilter("always")
                out.append(self.analyze(frame))
            if rec and not warned:
                warnings.warn(str(rec[0].message) + " (first frame with several faces; not repeated)", stacklevel=2)
                warned = True
        return out

    def close(self):
        for m in (self._detector if isinstance(self._detector, list) else [self._detector]) + [self._landmarker]:
            if m is not None and hasattr(m, "close"):
                m.close()
        self._detector = self._landmarker = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _create_task(task, options, path, expected: str):
    """``task.create_from_options`` with a bad model file reported as CheckpointError (file, what was expected)."""
    try:
        return task.create_from_options(options)
    except (RuntimeError, ValueError, OSError) as exc:
        from emo_core.checkpoints import CheckpointError

        raise CheckpointError(f"{path}: not a usable model file, expected {expected} "
                              f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from exc
