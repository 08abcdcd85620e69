"""ReferenceNet: a 2D SD1.5-layout UNet that reads the portrait (and the motion frames).

Its output is not an image: it is the input of every self-attention layer (the ``norm1``
output of each transformer block), collected by ``RefWriteProcessor`` and returned as data.
The backbone's reference-attention and temporal modules read those features.
"""
from __future__ import annotations

import torch
from diffusers import UNet2DConditionModel
from diffusers.models.attention import BasicTransformerBlock

from ..config import UNetConfig
from .attention import AttnContext, AttnProcessor, RefWriteProcessor, block_name, set_processors


class ReferenceNet(UNet2DConditionModel):
    """diffusers' UNet2DConditionModel without its output head; ``forward`` returns the
    self-attention inputs keyed by transformer-block path, plus the last up-block features."""

    @classmethod
    def build(cls, cfg: UNetConfig, *, cross_attention: bool = True) -> "ReferenceNet":
        """``cross_attention=False``: the transformer blocks have no cross-attention (no ``attn2``,
        ``norm2``), as EchoMimic's reference UNet; its blocks are then self-attention + feed-forward."""
        net = cls(**{k: v for k, v in cfg.to_diffusers().items() if k != "center_input_sample"})
        # The features come from the attention layers; the output head is never used
        # (Hallo's reference UNet has no such weights either).
        net.conv_norm_out = None
        net.conv_act = None
        net.conv_out = None
        if not cross_attention:
            for path, module in net.named_modules():
                if isinstance(module, BasicTransformerBlock):
                    module.attn2 = module.norm2 = None  # diffusers' block skips a missing attn2
        net.use_reference_processors()
        return net

    def use_reference_processors(self) -> None:
        set_processors(self, lambda path, m: RefWriteProcessor(block_name(path)) if path.endswith("attn1")
                       else AttnProcessor())

    def layer_names(self) -> list[str]:
        return [block_name(p) for p, _ in self.named_modules() if p.endswith(".attn1")]

    def forward(self, latents: torch.Tensor, timestep, encoder_hidden_states: torch.Tensor):
        """latents [B, 4, h, w]; timestep scalar or [B]; encoder_hidden_states [B, n, D].
        Returns (features: dict path -> [B, L, C], last up-block features [B, C0, h, w])."""
        features: dict[str, torch.Tensor] = {}
        ctx = {"ctx": AttnContext(sink=features)}
        emb = self.time_embedding(self.get_time_embed(latents, timestep).to(latents.dtype))
        sample = self.conv_in(latents)
        skips = (sample,)
        for block in self.down_blocks:
            if getattr(block, "has_cross_attention", False):
                sample, res = block(sample, emb, encoder_hidden_states=encoder_hidden_states,
                                    cross_attention_kwargs=ctx)
            else:
                sample, res = block(sample, emb)
            skips += res
        sample = self.mid_block(sample, emb, encoder_hidden_states=encoder_hidden_states, cross_attention_kwargs=ctx)
        for i, block in enumerate(self.up_blocks):
            res, skips = skips[-len(block.resnets):], skips[: -len(block.resnets)]
            size = skips[-1].shape[2:] if i < len(self.up_blocks) - 1 and skips else None
            if getattr(block, "has_cross_attention", False):
                sample = block(sample, res, emb, encoder_hidden_states=encoder_hidden_states,
                               cross_attention_kwargs=ctx, upsample_size=size)
            else:
                sample = block(sample, res, emb, upsample_size=size)
        return features, sample
