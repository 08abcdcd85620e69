"""Temporal modules (AnimateDiff layout) with EMO's motion frames and speed layers.

A temporal module attends across frames at every spatial position: tokens are laid out
as ``(b h w) f c``. Before it runs, the motion frames' features (from ReferenceNet) are
joined in front of the clip's frames and cut off again afterwards, which is what chains
clips into a continuous video. EMO's speed layers are one more cross-attention inside
each temporal block, whose keys/values are per-frame speed tokens; it runs before the
temporal self-attention, so the speed changes the queries and keys that decide how the
frames attend to each other (placed after it, it can only add a per-frame offset that no
later frame-to-frame attention in the block sees). Its output projection starts at zero so
a model without trained speed layers behaves exactly as before.

Checkpoint keys follow AnimateDiff: ``temporal_transformer.{norm,proj_in,proj_out}``,
``transformer_blocks.N.{attention_blocks.K,norms.K,ff,ff_norm}``, ``pos_encoder.pe``.
Speed layers add ``transformer_blocks.N.{speed_attention,speed_norm}`` (and ``speed_film`` with
``SpeedConfig.film``).
"""
from __future__ import annotations

import math

import torch
from diffusers.models.attention import FeedForward
from diffusers.models.attention_processor import Attention
from einops import rearrange, repeat
from torch import nn

from .attention import AttnProcessor


class PositionalEncoding(nn.Module):
    """Sinusoidal frame-position encoding; ``pe`` is a persistent buffer as in AnimateDiff."""

    def __init__(self, dim: int, max_len: int):
        super().__init__()
        position = torch.arange(max_len).unsqueeze(1)
        div_term = torch.exp(torch.arange(0, dim, 2) * (-math.log(10000.0) / dim))
        pe = torch.zeros(1, max_len, dim)
        pe[0, :, 0::2] = torch.sin(position * div_term)
        pe[0, :, 1::2] = torch.cos(position * div_term)
        self.register_buffer("pe", pe)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] > self.pe.shape[1]:
            raise ValueError(f"{x.shape[1]} frames exceed the temporal position encoding length {self.pe.shape[1]}")
        return x + self.pe[:, : x.shape[1]].to(x.dtype)


class TemporalAttention(Attention):
    """Self-attention over frames with its own position encoding (AnimateDiff's
    ``VersatileAttention`` key layout). Inputs are already laid out as ``(b h w) f c``."""

    def __init__(self, dim: int, heads: int, max_len: int):
        super().__init__(query_dim=dim, heads=heads, dim_head=dim // heads, bias=False)
        self.pos_encoder = PositionalEncoding(dim, max_len)
        self.set_processor(AttnProcessor())


class TemporalBlock(nn.Module):
    def __init__(self, dim: int, heads: int, attention_blocks: int, max_len: int, speed_dim: int | None,
                 speed_film: bool = False):
        super().__init__()
        self.attention_blocks = nn.ModuleList(TemporalAttention(dim, heads, max_len) for _ in range(attention_blocks))
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(attention_blocks))
        self.ff = FeedForward(dim, activation_fn="geglu")
        self.ff_norm = nn.LayerNorm(dim)
        self.speed_attention = self.speed_norm = self.speed_film = None
        if speed_dim is not None and speed_film:
            self.speed_film = nn.Linear(speed_dim, 2 * dim)
            nn.init.zeros_(self.speed_film.weight)
            nn.init.zeros_(self.speed_film.bias)
        if speed_dim is not None:
            self.speed_norm = nn.LayerNorm(dim)
            self.speed_attention = Attention(query_dim=dim, cross_attention_dim=speed_dim, heads=heads,
                                             dim_head=dim // heads, bias=False)
            self.speed_attention.set_processor(AttnProcessor())
            nn.init.zeros_(self.speed_attention.to_out[0].weight)
            nn.init.zeros_(self.speed_attention.to_out[0].bias)

    def forward(self, x: torch.Tensor, speed_tokens: torch.Tensor | None = None) -> torch.Tensor:
        """x [(b h w), f, c]; speed_tokens [(b h w), f, speed_dim] or None."""
        if self.speed_attention is not None and speed_tokens is not None:
            # before the frames attend to each other, so the speed shapes how far they look
            x = self.speed_attention(self.speed_norm(x), encoder_hidden_states=speed_tokens) + x
            if self.speed_film is not None:  # each frame's own speed scales and shifts its features
                scale, shift = self.speed_film(speed_tokens).chunk(2, dim=-1)
                x = x * (1 + scale) + shift
        for attn, norm in zip(self.attention_blocks, self.norms):
            h = attn.pos_encoder(norm(x))
            x = attn(h) + x
        return self.ff(self.ff_norm(x)) + x


class TemporalTransformer(nn.Module):
    def __init__(self, channels: int, heads: int, blocks: int, attention_blocks: int, max_len: int,
                 norm_groups: int, speed_dim: int | None, speed_film: bool = False):
        super().__init__()
        self.norm = nn.GroupNorm(norm_groups, channels, eps=1e-6)
        self.proj_in = nn.Linear(channels, channels)
        self.transformer_blocks = nn.ModuleList(
            TemporalBlock(channels, heads, attention_blocks, max_len, speed_dim, speed_film) for _ in range(blocks))
        self.proj_out = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor, num_frames: int, speed_tokens: torch.Tensor | None) -> torch.Tensor:
        """x [(b f), c, h, w] -> same shape."""
        _, _, hgt, wid = x.shape
        residual = x
        h = rearrange(self.norm(x), "(b f) c h w -> (b h w) f c", f=num_frames)
        h = self.proj_in(h)
        if speed_tokens is not None:
            speed_tokens = repeat(speed_tokens, "b f c -> (b h w) f c", h=hgt, w=wid)
        for block in self.transformer_blocks:
            h = block(h, speed_tokens)
        h = self.proj_out(h)
        return rearrange(h, "(b h w) f c -> (b f) c h w", h=hgt, w=wid) + residual


class TemporalModule(nn.Module):
    """One AnimateDiff motion module. ``forward`` joins the motion frames' features in
    front of the clip on the frame axis, attends over time, and returns the clip's frames."""

    def __init__(self, channels: int, heads: int, blocks: int = 1, attention_blocks: int = 2, max_len: int = 32,
                 norm_groups: int = 32, speed_dim: int | None = None, speed_film: bool = False):
        super().__init__()
        self.temporal_transformer = TemporalTransformer(
            channels, heads, blocks, attention_blocks, max_len, norm_groups, speed_dim, speed_film)
        nn.init.zeros_(self.temporal_transformer.proj_out.weight)
        nn.init.zeros_(self.temporal_transformer.proj_out.bias)

    def forward(self, x: torch.Tensor, num_frames: int, motion: torch.Tensor | None = None,
                speed_tokens: torch.Tensor | None = None) -> torch.Tensor:
        """x [(b f), c, h, w]; motion [b, n, c, h, w] or None; speed_tokens [b, n+f, d] or None."""
        if motion is None or motion.shape[1] == 0:
            return self.temporal_transformer(x, num_frames, speed_tokens)
        n = motion.shape[1]
        clip = rearrange(x, "(b f) c h w -> b f c h w", f=num_frames)
        joined = rearrange(torch.cat([motion.to(x.dtype), clip], dim=1), "b f c h w -> (b f) c h w")
        out = self.temporal_transformer(joined, n + num_frames, speed_tokens)
        return rearrange(rearrange(out, "(b f) c h w -> b f c h w", f=n + num_frames)[:, n:], "b f c h w -> (b f) c h w")
