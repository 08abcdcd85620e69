"""Face analysis behind one small interface, with two MediaPipe backends.

* ``"tasks"``: the MediaPipe Tasks API (``FaceDetector`` + ``FaceLandmarker``). Model files
  live in ``models_dir``; missing ones are downloaded on first use through
  :mod:`emo_core.hub` (a clear error names the file and its URL when offline). The
  detector also accepts the BlazeFace ``.tflite`` bundled inside older mediapipe wheels.
  The landmarker also gives a 4x4 facial transformation matrix (head pose).
* ``"solutions"``: the legacy ``mediapipe.solutions`` API (``FaceDetection`` +
  ``FaceMesh``), whose models are inside the wheel (works offline). Removed in
  mediapipe >= 0.10.30 / 1.x.
* ``"auto"``: tasks when its model files are already in ``models_dir``, else solutions
  when the installed mediapipe still has it, else tasks (downloading).

mediapipe is imported lazily; without it a clear ImportError explains the options.
Images are ``uint8`` RGB ``[H, W, 3]``; all coordinates are pixels.
"""
from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional

import numpy as np

log = logging.getLogger(__name__)

DETECTOR_FILE = "blaze_face_short_range.tflite"
LANDMARKER_FILES = ("face_landmarker.task", "face_landmarker_v2_with_blendshapes.task")

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
            "face analysis needs the 'mediapipe' package (pip install mediapipe). It is optional: "
            "inside ComfyUI you can instead feed face boxes/landmarks from core's MediaPipe "
            f"Face Landmarker node. ({exc})"
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


def _bundled_detector_tflite(mp) -> Optional[Path]:
    p = Path(os.path.dirname(mp.__file__)) / "modules" / "face_detection" / "face_detection_short_range.tflite"
    return p if p.is_file() else None


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


class FaceAnalyzer:
    """Largest-face detection with landmarks; see the module docstring for the backends.

    ``landmarks=False`` skips the landmark model (boxes and keypoints only).
    ``download=False`` never fetches model files (a missing one raises ModelFileMissing).
    """

    def __init__(self, backend: str = "auto", models_dir=None, *, landmarks: bool = True,
                 min_confidence: float = 0.5, max_faces: int = 5, download: bool = True):
        if backend not in ("auto", "tasks", "solutions"):
            raise ValueError(f"backend must be 'auto', 'tasks' or 'solutions', got {backend!r}")
        self.models_dir = Path(models_dir).expanduser() if models_dir is not None else None
        self.want_landmarks = landmarks
        self.min_confidence = float(min_confidence)
        self.max_faces = int(max_faces)
        self.download = download
        self.mp = _import_mediapipe()
        self.backend = self._pick(backend)
        self._detector = None
        self._landmarker = None

    # ------------------------------------------------------------------ setup
    def _local_tasks_files(self) -> bool:
        if self.models_dir is None:
            return False
        has_det = (self.models_dir / DETECTOR_FILE).is_file()
        has_lm = any((self.models_dir / f).is_file() for f in LANDMARKER_FILES)
        return has_det and (has_lm or not self.want_landmarks)

    def _pick(self, backend: str) -> str:
        if backend == "solutions":
            if not has_solutions():
                raise ImportError(
                    f"mediapipe {getattr(self.mp, '__version__', '?')} has no 'mediapipe.solutions' API "
                    "(removed in 0.10.30 / 1.x); use backend='tasks' (model files are downloaded on first use) "
                    "or install mediapipe==0.10.21 --no-deps with protobuf 4.25.x"
                )
            return "solutions"
        if backend == "tasks":
            return "tasks"
        if self._local_tasks_files():
            return "tasks"
        return "solutions" if has_solutions() else "tasks"

    def _models_dir(self) -> Path:
        if self.models_dir is None:
            return Path(os.environ.get("EMO_MODELS_DIR", Path.home() / ".cache" / "emo_portrait" / "face")).expanduser()
        return self.models_dir

    def _task_file(self, names) -> Path:
        from emo_core import hub

        d = self._models_dir()
        for name in names:
            if (d / name).is_file():
                return d / name
        return hub.ensure_known(names[0], d, download=self.download)

    def _tasks_detector(self):
        if self._detector is None:
            from mediapipe.tasks.python import BaseOptions, vision

            path = self._models_dir() / DETECTOR_FILE
            if not path.is_file():
                bundled = _bundled_detector_tflite(self.mp)
                path = bundled if bundled is not None else self._task_file([DETECTOR_FILE])
            opts = vision.FaceDetectorOptions(base_options=BaseOptions(model_asset_path=str(path)),
                                              min_detection_confidence=self.min_confidence)
            self._detector = _create_task(vision.FaceDetector, opts, path, "a MediaPipe face detector (.tflite)")
        return self._detector

    def _tasks_landmarker(self):
        if self._landmarker is None:
            from mediapipe.tasks.python import BaseOptions, vision

            path = self._task_file(list(LANDMARKER_FILES))
            opts = vision.FaceLandmarkerOptions(
                base_options=BaseOptions(model_asset_path=str(path)), num_faces=self.max_faces,
                min_face_detection_confidence=self.min_confidence,
                output_facial_transformation_matrixes=True)
            self._landmarker = _create_task(vision.FaceLandmarker, opts, path,
                                            "a MediaPipe face landmarker task (face_landmarker*.task)")
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
        mp = self.mp
        h, w = img.shape[:2]
        mp_image = mp.Image(image_format=mp.ImageFormat.SRGB, data=img)
        faces = []
        for d in self._tasks_detector().detect(mp_image).detections:
            bb = d.bounding_box
            kp = np.array([[k.x * w, k.y * h] for k in d.keypoints], np.float32) if d.keypoints else None
            faces.append(Face(np.array([bb.origin_x, bb.origin_y, bb.origin_x + bb.width, bb.origin_y + bb.height], np.float32),
                              float(d.categories[0].score), keypoints=kp))
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
