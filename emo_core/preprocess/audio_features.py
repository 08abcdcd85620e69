"""wav2vec2 audio features aligned to video frames (EMO / Hallo conditioning).

Hallo's recipe (hallo/models/wav2vec.py, hallo/datasets/audio_processor.py), which its
weights were trained with and which this module reproduces:

1. normalise the 16 kHz waveform: (x - mean) / sqrt(var + 1e-7), float32 numpy
   (``Wav2Vec2FeatureExtractor(do_normalize=True)``);
2. run the wav2vec2 CNN feature encoder (about 50 tokens per second);
3. linearly interpolate those CNN features along time (``align_corners=True``) to exactly
   ``seq_len`` tokens, one per video frame, *before* the transformer;
4. feature projection + transformer encoder; keep the hidden states of all blocks;
5. per frame, stack the frames i-m..i+m (clamped at the edges), m = 2.

Hallo computes ``seq_len = ceil(duration * fps)`` and pads the audio to a multiple of the
clip length; :func:`hallo_audio_embedding` does exactly that (parity with its numbers).
:class:`AudioFeatureExtractor` is the user API: exactly ``round(duration * fps)`` frames
at any fps, and long audio is processed in chunks so memory stays bounded:

* the CNN runs over sample chunks aligned to its stride. The first CNN layer of the
  base-size models normalises each channel over the whole clip (GroupNorm); its
  statistics are gathered in a first pass so the chunked CNN equals the whole-clip CNN;
* the transformer runs over frame chunks with ``context_seconds`` of extra frames on each
  side (self-attention is global, so only this stage is approximate at the seams).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F

SAMPLE_RATE = 16000


# --------------------------------------------------------------------------- loading
def load_wav2vec(folder, device="cpu", dtype=torch.float32):
    """Load a transformers ``Wav2Vec2Model`` from a local folder (no network access).

    Accepts the ``save_pretrained`` layout (``config.json`` + ``model.safetensors`` or
    ``pytorch_model.bin``), including checkpoints saved from ``Wav2Vec2ForCTC`` (the
    ``wav2vec2.`` prefix is stripped by transformers) and both weight-norm layouts of the
    positional conv (``weight_g/weight_v`` and ``parametrizations.weight.original0/1``).
    No feature extractor / processor is loaded: normalisation is :func:`normalize_waveform`.
    """
    from transformers import Wav2Vec2Model

    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(
            f"wav2vec2 folder {folder} has no config.json: expected a transformers save_pretrained "
            "folder such as Hallo's pretrained_models/wav2vec/wav2vec2-base-960h "
            "(https://huggingface.co/facebook/wav2vec2-base-960h)"
        )
    from emo_core.checkpoints import CheckpointError, read_header

    weights = next((folder / n for n in ("model.safetensors", "pytorch_model.bin") if (folder / n).is_file()), None)
    if weights is None:
        raise FileNotFoundError(f"wav2vec2 folder {folder} has no model.safetensors (or pytorch_model.bin): expected "
                                "facebook/wav2vec2-base-960h's weights beside its config.json")
    read_header(weights)  # CheckpointError naming the file: unreadable, or a pickle that needs globals
    try:
        model, info = Wav2Vec2Model.from_pretrained(
            str(folder), local_files_only=True, output_loading_info=True
        )
    except Exception as exc:  # transformers raises OSError / ValueError / RuntimeError / UnpicklingError
        raise CheckpointError(f"{weights}: transformers could not load it as a wav2vec2 model, expected a "
                              "save_pretrained folder such as facebook/wav2vec2-base-960h "
                              f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from exc
    missing = [k for k in info.get("missing_keys", []) if "masked_spec_embed" not in k]
    if missing:
        raise CheckpointError(f"{weights}: the wav2vec2 weights are incomplete; {len(missing)} missing keys: "
                              f"{', '.join(sorted(missing)[:10])}")
    model.eval().requires_grad_(False)
    return model.to(device=device, dtype=dtype)


# --------------------------------------------------------------------------- primitives
def normalize_waveform(wave: np.ndarray) -> np.ndarray:
    """``Wav2Vec2FeatureExtractor`` do_normalize in float32 numpy: (x-mean)/sqrt(var+1e-7)."""
    x = np.array(wave, dtype=np.float32)  # one copy, normalised in place (long audio stays small)
    mean, std = x.mean(), np.sqrt(x.var() + 1e-7)
    x -= mean
    x /= std
    return x


def _cnn_geometry(config) -> tuple[int, int]:
    """(receptive field, total stride) of the CNN feature encoder, in samples."""
    field, stride = 1, 1
    for k, s in zip(reversed(config.conv_kernel), reversed(config.conv_stride)):
        field = (field - 1) * s + k
    for s in config.conv_stride:
        stride *= s
    return field, stride


def waveform_stats(wave: np.ndarray, chunk: int = 1 << 20) -> tuple[float, float]:
    """(mean, sqrt(var + 1e-7)) of a waveform, the statistics of ``normalize_waveform``,
    accumulated piece by piece in float64 (no full-length temporary array)."""
    n = len(wave)
    mean = sum(float(np.sum(wave[i:i + chunk], dtype=np.float64)) for i in range(0, n, chunk)) / n
    square = sum(float(np.sum((wave[i:i + chunk].astype(np.float64) - mean) ** 2)) for i in range(0, n, chunk))
    return mean, math.sqrt(square / n + 1e-7)


def _piece(values: torch.Tensor, start: int, stop: int, norm: Optional[tuple[float, float]]) -> torch.Tensor:
    piece = values[..., start:stop]
    return piece if norm is None else (piece - norm[0]) / norm[1]


def cnn_features(model, input_values: torch.Tensor, chunk_samples: Optional[int] = None,
                 norm: Optional[tuple[float, float]] = None) -> torch.Tensor:
    """CNN feature encoder output ``[1, tokens, conv_dim]`` (time-major).

    With ``chunk_samples`` the waveform is processed in stride-aligned pieces; the
    result equals the whole-clip output (the clip-wide GroupNorm of the first layer uses
    statistics gathered over the whole clip in a first pass). ``norm`` (mean, std): the raw
    waveform is normalised piece by piece (long audio is never copied whole).
    """
    fe = model.feature_extractor
    n = input_values.shape[-1]
    if chunk_samples is None or n <= chunk_samples:
        return fe(_piece(input_values, 0, n, norm)).transpose(1, 2)
    field, stride = _cnn_geometry(model.config)
    total = (n - field) // stride + 1
    per_chunk = max(1, (chunk_samples - field) // stride + 1)
    first = fe.conv_layers[0]
    group_norm = first.layer_norm if isinstance(getattr(first, "layer_norm", None), torch.nn.GroupNorm) else None
    stats = None
    if group_norm is not None:
        stats = _first_layer_stats(first, input_values, chunk_samples, norm)
    out = []
    for a in range(0, total, per_chunk):
        b = min(total, a + per_chunk)
        h = _piece(input_values, a * stride, (b - 1) * stride + field, norm)[:, None]
        for i, layer in enumerate(fe.conv_layers):
            if i == 0 and group_norm is not None:
                h = layer.conv(h)
                mean, var = stats
                h = (h - mean[None, :, None]) / torch.sqrt(var[None, :, None] + group_norm.eps)
                h = h * group_norm.weight[None, :, None] + group_norm.bias[None, :, None]
                h = layer.activation(h)
            else:
                h = layer(h)
        out.append(h.transpose(1, 2))
    return torch.cat(out, dim=1)


def _first_layer_stats(layer, input_values, chunk_samples, norm=None):
    """Per-channel mean and (biased) variance of the first conv's output over the clip."""
    conv = layer.conv
    k, s = conv.kernel_size[0], conv.stride[0]
    n = input_values.shape[-1]
    total = (n - k) // s + 1
    per_chunk = max(1, (chunk_samples - k) // s + 1)
    acc = torch.zeros(conv.out_channels, dtype=torch.float64, device=input_values.device)
    acc2 = torch.zeros_like(acc)
    for a in range(0, total, per_chunk):
        b = min(total, a + per_chunk)
        h = conv(_piece(input_values, a * s, (b - 1) * s + k, norm)[:, None])[0].double()
        acc += h.sum(dim=1)
        acc2 += (h * h).sum(dim=1)
    mean = acc / total
    var = (acc2 / total - mean * mean).clamp_min(0)
    dtype = input_values.dtype
    return mean.to(dtype), var.to(dtype)


def interpolate_features(features: torch.Tensor, seq_len: int) -> torch.Tensor:
    """Hallo's ``linear_interpolation``: [B, tokens, C] -> [B, seq_len, C], align_corners."""
    return F.interpolate(features.transpose(1, 2), size=int(seq_len), mode="linear", align_corners=True).transpose(1, 2)


def encoder_hidden_states(model, hidden: torch.Tensor) -> list[torch.Tensor]:
    """All hidden states of the transformer encoder for projected features ``[B, T, C]``.

    Index 0 is the encoder input (after the positional conv and, for base-size models,
    its LayerNorm); index i is the output of block i, as transformers'
    ``output_hidden_states`` (for stable-layer-norm models the last entry is after the
    final LayerNorm, as in transformers).
    """
    enc = model.encoder
    hidden = hidden + enc.pos_conv_embed(hidden)
    stable = not hasattr(enc, "layer_norm") or getattr(model.config, "do_stable_layer_norm", False)
    if not stable:
        hidden = enc.layer_norm(hidden)
    hidden = enc.dropout(hidden)
    states = [hidden]
    for layer in enc.layers:
        out = layer(hidden, attention_mask=None)
        hidden = out[0] if isinstance(out, tuple) else out
        states.append(hidden)
    if stable:
        states[-1] = enc.layer_norm(hidden)
    return states


def _project(model, features: torch.Tensor) -> torch.Tensor:
    out = model.feature_projection(features)
    return out[0] if isinstance(out, tuple) else out


@torch.no_grad()
def wav2vec_hidden_states(model, input_values: torch.Tensor, seq_len: int) -> torch.Tensor:
    """Hallo's ``Wav2VecModel.forward(input_values, seq_len, output_hidden_states=True)``.

    ``input_values`` [1, N] (already normalised) -> ``[num_layers + 1, seq_len, hidden]``.
    """
    if input_values.ndim == 1:
        input_values = input_values[None]
    feats = interpolate_features(cnn_features(model, input_values), seq_len)
    states = encoder_hidden_states(model, _project(model, feats))
    return torch.stack([s[0] for s in states], dim=0)


def window_features(emb: torch.Tensor, m: int = 2, start: int = 0, stop: Optional[int] = None) -> torch.Tensor:
    """Frames i-m..i+m per frame, indices clamped to the sequence: [T, ...] -> [n, 2m+1, ...].

    ``start``/``stop`` select output frames (the window still reads neighbours outside
    that range), so long sequences can be windowed clip by clip.
    """
    from ..windows import frame_windows

    t = emb.shape[0]
    return frame_windows(emb, m, range(int(start), t if stop is None else min(int(stop), t)))


@torch.no_grad()
def hallo_audio_embedding(model, wave16k: np.ndarray, fps: int = 25, clip_length: int = -1,
                          sample_rate: int = SAMPLE_RATE) -> tuple[torch.Tensor, int]:
    """Hallo's ``AudioProcessor.preprocess`` without vocal separation, for parity checks.

    Returns ``(audio_emb [seq_len, num_layers, hidden], audio_length)`` where
    ``audio_length = ceil(duration * fps)`` and ``seq_len`` is that rounded up to a
    multiple of ``clip_length`` (the audio is zero-padded after normalisation by
    ``sample_rate // fps`` samples per missing frame, as Hallo does).
    """
    param = next(model.parameters())
    x = normalize_waveform(wave16k)
    seq_len = math.ceil(len(x) / sample_rate * fps)
    audio_length = seq_len
    values = torch.from_numpy(x).to(device=param.device, dtype=param.dtype)
    if clip_length > 0 and seq_len % clip_length != 0:
        extra = clip_length - seq_len % clip_length
        values = F.pad(values, (0, extra * int(sample_rate // fps)))
        seq_len += extra
    states = wav2vec_hidden_states(model, values[None], seq_len)
    return states[1:].transpose(0, 1).contiguous(), audio_length


def num_frames_for(num_samples: int, fps: float, sample_rate: int = SAMPLE_RATE) -> int:
    """round(duration * fps), halves rounded up (not banker's rounding)."""
    return int(math.floor(num_samples * float(fps) / sample_rate + 0.5))


# --------------------------------------------------------------------------- user API
class AudioFeatureExtractor:
    """Per-frame wav2vec2 features for a video at ``fps``.

    ``encode(wave16k)`` -> ``[round(duration*fps), num_layers, hidden]`` (blocks 1..L, the
    input embedding excluded, as Hallo's ``hidden_states[1:]``), on the model's device and
    dtype. ``windows(...)`` -> ``[frames, 2m+1, num_layers, hidden]``.

    Audio longer than ``chunk_seconds`` runs the transformer in chunks with
    ``context_seconds`` of neighbouring frames on each side (discarded afterwards).

    ``clip_length`` (Hallo's weights): the features are computed as Hallo's
    ``AudioProcessor.preprocess`` does (``hallo_audio_embedding``): ceil(seconds x fps) frames,
    the audio zero-padded to whole clips first, all in one pass; ``encode`` then returns every
    row of that padded sequence (at least ``num_frames``): the rows past the video's frames are
    the last frames' window context, as in Hallo. Audio too long for one pass is chunked as above.
    ``vocal_separator``: optional callable ``(wave16k) -> wave16k`` applied first (a hook
    for vocal isolation; nothing is bundled).
    """

    def __init__(self, model, fps: float = 25, m: int = 2, chunk_seconds: float = 20.0,
                 context_seconds: float = 4.0,
                 vocal_separator: Optional[Callable[[np.ndarray], np.ndarray]] = None,
                 clip_length: Optional[int] = None):
        if fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        if m < 0:
            raise ValueError(f"window half-width m must be >= 0, got {m}")
        if chunk_seconds <= 0 or context_seconds < 0:
            raise ValueError(f"chunk_seconds must be > 0 and context_seconds >= 0, got {chunk_seconds}, {context_seconds}")
        self.model = model
        self.fps = float(fps)
        self.m = int(m)
        self.chunk_seconds = float(chunk_seconds)
        self.context_seconds = float(context_seconds)
        self.vocal_separator = vocal_separator
        if clip_length is not None and clip_length < 1:
            raise ValueError(f"clip_length must be >= 1, got {clip_length}")
        self.clip_length = clip_length

    def num_frames(self, num_samples: int) -> int:
        return num_frames_for(num_samples, self.fps)

    @torch.no_grad()
    def encode(self, wave16k, num_frames: Optional[int] = None) -> torch.Tensor:
        wave = wave16k.detach().float().cpu().numpy() if torch.is_tensor(wave16k) else np.asarray(wave16k, np.float32)
        if wave.ndim != 1:
            raise ValueError(f"expected a mono 16 kHz waveform [samples], got shape {wave.shape}")
        if self.vocal_separator is not None:
            wave = np.asarray(self.vocal_separator(wave), dtype=np.float32)
        t = self.num_frames(len(wave)) if num_frames is None else int(num_frames)
        if t < 1:
            raise ValueError(
                f"audio of {len(wave) / SAMPLE_RATE:.4f} s is too short: it gives {t} frames at {self.fps:g} fps "
                f"(at least {0.5 / self.fps:.3f} s needed)"
            )
        if not np.all(np.isfinite(wave)):
            raise ValueError("audio contains NaN or infinite samples")
        chunk_samples = int(self.chunk_seconds * SAMPLE_RATE)
        chunk = max(1, int(round(self.chunk_seconds * self.fps)))
        ctx = int(round(self.context_seconds * self.fps))
        if self.clip_length is not None and num_frames is None and t <= chunk + 2 * ctx:
            emb, _ = hallo_audio_embedding(self.model, wave, fps=self.fps, clip_length=self.clip_length)
            return emb
        feats = interpolate_features(self._cnn(wave, chunk_samples), t)
        if t <= chunk + 2 * ctx:
            states = encoder_hidden_states(self.model, _project(self.model, feats))
            return torch.stack(states[1:], dim=2)[0]
        out = []
        for a in range(0, t, chunk):
            b = min(t, a + chunk)
            lo, hi = max(0, a - ctx), min(t, b + ctx)
            states = encoder_hidden_states(self.model, _project(self.model, feats[:, lo:hi]))
            out.append(torch.stack(states[1:], dim=2)[0, a - lo: b - lo])
        return torch.cat(out, dim=0)

    def _cnn(self, wave: np.ndarray, chunk_samples: int) -> torch.Tensor:
        """CNN features of the normalised waveform. Audio longer than one chunk is normalised
        piece by piece inside the CNN, so no second full-length copy of it is held."""
        param = next(self.model.parameters())
        if len(wave) > chunk_samples:
            values = torch.from_numpy(np.ascontiguousarray(wave, np.float32)).to(param.device, param.dtype)[None]
            return cnn_features(self.model, values, chunk_samples, norm=waveform_stats(wave))
        x = normalize_waveform(wave)
        field, _ = _cnn_geometry(self.model.config)
        if len(x) < field:  # shorter than one CNN window (< 25 ms): pad so there is one token
            x = np.pad(x, (0, field - len(x)))
        return cnn_features(self.model, torch.from_numpy(x).to(device=param.device, dtype=param.dtype)[None])

    def windows(self, audio, start: int = 0, stop: Optional[int] = None) -> torch.Tensor:
        """Windows for frames [start, stop); ``audio`` is a waveform or an ``encode`` result."""
        emb = audio if torch.is_tensor(audio) and audio.ndim == 3 else self.encode(audio)
        return window_features(emb, self.m, start, stop)


def tiny_wav2vec(hidden: int, layers: int, seed: int = 0):
    """A randomly initialised wav2vec2 with ``layers`` blocks of width ``hidden`` (smoke preset)."""
    import torch
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    cfg = Wav2Vec2Config(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
                         intermediate_size=2 * hidden, conv_dim=(8,) * 7, num_conv_pos_embeddings=16,
                         num_conv_pos_embedding_groups=2, feat_extract_norm="group", do_stable_layer_norm=False,
                         hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, feat_proj_dropout=0.0,
                         layerdrop=0.0, mask_time_prob=0.0, apply_spec_augment=False)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = Wav2Vec2Model(cfg)
    return model.eval().requires_grad_(False)
