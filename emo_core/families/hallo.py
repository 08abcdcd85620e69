"""Hallo (fudan-generative-vision/hallo, MIT, commit 8fd7c57): the released EMO-like model.

Its weights load key for key into ``EmoNet`` (``EmoConfig.hallo()``). Hallo's pipeline has
behaviours its weights were trained and sampled with; ``HalloReference`` reproduces them so
that a user who loads Hallo's weights gets Hallo's video (checked against Hallo's own float64
outputs by ``python -m emo_core.parity``, through the pipeline the CLI and nodes call).
``CleanReference`` (``--reference-rule clean``) is the behaviour the design intends.

The quirks, with their source in Hallo's code:

1. **Rows of the reference pass alternate identity tokens** (``face_animate.py``
   ``FaceAnimatePipeline.__call__``; ``mutual_self_attention.py`` write forward). Under CFG the
   reference UNet runs on ``[ref, m1..mM]`` twice (``repeat(2, 1, 1, 1)``) while its
   cross-attention tokens are ``[uncond, cond]`` repeated per row, so row ``r`` of the
   2(1+M) rows gets the unconditional identity tokens when ``r`` is even, the conditional
   ones when odd; the portrait row of the conditional half is row 1+M.
2. **Frame j of the denoising batch reads the portrait row of CFG half j % 2** (read forward:
   the bank is split ``(b s)`` with b = 2 and ``bank[:, 0]`` repeated over the frames), so
   the conditional half's even frames attend to the portrait as seen with the unconditional
   identity tokens.
3. **The unconditional half does plain self-attention** (the read forward recomputes the
   ``uc_mask`` rows without the bank) but keeps its half's motion-frame features.
4. **Reference and motion-frame features are handed over in float16**
   (``ReferenceAttentionControl.update``: ``dtype=torch.float16`` by default), whatever the
   model's dtype.
5. **Temporal modules of the two attention-free UNet blocks are bypassed**, and motion frames
   join the temporal modules of the other blocks (``unet_3d_blocks.py``: only the
   ``training and gradient_checkpointing`` branch, which Hallo's inference runs because the
   UNet is never put in eval mode). Architectural: ``TemporalConfig.in_plain_blocks=False``.
6. **The first clip's motion frames are copies of the portrait** (``scripts/inference.py``);
   later clips take the last M decoded frames, rounded to float32 in [0, 1]. The pipeline's
   ``motion_start="reference"`` (the default) and ``DiffusersVae`` do the same.
7. **Audio features of a padded sequence** (``audio_processor.py`` ``preprocess``): ceil(seconds x
   fps) frames, the normalised audio zero-padded to whole clips before wav2vec2, the features
   interpolated to that padded length, and each frame's ±2 window cut from the padded sequence
   (``process_audio_emb``), so the last frames' windows read the padding's features.
   ``AudioFeatureExtractor(clip_length=...)``, which ``EmoPipeline.audio_conditioning`` uses for
   this family; the video still has round(seconds x fps) frames.

Inference defaults (``configs/inference/default.yaml``): 40 DDIM steps, cfg 3.5, 16 frames per
clip, 2 motion frames; DDIM with linear betas, v-prediction, zero-terminal-SNR, trailing
timesteps (``Schedule.hallo()``).
"""
from __future__ import annotations

import torch
from einops import rearrange

from ..conditioning import CleanReference, ReferenceState
from ..models.attention import ReferenceFeatures

NAME = "hallo"
DEFAULT_STEPS = 40
DEFAULT_CFG = 3.5
HANDOVER_DTYPE = torch.float16  # quirk 4


def handover(features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Quirk 4: features rounded to float16 and read back at their own dtype."""
    return {k: v.to(HANDOVER_DTYPE).to(v.dtype) for k, v in features.items()}


def row_is_conditional(row: int) -> bool:
    """Quirk 1: row ``row`` of the CFG-doubled reference pass gets the conditional identity tokens."""
    return row % 2 == 1


class HalloReference(CleanReference):
    """Hallo's reference and motion-frame layout over the CFG halves (quirks 1-4)."""

    name = "hallo"
    needs_null_features = True

    def features(self, net, ref: ReferenceState, motion_latents: torch.Tensor | None, *, frames: int,
                 guided: bool) -> ReferenceFeatures:
        if not guided:  # one half: every row has the conditional tokens; only the float16 hand-over remains
            clean = super().features(net, ref, motion_latents, frames=frames, guided=False)
            return ReferenceFeatures(handover(clean.spatial), None if clean.motion is None else handover(clean.motion))
        n = 0 if motion_latents is None else motion_latents.shape[0]
        portraits = [self._portrait_row(net, ref, half * (1 + n)) for half in (0, 1)]
        spatial = {k: torch.cat([p[k] for p in portraits]) for k in portraits[0]}  # [2, L, C]: (uncond, cond) halves
        # Quirk 2: backbone row j (CFG half j // frames, frame j % frames) reads portrait row of half j % 2.
        spatial = {k: v.repeat(frames, 1, 1) for k, v in spatial.items()}
        if n:
            motion = self._motion(net, ref, motion_latents, n)
        else:  # no motion frames given (motion_start="zeros"): zero maps in both halves
            zeros = super().motion(net, ref, None, portraits[0])
            motion = None if zeros is None else {k: v.expand(2, *v.shape[1:]) for k, v in zeros.items()}
        return ReferenceFeatures(spatial, motion, torch.tensor([False, True], device=net.device))

    def _portrait_row(self, net, ref: ReferenceState, row: int) -> dict[str, torch.Tensor]:
        identity, features = ((ref.identity, ref.features) if row_is_conditional(row)
                              else (ref.null_identity, ref.null_features))
        if features is None:
            features = net.reference_features(ref.latent, identity)
        return handover(features.spatial)

    def _motion(self, net, ref: ReferenceState, motion_latents: torch.Tensor, n: int) -> dict[str, torch.Tensor]:
        """Motion frame i of half h is row h(1+n) + 1 + i of the reference pass (quirk 1)."""
        rows = [h * (1 + n) + 1 + i for h in (0, 1) for i in range(n)]
        identity = None
        if ref.identity is not None:
            identity = torch.cat([ref.identity if row_is_conditional(r) else ref.null_identity for r in rows])
        latents = motion_latents.to(net.device, net.dtype).repeat(2, 1, 1, 1)[:, None]  # [2n, 1, 4, h, w]
        feats = net.motion_features(latents, identity)
        feats = {k: rearrange(v[:, 0], "(h n) l c -> h n l c", h=2) for k, v in feats.items()}
        return handover(feats)
