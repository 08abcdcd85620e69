"""Image <-> latent codecs used while training.

- ``PixelLatent`` (no weights, nothing to download): an image average-pooled by ``pool``
  and folded space-to-depth to 1/8 resolution, ``3 * (8 / pool)**2`` channels. It keeps
  colour and shape at ``pool``-pixel detail and decodes exactly (up to the pooling). It is
  the stand-in for the SD VAE in the synthetic learning test and CI; models trained with it
  use its channel count as ``unet.in_channels``.
- ``VaeLatent``: a diffusers ``AutoencoderKL`` folder (SD1.5's ``vae/`` or ``sd-vae-ft-mse``),
  latents scaled by the VAE's ``scaling_factor`` (0.18215), frozen.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F


class PixelLatent:
    factor = 8

    def __init__(self, pool: int = 4, scale: float = 1.0):
        if pool not in (1, 2, 4, 8):
            raise ValueError(f"pixel latent pool must be 1, 2, 4 or 8, got {pool}")
        self.pool, self.scale = pool, float(scale)
        self.fold = self.factor // pool
        self.channels = 3 * self.fold ** 2

    def to(self, device=None, dtype=None) -> "PixelLatent":
        return self

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """[N, 3, H, W] in [-1, 1] -> [N, C, H/8, W/8]."""
        x = F.avg_pool2d(pixels.float(), self.pool) if self.pool > 1 else pixels.float()
        return F.pixel_unshuffle(x, self.fold) * self.scale

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """[N, C, h, w] -> [N, 3, 8h, 8w] in [-1, 1]."""
        x = F.pixel_shuffle(latents.float() / self.scale, self.fold)
        if self.pool > 1:
            x = F.interpolate(x, scale_factor=self.pool, mode="nearest")
        return x.clamp(-1, 1)


class VaeLatent:
    factor = 8

    def __init__(self, path: str | Path, device="cpu", dtype=torch.float32):
        from diffusers import AutoencoderKL

        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"VAE folder {path} not found (a diffusers AutoencoderKL folder with config.json)")
        self.vae = AutoencoderKL.from_pretrained(str(path)).to(device, dtype).eval().requires_grad_(False)
        self.scale = float(self.vae.config.scaling_factor)
        self.channels = int(self.vae.config.latent_channels)

    def to(self, device=None, dtype=None) -> "VaeLatent":
        self.vae.to(device=device, dtype=dtype)
        return self

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        p = next(self.vae.parameters())
        return self.vae.encode(pixels.to(p.device, p.dtype)).latent_dist.sample() * self.scale

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, chunk: int = 8) -> torch.Tensor:
        p = next(self.vae.parameters())
        out = [self.vae.decode(z.to(p.device, p.dtype) / self.scale).sample for z in latents.split(chunk)]
        return torch.cat(out).float().clamp(-1, 1)


def build_codec(spec: dict):
    kind = spec.get("kind", "vae")
    if kind == "pixel":
        return PixelLatent(pool=int(spec.get("pool", 4)), scale=float(spec.get("scale", 1.0)))
    if kind == "vae":
        if not spec.get("path"):
            raise ValueError("latents.kind 'vae' needs latents.path: a diffusers AutoencoderKL folder "
                             "(e.g. stable-diffusion-v1-5/vae or sd-vae-ft-mse)")
        return VaeLatent(spec["path"])
    raise ValueError(f"latents.kind must be 'pixel' or 'vae', got {kind!r}")
