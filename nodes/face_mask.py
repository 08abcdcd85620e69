"""EMO Face Mask: the face-locator mask (expanded face box) and Hallo's full/face/lip regions,
from MediaPipe's Tasks models (mediapipe package; model files in models/emo/face_analysis,
downloaded on first use), from core's FACE_LANDMARKS, or from a MASK you pass in."""
from __future__ import annotations

import numpy as np

from .types import CATEGORY, EMO_MODEL, EMO_REGIONS


def faces_from_core_landmarks(face_landmarks: dict) -> list:
    """core FACE_LANDMARKS -> one emo_core Face (largest) or None per frame."""
    from emo_core.preprocess.face import Face

    h, w = face_landmarks["image_size"]
    out = []
    for per_frame in face_landmarks["frames"]:
        if not per_frame:
            out.append(None)
            continue
        f = max(per_frame, key=lambda d: float((d["bbox_xyxy"][2] - d["bbox_xyxy"][0]) * (d["bbox_xyxy"][3] - d["bbox_xyxy"][1])))
        xy = np.asarray(f["landmarks_xy"], np.float32)
        l3 = np.asarray(f.get("landmarks_3d", np.zeros((len(xy), 3))), np.float32)
        # canonical (crop) units -> pixels, with the scale of the 2D landmarks
        scale = float(xy.std(0).mean() / max(l3[:, :2].std(0).mean(), 1e-6)) if len(l3) == len(xy) else 0.0
        lm = np.concatenate([xy, l3[:, 2:3] * scale if len(l3) == len(xy) else np.zeros((len(xy), 1), np.float32)], 1)
        matrix = f.get("transformation_matrix")
        out.append(Face(np.asarray(f["bbox_xyxy"], np.float32), float(f.get("score", 1.0)), landmarks=lm,
                        transformation_matrix=None if matrix is None else np.asarray(matrix, np.float32),
                        image_size=(h, w)))
    return out


def face_model_dirs(emo_model=None):
    """(download folder, folders searched first): ComfyUI's models/emo/face_analysis (outside
    ComfyUI $EMO_MODELS_DIR/emo/face_analysis); first every other registered emo folder's
    face_analysis and the loaded model's own face-model folder (Hallo's face_analysis/models)."""
    from .comfy_env import emo_folders

    folders = [d / "face_analysis" for d in emo_folders()]
    own = None if emo_model is None else emo_model.face_models_dir()
    return folders[0], [d for d in folders[1:] + [own] if d is not None]


def _download_progress():
    """Progress of a face-model download: ComfyUI's progress bar and a line on the console."""
    from emo_core.preprocess.face import print_progress

    from .comfy_env import progress_bar

    bar, lines = progress_bar(100), {}

    def cb(name, done, total):
        lines.setdefault(name, print_progress(name))(done, total)
        if total:
            bar.update_absolute(int(100 * done / total), 100)

    return cb


def detect_faces(images, emo_model=None) -> list:
    """The largest face per frame (None where there is none), with MediaPipe's Tasks models
    from the models folder (downloaded there on first use)."""
    from emo_core.preprocess.face import FaceAnalyzer

    from .comfy_env import check_interrupt

    models_dir, search = face_model_dirs(emo_model)
    frames = (images[..., :3].clamp(0, 1) * 255 + 0.5).byte().cpu().numpy()
    with FaceAnalyzer(models_dir=models_dir, search_dirs=search, progress_callback=_download_progress()) as analyzer:
        faces = []
        for frame in frames:
            check_interrupt()
            faces.append(analyzer.analyze(frame, if_missing="none"))
    return faces


class EmoFaceMask:
    CATEGORY = CATEGORY
    FUNCTION = "mask"
    RETURN_TYPES = ("MASK", EMO_REGIONS)
    RETURN_NAMES = ("mask", "regions")
    DESCRIPTION = ("Face-locator mask: the expanded face box (one image) or one box per frame (a batch; each clip "
                   "uses the union of its frames' boxes, as EMO). 'regions' are Hallo's full/face/lip "
                   "audio-attention masks of the first frame.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "image": ("IMAGE", {"tooltip": "the prepared portrait from EMO Reference Encode (or frames of that size)"}),
                "expand": ("FLOAT", {"default": 1.2, "min": 1.0, "max": 3.0, "step": 0.05,
                                     "tooltip": "box growth around its centre (Hallo: 1.2)"}),
                "if_no_face": (["error", "full_frame"], {"default": "error",
                                                         "tooltip": "full_frame: carry on with the whole image as the face"}),
            },
            "optional": {
                "face_landmarks": ("FACE_LANDMARKS", {"tooltip": "core's MediaPipe Face Landmarker output for the same "
                                                                 "image(s), used instead of the pack's own face "
                                                                 "analysis (no face model download)"}),
                "mask": ("MASK", {"tooltip": "use this mask as the face-locator mask (passed through; regions are "
                                             "approximated from its box)"}),
                "emo_model": (EMO_MODEL, {"tooltip": "also look for the face model files in this model's folder "
                                                     "(Hallo's face_analysis/models); else models/emo/face_analysis, "
                                                     "downloaded on first use"}),
            },
        }

    def mask(self, image, expand=1.2, if_no_face="error", face_landmarks=None, mask=None, emo_model=None):
        import torch

        from emo_core.preprocess.face import NoFaceError
        from emo_core.preprocess.masks import face_box_mask, hallo_region_masks

        from emo_core import checks

        from .common import choice, regions_from_mask, widget

        expand = widget("expand", checks.expand, expand)
        choice("if_no_face", if_no_face, ("error", "full_frame"))
        b, h, w = image.shape[0], image.shape[1], image.shape[2]
        if mask is not None:
            m = mask[None] if mask.ndim == 2 else mask
            if tuple(m.shape[-2:]) != (h, w):
                raise ValueError(f"the MASK is {m.shape[-1]}x{m.shape[-2]} but the image is {w}x{h}")
            m = m.float().clamp(0, 1).clone()
            return (m, regions_from_mask(m.amax(0)))
        if face_landmarks is not None:
            if tuple(face_landmarks["image_size"]) != (h, w):
                raise ValueError(f"FACE_LANDMARKS were measured on {face_landmarks['image_size']} images but this image "
                                 f"is {(h, w)}: run the landmarker on the same image")
            faces = faces_from_core_landmarks(face_landmarks)
        else:
            faces = detect_faces(image, emo_model)
        if all(f is None for f in faces):
            if if_no_face == "error":
                raise NoFaceError(f"no face found in the {w}x{h} image{'s' if b > 1 else ''}: use a clear, front-facing "
                                  "portrait, or set if_no_face to full_frame")
            full = torch.ones(len(faces), h, w)
            return (full, regions_from_mask(full[0]))
        first = next(f for f in faces if f is not None)
        masks = torch.stack([face_box_mask(f if f is not None else first, h, w, expand) for f in faces])
        r = hallo_region_masks(first, h, w, face_expand_ratio=expand)
        return (masks, {"full": r["full"], "face": r["face"], "lip": r["lip"], "size": (h, w)})


NODE_CLASS_MAPPINGS = {"EmoFaceMask": EmoFaceMask}
NODE_DISPLAY_NAME_MAPPINGS = {"EmoFaceMask": "EMO Face Mask"}
