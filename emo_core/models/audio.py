"""Audio layers: wav2vec features -> audio tokens -> cross-attention in the backbone.

``AudioProjection``: each frame's window of wav2vec features (frames i-m..i+m, all blocks)
is flattened and mapped to a few tokens (Hallo's ``AudioProjModel`` keys: proj1..3, norm).

``AudioAttention``: placed after each reference-attention. One transformer block: a self-
attention, the cross-attention to the frame's audio tokens, a feed-forward. With
``region_attention`` (Hallo) the cross-attention is three attentions (full / face / lip),
each multiplied by its region mask at this resolution and passed through a zero-initialised
1x1 conv, then summed with weights. Keys follow Hallo's ``audio_modules``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.models.attention import FeedForward
from diffusers.models.attention_processor import Attention
from einops import rearrange
from torch import nn

from .attention import AttnProcessor

REGIONS = ("full", "face", "lip")


class AudioProjection(nn.Module):
    def __init__(self, window: int, blocks: int, channels: int, intermediate_dim: int, tokens: int, token_dim: int):
        super().__init__()
        self.window, self.blocks, self.channels = window, blocks, channels
        self.tokens, self.token_dim = tokens, token_dim
        self.proj1 = nn.Linear(window * blocks * channels, intermediate_dim)
        self.proj2 = nn.Linear(intermediate_dim, intermediate_dim)
        self.proj3 = nn.Linear(intermediate_dim, tokens * token_dim)
        self.norm = nn.LayerNorm(token_dim)

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        """windows [b, f, 2m+1, blocks, channels] -> tokens [b, f, tokens, token_dim]."""
        expected = (self.window, self.blocks, self.channels)
        if windows.ndim != 5 or tuple(windows.shape[2:]) != expected:
            raise ValueError(f"audio windows must be [batch, frames, {expected[0]}, {expected[1]}, {expected[2]}] "
                             f"(window, wav2vec blocks, feature size); got {tuple(windows.shape)}")
        b = windows.shape[0]
        x = rearrange(windows, "b f w l c -> (b f) (w l c)")
        x = torch.relu(self.proj2(torch.relu(self.proj1(x))))
        x = self.norm(rearrange(self.proj3(x), "n (t d) -> n t d", t=self.tokens))
        return rearrange(x, "(b f) t d -> b f t d", b=b)


def _attn(dim: int, heads: int, cross_dim: int | None = None) -> Attention:
    a = Attention(query_dim=dim, cross_attention_dim=cross_dim, heads=heads, dim_head=dim // heads, bias=False)
    a.set_processor(AttnProcessor())
    return a


def pointwise(conv: nn.Conv2d, tokens: torch.Tensor) -> torch.Tensor:
    """A 1x1 convolution applied to tokens [n, h*w, c] as the linear map it is (same weights,
    no layout round trip)."""
    return F.linear(tokens, conv.weight.flatten(1), conv.bias)


def _zero_conv(dim: int) -> nn.Conv2d:
    conv = nn.Conv2d(dim, dim, kernel_size=1)
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


class AudioBlock(nn.Module):
    def __init__(self, dim: int, heads: int, audio_dim: int, region_attention: bool):
        super().__init__()
        self.region_attention = region_attention
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = _attn(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        if region_attention:
            self.attn2 = None
            for i, region in enumerate(REGIONS):
                setattr(self, f"attn2_{i}", _attn(dim, heads, audio_dim))
                setattr(self, f"zero_conv_{region}", _zero_conv(dim))
        else:
            self.attn2 = _attn(dim, heads, audio_dim)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim, activation_fn="geglu")

    def forward(self, x, tokens, region_masks=None, region_weights=None):
        """x [(b f), h*w, d]; tokens [(b f), t, audio_dim]; region_masks: dict region ->
        [(b f), h*w] at this resolution; region_weights: 3 scalars (full, face, lip)."""
        h = self.norm1(x)
        x = self.attn1(h) + x
        h = self.norm2(x)
        if not self.region_attention:
            x = self.attn2(h, encoder_hidden_states=tokens) + x
        else:
            if region_masks is None:
                raise ValueError("this model's audio attention is split by face regions: "
                                 "full/face/lip masks are required (see preprocess.masks)")
            for i, region in enumerate(REGIONS):
                out = getattr(self, f"attn2_{i}")(h, encoder_hidden_states=tokens) * region_masks[region][:, :, None].to(h.dtype)
                out = pointwise(getattr(self, f"zero_conv_{region}"), out)
                x = x + (out if region_weights is None else region_weights[i] * out)
        return self.ff(self.norm3(x)) + x


class AudioAttention(nn.Module):
    """Audio cross-attention layer on a [(b f), c, h, w] feature map (residual)."""

    def __init__(self, channels: int, inner_dim: int, heads: int, audio_dim: int, norm_groups: int,
                 region_attention: bool):
        super().__init__()
        inner_dim = heads * (inner_dim // heads)
        self.norm = nn.GroupNorm(norm_groups, channels, eps=1e-6)
        self.proj_in = nn.Conv2d(channels, inner_dim, kernel_size=1)
        self.transformer_blocks = nn.ModuleList([AudioBlock(inner_dim, heads, audio_dim, region_attention)])
        self.proj_out = nn.Conv2d(inner_dim, channels, kernel_size=1)

    def forward(self, x, tokens, region_masks=None, region_weights=None):
        """x [(b f), c, h, w]; tokens [(b f), t, audio_dim]."""
        _, _, height, width = x.shape
        h = rearrange(self.proj_in(self.norm(x)), "n d h w -> n (h w) d")
        for block in self.transformer_blocks:
            h = block(h, tokens, region_masks, region_weights)
        return rearrange(pointwise(self.proj_out, h), "n (h w) d -> n d h w", h=height, w=width) + x
