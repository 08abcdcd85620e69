"""EMO speed layers: head-rotation speed -> per-frame speed tokens.

Each frame's speed w (degrees per frame) is encoded against d buckets with centres c_d
and radii r_d as s_d = tanh((w - c_d) / r_d * 3): about +1 above a bucket, -1 below it, and
a smooth ramp within it. Frames i-m..i+m are joined (edges clamped, as for audio), an MLP
maps them to a speed token, and the temporal modules cross-attend to those tokens.
"""
from __future__ import annotations

import torch
from einops import rearrange
from torch import nn

from ..config import SpeedConfig
from ..windows import window_indices


def bucket_encode(speed: torch.Tensor, centers, radii) -> torch.Tensor:
    """speed [..., f] -> [..., f, d] with s_d = tanh((w - c_d) / r_d * 3)."""
    c = torch.as_tensor(centers, dtype=speed.dtype, device=speed.device)
    r = torch.as_tensor(radii, dtype=speed.dtype, device=speed.device)
    return torch.tanh((speed[..., None] - c) / r * 3)


def context_windows(x: torch.Tensor, m: int) -> torch.Tensor:
    """x [b, f, ...] -> [b, f, 2m+1, ...]: frames i-m..i+m, clamped to the clip (``emo_core.windows``)."""
    f = x.shape[1]
    return x[:, window_indices(torch.arange(f, device=x.device), m, f)]


class SpeedEncoder(nn.Module):
    def __init__(self, cfg: SpeedConfig):
        super().__init__()
        self.cfg = cfg
        d = len(cfg.bucket_centers)
        self.mlp = nn.Sequential(
            nn.Linear(d * (2 * cfg.context + 1), cfg.hidden_dim), nn.SiLU(),
            nn.Linear(cfg.hidden_dim, cfg.token_dim))

    def forward(self, speed: torch.Tensor) -> torch.Tensor:
        """speed [b, f] degrees per frame -> tokens [b, f, token_dim]."""
        if speed.ndim != 2:
            raise ValueError(f"speed must be [batch, frames] in degrees per frame; got {tuple(speed.shape)}")
        enc = bucket_encode(speed.to(self.mlp[0].weight.dtype), self.cfg.bucket_centers, self.cfg.bucket_radii)
        return self.mlp(rearrange(context_windows(enc, self.cfg.context), "b f w d -> b f (w d)"))
