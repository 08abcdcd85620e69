"""Audio input: any file or ComfyUI AUDIO dict -> 16 kHz mono float32 numpy.

Decoding uses soundfile (wav, flac, ogg, mp3 with libsndfile >= 1.1) and falls back to
PyAV for everything FFmpeg reads (m4a, aac, the audio track of mp4/mov/mkv, ...). Encoders
such as AAC add silent samples at the start (priming: FFmpeg drops them) and at the end of the
last frame (padding: up to a frame, 21 ms at 48 kHz); the decoded samples are cut to the real
length the file states (iTunes' iTunSMPB tag, exact; else the stream's duration, which
FFmpeg-written mp4s state to the millisecond), so the video gets round(real seconds x fps) frames.
torchaudio is deliberately not used (it often fails to load beside a newer torch).
Resampling is polyphase (scipy.signal.resample_poly), so every path gives the same
result for the same samples.
"""
from __future__ import annotations

import math
import os
import warnings
from fractions import Fraction

import numpy as np

TARGET_SR = 16000


class AudioError(ValueError):
    """An audio input that cannot be used; the message names the file and the reason."""


def resample(wave: np.ndarray, sr_in: int, sr_out: int = TARGET_SR) -> np.ndarray:
    """Polyphase resampling along the last axis; float32 out. No-op when rates match."""
    wave = np.asarray(wave, dtype=np.float32)
    sr_in, sr_out = int(sr_in), int(sr_out)
    if sr_in <= 0 or sr_out <= 0:
        raise AudioError(f"invalid sample rates: {sr_in} -> {sr_out}")
    if sr_in == sr_out or wave.shape[-1] == 0:
        return wave
    from scipy.signal import resample_poly

    ratio = Fraction(sr_out, sr_in)
    out = resample_poly(wave, ratio.numerator, ratio.denominator, axis=-1)
    # resample_poly gives ceil(n * up / down) samples; keep the length a plain duration rule.
    n_out = int(math.ceil(wave.shape[-1] * sr_out / sr_in))
    return np.ascontiguousarray(out[..., :n_out], dtype=np.float32)


def to_mono(wave: np.ndarray, channel_axis: int = 0) -> np.ndarray:
    """Average the channels (a 1-D input is returned as float32)."""
    wave = np.asarray(wave, dtype=np.float32)
    if wave.ndim == 1:
        return wave
    if wave.ndim != 2:
        raise AudioError(f"expected [channels, samples] audio, got shape {tuple(wave.shape)}")
    return wave.mean(axis=channel_axis).astype(np.float32)


def _read_soundfile(path: str) -> tuple[np.ndarray, int]:
    import soundfile as sf

    data, sr = sf.read(path, dtype="float32", always_2d=True)  # [samples, channels]
    return data.T, int(sr)


def _read_pyav(path: str) -> tuple[np.ndarray, int]:
    import av

    try:
        container = av.open(path)
    except Exception as exc:  # av raises several error types; all mean "cannot open"
        raise AudioError(f"{path}: cannot open as media ({type(exc).__name__}: {exc})") from exc
    with container:
        if not container.streams.audio:
            raise AudioError(f"{path}: the file has no audio track")
        stream = container.streams.audio[0]
        stated = _stated_length(container, stream)
        resampler = av.AudioResampler(format="fltp")  # planar float, native layout and rate
        frame_size = int(stream.codec_context.frame_size or 0)
        chunks: list[np.ndarray] = []
        rate = None
        try:
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray())
                    rate = out.sample_rate
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray())
                rate = out.sample_rate
        except Exception as exc:
            raise AudioError(f"{path}: audio track could not be decoded ({type(exc).__name__}: {exc})") from exc
    if not chunks or rate is None:
        raise AudioError(f"{path}: the audio track decoded to 0 samples")
    data = np.concatenate(chunks, axis=1).astype(np.float32)
    if stated is not None:
        data = _drop_end_padding(data, stated, int(rate), frame_size)
    return data, int(rate)


def _itunsmpb(metadata) -> int | None:
    """Original sample count from an iTunSMPB tag (" 00000000 PRIMING PADDING COUNT ...", hex)."""
    for key, value in (metadata or {}).items():
        if key.lower() == "itunsmpb":
            fields = str(value).split()
            try:
                return int(fields[3], 16) if len(fields) >= 4 and int(fields[3], 16) > 0 else None
            except ValueError:
                return None
    return None


def _stated_length(container, stream) -> tuple[int, int] | None:
    """(samples, at rate) the file says its audio lasts, or None when it does not say."""
    rate = stream.codec_context.sample_rate or stream.sample_rate
    if not rate:
        return None
    count = _itunsmpb(stream.metadata) or _itunsmpb(container.metadata)
    if count is not None:
        return count, int(rate)
    if stream.duration and stream.time_base:
        return int(round(stream.duration * stream.time_base * rate)), int(rate)
    return None


def _drop_end_padding(data: np.ndarray, stated: tuple[int, int], rate: int, frame_size: int) -> np.ndarray:
    """Cuts the encoder's end padding: the decoded samples beyond the stated length, when they
    are no more than two codec frames (a larger excess means the stated length is unreliable)."""
    count, stated_rate = stated
    n = int(round(count * rate / stated_rate))
    excess = data.shape[-1] - n
    if 0 < excess <= 2 * max(frame_size, 1024):
        return data[..., :n]
    return data


def load_audio(path, sr: int = TARGET_SR) -> np.ndarray:
    """Read an audio file (or a video's audio track) as mono float32 at ``sr`` (16 kHz).

    Raises AudioError naming the file and the reason when the file is missing, is not
    audio, has no audio track, is empty or is not finite.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise AudioError(f"{path}: file not found")
    if os.path.isdir(path):
        raise AudioError(f"{path}: is a folder, not an audio file")
    if os.path.getsize(path) == 0:
        raise AudioError(f"{path}: file is empty (0 bytes)")
    errors = []
    data = rate = None
    try:
        data, rate = _read_soundfile(path)
    except Exception as exc:  # soundfile raises LibsndfileError / RuntimeError / TypeError
        errors.append(f"soundfile: {exc}")
    if data is None:
        try:
            data, rate = _read_pyav(path)
        except AudioError as exc:
            if errors and "no audio track" not in str(exc):
                raise AudioError(f"{exc}; {errors[0]}") from exc
            raise
    if data.shape[-1] == 0:
        raise AudioError(f"{path}: contains 0 audio samples")
    if not np.all(np.isfinite(data)):
        raise AudioError(f"{path}: contains NaN or infinite samples")
    return resample(to_mono(data), rate, sr)


def from_comfy_audio(audio: dict, sr: int = TARGET_SR) -> np.ndarray:
    """ComfyUI AUDIO ({"waveform": [B, C, T], "sample_rate": int}) -> mono float32 at ``sr``.

    Only the first batch item is used (a warning says so when B > 1).
    """
    if not isinstance(audio, dict) or "waveform" not in audio or "sample_rate" not in audio:
        raise AudioError("AUDIO input must be a dict with 'waveform' [B, C, T] and 'sample_rate'")
    wave = audio["waveform"]
    if hasattr(wave, "detach"):
        wave = wave.detach().float().cpu().numpy()
    wave = np.asarray(wave, dtype=np.float32)
    if wave.ndim == 1:
        wave = wave[None, None]
    elif wave.ndim == 2:
        wave = wave[None]
    if wave.ndim != 3:
        raise AudioError(f"AUDIO waveform must be [B, C, T], got shape {tuple(wave.shape)}")
    if wave.shape[0] > 1:
        warnings.warn(f"AUDIO batch has {wave.shape[0]} items; using the first one", stacklevel=2)
    if wave.shape[-1] == 0:
        raise AudioError("AUDIO input contains 0 samples")
    if not np.all(np.isfinite(wave[0])):
        raise AudioError("AUDIO input contains NaN or infinite samples")
    return resample(to_mono(wave[0]), int(audio["sample_rate"]), sr)


def duration_seconds(wave: np.ndarray, sr: int = TARGET_SR) -> float:
    return float(np.asarray(wave).shape[-1]) / float(sr)
