"""The image autoencoder seen by the pipeline: pixels [N, H, W, 3] in 0..1 <-> scaled latents.

``DiffusersVae`` adapts a diffusers ``AutoencoderKL`` (SD1.5's ``sd-vae-ft-mse`` for real use);
inside ComfyUI the nodes adapt ComfyUI's own VAE to the same two methods.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Protocol

import torch
from einops import rearrange


class Vae(Protocol):
    def encode_images(self, images: torch.Tensor) -> torch.Tensor: ...

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor: ...


class DiffusersVae:
    """Encodes with the posterior mean (as Hallo does) and decodes a few frames at a time so
    memory does not grow with the number of frames."""

    def __init__(self, vae, decode_chunk: int = 4):
        self.vae = vae
        self.scale = float(vae.config.scaling_factor)
        self.decode_chunk = decode_chunk

    @property
    def device(self):
        return next(self.vae.parameters()).device

    @property
    def dtype(self):
        return next(self.vae.parameters()).dtype

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"images must be [N, H, W, 3] in 0..1; got {tuple(images.shape)}")
        # [-1, 1] computed at the images' own precision, then cast: decoded frames handed back as
        # motion frames round exactly as in Hallo (float32 video * 2 - 1).
        pixels = rearrange(images * 2 - 1, "n h w c -> n c h w").to(self.device, self.dtype)
        return self.vae.encode(pixels).latent_dist.mean * self.scale

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        out = []
        for chunk in latents.split(self.decode_chunk):
            x = self.vae.decode(chunk.to(self.device, self.dtype) / self.scale).sample
            out.append(rearrange((x / 2 + 0.5).clamp(0, 1).float(), "n c h w -> n h w c").cpu())
        return torch.cat(out)


TINY_VAE = {"block_out_channels": [8, 16, 16, 16], "norm_num_groups": 4, "layers_per_block": 1,
            "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
            "latent_channels": 4, "scaling_factor": 0.18215}


def tiny_vae(seed: int = 0) -> DiffusersVae:
    """A randomly initialised 8x-downsampling AutoencoderKL for tests and smoke runs (its output is noise)."""
    from diffusers import AutoencoderKL

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        vae = AutoencoderKL(**TINY_VAE)
    return DiffusersVae(vae.eval().requires_grad_(False))


def load_vae(folder: str | Path, device="cpu", dtype=torch.float32) -> DiffusersVae:
    """A diffusers AutoencoderKL folder (config.json + weights), e.g. sd-vae-ft-mse."""
    from diffusers import AutoencoderKL

    from .checkpoints import CheckpointError, check_shapes, find_weights, load_state_dict, load_strict, read_header

    folder = Path(folder)
    cfg_file = folder / "config.json"
    if not cfg_file.is_file():
        raise FileNotFoundError(f"{cfg_file} is missing: a VAE folder needs config.json and its weights "
                                "(e.g. stabilityai/sd-vae-ft-mse)")
    expected = "a diffusers AutoencoderKL config (e.g. stabilityai/sd-vae-ft-mse's config.json)"
    try:
        raw = json.loads(cfg_file.read_text())
        if not isinstance(raw, dict):
            raise ValueError(f"a JSON {type(raw).__name__}, not an object")
        cfg = {k: v for k, v in raw.items() if not k.startswith("_")}
        with torch.device("meta"):  # names and shapes only: the file is checked before the real build
            shapes = {k: tuple(v.shape) for k, v in AutoencoderKL.from_config(cfg).state_dict().items()}
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise CheckpointError(f"{cfg_file}: not usable, expected {expected} ({type(e).__name__}: {e})") from e
    weights = find_weights(folder, "diffusion_pytorch_model")
    check_shapes(shapes, read_header(weights), f"VAE {weights}")
    vae = AutoencoderKL.from_config(cfg)
    load_strict(vae, load_state_dict(weights), f"VAE {weights}")
    return DiffusersVae(vae.to(device, dtype).eval().requires_grad_(False))
