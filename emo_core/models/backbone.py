"""Backbone: the 3D denoising UNet of EMO.

SD1.5's spatial layout with frames folded into the batch. At each layer of a block:
ResNet -> reference-attention + identity cross-attention (a diffusers ``Transformer2DModel``
whose self-attention reads ReferenceNet's features) -> audio-attention -> temporal module
(motion frames joined on the frame axis; speed tokens cross-attended). The face locator's
features are added right after ``conv_in``. With ``audio.in_cross_attention`` (EchoMimic)
the audio tokens are the context of the transformer's own cross-attention (output scaled by
``audio.cross_attention_scale``) and there are no separate audio layers.

Key names follow Hallo's ``denoising_unet`` (diffusers 0.27 + AnimateDiff), so its weights
load strictly. Video tensors are [batch, channels, frames, height, width].
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.utils.checkpoint
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.resnet import Downsample2D, ResnetBlock2D, Upsample2D
from diffusers.models.transformers.transformer_2d import Transformer2DModel
from einops import rearrange, repeat
from torch import nn

from ..config import EmoConfig
from .attention import AttnContext, AttnProcessor, ReferenceFeatures, RefReadProcessor, block_name, set_processors
from .audio import AudioAttention
from .temporal import TemporalModule


@dataclass
class Conditioning:
    """Everything the backbone is conditioned on, for a batch of b clips of f frames.

    reference:      ReferenceNet features (reference image + motion frames), or None
    identity:       [b, n, D] cross-attention tokens (identity tokens; None -> one zero token)
    audio:          [b, f, t, d] audio tokens (AudioProjection output, or the feature windows when
                    the audio goes into the cross-attention), or None (no audio)
    face:           [b, c0, h, w] or [b, c0, f, h, w] face-locator features, or None
    speed:          [b, f] or [b, n+f, d] speed tokens (SpeedEncoder output), or None
    region_masks:   {"full"|"face"|"lip": [per level: [b or b*f, h_l*w_l]]} for region audio attention
    region_weights: (full, face, lip) weights of the region attentions
    """

    reference: ReferenceFeatures | None = None
    identity: torch.Tensor | None = None
    audio: torch.Tensor | None = None
    face: torch.Tensor | None = None
    speed: torch.Tensor | None = None
    region_masks: dict[str, list[torch.Tensor]] | None = None
    region_weights: tuple[float, float, float] | torch.Tensor | None = None


class DeepCache:
    """DeepCache (Ma et al. 2024, arXiv 2312.00858): the deep features (the input of the last up
    block) change slowly from one sampling step to the next. A full forward every ``interval``
    calls stores them; the calls in between run only ``conv_in``, the first down block and the
    last up block on the stored features. One cache per sampling run (it counts calls); a batch
    of another size (guidance switched on or off) gets a full forward."""

    def __init__(self, interval: int):
        if isinstance(interval, bool) or not isinstance(interval, int) or interval < 1:
            raise ValueError(f"deep_cache: expected an integer >= 1 (steps per full forward), got {interval!r}")
        self.interval, self.calls, self.deep = interval, 0, None

    def reuse(self, x: torch.Tensor) -> bool:
        """Whether this call may reuse the stored features (counts the call)."""
        k, self.calls = self.calls, self.calls + 1
        return k % self.interval != 0 and self.deep is not None and self.deep.shape[0] == x.shape[0]


@dataclass
class _Frame:
    """Per-forward values shared by all blocks (frames folded into the batch)."""

    batch: int
    frames: int
    emb: torch.Tensor
    identity: torch.Tensor
    audio: torch.Tensor | None
    speed: torch.Tensor | None
    cond: Conditioning
    attn_kwargs: dict


class Block(nn.Module):
    """One UNet level (down, mid or up): per layer ResNet -> attention -> audio -> temporal."""

    def __init__(self, *, kind: str, level: int, in_channels: int, out_channels: int, prev_channels: int,
                 layers: int, temb: int, cfg: EmoConfig, attention: bool, temporal: bool, resample: bool):
        super().__init__()
        u, tc, ac = cfg.unet, cfg.temporal, cfg.audio
        self.kind, self.level, self.has_attention = kind, level, attention
        self.audio_in_cross_attention = ac.in_cross_attention
        context_dim = ac.token_dim if ac.in_cross_attention else u.cross_attention_dim
        self.run_temporal = temporal and (attention or tc.in_plain_blocks)
        heads = u.heads(level)
        self.resnets, self.attentions, self.audio_modules, self.motion_modules = (nn.ModuleList() for _ in range(4))
        scale = u.mid_block_scale_factor if kind == "mid" else 1.0
        for i in range(layers):
            # Hallo's audio layers work at the layer's input width (up blocks: the level's skip width).
            if kind == "up":
                skip = in_channels if i == layers - 1 else out_channels
                res_in, audio_width = (prev_channels if i == 0 else out_channels) + skip, in_channels
            else:
                res_in = audio_width = in_channels if i == 0 else out_channels
            self.resnets.append(ResnetBlock2D(in_channels=res_in, out_channels=out_channels, temb_channels=temb,
                                              eps=u.norm_eps, groups=u.norm_num_groups, output_scale_factor=scale))
            if attention:
                self.attentions.append(Transformer2DModel(
                    num_attention_heads=heads, attention_head_dim=out_channels // heads, in_channels=out_channels,
                    num_layers=1, cross_attention_dim=context_dim, norm_num_groups=u.norm_num_groups,
                    use_linear_projection=u.use_linear_projection))
                if not ac.in_cross_attention:
                    self.audio_modules.append(AudioAttention(
                        out_channels, audio_width, heads, ac.token_dim, u.norm_num_groups, ac.region_attention))
            if temporal:
                self.motion_modules.append(TemporalModule(
                    out_channels, tc.num_attention_heads, tc.num_transformer_blocks, tc.attention_blocks,
                    tc.position_encoding_max_len, tc.norm_num_groups,
                    cfg.speed.token_dim if cfg.speed is not None else None,
                    cfg.speed is not None and cfg.speed.film))
        if kind == "mid":
            # SD's mid block: ResNet, then (attention, ResNet) pairs.
            self.resnets.append(ResnetBlock2D(in_channels=out_channels, out_channels=out_channels, temb_channels=temb,
                                              eps=u.norm_eps, groups=u.norm_num_groups, output_scale_factor=scale))
        self.downsamplers = self.upsamplers = None
        if resample and kind == "down":
            self.downsamplers = nn.ModuleList([Downsample2D(out_channels, use_conv=True, out_channels=out_channels,
                                                            padding=u.downsample_padding, name="op")])
        if resample and kind == "up":
            self.upsamplers = nn.ModuleList([Upsample2D(out_channels, use_conv=True, out_channels=out_channels)])
        self.gradient_checkpointing = False
        self.prefix = ""  # this block's path in the backbone, set by the backbone

    # ---- one layer --------------------------------------------------------------------------
    def _audio_layer(self, i: int, x: torch.Tensor, fr: _Frame) -> torch.Tensor:
        if fr.audio is None or self.audio_in_cross_attention:
            return x
        masks = None
        c = fr.cond
        if c.region_masks is not None:
            level = len(c.region_masks["full"]) - 1 if self.kind == "mid" else self.level
            masks = {k: _per_frame(v[level], fr.batch, fr.frames) for k, v in c.region_masks.items()}
        return self.audio_modules[i](x, fr.audio, masks, c.region_weights)

    def _temporal_layer(self, i: int, x: torch.Tensor, fr: _Frame) -> torch.Tensor:
        if not self.run_temporal:
            return x
        motion = None
        ref = fr.cond.reference
        if self.has_attention and ref is not None and ref.motion:
            feats = ref.motion[f"{self.prefix}.attentions.{i}.transformer_blocks.0"]
            motion = rearrange(feats, "b n (h w) c -> b n c h w", h=x.shape[-2])
        speed = fr.speed
        if speed is not None:
            n = 0 if motion is None else motion.shape[1]
            speed = _pad_front(speed, n + fr.frames)
        return self.motion_modules[i](x, fr.frames, motion, speed)

    def _layer(self, i: int, x: torch.Tensor, fr: _Frame) -> torch.Tensor:
        if self.kind != "mid":
            x = self.resnets[i](x, fr.emb)
        if self.has_attention:
            context = fr.audio if self.audio_in_cross_attention else fr.identity
            x = self.attentions[i](x, encoder_hidden_states=context,
                                   cross_attention_kwargs=fr.attn_kwargs, return_dict=False)[0]
            x = self._audio_layer(i, x, fr)
        x = self._temporal_layer(i, x, fr)
        if self.kind == "mid":
            x = self.resnets[i + 1](x, fr.emb)
        return x

    def _run(self, i, x, fr):
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(self._layer, i, x, fr, use_reentrant=False)
        return self._layer(i, x, fr)

    # ---- block forwards ---------------------------------------------------------------------
    def down(self, x: torch.Tensor, fr: _Frame):
        skips = ()
        for i in range(len(self.resnets)):
            x = self._run(i, x, fr)
            skips += (x,)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
            skips += (x,)
        return x, skips

    def mid(self, x: torch.Tensor, fr: _Frame) -> torch.Tensor:
        x = self.resnets[0](x, fr.emb)
        for i in range(len(self.resnets) - 1):
            x = self._run(i, x, fr)
        return x

    def up(self, x: torch.Tensor, skips: tuple, fr: _Frame, size=None) -> torch.Tensor:
        for i in range(len(self.resnets)):
            x = torch.cat([x, skips[-1 - i]], dim=1)
            x = self._run(i, x, fr)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x, size)
        return x


def _per_frame(t: torch.Tensor, batch: int, frames: int) -> torch.Tensor:
    """[b*f, ...] stays; [b, ...] or [1, ...] (one value per clip) is repeated over frames."""
    if t.shape[0] == batch * frames:
        return t
    if t.shape[0] == 1:
        t = t.expand(batch, *t.shape[1:])
    if t.shape[0] != batch:
        raise ValueError(f"region mask has {t.shape[0]} rows; expected 1, {batch} (clips) or {batch * frames} (frames)")
    return repeat(t, "b ... -> (b f) ...", f=frames)


def _pad_front(tokens: torch.Tensor, length: int) -> torch.Tensor:
    """[b, f, d] -> [b, length, d]: motion-frame positions take the first frame's token."""
    f = tokens.shape[1]
    if f == length:
        return tokens
    if f > length:
        return tokens[:, f - length:]
    return torch.cat([tokens[:, :1].expand(-1, length - f, -1), tokens], dim=1)


class Backbone(nn.Module):
    def __init__(self, cfg: EmoConfig):
        super().__init__()
        self.cfg = cfg
        u, tc = cfg.unet, cfg.temporal
        widths = u.block_out_channels
        levels = len(widths)
        c0, temb = widths[0], widths[0] * 4
        self.conv_in = nn.Conv2d(u.in_channels, c0, kernel_size=3, padding=1)
        self.time_proj = Timesteps(c0, u.flip_sin_to_cos, u.freq_shift)
        self.time_embedding = TimestepEmbedding(c0, temb)
        self.down_blocks = nn.ModuleList()
        out = c0
        for lv in range(levels):
            inp, out = out, widths[lv]
            self.down_blocks.append(Block(
                kind="down", level=lv, in_channels=inp, out_channels=out, prev_channels=inp, layers=u.layers_per_block,
                temb=temb, cfg=cfg, attention=u.down_has_attention(lv), temporal=2 ** lv in tc.resolutions,
                resample=lv < levels - 1))
        self.mid_block = Block(kind="mid", level=levels - 1, in_channels=widths[-1], out_channels=widths[-1],
                               prev_channels=widths[-1], layers=1, temb=temb, cfg=cfg, attention=True,
                               temporal=tc.mid_block, resample=False)
        self.up_blocks = nn.ModuleList()
        rev = list(reversed(widths))
        out = rev[0]
        for i in range(levels):
            prev, out = out, rev[i]
            self.up_blocks.append(Block(
                kind="up", level=levels - 1 - i, in_channels=rev[min(i + 1, levels - 1)], out_channels=out,
                prev_channels=prev, layers=u.layers_per_block + 1, temb=temb, cfg=cfg,
                attention=u.up_has_attention(i), temporal=2 ** (levels - 1 - i) in tc.resolutions,
                resample=i < levels - 1))
        self.conv_norm_out = nn.GroupNorm(u.norm_num_groups, c0, eps=u.norm_eps)
        self.conv_act = nn.SiLU()
        self.conv_out = nn.Conv2d(c0, u.out_channels, kernel_size=3, padding=1)
        for name, block in self.named_children():
            if isinstance(block, nn.ModuleList):
                for j, b in enumerate(block):
                    b.prefix = f"{name}.{j}"
        self.mid_block.prefix = "mid_block"
        audio_scale = cfg.audio.cross_attention_scale

        def choose(path, module):
            if ".attentions." in path and path.endswith(".attn1"):
                return RefReadProcessor(block_name(path))
            if ".attentions." in path and path.endswith(".attn2"):
                return AttnProcessor(audio_scale)
            return AttnProcessor()

        set_processors(self, choose)

    def reference_layer_names(self) -> list[str]:
        return [block_name(p) for p, _ in self.named_modules() if p.endswith(".attn1") and ".attentions." in p]

    def set_gradient_checkpointing(self, enabled: bool = True) -> None:
        for block in [*self.down_blocks, self.mid_block, *self.up_blocks]:
            block.gradient_checkpointing = enabled

    def forward(self, sample: torch.Tensor, timestep, cond: Conditioning, cache: "DeepCache | None" = None
                ) -> torch.Tensor:
        """sample [b, c, f, h, w]; timestep scalar or [b] -> prediction [b, c_out, f, h, w].
        ``cache``: reuse of the deep features across calls (``DeepCache``)."""
        b, _, f, h, w = sample.shape
        factor = 2 ** (len(self.down_blocks) - 1)
        if h % factor or w % factor:
            raise ValueError(f"latent size {h}x{w} must be a multiple of {factor} (image sides a multiple of "
                             f"{8 * factor})")
        x = rearrange(sample, "b c f h w -> (b f) c h w")
        fr = self._frame_inputs(x, b, f, timestep, cond)
        x = self.conv_in(x)
        if cond.face is not None:
            face = cond.face if cond.face.ndim == 5 else cond.face[:, :, None].expand(-1, -1, f, -1, -1)
            x = x + rearrange(face.to(x.dtype), "b c f h w -> (b f) c h w")
        skips = (x,)
        if cache is not None and cache.reuse(x):  # the shallow branch: first down block, cached deep features
            x, res = self.down_blocks[0].down(x, fr)
            x = self.up_blocks[-1].up(cache.deep, (skips + res)[:len(self.up_blocks[-1].resnets)], fr)
            return rearrange(self.conv_out(self.conv_act(self.conv_norm_out(x))), "(b f) c h w -> b c f h w", f=f)
        for block in self.down_blocks:
            x, res = block.down(x, fr)
            skips += res
        x = self.mid_block.mid(x, fr)
        for i, block in enumerate(self.up_blocks):
            n = len(block.resnets)
            res, skips = skips[-n:], skips[:-n]
            if cache is not None and i == len(self.up_blocks) - 1:
                cache.deep = x
            x = block.up(x, res, fr, size=skips[-1].shape[2:] if i < len(self.up_blocks) - 1 else None)
        x = self.conv_out(self.conv_act(self.conv_norm_out(x)))
        return rearrange(x, "(b f) c h w -> b c f h w", f=f)

    def _frame_inputs(self, x, b, f, timestep, cond: Conditioning) -> _Frame:
        t = torch.as_tensor(timestep, device=x.device)
        t = t.reshape(-1).expand(b) if t.numel() in (1, b) else t
        emb = self.time_embedding(self.time_proj(t).to(x.dtype))
        emb = repeat(emb, "b c -> (b f) c", f=f)
        identity = cond.identity
        if identity is None:
            identity = x.new_zeros(b, 1, self.cfg.unet.cross_attention_dim)
        identity = repeat(identity.to(x.dtype), "b n d -> (b f) n d", f=f)
        audio = None if cond.audio is None else rearrange(cond.audio.to(x.dtype), "b f t d -> (b f) t d")
        if audio is not None and audio.shape[0] != b * f:
            raise ValueError(f"audio tokens cover {cond.audio.shape[1]} frames but the clip has {f}")
        if audio is None and self.cfg.audio.in_cross_attention:
            audio = x.new_zeros(b * f, 1, self.cfg.audio.token_dim)  # silence: what zero features give
        ref = cond.reference
        if ref is not None and ref.batch == 1 and b > 1:
            ref = ref.expand(b)
            cond = Conditioning(**{**cond.__dict__, "reference": ref})
        speed = None if cond.speed is None else cond.speed.to(x.dtype)
        return _Frame(batch=b, frames=f, emb=emb, identity=identity, audio=audio, speed=speed, cond=cond,
                      attn_kwargs={"ctx": AttnContext(num_frames=f, reference=ref)})
