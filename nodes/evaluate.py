"""EMO Evaluate: the paper's metrics and motion statistics for a generated video, shown in
ComfyUI. A thin adapter over ``emo_core.eval.pipeline.evaluate``; nothing from ComfyUI is
imported at module import time (``folder_paths`` is looked up inside ``execute``).
"""
from __future__ import annotations

import json

import numpy as np

METRICS = ("fid", "fvd", "syncnet", "fsim", "efid", "motion")


def _to_uint8(images) -> np.ndarray:
    arr = images.detach().cpu().float().numpy() if hasattr(images, "detach") else np.asarray(images, np.float32)
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[-1] < 3:
        raise ValueError(f"IMAGE input must be [B, H, W, C], got shape {arr.shape}")
    return (np.clip(arr[..., :3], 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _models_dir():
    try:
        import folder_paths  # ComfyUI, only present inside it
    except ImportError:
        return None
    import os
    return os.path.join(folder_paths.models_dir, "emo")


class EmoEvaluate:
    CATEGORY = "EMO"
    FUNCTION = "execute"
    OUTPUT_NODE = True
    RETURN_TYPES = ("STRING", "STRING")
    RETURN_NAMES = ("table", "json")
    DESCRIPTION = ("FID / FVD / SyncNet (LSE-C, LSE-D) / F-SIM / E-FID and head-motion, mouth-vs-loudness, "
                   "flicker and A/V-offset statistics of a generated video. Set metrics need reference frames.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "images": ("IMAGE", {"tooltip": "generated video frames"}),
                "fps": ("FLOAT", {"default": 25.0, "min": 1.0, "max": 120.0, "step": 0.01,
                                  "tooltip": "frame rate of the generated frames"}),
                "metrics": ("STRING", {"default": ",".join(METRICS),
                                       "tooltip": "comma-separated subset of " + ",".join(METRICS)}),
            },
            "optional": {
                "audio": ("AUDIO", {"tooltip": "the driving audio (SyncNet, mouth-vs-loudness)"}),
                "reference_image": ("IMAGE", {"tooltip": "the portrait the video was made from (F-SIM)"}),
                "reference_video": ("IMAGE", {"tooltip": "ground-truth frames (FID, FVD, E-FID, ground-truth values)"}),
                "download_models": ("BOOLEAN", {"default": False,
                                                "tooltip": "fetch missing metric networks into models/emo/eval"}),
            },
        }

    def execute(self, images, fps, metrics, audio=None, reference_image=None, reference_video=None,
                download_models=False):
        from emo_core import checks
        from emo_core.eval.pipeline import EvalConfig, evaluate
        from emo_core.eval.video_io import Video

        from .common import widget

        fps = widget("fps", checks.fps, fps)

        wav = None
        if audio is not None:
            from emo_core.preprocess.audio_io import from_comfy_audio
            wav = from_comfy_audio(audio)
        generated = [Video(_to_uint8(images), float(fps), wav, name="generated",
                           audio_note="" if wav is not None else "no AUDIO input")]
        reference = []
        if reference_video is not None:
            # same stem as the generated video, so the two are paired
            reference = [Video(_to_uint8(reference_video), float(fps), wav, name="reference/generated")]
        ref_images = {"generated": _to_uint8(reference_image)[0]} if reference_image is not None else {}
        chosen = tuple(m.strip() for m in metrics.split(",") if m.strip())
        config = EvalConfig(metrics=chosen, models_dir=_models_dir(), download=bool(download_models))
        report = evaluate(generated, reference, config, reference_images=ref_images)
        table = report.format_table()
        return {"ui": {"text": [table]}, "result": (table, json.dumps(report.to_dict(), indent=2))}


NODE_CLASS_MAPPINGS = {"EmoEvaluate": EmoEvaluate}
NODE_DISPLAY_NAME_MAPPINGS = {"EmoEvaluate": "EMO Evaluate"}
