"""Videos for evaluation: decoding, frame-rate resampling and face crops.

A ``Video`` holds RGB uint8 frames [T, H, W, 3], the frame rate, and (when the file has one)
its audio track as 16 kHz mono float32. Decoding uses PyAV; audio goes through
``emo_core.preprocess.audio_io.load_audio`` so it matches the generator's audio path.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
AUDIO_SR = 16000


class VideoInputError(ValueError):
    """A video that cannot be evaluated; the message names it and the reason."""


@dataclass
class Video:
    frames: np.ndarray            # uint8 [T, H, W, 3] RGB
    fps: float
    audio: np.ndarray | None = None   # float32 mono 16 kHz, None when the file has no audio
    name: str = ""
    audio_note: str = ""          # why audio is None
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        check_frames(self.frames, self.name or "video")
        if not self.fps or self.fps <= 0:
            raise VideoInputError(f"{self.name or 'video'}: invalid frame rate {self.fps}")

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])

    @property
    def size(self) -> tuple[int, int]:
        return int(self.frames.shape[1]), int(self.frames.shape[2])


def check_frames(frames, name: str = "video") -> np.ndarray:
    if not isinstance(frames, np.ndarray):
        raise VideoInputError(f"{name}: frames must be a numpy array, got {type(frames).__name__}")
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise VideoInputError(f"{name}: frames must be [T, H, W, 3], got shape {frames.shape}")
    if frames.shape[0] == 0:
        raise VideoInputError(f"{name}: has no frames")
    if frames.dtype != np.uint8:
        raise VideoInputError(f"{name}: frames must be uint8 0..255, got {frames.dtype}")
    return frames


def read_video(path, with_audio: bool = True, max_frames: int | None = None) -> Video:
    """Decode a video file to RGB frames; frames of a different size than the first are an error."""
    import av

    path = Path(path)
    if not path.is_file():
        raise VideoInputError(f"{path}: file not found")
    try:
        container = av.open(str(path))
    except Exception as exc:  # av raises several error types, all meaning "cannot open"
        raise VideoInputError(f"{path}: cannot open as video ({type(exc).__name__}: {exc})") from exc
    with container:
        if not container.streams.video:
            raise VideoInputError(f"{path}: has no video stream")
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        fps = float(rate) if rate else 0.0
        frames = []
        for frame in container.decode(stream):
            arr = frame.to_ndarray(format="rgb24")
            if frames and arr.shape != frames[0].shape:
                raise VideoInputError(f"{path}: frame {len(frames)} is {arr.shape[1]}x{arr.shape[0]}, "
                                      f"the first frame is {frames[0].shape[1]}x{frames[0].shape[0]}")
            frames.append(arr)
            if max_frames and len(frames) >= max_frames:
                break
    if not frames:
        raise VideoInputError(f"{path}: decoded to 0 frames")
    audio, note = None, ""
    if with_audio:
        audio, note = _read_audio_track(path)
    return Video(np.stack(frames), fps, audio, name=path.name, audio_note=note)


def _read_audio_track(path: Path) -> tuple[np.ndarray | None, str]:
    import av

    with av.open(str(path)) as c:
        if not c.streams.audio:
            return None, "no audio track"
    from emo_core.preprocess.audio_io import AudioError, load_audio

    try:
        return load_audio(path, sr=AUDIO_SR), ""
    except AudioError as exc:
        return None, str(exc)


def read_image(path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


def list_media(folder) -> list[Path]:
    """Video and image files directly inside ``folder``, sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise VideoInputError(f"{folder}: not a folder")
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS + IMAGE_EXTENSIONS)


def resample_indices(num_frames: int, fps: float, target_fps: float) -> np.ndarray:
    """Nearest-earlier source frame for each output frame at ``target_fps`` (same duration)."""
    if abs(fps - target_fps) < 1e-3:
        return np.arange(num_frames)
    n_out = max(1, int(np.floor(num_frames * target_fps / fps + 1e-6)))
    idx = np.floor(np.arange(n_out) * fps / target_fps + 1e-6).astype(np.int64)
    return np.clip(idx, 0, num_frames - 1)


def resize_uint8(images: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """[N, H, W, 3] uint8 -> [N, s, s, 3] uint8, bilinear with antialiasing."""
    hw = (size, size) if isinstance(size, int) else tuple(size)
    t = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()
    t = F.interpolate(t, size=hw, mode="bilinear", align_corners=False, antialias=True)
    return t.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def crop_box(image: np.ndarray, box_xyxy, size: int) -> np.ndarray:
    """Crop a box (may extend past the border, padded with zeros) and resize to size x size."""
    h, w = image.shape[:2]
    x0, y0, x1, y1 = [int(round(v)) for v in box_xyxy]
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"empty crop box {box_xyxy}")
    out = np.zeros((y1 - y0, x1 - x0, 3), dtype=np.uint8)
    sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if sx1 > sx0 and sy1 > sy0:
        out[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = image[sy0:sy1, sx0:sx1]
    return resize_uint8(out[None], size)[0]


def square_box(box_xyxy, scale: float = 1.0) -> tuple[float, float, float, float]:
    """Square box around a box's centre, side = scale * max(width, height)."""
    x0, y0, x1, y1 = [float(v) for v in box_xyxy]
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    half = scale * max(x1 - x0, y1 - y0) / 2
    return cx - half, cy - half, cx + half, cy + half


def center_square_box(height: int, width: int) -> tuple[float, float, float, float]:
    side = min(height, width)
    x0, y0 = (width - side) / 2, (height - side) / 2
    return x0, y0, x0 + side, y0 + side
