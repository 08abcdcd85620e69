"""Whisper features for EchoMimic-family models: 16 kHz audio -> 50 Hz hidden states -> per-frame windows.

1. ``log_mel``: whisper's front end (25 ms Hann window, 10 ms hop, 80 Slaney mel bands,
   log10, floor at max - 8, then (x + 4) / 4), over the whole audio at once.
2. ``whisper_states``: the encoder on consecutive 30 s windows of the log-mel (the last one
   zero-padded); of each window only the frames that cover real audio are kept, so the
   result has one row per 20 ms: [T, 1 + layers, width].
3. ``whisper_windows``: video frame i (at any fps) takes the 10 feature frames
   ``c-4 .. c+5`` with ``c = int(i * 50 / fps)``, clamped to the sequence: 2 feature frames per
   neighbouring frame for m = 2 (EchoMimic's ``get_sliced_feature``). ``echomimic_frame_count``
   gives the number of frames EchoMimic makes for T feature frames.

The windows are [frames, 10, 1 + layers, width]; ``EmoNet.audio_tokens`` flattens each into
50 tokens of 384 for whisper-tiny (token = feature frame * 5 + state).
"""
from __future__ import annotations


import numpy as np
import torch

SAMPLE_RATE = 16000
N_FFT = 400
HOP = 160
FEATURE_RATE = 50  # encoder frames per second


def mel_filters(n_mels: int = 80) -> torch.Tensor:
    """Slaney-style mel filter bank [n_mels, 201] (librosa's default, which whisper uses)."""
    from transformers.audio_utils import mel_filter_bank

    fb = mel_filter_bank(num_frequency_bins=1 + N_FFT // 2, num_mel_filters=n_mels, min_frequency=0.0,
                         max_frequency=SAMPLE_RATE / 2, sampling_rate=SAMPLE_RATE, norm="slaney", mel_scale="slaney")
    return torch.from_numpy(np.ascontiguousarray(fb.T)).float()


def log_mel(wave16k: np.ndarray | torch.Tensor, n_mels: int = 80, filters: torch.Tensor | None = None) -> torch.Tensor:
    """Whisper's log-mel spectrogram of mono 16 kHz audio: [n_mels, samples // 160] (float32)."""
    audio = torch.as_tensor(np.asarray(wave16k, dtype=np.float32)) if not torch.is_tensor(wave16k) else wave16k.float()
    if audio.ndim != 1:
        raise ValueError(f"expected mono audio [samples], got shape {tuple(audio.shape)}")
    stft = torch.stft(audio, N_FFT, HOP, window=torch.hann_window(N_FFT), return_complex=True)
    power = stft[..., :-1].abs() ** 2
    filters = mel_filters(n_mels) if filters is None else filters
    spec = (filters @ power).clamp(min=1e-10).log10()
    spec = torch.maximum(spec, spec.max() - 8.0)
    return (spec + 4.0) / 4.0


@torch.no_grad()
def whisper_states(encoder, wave16k: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Hidden states of every encoder stage at 50 Hz: [T, 1 + layers, width], one per 20 ms of
    audio (per 30 s window, floor(mel frames / 2) as EchoMimic keeps), on the encoder's device and dtype."""
    param = next(encoder.parameters())
    mel = log_mel(wave16k, encoder.dims.n_mels)
    window = 2 * encoder.dims.n_audio_ctx  # 3000 mel frames = 30 s
    parts = []
    for start in range(0, mel.shape[1], window):
        seg = mel[:, start:start + window]
        keep = seg.shape[1] // 2
        seg = torch.nn.functional.pad(seg, (0, window - seg.shape[1]))
        states = encoder(seg[None].to(param.device, param.dtype))[0]  # [1 + layers, ctx, width]
        parts.append(states[:, :keep].transpose(0, 1))
    states = torch.cat(parts) if parts else None
    if states is None or states.shape[0] == 0:
        raise ValueError("the audio is shorter than one whisper frame (20 ms)")
    return states


def echomimic_frame_count(num_features: int, fps: float) -> int:
    """Frames EchoMimic makes from T feature frames: it stops after the first frame i whose
    centre int(i * 50 / fps) lies past T (that frame included)."""
    step = FEATURE_RATE / fps  # EchoMimic's whisper_idx_multiplier (rounding as in its loop)
    i = 0
    while int(i * step) <= num_features:
        i += 1
    return i + 1


def window_indices(num_frames: int, num_features: int, fps: float, context: int = 2) -> torch.Tensor:
    """Feature-frame indices of each video frame's window: [num_frames, 2 * (2m + 1)]."""
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    if num_features < 1:
        raise ValueError("no audio features")
    centre = torch.tensor([int(i * FEATURE_RATE / fps) for i in range(num_frames)], dtype=torch.long)
    offsets = torch.arange(-2 * context, 2 * (context + 1), dtype=torch.long)
    return (centre[:, None] + offsets[None, :]).clamp(0, num_features - 1)


def whisper_windows(states: torch.Tensor, fps: float, num_frames: int | None = None, context: int = 2) -> torch.Tensor:
    """states [T, S, C] (50 Hz) -> windows [frames, 2 * (2m + 1), S, C]. ``num_frames`` defaults
    to the number of video frames the audio lasts (ceil(T * fps / 50)); EchoMimic's own count is
    ``echomimic_frame_count``."""
    if num_frames is None:
        num_frames = max(1, -(-states.shape[0] * int(round(fps * 1000)) // (FEATURE_RATE * 1000)))
    return states[window_indices(num_frames, states.shape[0], fps, context).to(states.device)]


def video_frames(num_samples: int, fps: float, sample_rate: int = SAMPLE_RATE) -> int:
    """round(audio seconds * fps), halves rounded up: the frames a video of this audio has."""
    import math

    return int(math.floor(num_samples * float(fps) / sample_rate + 0.5))


def windows_for_video(encoder, wave16k, fps: float, context: int = 2) -> torch.Tensor:
    """Mono 16 kHz audio -> whisper windows [round(seconds * fps), 2 * (2m + 1), S, C] (float32, CPU):
    exactly one window per video frame, at any fps."""
    frames = video_frames(len(wave16k), fps)
    if frames < 1:
        raise ValueError(f"the audio ({len(wave16k) / SAMPLE_RATE:.3f} s) is shorter than one video frame at {fps:g} fps")
    return whisper_windows(whisper_states(encoder, wave16k).float().cpu(), fps, frames, context)


def windows_from_states(states: torch.Tensor, num_samples: int, fps: float, context: int = 2) -> torch.Tensor:
    """Precomputed 50 Hz whisper states [T, S, C] (e.g. from another encoder node; rows past the
    audio are dropped) -> windows [round(seconds * fps), 2 * (2m + 1), S, C]."""
    frames = video_frames(num_samples, fps)
    if frames < 1:
        raise ValueError(f"the audio ({num_samples / SAMPLE_RATE:.3f} s) is shorter than one video frame at {fps:g} fps")
    real = max(1, min(states.shape[0], num_samples // (2 * HOP)))
    return whisper_windows(states[:real].float().cpu(), fps, frames, context)


def tiny_whisper(width: int, states: int, seed: int = 0, heads: int = 2):
    """A randomly initialised whisper encoder giving ``states`` hidden states of ``width`` (smoke preset)."""
    from ..models.whisper import WhisperDims, WhisperEncoder

    if states < 1:
        raise ValueError(f"a whisper encoder gives at least one state (its input embedding); got {states}")
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        encoder = WhisperEncoder(WhisperDims(n_audio_state=width, n_audio_head=heads, n_audio_layer=states - 1))
    return encoder.eval().requires_grad_(False)
