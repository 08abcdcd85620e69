"""Face locator: a light conv encoder of the face-region mask, added to the backbone's
features right after ``conv_in`` (EMO section 3.2; Hallo's ``FaceLocator`` key layout)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class FaceLocator(nn.Module):
    def __init__(self, out_channels: int, in_channels: int = 3, widths: tuple[int, ...] = (16, 32, 64, 128)):
        super().__init__()
        self.in_channels = in_channels
        self.conv_in = nn.Conv2d(in_channels, widths[0], kernel_size=3, padding=1)
        self.blocks = nn.ModuleList()
        for cin, cout in zip(widths[:-1], widths[1:]):
            self.blocks.append(nn.Conv2d(cin, cin, kernel_size=3, padding=1))
            self.blocks.append(nn.Conv2d(cin, cout, kernel_size=3, padding=1, stride=2))
        self.conv_out = nn.Conv2d(widths[-1], out_channels, kernel_size=3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, mask: torch.Tensor) -> torch.Tensor:
        """mask [N, H, W] or [N, C, H, W] in 0..1 (C = 1 is broadcast to the model's channels)
        -> features [N, out_channels, H/8, W/8]."""
        if mask.ndim == 3:
            mask = mask[:, None]
        if mask.ndim != 4 or mask.shape[1] not in (1, self.in_channels):
            raise ValueError(f"face mask must be [N, H, W] or [N, {self.in_channels}, H, W]; got {tuple(mask.shape)}")
        if mask.shape[1] != self.in_channels:
            mask = mask.expand(-1, self.in_channels, -1, -1)
        x = F.silu(self.conv_in(mask))
        for conv in self.blocks:
            x = F.silu(conv(x))
        return self.conv_out(x)
