"""Motion-frame chaining: a video of any length, clip after clip (EMO section 3.2).

Each clip of f frames is generated with the last n frames of the previous clip as its
motion frames; the first clip gets ``initial_motion`` (copies of the reference image, as
Hallo does, or nothing for the paper's zero maps). The frame count is padded up to whole
clips and the output trimmed back, so exactly ``num_frames`` frames come out.
"""
from __future__ import annotations

import math
from typing import Callable, Iterator

import torch

from .preprocess.masks import mask_box


def plan_clips(num_frames: int, clip_frames: int) -> list[range]:
    """Frame ranges of the clips; the last one may run past ``num_frames`` (padding)."""
    if num_frames < 1:
        raise ValueError(f"need at least one frame to generate, got {num_frames}")
    if clip_frames < 1:
        raise ValueError(f"clip length must be >= 1, got {clip_frames}")
    return [range(i * clip_frames, (i + 1) * clip_frames) for i in range(math.ceil(num_frames / clip_frames))]


def chain_clips(num_frames: int, clip_frames: int, motion_frames: int,
                make_clip: Callable[[int, range, torch.Tensor | None], torch.Tensor],
                initial_motion: torch.Tensor | None) -> Iterator[torch.Tensor]:
    """Yields the clips [frames, ...] trimmed to ``num_frames`` in total.

    ``make_clip(index, frames, motion)`` returns the clip's ``clip_frames`` frames given the
    motion frames (``initial_motion`` for the first clip, then the last ``motion_frames``
    frames generated so far, padding included)."""
    motion = initial_motion
    for index, frames in enumerate(plan_clips(num_frames, clip_frames)):
        clip = make_clip(index, frames, motion)
        if clip.shape[0] != clip_frames:
            raise ValueError(f"clip {index} has {clip.shape[0]} frames, expected {clip_frames}")
        if motion_frames > 0:
            history = clip if motion is None else torch.cat([motion.to(clip), clip])
            motion = history[-motion_frames:]
        yield clip[: max(0, min(clip_frames, num_frames - frames.start))]


def move_face(image: torch.Tensor, face_box, target_box) -> torch.Tensor:
    """The portrait [C, H, W] moved by whole pixels so that the centre of ``face_box`` (x0, y0, x1,
    y1 in its pixels) lands on the centre of ``target_box``; the uncovered side repeats the edge."""
    dx = round((target_box[0] + target_box[2] - face_box[0] - face_box[2]) / 2)
    dy = round((target_box[1] + target_box[3] - face_box[1] - face_box[3]) / 2)
    h, w = image.shape[-2:]
    return translate(image, max(-w + 1, min(w - 1, dx)), max(-h + 1, min(h - 1, dy)))


def translate(image: torch.Tensor, dx: int, dy: int) -> torch.Tensor:
    """``image`` [C, H, W] moved by (dx, dy) whole pixels (|dx| < W, |dy| < H); the uncovered
    side repeats the edge pixels (exact for plain backgrounds)."""
    if dx == 0 and dy == 0:
        return image
    h, w = image.shape[-2:]
    pad = (max(dx, 0), max(-dx, 0), max(dy, 0), max(-dy, 0))
    padded = torch.nn.functional.pad(image[None].float(), pad, mode="replicate")[0].to(image.dtype)
    x0, y0 = max(-dx, 0), max(-dy, 0)
    return padded[:, y0:y0 + h, x0:x0 + w].contiguous()


def first_motion_frames(image: torch.Tensor, n: int, face_box=None, face_mask: torch.Tensor | None = None) -> torch.Tensor:
    """The first clip's motion frames [n, C, H, W]: copies of the portrait [C, H, W], as Hallo
    has them. Given the portrait's ``face_box`` and the first clip's face-locator ``face_mask``
    [H, W] and a face whose centre lies outside the mask, the copies show the face at the centre of
    the mask's box (``move_face``): the motion frames are the video's past, and a past with the face
    elsewhere than the clip's makes the first clip's head turn on its own (bench/learning.py,
    asked 1 deg/frame, seeds 1 and 2: 1.2-1.3 in the first clip instead of 2.2-2.5). A face inside
    its mask (a mask made from the portrait's own face) is left where it is."""
    if face_box is not None and face_mask is not None:
        h, w = face_mask.shape[-2:]
        cx = min(w - 1, max(0, int((face_box[0] + face_box[2]) / 2)))
        cy = min(h - 1, max(0, int((face_box[1] + face_box[3]) / 2)))
        target = mask_box(face_mask)
        if target is not None and float(face_mask[cy, cx]) <= 0.5:
            image = move_face(image, face_box, target)
    return image[None].expand(n, *image.shape)


def join_timestep(schedule, steps: int, denoise: float) -> int | None:
    """Where a clip after the first starts denoising when it starts from the previous clip's
    last frame: the largest of the sampler's ``steps`` timesteps at or below ``denoise`` of the
    schedule (None for ``denoise`` >= 1, or when even the first of so few steps lies below it:
    from pure noise, as the first clip).

    Why: at the noisiest steps the network's clean estimate of a clip is a blur of the poses the
    motion frames allow, so the initial noise decides the head pose of each clip and every clip
    starts off the pose the previous one ended on (a visible jump at each join). Started from
    the last motion frame noised to a middle level, the pose is carried over and the clip
    still has the rest of the schedule to move, speak and follow the speed."""
    if not 0.0 < float(denoise) <= 1.0:
        raise ValueError(f"join_denoise: expected a fraction of the schedule in (0, 1], got {denoise}")
    if denoise >= 1.0:
        return None
    limit = denoise * schedule.num_train_timesteps - 1
    below = [t for t in schedule.timesteps(steps) if t <= limit]
    return below[0] if below else None  # so few steps that the first is above the join: from noise


def join_start(noise: torch.Tensor, last_frame: torch.Tensor, schedule, t: int) -> torch.Tensor:
    """The state x_t at timestep ``t`` of a clip that starts from ``last_frame`` (latents
    [b, C, h, w], the previous clip's last frame) with unit ``noise`` [b, C, f, h, w]: the forward
    process applied to that frame held still for the whole clip."""
    a = schedule.alphas_cumprod()[t].to(noise.device, noise.dtype)
    return a.sqrt() * last_frame.to(noise)[:, :, None] + (1 - a).sqrt() * noise
