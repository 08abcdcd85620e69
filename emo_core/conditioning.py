"""One clip's conditioning and its guided denoiser: the one builder used by the pipeline, the
training loop's sample clips, the benchmarks and the parity runners.

A clip is conditioned on the portrait (ReferenceNet features, once per video), its motion
frames (ReferenceNet features, once per clip), audio tokens, face-locator features, speed
tokens and the region masks of Hallo's audio attention. Classifier-free guidance runs both
halves in one batch ([uncond, cond]); the unconditional half drops what
``sampling.guidance.unconditional`` drops.

How the reference and motion features are laid out over the two CFG halves is a *reference
rule*:

- ``CleanReference`` (EMO, EchoMimic, our own checkpoints): both halves read the same
  motion-frame features (ReferenceNet run with the portrait's identity tokens); the conditional
  half attends to the portrait, the unconditional half does not.
- ``emo_core.families.hallo.HalloReference``: Hallo's own pipeline, reproduced exactly (its
  module documents each quirk with its source).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import torch

from .models.attention import ReferenceFeatures
from .models.backbone import Conditioning
from .sampling.guidance import (batch_conditions, check_speed_guidance, guided_batched, guided_on_interval,
                                guided_speed_batched, speed_rows, unconditional)


@dataclass
class ReferenceState:
    """The portrait, encoded once per video.

    features:      ReferenceNet features of the portrait with its identity tokens (None: not
                   cached, recomputed at every step)
    null_features: the same with the unconditional identity tokens, for rules that need them
                   (Hallo's), else None
    """

    image: torch.Tensor  # [H, W, 3] 0..1
    latent: torch.Tensor  # [1, 4, h, w]
    identity: torch.Tensor | None  # [1, n, D] identity tokens or None
    features: ReferenceFeatures | None
    null_identity: torch.Tensor | None = None
    null_features: ReferenceFeatures | None = None

    @property
    def size(self) -> tuple[int, int]:
        return self.image.shape[0], self.image.shape[1]

    def to(self, device) -> "ReferenceState":
        """A copy with the model-side tensors on ``device`` (this state is not changed)."""
        mv = lambda t: None if t is None else t.to(device)
        return ReferenceState(self.image, self.latent.to(device), mv(self.identity), mv(self.features),
                              mv(self.null_identity), mv(self.null_features))


class CleanReference:
    """Both CFG halves share the motion frames' features; only the conditional half reads the
    portrait (``ReferenceFeatures.active``). Motion frames go through ReferenceNet with the
    portrait's identity tokens; with none (the paper's first clip) they are zero maps."""

    name = "clean"
    needs_null_features = False

    def portrait(self, net, ref: ReferenceState) -> ReferenceFeatures:
        return ref.features if ref.features is not None else net.reference_features(ref.latent, ref.identity)

    def motion(self, net, ref: ReferenceState, motion_latents: torch.Tensor | None, spatial: dict):
        n = net.cfg.motion_frames
        if motion_latents is not None and motion_latents.shape[0] > 0:
            return net.motion_features(motion_latents[None].to(net.device, net.dtype), ref.identity)
        if n > 0:
            return {k: v.new_zeros(v.shape[0], n, *v.shape[1:]) for k, v in spatial.items()}
        return None

    def features(self, net, ref: ReferenceState, motion_latents: torch.Tensor | None, *, frames: int,
                 guided: bool) -> ReferenceFeatures:
        """The reference features for the model's batch: [uncond, cond] when ``guided``, else [cond]."""
        portrait = self.portrait(net, ref)
        cond = portrait.with_motion(self.motion(net, ref, motion_latents, portrait.spatial))
        if not guided:
            return cond
        off = ReferenceFeatures(cond.spatial, cond.motion, torch.zeros(1, dtype=torch.bool, device=cond.device))
        return ReferenceFeatures.cat([off, cond])


def encode_portrait(net, latent: torch.Tensor, face_embedding: torch.Tensor | None, rule, *,
                    image: torch.Tensor, cache: bool = True) -> ReferenceState:
    """The portrait's identity tokens and ReferenceNet features (``rule`` says which it needs)."""
    emb = None if face_embedding is None else face_embedding.reshape(1, -1)
    identity = net.identity_tokens(emb, batch=1)
    null_identity = net.identity_tokens(None, batch=1)
    features = net.reference_features(latent, identity) if cache else None
    null_features = None
    if cache and rule.needs_null_features:
        null_features = net.reference_features(latent, null_identity)
    return ReferenceState(image, latent, identity, features, null_identity, null_features)


def build_conditioning(net, *, identity: torch.Tensor | None, reference: ReferenceFeatures | None = None,
                       audio_windows: torch.Tensor | None = None, face_mask: torch.Tensor | None = None,
                       speed: torch.Tensor | None = None, region_masks=None, region_weights=None) -> Conditioning:
    """The conditions of a batch of b clips (training and inference alike): identity tokens
    [b, n, D]; audio_windows [b, f, window, blocks, size]; face_mask [b, H, W] or [b, C, H, W];
    speed [b, f] degrees per frame."""
    audio = None if audio_windows is None else net.audio_tokens(audio_windows)
    face = None if face_mask is None else net.face_features(face_mask)
    speed_tokens = None if speed is None else net.speed_tokens(speed.to(net.device, torch.float32))
    return Conditioning(reference=reference, identity=identity, audio=audio, face=face, speed=speed_tokens,
                        region_masks=region_masks, region_weights=region_weights)


def clip_conditioning(net, ref: ReferenceState, *, audio_windows: torch.Tensor | None = None,
                      face_mask: torch.Tensor | None = None, speed: torch.Tensor | None = None,
                      region_masks=None, region_weights=None) -> Conditioning:
    """The conditional half of one clip, without reference features (the rule adds them).
    audio_windows [f, window, blocks, size]; face_mask [H, W] (or [C, H, W]); speed [f]."""
    return build_conditioning(
        net, identity=ref.identity, audio_windows=None if audio_windows is None else audio_windows[None],
        face_mask=None if face_mask is None else face_mask[None], speed=None if speed is None else speed.reshape(1, -1),
        region_masks=region_masks, region_weights=region_weights)


def still_speed_rows(net, cond: Conditioning, null_identity: torch.Tensor | None) -> Conditioning:
    """``guidance.speed_rows`` with a head held still (speed-0 tokens) as the speed's baseline:
    [uncond, cond at speed 0, cond]."""
    still = net.speed_tokens(cond.speed.new_zeros(cond.speed.shape[:2], dtype=torch.float32))
    return speed_rows(cond, null_identity, still)


def denoiser(net, ref: ReferenceState, cond: Conditioning, rule, motion_latents: torch.Tensor | None, *,
             frames: int, guidance: float, model: Callable | None = None,
             interval: Callable | None = None, speed_guidance: float | None = None) -> Callable:
    """``model_fn(x, t)`` for a sampler: the backbone on this clip's conditioning, with
    classifier-free guidance (one batched forward) when ``guidance > 1``.

    ``model(x, t, cond)`` defaults to ``net``; pass a wrapper to observe the raw predictions.
    ``interval(t) -> bool`` limits guidance to those timesteps (``samplers.sigma_interval``);
    elsewhere one forward of the guided batch's conditional half.
    ``speed_guidance``: its own scale on the speed, away from a head held still
    (``guidance.guided_speed``: three rows, the still one reading the portrait as the conditional
    row does); None, or a model without speed tokens: plain CFG.
    Without cached portrait features (``ref.features is None``) ReferenceNet runs at every call."""
    model = net if model is None else model
    guided = guidance > 1.0
    by_speed = speed_guidance is not None and cond.speed is not None
    if by_speed:
        check_speed_guidance(guidance, speed_guidance)
        three = still_speed_rows(net, cond, ref.null_identity)  # once, not at every build()

    def build() -> Conditioning:
        reference = rule.features(net, ref, motion_latents, frames=frames, guided=guided)
        if not guided:
            return replace(cond, reference=reference)
        if by_speed:
            if reference.batch != 2:
                raise ValueError(f"speed guidance: the {rule.name!r} reference layout has no plain [uncond, cond] rows")
            return replace(three, reference=reference.rows([0, 1, 1]))
        both = batch_conditions(unconditional(cond, ref.null_identity), cond)
        return replace(both, reference=reference)

    def guide(built: Conditioning) -> Callable:
        if not guided:
            return lambda x, t: model(x, t, built)
        if interval is not None:
            return guided_on_interval(model, built, guidance, interval, speed_guidance if by_speed else None)
        if by_speed:
            return guided_speed_batched(model, built, guidance, speed_guidance)
        return guided_batched(model, built, guidance)

    if ref.features is None:  # caching off: the portrait goes through ReferenceNet at every step
        return lambda x, t: guide(build())(x, t)
    return guide(build())
