"""The whole EMO network: the five (six) trained parts under Hallo's checkpoint prefixes.

``reference_unet`` (ReferenceNet), ``denoising_unet`` (Backbone), ``face_locator``,
``imageproj`` (identity tokens, optional), ``audioproj`` (audio tokens; absent when the
audio features go straight into the backbone's cross-attention, as in EchoMimic) and, for
EMO's native layout, ``speed_encoder``.
"""
from __future__ import annotations

import torch
from torch import nn

from ..config import EmoConfig
from .attention import ReferenceFeatures
from .audio import AudioProjection
from .backbone import Backbone, Conditioning
from .face_locator import FaceLocator
from .identity import IdentityProjection
from .reference_net import ReferenceNet
from .speed import SpeedEncoder


class EmoNet(nn.Module):
    def __init__(self, cfg: EmoConfig):
        super().__init__()
        self.cfg = cfg
        u, a = cfg.unet, cfg.audio
        self.reference_unet = ReferenceNet.build(u, cross_attention=cfg.reference_cross_attention)
        self.denoising_unet = Backbone(cfg)
        self.face_locator = FaceLocator(u.block_out_channels[0], cfg.face_locator_in_channels, cfg.face_locator_channels)
        self.imageproj = (IdentityProjection(cfg.identity_dim, cfg.identity_tokens, u.cross_attention_dim)
                          if cfg.identity_dim else None)
        self.audioproj = None if a.in_cross_attention else AudioProjection(
            2 * a.context + 1, a.feature_blocks, a.feature_dim, a.intermediate_dim, a.tokens, a.token_dim)
        self.speed_encoder = SpeedEncoder(cfg.speed) if cfg.speed is not None else None
        missing = set(self.denoising_unet.reference_layer_names()) ^ set(self.reference_unet.layer_names())
        if missing:
            raise ValueError(f"ReferenceNet and backbone attention layers differ: {sorted(missing)}")

    @property
    def dtype(self) -> torch.dtype:
        return self.denoising_unet.conv_in.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.denoising_unet.conv_in.weight.device

    # ---- conditioning ------------------------------------------------------------------------
    def identity_tokens(self, face_embedding: torch.Tensor | None, batch: int = 1) -> torch.Tensor | None:
        """Identity tokens for the UNets' cross-attention; None when the model has no identity projection.
        A missing embedding counts as zeros (as Hallo's unconditional input)."""
        if self.imageproj is None:
            return None
        if face_embedding is None:
            face_embedding = torch.zeros(batch, self.cfg.identity_dim, device=self.device, dtype=self.dtype)
        return self.imageproj(face_embedding.to(self.device, self.dtype))

    def reference_features(self, ref_latents: torch.Tensor, identity: torch.Tensor | None,
                           motion_latents: torch.Tensor | None = None) -> ReferenceFeatures:
        """ReferenceNet on the reference latent [b, 4, h, w] and optional motion-frame latents
        [b, n, 4, h, w] (timestep 0). Each image is independent, so the reference part can be
        computed once per video and the motion part once per clip."""
        spatial = self._reference_pass(ref_latents, identity)
        motion = None
        if motion_latents is not None and motion_latents.shape[1] > 0:
            motion = self.motion_features(motion_latents, identity)
        return ReferenceFeatures(spatial, motion)

    def motion_features(self, motion_latents: torch.Tensor, identity: torch.Tensor | None) -> dict[str, torch.Tensor]:
        b, n = motion_latents.shape[:2]
        ident = None if identity is None else identity.repeat_interleave(n, dim=0)
        feats = self._reference_pass(motion_latents.flatten(0, 1), ident)
        return {k: v.unflatten(0, (b, n)) for k, v in feats.items()}

    def _reference_pass(self, latents: torch.Tensor, identity: torch.Tensor | None) -> dict[str, torch.Tensor]:
        if identity is None:
            identity = latents.new_zeros(latents.shape[0], 1, self.cfg.unet.cross_attention_dim)
        t = torch.zeros(latents.shape[0], device=latents.device, dtype=torch.long)
        feats, _ = self.reference_unet(latents.to(self.dtype), t, identity.to(self.dtype))
        if self.cfg.reference_feature_dtype is not None:
            rounded = getattr(torch, self.cfg.reference_feature_dtype)
            feats = {k: v.to(rounded).to(v.dtype) for k, v in feats.items()}
        return feats

    def face_features(self, mask: torch.Tensor) -> torch.Tensor:
        """mask [b, H, W] (or [b, C, H, W]) at image resolution -> [b, c0, H/8, W/8]."""
        return self.face_locator(mask.to(self.device, self.dtype))

    def audio_tokens(self, windows: torch.Tensor) -> torch.Tensor:
        """windows [b, f, window, blocks, dim] -> tokens [b, f, tokens, token_dim]. Without a
        projection the window's features are the tokens (token = window frame * blocks + block)."""
        windows = windows.to(self.device, self.dtype)
        if self.audioproj is None:
            a = self.cfg.audio
            if windows.ndim != 5 or tuple(windows.shape[2:]) != (a.window, a.feature_blocks, a.feature_dim):
                raise ValueError(f"audio windows must be [batch, frames, {a.window}, {a.feature_blocks}, "
                                 f"{a.feature_dim}] (window, {a.encoder} blocks, size); got {tuple(windows.shape)}")
            return windows.flatten(2, 3)
        return self.audioproj(windows)

    def speed_tokens(self, speed: torch.Tensor | None) -> torch.Tensor | None:
        if speed is None or self.speed_encoder is None:
            return None
        return self.speed_encoder(speed.to(self.device))

    def forward(self, sample: torch.Tensor, timestep, cond: Conditioning) -> torch.Tensor:
        return self.denoising_unet(sample, timestep, cond)
