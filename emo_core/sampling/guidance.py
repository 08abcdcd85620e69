"""Classifier-free guidance over the backbone, with both halves in one batched forward, at
every step (``guided_batched``) or on an interval of noise levels (``guided_on_interval``).

The unconditional half drops what Hallo drops: the reference (its self-attention sees only
its own tokens), the audio tokens (zeros after projection), the face-locator features (zeros)
and the identity (the projection of a zero embedding, given by the caller); with EMO's speed
layers also the speed tokens (zeros after projection), so guidance amplifies the asked head
speed as it amplifies the audio (training drops the speed with the other conditions,
``dropout.speed``). Motion frames are kept in both halves: they are the video's past, not a
condition to amplify. ``guided_speed`` gives the speed its own scale on top, guided away from
a head held still (a third row per step).
"""
from __future__ import annotations

import math
from dataclasses import replace

import torch

from ..models.attention import ReferenceFeatures
from ..models.backbone import Conditioning


def unconditional(cond: Conditioning, null_identity: torch.Tensor | None) -> Conditioning:
    ref = cond.reference
    if ref is not None:
        ref = ReferenceFeatures(ref.spatial, ref.motion, torch.zeros(ref.batch, dtype=torch.bool, device=ref.device))
    return replace(
        cond,
        reference=ref,
        identity=null_identity if cond.identity is not None else None,
        audio=None if cond.audio is None else torch.zeros_like(cond.audio),
        face=None if cond.face is None else torch.zeros_like(cond.face),
        speed=None if cond.speed is None else torch.zeros_like(cond.speed),
    )


def batch_conditions(*conds: Conditioning) -> Conditioning:
    """The conditionings concatenated along the batch, field by field ([uncond, cond] for CFG)."""
    def cat(values):
        return None if all(v is None for v in values) else torch.cat(values)

    first = conds[-1]
    ref = None
    if first.reference is not None:
        ref = ReferenceFeatures.cat([c.reference for c in conds])
    masks = None
    if first.region_masks is not None:
        masks = {k: [torch.cat([m] * len(conds)) for m in v] for k, v in first.region_masks.items()}
    return Conditioning(reference=ref, identity=cat([c.identity for c in conds]), audio=cat([c.audio for c in conds]),
                        face=cat([c.face for c in conds]), speed=cat([c.speed for c in conds]),
                        region_masks=masks, region_weights=first.region_weights)


def guided(model, cond: Conditioning, null_identity: torch.Tensor | None, scale: float):
    """Returns ``model_fn(x, t)`` for the sampler: one forward on [uncond, cond] and
    ``uncond + scale * (cond - uncond)``; with scale <= 1 a single conditional forward."""
    if not math.isfinite(float(scale)) or scale < 0:
        raise ValueError(f"guidance: expected a finite scale >= 0, got {scale}")
    if scale <= 1.0:
        return lambda x, t: model(x, t, cond)
    return guided_batched(model, batch_conditions(unconditional(cond, null_identity), cond), scale)


def without_speed(cond: Conditioning) -> Conditioning:
    """``cond`` with the speed tokens zeroed (what ``dropout.speed`` trains): every other condition kept."""
    return replace(cond, speed=None if cond.speed is None else torch.zeros_like(cond.speed))


def speed_rows(cond: Conditioning, null_identity: torch.Tensor | None,
               still: torch.Tensor | None = None) -> Conditioning:
    """[uncond, cond with the baseline speed, cond] along the batch: the rows of
    ``guided_speed_batched``. ``still``: the baseline's speed tokens (those of a head held still,
    speed 0, in the pipeline); None: no speed tokens (``without_speed``)."""
    middle = without_speed(cond) if still is None else replace(cond, speed=still.to(cond.speed))
    return batch_conditions(unconditional(cond, null_identity), middle, cond)


def guided_speed(model, cond: Conditioning, null_identity: torch.Tensor | None, scale: float, speed_scale: float,
                 still: torch.Tensor | None = None):
    """CFG with its own scale on the speed (InstructPix2Pix's two-condition guidance, arXiv
    2211.09800): one forward on [uncond, baseline, cond], the baseline being ``cond`` with the
    speed tokens ``still`` (or none), and
    ``uncond + scale * (baseline - uncond) + speed_scale * (cond - baseline)``: the asked speed
    is amplified apart from the audio and the portrait (``speed_scale == scale``: plain CFG's
    result). Guided away from a head held still (``still`` = speed-0 tokens), a model whose
    unguided motion is too slow moves at the asked speed: away from no speed, guidance only
    spreads the speeds around the average one (``bench/learning.py``)."""
    if cond.speed is None:
        return guided(model, cond, null_identity, scale)
    return guided_speed_batched(model, speed_rows(cond, null_identity, still), scale, speed_scale)


def check_speed_guidance(scale: float, speed_scale: float) -> None:
    for name, v in (("guidance", scale), ("speed guidance", speed_scale)):
        if not math.isfinite(float(v)) or v < 0:
            raise ValueError(f"{name}: expected a finite scale >= 0, got {v}")
    if scale <= 1.0:
        raise ValueError(f"speed guidance {speed_scale:g} needs classifier-free guidance (a guidance scale > 1, "
                         f"got {scale:g}): its baseline row is guided from the unconditional one")


def guided_speed_batched(model, three: Conditioning, scale: float, speed_scale: float, speed_at=None):
    """``guided_speed`` over a conditioning already batched as ``speed_rows`` [uncond, baseline, cond].
    ``speed_at(t) -> bool``: the timesteps that get the speed's own scale (elsewhere ``scale``, plain CFG)."""
    check_speed_guidance(scale, speed_scale)

    def model_fn(x, t):
        out_uncond, out_still, out_cond = model(torch.cat([x, x, x]), t, three).chunk(3)
        s = speed_scale if speed_at is None or speed_at(t) else scale
        return out_uncond + scale * (out_still - out_uncond) + s * (out_cond - out_still)

    return model_fn


def guided_batched(model, both: Conditioning, scale: float):
    """CFG over a conditioning already batched as [uncond, cond]."""
    def model_fn(x, t):
        out_uncond, out_cond = model(torch.cat([x, x]), t, both).chunk(2)
        return out_uncond + scale * (out_cond - out_uncond)

    return model_fn


def conditional_half(both: Conditioning, parts: int = 2) -> Conditioning:
    """The conditional half of a conditioning batched as [uncond, cond] (the last of ``parts``
    equal parts: 3 for ``speed_rows``): every batched tensor's last part (reference rows, motion
    frames, region-mask rows included)."""
    half = lambda v: None if v is None else v.chunk(parts)[-1]
    ref = both.reference
    if ref is not None:
        halves = lambda d: None if d is None else {k: half(v) for k, v in d.items()}
        ref = ReferenceFeatures(halves(ref.spatial), halves(ref.motion), half(ref.active))
    masks = None
    if both.region_masks is not None:
        masks = {k: [half(m) for m in v] for k, v in both.region_masks.items()}
    return replace(both, reference=ref, identity=half(both.identity), audio=half(both.audio), face=half(both.face),
                   speed=half(both.speed), region_masks=masks)


def guided_on_interval(model, both: Conditioning, scale: float, in_interval, speed_scale: float | None = None):
    """Guidance limited to an interval of noise levels (Kynkäänniemi et al. 2024, arXiv
    2404.07724): CFG over [uncond, cond] where ``in_interval(t)`` holds, elsewhere one forward
    of the conditional half alone (half the batch). With ``speed_scale``: ``both`` is
    ``speed_rows``' three and the guidance is ``guided_speed_batched``'s."""
    if speed_scale is None:
        full, cond = guided_batched(model, both, scale), conditional_half(both)
    else:
        full, cond = guided_speed_batched(model, both, scale, speed_scale), conditional_half(both, 3)

    def model_fn(x, t):
        return full(x, t) if in_interval(t) else model(x, t, cond)

    return model_fn
