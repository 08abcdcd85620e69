"""The one edge rule for per-frame windows and clip rows.

Frame i's window is frames i-m..i+m of a sequence; positions outside the sequence repeat its
edge frame (indices clamped). Which sequence a window reads decides what it sees at a clip
border:

- audio (``frame_windows`` over the whole video's per-frame features): a clip's windows read
  across its borders into the neighbouring clips' audio, as Hallo's ``process_audio_emb``;
- speed (``models.speed``, over the n + f speed values of one clip): clamped to the clip, the
  motion-frame positions carrying the clip's first speed (``backbone._pad_front``);
- clip rows past the end of the video (the last clip's padding, ``take_padded``) repeat the
  last frame, and their windows are that frame's window.
"""
from __future__ import annotations

import torch


def window_indices(centres: torch.Tensor, m: int, length: int) -> torch.Tensor:
    """[n] centre indices -> [n, 2m+1] indices of their windows, clamped to 0..length-1."""
    offsets = torch.arange(-m, m + 1, device=centres.device)
    return (centres[:, None] + offsets).clamp(0, length - 1)


def frame_windows(x: torch.Tensor, m: int, frames: range | None = None) -> torch.Tensor:
    """x [T, ...] -> [len(frames), 2m+1, ...]: the windows of ``frames`` (default all T) over
    the whole of x; frames past the end take the last frame's window."""
    t = x.shape[0]
    frames = range(t) if frames is None else frames
    centres = torch.arange(frames.start, frames.stop, device=x.device).clamp(max=t - 1)
    return x[window_indices(centres, m, t)]


def take_padded(x: torch.Tensor, frames: range) -> torch.Tensor:
    """Rows ``frames`` of x [T, ...]; indices past the end repeat the last row."""
    idx = torch.arange(frames.start, frames.stop).clamp(max=x.shape[0] - 1)
    return x[idx.to(x.device)]
