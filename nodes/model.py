"""EMO_MODEL: the EmoPipeline plus its helper models, kept on the offload device and loaded
through ComfyUI's model management when a node runs. Also ``ComfyVae`` (ComfyUI's VAE in
the pipeline's scaled-latent convention) and the tiny random wav2vec2 of the smoke preset."""
from __future__ import annotations

import contextlib
import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from .comfy_env import Patched

SD15_SCALE = 0.18215
WAV2VEC_SUBDIR = "wav2vec/wav2vec2-base-960h"
FACE_SUBDIR = "face_analysis/models"
_keys = itertools.count(1)


class ComfyVae:
    """ComfyUI's VAE behind the pipeline's VAE protocol.

    ComfyUI's ``VAE.encode`` takes IMAGE-layout pixels [N, H, W, C] in 0..1 and returns
    *unscaled* latents (the SD1.5 factor 0.18215 is applied on the diffusion-model side,
    ``latent_formats.SD15``); ``VAE.decode`` takes unscaled latents and returns [N, H, W, C]
    in 0..1. The pipeline works with scaled latents, so encode multiplies by ``scale`` and
    decode divides by it. ComfyUI moves and offloads the VAE itself.
    """

    def __init__(self, vae, scale: float = SD15_SCALE, decode_chunk: int = 8):
        channels = getattr(vae, "latent_channels", 4)
        if channels != 4:
            raise ValueError(f"the VAE input has {channels} latent channels; EMO needs an SD1.5-family VAE "
                             "(4 channels, e.g. vae-ft-mse-840000-ema-pruned.safetensors)")
        self.vae, self.scale, self.decode_chunk = vae, float(scale), decode_chunk

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4:
            raise ValueError(f"images must be [N, H, W, 3]; got {tuple(images.shape)}")
        return self.vae.encode(images[..., :3].float().cpu()).float() * self.scale

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        out = [self.vae.decode(chunk.float() / self.scale)[..., :3].float().cpu().clamp(0, 1)
               for chunk in latents.split(self.decode_chunk)]
        return torch.cat(out)


class _Modules(nn.Module):
    """What the ModelPatcher moves: the network and, when it is ours, the VAE."""

    def __init__(self, net: nn.Module, vae: Optional[nn.Module]):
        super().__init__()
        self.net = net
        self.vae = vae


@dataclass(eq=False)
class EmoModel:
    pipe: object  # emo_core.pipeline.EmoPipeline
    name: str
    format: str  # "tiny" | "hallo" | "emo" | "echomimic"
    # Hallo pretrained_models layout (wav2vec/, face_analysis/models), or the EchoMimic folder
    # (audio_processor/whisper_tiny.pt)
    folder: Optional[Path] = None
    tiny: bool = False
    key: int = field(default_factory=lambda: next(_keys))
    _patched: Optional[Patched] = None
    _wav2vec: Optional[Patched] = None

    def __post_init__(self):
        vae_module = getattr(self.pipe.vae, "vae", None)
        own_vae = vae_module if isinstance(vae_module, nn.Module) else None
        self._patched = Patched(_Modules(self.pipe.net, own_vae))

    @property
    def cfg(self):
        return self.pipe.cfg

    @contextlib.contextmanager
    def loaded(self):
        """The pipeline with its weights on the compute device (offloadable afterwards)."""
        with self._patched.loaded() as device:
            previous = self.pipe.device
            self.pipe.device = torch.device(device)
            try:
                yield self.pipe
            finally:
                self.pipe.device = previous

    # ---- helper models -----------------------------------------------------------------------
    def wav2vec_folder(self) -> Optional[Path]:
        return None if self.folder is None else self.folder / WAV2VEC_SUBDIR

    def face_models_dir(self) -> Optional[Path]:
        if self.folder is None:
            return None
        if self.format == "echomimic":  # EchoMimic ships no face models: its own folder or Hallo's beside it
            return next((d for d in (self.folder / FACE_SUBDIR, self.folder.parent / "hallo" / FACE_SUBDIR)
                         if d.is_dir()), None)
        return self.folder / FACE_SUBDIR

    @contextlib.contextmanager
    def audio_model(self):
        """The audio encoder this network was trained with (wav2vec2, or whisper-tiny for the
        EchoMimic family), on the compute device."""
        if self._wav2vec is None and self.tiny:
            from emo_core.families.tiny import tiny_audio_model

            self._wav2vec = Patched(tiny_audio_model(self.cfg))
        if self._wav2vec is None and self.cfg.audio.encoder == "whisper":
            from emo_core.families.echomimic import load_whisper

            a = self.cfg.audio
            model = load_whisper(self.folder if self.folder is not None else Path("."))
            if (model.num_states, model.dims.n_audio_state) != (a.feature_blocks, a.feature_dim):
                raise ValueError(f"the whisper model gives {model.num_states} states of {model.dims.n_audio_state}; "
                                 f"this EchoMimic model expects {a.feature_blocks} of {a.feature_dim} (whisper-tiny)")
            self._wav2vec = Patched(model)
        if self._wav2vec is None:
            from emo_core.preprocess.audio_features import load_wav2vec

            a = self.cfg.audio
            folder = self.wav2vec_folder()
            if folder is None or not (folder / "config.json").is_file():
                from emo_core.hub import ModelFileMissing

                raise ModelFileMissing(
                    f"wav2vec2 folder not found at {folder}: put facebook/wav2vec2-base-960h there "
                    "(config.json + model.safetensors, as in Hallo's pretrained_models/wav2vec/), or feed "
                    "core's AUDIO_ENCODER_OUTPUT into EMO Audio Encode instead")
            model = load_wav2vec(folder)
            hidden, layers = model.config.hidden_size, model.config.num_hidden_layers
            if (hidden, layers) != (a.feature_dim, a.feature_blocks):
                raise ValueError(f"the wav2vec2 model has {layers} blocks of {hidden}; this EMO model expects "
                                 f"{a.feature_blocks} blocks of {a.feature_dim}")
            self._wav2vec = Patched(model)
        with self._wav2vec.loaded():
            yield self._wav2vec.module
