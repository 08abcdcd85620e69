"""EMO Speed: the head-rotation speed target (degrees per output frame), constant or measured
on a driving video (IMAGE batch, via mediapipe) or on core's FACE_LANDMARKS of it."""
from __future__ import annotations

from .types import CATEGORY, EMO_MODEL, EMO_SPEED


class EmoSpeed:
    CATEGORY = CATEGORY
    FUNCTION = "speed"
    RETURN_TYPES = (EMO_SPEED, "FLOAT")
    RETURN_NAMES = ("speed", "mean_speed")
    DESCRIPTION = ("EMO's speed condition. Without a driving input: a constant target. With driving frames or "
                   "landmarks: the measured head-rotation speed, converted to degrees per output frame and read "
                   "by time (the last value holds past the driving video's end). Models without speed layers "
                   "(Hallo) ignore it.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "target_speed": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 30.0, "step": 0.05,
                                           "tooltip": "degrees per output frame, used when nothing is driving"}),
                "fps": ("FLOAT", {"default": 25.0, "min": 1.0, "max": 120.0, "step": 0.01,
                                  "tooltip": "frame rate of the generated video"}),
            },
            "optional": {
                "driving_images": ("IMAGE", {"tooltip": "frames of a talking-head video (e.g. from Load Video)"}),
                "face_landmarks": ("FACE_LANDMARKS", {"tooltip": "core's Face Landmarker output for the driving frames "
                                                                 "(instead of driving_images; no mediapipe package)"}),
                "driving_fps": ("FLOAT", {"default": 25.0, "min": 1.0, "max": 120.0, "step": 0.01,
                                          "tooltip": "frame rate of the driving frames (Get Video Components' fps)"}),
                "smooth": ("INT", {"default": 5, "min": 0, "max": 51, "tooltip": "moving-average window in frames"}),
                "emo_model": (EMO_MODEL, {"tooltip": "also look for the face model files in this model's folder "
                                                     "(Hallo's face_analysis/models); else models/emo/face_analysis, "
                                                     "downloaded on first use"}),
            },
        }

    def speed(self, target_speed, fps, driving_images=None, face_landmarks=None, driving_fps=25.0, smooth=5,
              emo_model=None):
        import numpy as np

        from emo_core import checks
        from emo_core.preprocess.pose import constant_speed, head_rotations, rotation_speed

        from .common import widget

        target_speed = widget("target_speed", checks.speed, target_speed)  # NaN / inf / negative refused
        fps = widget("fps", checks.fps, fps)
        driving_fps = widget("driving_fps", checks.fps, driving_fps)
        smooth = widget("smooth", lambda v, name: checks.integer(v, name, low=0), smooth)

        if face_landmarks is None and driving_images is None:
            constant_speed(target_speed, 1)  # validates
            return ({"speed": None, "constant": float(target_speed), "fps": float(fps)}, float(target_speed))
        if face_landmarks is not None:
            from .face_mask import faces_from_core_landmarks

            faces = faces_from_core_landmarks(face_landmarks)
        else:
            from .face_mask import detect_faces

            faces = detect_faces(driving_images, emo_model)
        series = rotation_speed(head_rotations(faces), smooth=int(smooth))  # NoFaceError when no face at all
        series = (series * float(driving_fps) / float(fps)).astype(np.float32)  # deg per output frame
        return ({"speed": series, "constant": None, "fps": float(driving_fps)}, float(series.mean()))


NODE_CLASS_MAPPINGS = {"EmoSpeed": EmoSpeed}
NODE_DISPLAY_NAME_MAPPINGS = {"EmoSpeed": "EMO Speed"}
