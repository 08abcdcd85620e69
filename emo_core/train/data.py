"""Training shards and the dataset that samples EMO training items from them.

Shard format (one ``.safetensors`` file per source video, written atomically):

=====================  ==========================================================================
tensor                 contents
=====================  ==========================================================================
``frames``             uint8 [T, S, S, 3] RGB crops (``frame_format=raw``), or
``frames_jpeg``        uint8 [bytes] concatenated JPEG files plus ``frames_offsets`` int64 [T+1]
``boxes``              float32 [T, 4] face box per frame, xyxy pixels in the crop
``rotations``          float32 [T, 3, 3] head rotation per frame (relative to the first face)
``speed``              float32 [T] head-rotation speed, degrees per frame
``audio_features``     float16 [T, blocks, channels] per-frame audio features (wav2vec), and/or
``audio``              float32 [N] 16 kHz mono waveform covering the T frames
``identity``           float32 [D] optional face-recognition embedding (Hallo-family models)
=====================  ==========================================================================

String metadata: ``format`` ("emo-shard-1"), ``fps``, ``num_frames``, ``size``, ``source``,
``audio_kind`` ("features" or "waveform"), ``frame_format`` and, for features, ``audio_model``.

``manifest.json`` beside the shards lists the finished shards (name, frames, source) and the
skipped videos with their reasons. Readers only trust files named in the manifest (or, with
``scan=True``, every ``*.safetensors`` whose metadata says ``emo-shard-1``).
"""
from __future__ import annotations

import io
import json
import math
import os
import random
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from safetensors import safe_open

from ..chaining import translate

SHARD_FORMAT = "emo-shard-1"
MANIFEST = "manifest.json"


class ShardError(ValueError):
    """A shard or shard folder that cannot be used; the message names the file and the reason."""


# --------------------------------------------------------------------------- writing
def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def encode_jpeg(frames: np.ndarray, quality: int = 95) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image

    blobs, offsets = [], [0]
    for f in frames:
        buf = io.BytesIO()
        Image.fromarray(f).save(buf, format="JPEG", quality=quality)
        blobs.append(np.frombuffer(buf.getvalue(), np.uint8))
        offsets.append(offsets[-1] + len(blobs[-1]))
    return np.concatenate(blobs), np.asarray(offsets, np.int64)


def write_shard(path, frames: np.ndarray, boxes: np.ndarray, rotations: np.ndarray, speed: np.ndarray, *,
                fps: float, source: str, audio_features: np.ndarray | None = None, audio: np.ndarray | None = None,
                audio_model: str = "", frame_format: str = "raw", extra: dict | None = None) -> Path:
    """Writes one shard atomically (temporary file + rename: a crash never leaves a partial shard)."""
    t = len(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[1] != frames.shape[2]:
        raise ShardError(f"{path}: frames must be uint8 [T, S, S, 3], got {frames.dtype} {frames.shape}")
    for name, arr, shape in (("boxes", boxes, (t, 4)), ("rotations", rotations, (t, 3, 3)), ("speed", speed, (t,))):
        if tuple(np.shape(arr)) != shape:
            raise ShardError(f"{path}: {name} must have shape {shape} for {t} frames, got {np.shape(arr)}")
    if audio_features is None and audio is None:
        raise ShardError(f"{path}: give audio_features, the 16 kHz audio, or both")
    tensors = {
        "boxes": torch.as_tensor(np.asarray(boxes, np.float32)),
        "rotations": torch.as_tensor(np.asarray(rotations, np.float32)),
        "speed": torch.as_tensor(np.asarray(speed, np.float32)),
    }
    if frame_format == "raw":
        tensors["frames"] = torch.from_numpy(np.ascontiguousarray(frames))
    elif frame_format == "jpeg":
        data, offsets = encode_jpeg(frames)
        tensors["frames_jpeg"] = torch.from_numpy(data)
        tensors["frames_offsets"] = torch.from_numpy(offsets)
    else:
        raise ShardError(f"frame_format must be 'raw' or 'jpeg', got {frame_format!r}")
    if audio_features is not None:
        if audio_features.shape[0] != t or audio_features.ndim != 3:
            raise ShardError(f"{path}: audio_features must be [T={t}, blocks, channels], got {audio_features.shape}")
        tensors["audio_features"] = torch.as_tensor(np.asarray(audio_features, np.float16))
    if audio is not None:
        tensors["audio"] = torch.as_tensor(np.asarray(audio, np.float32))
    kind = "features" if audio_features is not None else "waveform"
    meta = {"format": SHARD_FORMAT, "fps": str(float(fps)), "num_frames": str(t), "size": str(frames.shape[1]),
            "source": str(source), "audio_kind": kind, "audio_model": audio_model, "frame_format": frame_format}
    meta.update({k: str(v) for k, v in (extra or {}).items()})
    from safetensors.torch import save

    path = Path(path)
    atomic_write_bytes(path, save(tensors, metadata=meta))
    return path


def read_manifest(folder) -> dict:
    p = Path(folder) / MANIFEST
    if not p.is_file():
        return {"shards": [], "skipped": []}
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as exc:
        raise ShardError(f"{p}: not valid JSON ({exc}); delete it and run prepare again to rebuild it") from exc


def write_manifest(folder, manifest: dict) -> None:
    atomic_write_bytes(Path(folder) / MANIFEST, json.dumps(manifest, indent=1).encode())


# --------------------------------------------------------------------------- reading
@dataclass
class ShardInfo:
    path: Path
    num_frames: int
    size: int
    fps: float
    audio_kind: str
    frame_format: str
    source: str


def shard_info(path) -> ShardInfo:
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
    except Exception as exc:  # safetensors raises several error types for a bad file
        raise ShardError(f"{path}: not a readable shard ({type(exc).__name__}: {exc})") from exc
    if meta.get("format") != SHARD_FORMAT:
        raise ShardError(f"{path}: metadata format is {meta.get('format')!r}, expected {SHARD_FORMAT!r}")
    return ShardInfo(path, int(meta["num_frames"]), int(meta["size"]), float(meta["fps"]), meta["audio_kind"],
                     meta["frame_format"], meta.get("source", ""))


def list_shards(folders: Sequence, scan: bool = False) -> list[ShardInfo]:
    """Shards of one or more prepared folders (manifest order)."""
    out = []
    for folder in ([folders] if isinstance(folders, (str, Path)) else folders):
        folder = Path(folder)
        if not folder.is_dir():
            raise ShardError(f"{folder}: shard folder not found")
        if scan:
            names = sorted(p.name for p in folder.glob("*.safetensors"))
        else:
            names = [s["shard"] for s in read_manifest(folder)["shards"]]
        if not names:
            raise ShardError(f"{folder}: no shards listed in {MANIFEST} (run `python -m emo_core prepare` first)")
        out += [shard_info(folder / n) for n in names]
    return out


class Shard:
    """Lazy random access to one shard's frames and per-frame values."""

    def __init__(self, info: ShardInfo):
        self.info = info
        self._fh = None

    def _open(self):
        if self._fh is None:
            self._fh = safe_open(str(self.info.path), framework="pt")
        return self._fh

    def __getstate__(self):  # DataLoader workers reopen the file
        return {"info": self.info, "_fh": None}

    def frames(self, idx: Sequence[int]) -> torch.Tensor:
        """uint8 [k, S, S, 3] for frame indices ``idx``."""
        fh = self._open()
        if self.info.frame_format == "raw":
            sl = fh.get_slice("frames")
            return torch.stack([sl[int(i)] for i in idx])
        from PIL import Image

        offsets = fh.get_tensor("frames_offsets")
        data = fh.get_slice("frames_jpeg")
        out = []
        for i in idx:
            raw = data[int(offsets[i]):int(offsets[i + 1])].numpy().tobytes()
            out.append(torch.from_numpy(np.array(Image.open(io.BytesIO(raw)).convert("RGB"))))
        return torch.stack(out)

    def tensor(self, name: str) -> torch.Tensor:
        return self._open().get_tensor(name)

    def has(self, name: str) -> bool:
        return name in self._open().keys()


# --------------------------------------------------------------------------- sampling
def box_mask(boxes: torch.Tensor, size: int, expand: float = 1.2) -> torch.Tensor:
    """Union of the expanded xyxy boxes [k, 4] -> float mask [size, size] (EMO's face-locator mask)."""
    mask = torch.zeros(size, size)
    for x0, y0, x1, y1 in boxes.tolist():
        cx, cy, hw, hh = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) * expand / 2, (y1 - y0) * expand / 2
        r0, r1 = int(max(0, np.floor(cy - hh))), int(min(size, np.ceil(cy + hh)))
        c0, c1 = int(max(0, np.floor(cx - hw))), int(min(size, np.ceil(cx + hw)))
        mask[r0:r1, c0:c1] = 1.0
    return mask


def shift_face(image: torch.Tensor, box, rng: random.Random) -> torch.Tensor:
    """``image`` [3, S, S] translated so its face ``box`` (x0, y0, x1, y1) lands at a random place
    inside the frame; the uncovered border repeats the edge pixels (exact for plain backgrounds).
    Teaches the model to put the face where the face locator says, not where the reference has it."""
    s = image.shape[-1]
    x0, y0, x1, y1 = (float(v) for v in box)
    lo_x, hi_x, lo_y, hi_y = math.ceil(-x0), math.floor(s - x1), math.ceil(-y0), math.floor(s - y1)
    dx = rng.randint(lo_x, hi_x) if hi_x >= lo_x else 0
    dy = rng.randint(lo_y, hi_y) if hi_y >= lo_y else 0
    return translate(image, dx, dy)


class ClipDataset(torch.utils.data.Dataset):
    """EMO training items drawn deterministically from a key (an integer seed).

    ``frames == 1`` (stage 1): one target frame and a reference frame from the same video.
    ``frames > 1`` (stages 2-3): ``motion + frames`` consecutive frames; the first ``motion``
    are the motion frames, with probability ``motion_reference_prob`` replaced by copies of
    the reference frame (what the first clip of a video sees at inference). With
    ``motion_reference_adjacent`` the reference of those items is the frame just before the clip,
    so the clip continues from the reference's head pose as a first clip should; otherwise it is
    any frame of the video and the clip may start from any pose.

    Items (tensors): ``pixels`` [k, 3, S, S] in [-1, 1] (motion frames first), ``reference``
    [3, S, S], ``mask`` [S, S] (union of the clip's expanded face boxes), ``speed`` [k],
    ``audio`` [frames, 2m+1, blocks, channels] (features) or absent, ``motion_is_reference`` bool.
    """

    def __init__(self, shards: Sequence[ShardInfo], *, frames: int, motion: int = 0, size: int | None = None,
                 audio_context: int = 2, audio_encoder: Callable | None = None, mask_expand: float = 1.2,
                 motion_reference_prob: float = 0.0, with_audio: bool = True, reference_shift: float = 0.0,
                 motion_reference_adjacent: bool = False):
        if not shards:
            raise ShardError("no shards to train on")
        need = frames + motion
        self.shards = [Shard(s) for s in shards if s.num_frames >= need]
        if not self.shards:
            raise ShardError(f"every shard is shorter than the {need} frames a sample needs")
        sizes = {s.info.size for s in self.shards}
        if len(sizes) > 1 and size is None:
            raise ShardError(f"shards have different frame sizes {sorted(sizes)}; set data.size to resize them")
        self.size = size or sizes.pop()
        self.frames, self.motion = frames, motion
        self.m = audio_context
        self.audio_encoder = audio_encoder
        self.mask_expand = mask_expand
        self.motion_reference_prob = motion_reference_prob
        self.motion_reference_adjacent = motion_reference_adjacent
        self.with_audio = with_audio
        self.reference_shift = reference_shift
        self.weights = np.array([s.info.num_frames - need + 1 for s in self.shards], np.float64)
        self.weights /= self.weights.sum()
        self._audio_cache: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:  # keys are seeds; the length only matters to samplers that ask
        return 2 ** 31

    def _pixels(self, frames: torch.Tensor) -> torch.Tensor:
        x = frames.permute(0, 3, 1, 2).float() / 127.5 - 1
        if x.shape[-1] != self.size:
            x = torch.nn.functional.interpolate(x, size=(self.size, self.size), mode="bilinear",
                                                align_corners=False, antialias=True)
        return x

    def audio_of(self, k: int) -> torch.Tensor:
        """Per-frame audio features [T, blocks, channels] of shard ``k`` (float32)."""
        if k not in self._audio_cache:
            sh = self.shards[k]
            if sh.has("audio_features"):
                feats = sh.tensor("audio_features").float()
            else:
                if self.audio_encoder is None:
                    raise ShardError(f"{sh.info.path}: stores the 16 kHz waveform, not audio features; set "
                                     "data.wav2vec to a wav2vec2 folder so features are computed while training")
                feats = self.audio_encoder(sh.tensor("audio").numpy(), sh.info.num_frames).float().cpu()
            self._audio_cache[k] = feats
        return self._audio_cache[k]

    def _adjacent_reference(self, pixels: torch.Tensor, box, rng: random.Random) -> torch.Tensor:
        """The frame just before the clip as the reference (moved like any reference)."""
        reference = pixels[self.motion - 1].clone()
        if self.reference_shift > 0 and rng.random() < self.reference_shift:
            reference = shift_face(reference, box, rng)
        return reference

    def __getitem__(self, key: int) -> dict:
        rng = random.Random(int(key))
        k = int(np.searchsorted(np.cumsum(self.weights), rng.random() * (1 - 1e-12), side="right"))
        k = min(k, len(self.shards) - 1)
        sh = self.shards[k]
        t = sh.info.num_frames
        need = self.frames + self.motion
        start = rng.randrange(0, t - need + 1)
        ref_idx = rng.randrange(0, t)
        idx = list(range(start, start + need))
        pix = self._pixels(sh.frames(idx + [ref_idx]))
        pixels, reference = pix[:-1], pix[-1]
        boxes = sh.tensor("boxes")
        scale = self.size / sh.info.size
        if self.reference_shift > 0 and rng.random() < self.reference_shift:
            reference = shift_face(reference, boxes[ref_idx] * scale, rng)  # motion copies below use it too
        motion_is_ref = self.motion > 0 and rng.random() < self.motion_reference_prob
        if motion_is_ref and self.motion_reference_adjacent:
            reference = self._adjacent_reference(pixels, boxes[start + self.motion - 1] * scale, rng)
        if motion_is_ref:
            pixels[: self.motion] = reference
        clip = slice(start + self.motion, start + need)
        item = {
            "pixels": pixels,
            "reference": reference,
            "mask": box_mask(boxes[clip] * scale, self.size, self.mask_expand),
            "speed": sh.tensor("speed")[start:start + need].float(),
            "motion_is_reference": torch.tensor(motion_is_ref),
        }
        if self.with_audio:
            from ..preprocess.audio_features import window_features

            item["audio"] = window_features(self.audio_of(k), self.m, start + self.motion, start + need)
        return item


class StepBatches(torch.utils.data.Sampler):
    """Batches of item keys that depend only on (seed, step, process, micro-batch): a resumed
    run sees exactly the data an uninterrupted one would, on any number of workers."""

    def __init__(self, seed: int, batch_size: int, process_index: int, num_processes: int,
                 accumulation: int, start_step: int, max_steps: int):
        self.seed, self.batch_size = seed, batch_size
        self.rank, self.world = process_index, num_processes
        self.accumulation = accumulation
        self.start_step, self.max_steps = start_step, max_steps

    def __len__(self) -> int:
        return max(0, self.max_steps - self.start_step) * self.accumulation

    def __iter__(self):
        for step in range(self.start_step, self.max_steps):
            for micro in range(self.accumulation):
                base = ((self.seed * 1_000_003 + step) * 64 + micro) * 4096 + self.rank * self.batch_size
                yield [(base + i) % (2 ** 62) for i in range(self.batch_size)]


def collate(items: list[dict]) -> dict:
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}
