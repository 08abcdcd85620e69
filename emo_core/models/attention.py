"""Attention processors: how reference features travel from ReferenceNet to the backbone.

Every attention layer is a diffusers ``Attention`` (it owns the weights, keys ``to_q``,
``to_k``, ``to_v``, ``to_out.0``) whose ``processor`` decides what it attends over:

- ``RefWriteProcessor`` (ReferenceNet self-attention): records its input, the ``norm1``
  output of the transformer block, into ``ctx.sink[name]``, then does plain self-attention.
- ``RefReadProcessor`` (backbone self-attention = EMO's reference-attention): keys and values
  are the frame's own tokens followed by the reference image's tokens of the same layer.
- ``AttnProcessor`` (cross-attention to identity/audio tokens, temporal attention): plain SDPA,
  optionally with its output scaled (EchoMimic multiplies its audio cross-attention by 3).

Per-call data reaches the processors through ``cross_attention_kwargs={"ctx": AttnContext}``
(diffusers forwards it to every attention of a block). Nothing is stored on the modules.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from einops import rearrange, repeat


@dataclass
class ReferenceFeatures:
    """What ReferenceNet hands to the backbone, keyed by transformer-block path
    (e.g. ``down_blocks.1.attentions.0.transformer_blocks.0``; both nets share the layout).

    spatial[name]: [b, L, C]     the reference image's tokens (one row per backbone batch row),
                   or [b*f, L, C] to give every frame its own reference tokens
    motion[name]:  [b, n, L, C]  the n motion frames' tokens, or None when there are none
    active:        [b] bool      rows that attend to the reference; None means all rows
                                 (classifier-free guidance's unconditional half is False)
    """

    spatial: dict[str, torch.Tensor]
    motion: dict[str, torch.Tensor] | None = None
    active: torch.Tensor | None = None

    @property
    def batch(self) -> int:
        return next(iter(self.spatial.values())).shape[0]

    @property
    def device(self) -> torch.device:
        return next(iter(self.spatial.values())).device

    def with_motion(self, motion: dict[str, torch.Tensor] | None) -> "ReferenceFeatures":
        return ReferenceFeatures(self.spatial, motion, self.active)

    def expand(self, batch: int) -> "ReferenceFeatures":
        """Repeats a batch-1 set of features to ``batch`` rows (views, no copies)."""
        if self.batch == batch:
            return self
        if self.batch != 1:
            raise ValueError(f"cannot expand reference features with batch {self.batch} to batch {batch}")
        ex = lambda d: None if d is None else {k: v.expand(batch, *v.shape[1:]) for k, v in d.items()}
        active = None if self.active is None else self.active.expand(batch)
        return ReferenceFeatures(ex(self.spatial), ex(self.motion), active)

    def rows(self, index: list[int]) -> "ReferenceFeatures":
        """The features of these batch rows, in this order (e.g. [0, 1, 1]: a third row like the second)."""
        idx = torch.tensor(index, device=self.device)
        pick = lambda d: None if d is None else {k: v.index_select(0, idx) for k, v in d.items()}
        return ReferenceFeatures(pick(self.spatial), pick(self.motion),
                                 None if self.active is None else self.active.index_select(0, idx))

    @staticmethod
    def cat(parts: list["ReferenceFeatures"]) -> "ReferenceFeatures":
        """Joins feature sets along the batch (used to batch the two CFG halves)."""
        keys = parts[0].spatial.keys()
        spatial = {k: torch.cat([p.spatial[k] for p in parts]) for k in keys}
        motion = None
        if parts[0].motion is not None:
            motion = {k: torch.cat([p.motion[k] for p in parts]) for k in parts[0].motion}
        if all(p.active is None for p in parts):
            active = None
        else:
            active = torch.cat([
                p.active if p.active is not None else torch.ones(p.batch, dtype=torch.bool, device=p.device)
                for p in parts])
        return ReferenceFeatures(spatial, motion, active)

    def to(self, device=None, dtype=None) -> "ReferenceFeatures":
        mv = lambda d: None if d is None else {k: v.to(device=device, dtype=dtype) for k, v in d.items()}
        active = None if self.active is None else self.active.to(device)
        return ReferenceFeatures(mv(self.spatial), mv(self.motion), active)


@dataclass
class AttnContext:
    """Per-forward data for the processors. ``sink`` collects ReferenceNet's features;
    ``reference`` feeds the backbone's reference-attention."""

    num_frames: int = 1
    reference: ReferenceFeatures | None = None
    sink: dict[str, torch.Tensor] | None = field(default=None)


def attention(attn, query_states: torch.Tensor, key_states: torch.Tensor, value_states=None) -> torch.Tensor:
    """Multi-head SDPA attention of ``attn``'s weights: queries from ``query_states``
    [B, Lq, C], keys/values from ``key_states`` [B, Lk, Ckv]; returns [B, Lq, C]."""
    value_states = key_states if value_states is None else value_states
    q = attn.to_q(query_states)
    k = attn.to_k(key_states)
    v = attn.to_v(value_states)
    return attend_projected(attn, q, k, v)


def attend_projected(attn, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """SDPA over already projected q/k/v, then the output projection."""
    h = attn.heads
    q, k, v = (rearrange(t, "b l (h d) -> b h l d", h=h) for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v)
    out = rearrange(out, "b h l d -> b l (h d)")
    return attn.to_out[1](attn.to_out[0](out))


class AttnProcessor:
    """Plain self- or cross-attention with SDPA, its output times ``scale``. Accepts (and ignores)
    the context."""

    def __init__(self, scale: float = 1.0):
        self.scale = scale

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, ctx=None):
        if attention_mask is not None:
            raise ValueError("attention masks are not used by EMO's attention layers")
        kv = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        out = attention(attn, hidden_states, kv)
        return out if self.scale == 1.0 else out * self.scale


class RefWriteProcessor:
    """ReferenceNet self-attention that records its input under its block's name."""

    def __init__(self, name: str):
        self.name = name

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, ctx=None):
        if ctx is not None and ctx.sink is not None:
            ctx.sink[self.name] = hidden_states
        return attention(attn, hidden_states, hidden_states)


class RefReadProcessor:
    """Backbone self-attention extended with the reference tokens of the same layer.

    Queries: the frame's tokens [(b f), L, C]. Keys/values: [own tokens, reference tokens].
    Rows whose ``reference.active`` is False (CFG's unconditional half) do plain self-attention.
    The reference's key/value projections are computed once per batch row, not per frame.
    """

    def __init__(self, name: str):
        self.name = name

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, ctx=None):
        ref = None if ctx is None or ctx.reference is None else ctx.reference
        if ref is None:
            return attention(attn, hidden_states, hidden_states)
        if self.name not in ref.spatial:
            raise KeyError(f"reference features have no entry for layer {self.name!r}")
        f = ctx.num_frames
        tokens = ref.spatial[self.name].to(hidden_states.dtype)
        rows = hidden_states.shape[0]
        per_frame = 1 if tokens.shape[0] == rows else f
        if tokens.shape[0] * per_frame != rows:
            raise ValueError(
                f"layer {self.name}: {tokens.shape[0]} rows of reference tokens fit neither the batch "
                f"({rows // f} clips) nor the {rows} frames")
        q = attn.to_q(hidden_states)
        k_own, v_own = attn.to_k(hidden_states), attn.to_v(hidden_states)
        k_ref = repeat(attn.to_k(tokens), "b l c -> (b f) l c", f=per_frame)
        v_ref = repeat(attn.to_v(tokens), "b l c -> (b f) l c", f=per_frame)
        k = torch.cat([k_own, k_ref], dim=1)
        v = torch.cat([v_own, v_ref], dim=1)
        if ref.active is None or bool(ref.active.all()):
            return attend_projected(attn, q, k, v)
        on = repeat(ref.active, "b -> (b f)", f=f)
        out = torch.empty_like(hidden_states)
        if on.any():
            out[on] = attend_projected(attn, q[on], k[on], v[on])
        off = ~on
        out[off] = attend_projected(attn, q[off], k_own[off], v_own[off])
        return out


def set_processors(model: torch.nn.Module, choose) -> int:
    """Gives every ``Attention`` in ``model`` the processor ``choose(path, module)`` returns
    (paths are dotted module names relative to ``model``). Returns how many were set."""
    from diffusers.models.attention_processor import Attention

    count = 0
    for path, module in model.named_modules():
        if isinstance(module, Attention):
            module.set_processor(choose(path, module))
            count += 1
    return count


def block_name(attn_path: str) -> str:
    """``down_blocks.1.attentions.0.transformer_blocks.0.attn1`` -> the transformer block path."""
    return attn_path.rsplit(".", 1)[0]
