"""Context-window chaining (EchoMimic): the whole video is one latent sequence, denoised window by window.

The second way to make a video longer than one clip, beside motion frames (``chaining``).
At every sampler step the frame axis is covered by windows of ``size`` frames that overlap by
``overlap`` and wrap around the end (closed loop); each window goes through the model on its
own, and every frame's prediction is the mean over the windows that contain it. From one
step to the next all windows shift by ``shift`` frames (EchoMimic: 2), so window borders
move and seams are averaged away. The sampler itself is unchanged: ``windowed_model`` turns a
per-window model into the ``model_fn(x, t)`` the sampler calls on the full sequence.

Memory: the model only ever sees ``window_batch`` windows at once, so its activations do not
depend on the video's length; the full sequence is just the latents and one accumulator
(about 128 KB per frame at 512x512 in float32), kept on ``storage_device`` (e.g. the CPU)
while the model runs on its own device.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch

# window_fn(x_window [b, c, k, h, w], t, frames: list[int]) -> prediction [b, c, k, h, w]
WindowFn = Callable[[torch.Tensor, int, list], torch.Tensor]


def uniform_windows(num_frames: int, size: int, overlap: int) -> list[list[int]]:
    """Windows of ``size`` frames starting every ``size - overlap`` frames from 0 until the start
    passes the end; indices wrap around (closed loop). A video of at most ``size`` frames is one
    window. (EchoMimic's ``uniform`` schedule at step 0 with context stride 1.)"""
    if num_frames < 1:
        raise ValueError(f"need at least one frame, got {num_frames}")
    if size < 1 or not 0 <= overlap < size:
        raise ValueError(f"window size must be >= 1 and overlap in [0, size); got size {size}, overlap {overlap}")
    if num_frames <= size:
        return [list(range(num_frames))]
    return [[(start + k) % num_frames for k in range(size)] for start in range(0, num_frames, size - overlap)]


def shifted(windows: Sequence[Sequence[int]], step: int, num_frames: int, shift: int = 2) -> list[list[int]]:
    """The windows of sampler step ``step``: every index moved by ``shift * step`` (mod the length)."""
    return [[(i + shift * step) % num_frames for i in w] for w in windows]


def average_over_windows(window_fn: WindowFn, x: torch.Tensor, t: int, windows: Sequence[Sequence[int]], *,
                         window_batch: int = 1, model_device=None) -> torch.Tensor:
    """Runs ``window_fn`` on each window of ``x`` [b, c, F, h, w] and returns the per-frame mean
    of the predictions (on x's device). Windows are batched ``window_batch`` at a time."""
    total = torch.zeros_like(x)
    count = torch.zeros(x.shape[2], device=x.device, dtype=x.dtype)
    model_device = x.device if model_device is None else torch.device(model_device)
    for start in range(0, len(windows), window_batch):
        group = windows[start:start + window_batch]
        if len({len(w) for w in group}) != 1:
            raise ValueError("windows batched together must have the same length")
        xs = torch.cat([x[:, :, w] for w in group]).to(model_device)
        preds = window_fn(xs, t, [list(w) for w in group]).to(x.device, x.dtype).chunk(len(group))
        for w, pred in zip(group, preds):
            idx = torch.as_tensor(w, device=x.device)
            total.index_add_(2, idx, pred)
            count.index_add_(0, idx, torch.ones(len(w), device=x.device, dtype=x.dtype))
    if bool((count == 0).any()):
        raise ValueError(f"frames {torch.nonzero(count == 0).flatten().tolist()} are in no window")
    return total / count[None, None, :, None, None]


def windowed_model(window_fn: WindowFn, num_frames: int, size: int, overlap: int, timesteps: Sequence[int], *,
                   shift: int = 2, window_batch: int = 1, model_device=None) -> Callable:
    """``model_fn(x, t)`` over the full sequence for a sampler that steps through ``timesteps``
    (the step index, which sets the shift, is the position of ``t`` in that list)."""
    base = uniform_windows(num_frames, size, overlap)
    position = {int(t): i for i, t in enumerate(timesteps)}

    def model_fn(x: torch.Tensor, t) -> torch.Tensor:
        if x.shape[2] != num_frames:
            raise ValueError(f"latents have {x.shape[2]} frames, the windows were planned for {num_frames}")
        step = position[int(t)]
        return average_over_windows(window_fn, x, t, shifted(base, step, num_frames, shift),
                                    window_batch=window_batch, model_device=model_device)

    return model_fn
