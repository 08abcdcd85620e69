"""An exponential moving average of the trained weights (what the checkpoint's model holds
when ``train.ema_decay`` > 0).

The decay warms up as ``min(decay, (1 + step) / (10 + step))`` (diffusers' ``EMAModel``), so
early steps do not weigh the initial weights for thousands of steps. A checkpoint's
``emo.safetensors`` holds the average (what inference and the next stage load);
``training_weights.safetensors`` beside it holds the raw weights the optimizer continues from,
so a resumed run reproduces an uninterrupted one.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch

RAW_FILE = "training_weights.safetensors"


def check_decay(decay: float) -> float:
    decay = float(decay)
    if not math.isfinite(decay) or not 0.0 <= decay < 1.0:
        raise ValueError(f"train.ema_decay: expected a number in [0, 1) (0: no average), got {decay}")
    return decay


class WeightAverage:
    """The average of the named parameters, kept in float32 beside them."""

    def __init__(self, params: dict[str, torch.nn.Parameter], decay: float):
        self.params = params
        self.decay = check_decay(decay)
        self.average = {n: p.detach().float().clone() for n, p in params.items()}

    def decay_at(self, step: int) -> float:
        return min(self.decay, (1 + step) / (10 + step))

    @torch.no_grad()
    def update(self, step: int) -> None:
        """After optimizer step ``step`` (counted from 0): average <- lerp(average, weights, 1 - decay)."""
        names = list(self.params)
        torch._foreach_lerp_([self.average[n] for n in names], [self.params[n].detach().float() for n in names],
                             1.0 - self.decay_at(step))

    def averaged_state(self, net_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``net_state`` with the averaged parameters in place of the raw ones (in their dtype)."""
        return {k: (self.average[k].to(v.dtype) if k in self.average else v) for k, v in net_state.items()}

    def raw_state(self) -> dict[str, torch.Tensor]:
        return {n: p.detach() for n, p in self.params.items()}

    @torch.no_grad()
    def resume(self, folder: Path) -> None:
        """Called right after construction on a net holding a checkpoint's averaged weights (now the
        average): the raw weights saved beside them go back into the parameters."""
        from safetensors.torch import load_file

        raw_file = Path(folder) / RAW_FILE
        if not raw_file.is_file():
            raise FileNotFoundError(f"cannot resume the weight average from {folder}: {RAW_FILE} is missing "
                                    "(was it written with train.ema_decay 0?)")
        raw = load_file(str(raw_file))
        missing = sorted(set(self.params) - set(raw))
        if missing:
            raise KeyError(f"{raw_file} lacks trained weights, e.g. {missing[:3]}")
        for n, p in self.params.items():
            p.copy_(raw[n].to(p))
