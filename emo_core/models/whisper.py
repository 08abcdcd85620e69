"""Whisper audio encoder (Radford et al. 2022), as EchoMimic uses it: every hidden state.

Only the encoder: two 1D convolutions (the second with stride 2: 100 Hz log-mel -> 50 Hz),
sinusoidal positions, pre-norm transformer blocks. ``forward`` returns the input embedding
and the output of every block, stacked: for whisper-tiny 1 + 4 = 5 states of width 384 per
20 ms frame, which is what EchoMimic's audio tokens are made of (the final ``ln_post`` is
not applied to them; it is kept so OpenAI's checkpoints load strictly).

Parameter names follow OpenAI's checkpoints (``encoder.conv1``, ``encoder.blocks.N.attn.query``,
``attn_ln``, ``mlp.0``, ``mlp_ln``, ``ln_post``, ``positional_embedding``). A checkpoint file
(OpenAI's ``tiny.pt`` = EchoMimic's ``whisper_tiny.pt``) is ``{"dims": {...},
"model_state_dict": {...}}`` and loads with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


@dataclass(frozen=True)
class WhisperDims:
    n_mels: int = 80
    n_audio_ctx: int = 1500  # encoder frames per 30 s window
    n_audio_state: int = 384
    n_audio_head: int = 6
    n_audio_layer: int = 4

    @classmethod
    def from_checkpoint(cls, dims: dict) -> "WhisperDims":
        return cls(**{k: int(dims[k]) for k in cls.__dataclass_fields__})


def sinusoids(length: int, channels: int, max_timescale: float = 10000.0) -> torch.Tensor:
    """Whisper's positions: sin over the first half of the channels, cos over the second."""
    increment = math.log(max_timescale) / (channels // 2 - 1)
    inv = torch.exp(-increment * torch.arange(channels // 2))
    t = torch.arange(length)[:, None] * inv[None, :]
    return torch.cat([torch.sin(t), torch.cos(t)], dim=1)


class WhisperAttention(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(width, width)
        self.key = nn.Linear(width, width, bias=False)
        self.value = nn.Linear(width, width)
        self.out = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = (rearrange(p(x), "b l (h d) -> b h l d", h=self.heads) for p in (self.query, self.key, self.value))
        return self.out(rearrange(F.scaled_dot_product_attention(q, k, v), "b h l d -> b l (h d)"))


class WhisperBlock(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.attn = WhisperAttention(width, heads)
        self.attn_ln = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))
        self.mlp_ln = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_ln(x))
        return x + self.mlp(self.mlp_ln(x))


class WhisperEncoder(nn.Module):
    def __init__(self, dims: WhisperDims = WhisperDims()):
        super().__init__()
        self.dims = dims
        w = dims.n_audio_state
        self.conv1 = nn.Conv1d(dims.n_mels, w, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(w, w, kernel_size=3, stride=2, padding=1)
        self.register_buffer("positional_embedding", sinusoids(dims.n_audio_ctx, w))
        self.blocks = nn.ModuleList(WhisperBlock(w, dims.n_audio_head) for _ in range(dims.n_audio_layer))
        self.ln_post = nn.LayerNorm(w)

    @property
    def num_states(self) -> int:
        return len(self.blocks) + 1

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        """mel [b, n_mels, 2 * n_audio_ctx] (one padded 30 s window) -> hidden states
        [b, 1 + layers, n_audio_ctx, width]: the input embedding, then each block's output."""
        if mel.shape[1:] != (self.dims.n_mels, 2 * self.dims.n_audio_ctx):
            raise ValueError(f"whisper takes [batch, {self.dims.n_mels}, {2 * self.dims.n_audio_ctx}] log-mel "
                             f"windows; got {tuple(mel.shape)}")
        x = F.gelu(self.conv2(F.gelu(self.conv1(mel))))
        x = rearrange(x, "b c t -> b t c") + self.positional_embedding.to(x.dtype)
        states = [x]
        for block in self.blocks:
            x = block(x)
            states.append(x)
        return torch.stack(states, dim=1)


def load_whisper_encoder(path: str | Path, device="cpu", dtype=torch.float32) -> WhisperEncoder:
    """The encoder of an OpenAI-layout whisper checkpoint (``tiny.pt`` / ``whisper_tiny.pt``),
    read with ``weights_only=True``; every ``encoder.*`` key must fit (the decoder is ignored)."""
    from ..checkpoints import CheckpointError, load_strict, torch_load

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"whisper checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        import json

        from safetensors import safe_open
        from safetensors.torch import load_file

        try:
            with safe_open(str(path), "pt") as f:
                meta = f.metadata() or {}
        except Exception as e:  # SafetensorError (bad header, truncated file), OSError
            raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from e
        if "dims" not in meta:
            raise CheckpointError(f"{path}: a whisper safetensors file needs its dims as JSON in the metadata key 'dims'")
        try:
            ckpt = {"dims": json.loads(meta["dims"]), "model_state_dict": load_file(str(path))}
        except Exception as e:
            raise CheckpointError(f"{path}: unreadable whisper safetensors file ({type(e).__name__}: {e})") from e
    else:
        ckpt = torch_load(path)  # weights_only; a pickle needing globals is a CheckpointError
    if not isinstance(ckpt, dict) or "dims" not in ckpt or "model_state_dict" not in ckpt:
        raise CheckpointError(f"{path}: not an OpenAI whisper checkpoint (expected keys 'dims' and 'model_state_dict')")
    try:
        dims = WhisperDims.from_checkpoint(ckpt["dims"])
    except (TypeError, KeyError, ValueError) as e:
        raise CheckpointError(f"{path}: its 'dims' are not whisper model dimensions ({e})") from e
    encoder = WhisperEncoder(dims)
    sd = {k[len("encoder."):]: v for k, v in ckpt["model_state_dict"].items() if k.startswith("encoder.")}
    load_strict(encoder, sd, f"whisper encoder in {path}")
    return encoder.to(device=device, dtype=dtype).eval().requires_grad_(False)
