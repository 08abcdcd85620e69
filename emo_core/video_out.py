"""Streaming H.264 + AAC mp4 writer (PyAV; no ffmpeg binary needed).

Frames are encoded as they arrive, so a long video never sits in memory; the audio is
interleaved with the video as it goes (each frame brings the audio up to its end time).
The file is written under a temporary name in the destination folder and renamed into
place only when ``close()`` finishes; ``abort()`` (or an exception inside ``with``) deletes
it, so an interrupted run never leaves a half-written mp4 behind.

    with Mp4Writer("out.mp4", fps=25, audio=wave, sample_rate=16000) as w:
        for clip in clips:          # [k, H, W, 3] float 0..1 (torch or numpy) or uint8
            w.write(clip)
"""
from __future__ import annotations

import math
import os
import tempfile
from fractions import Fraction
from pathlib import Path
from typing import Optional

import numpy as np

AAC_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000, 64000, 88200, 96000)


class VideoWriteError(RuntimeError):
    """The mp4 could not be written (bad frames, codec problem); no file was left behind."""


class OutputPathError(VideoWriteError):
    """The output path cannot be written (a folder, no permission, ...): found before any work."""


def check_output_path(path) -> Path:
    """Makes sure a video can be written to ``path`` before anything is generated: it is not a
    folder, and its folder accepts a new file (a temporary file is created there and removed),
    or, when the folder does not exist yet, its nearest existing parent lets it be created.
    Creates nothing that stays. Raises OutputPathError with the reason."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise OutputPathError(f"{path} is a folder; expected a file name such as {path / 'out.mp4'}")
    if path.exists() and not path.is_file():
        raise OutputPathError(f"{path} exists and is not a regular file")
    parent = path.parent.resolve()
    if parent.is_dir():
        try:
            fd, name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".part.mp4", dir=parent)
        except OSError as exc:
            raise OutputPathError(f"cannot write in the folder {parent} ({exc.strerror or exc})") from None
        os.close(fd)
        os.unlink(name)
        return path
    existing = parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise OutputPathError(f"cannot create the folder {parent}: {existing} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputPathError(f"cannot create the folder {parent}: no permission to write in {existing}")
    return path


def fps_fraction(fps: float) -> Fraction:
    """25 -> 25/1, 29.97 -> 2997/100; exact for the usual rates."""
    if not fps or not math.isfinite(float(fps)) or fps <= 0:
        raise ValueError(f"fps: expected a finite number > 0, got {fps}")
    return Fraction(round(float(fps) * 1000), 1000).limit_denominator(100000)


def to_uint8_frames(frames) -> np.ndarray:
    """[k, H, W, C] (or [H, W, C]) float 0..1 / uint8, torch or numpy -> uint8 RGB [k, H, W, 3]."""
    if hasattr(frames, "detach"):
        frames = frames.detach().cpu()
        frames = frames.numpy() if frames.dtype.is_floating_point is False else frames.float().numpy()
    arr = np.asarray(frames)
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[-1] not in (1, 3, 4):
        raise VideoWriteError(f"frames must be [k, H, W, 3] images, got shape {arr.shape}")
    if arr.dtype != np.uint8:
        arr = (np.clip(arr.astype(np.float32), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    return np.ascontiguousarray(arr[..., :3])


class Mp4Writer:
    """H.264 (yuv420p, ``crf``) video + optional AAC audio in an mp4, streamed frame by frame.

    ``audio``: float waveform, [samples] or [channels, samples] (any finite range; clipped
    to -1..1 on encode), at ``sample_rate``. Audio at a rate AAC does not support is
    resampled to 48 kHz. Odd frame sizes are padded by one edge pixel (yuv420p needs even
    sides).
    """

    def __init__(self, path, fps: float, *, audio=None, sample_rate: Optional[int] = None, crf: float = 18,
                 preset: str = "medium", audio_bitrate: int = 128_000):
        self.path = Path(path).expanduser()
        self.rate = fps_fraction(fps)
        if not 0 <= float(crf) <= 51:
            raise ValueError(f"crf: expected a number from 0 to 51, got {crf}")
        self.fps = float(fps)
        self.crf, self.preset, self.audio_bitrate = crf, preset, int(audio_bitrate)
        self.frames_written = 0
        self._audio = None
        if audio is not None:
            if sample_rate is None:
                raise ValueError("audio needs its sample_rate")
            wave = audio.detach().cpu().float().numpy() if hasattr(audio, "detach") else np.asarray(audio, np.float32)
            wave = wave[None] if wave.ndim == 1 else wave
            if wave.ndim != 2 or wave.shape[0] not in (1, 2) or wave.shape[1] == 0:
                raise ValueError(f"audio must be [samples] or [1 or 2 channels, samples], got shape {wave.shape}")
            sr = int(sample_rate)
            if sr not in AAC_RATES:
                from .preprocess.audio_io import resample

                wave, sr = resample(wave, sr, 48000), 48000
            self._audio = wave  # not copied: clipped chunk by chunk as it is written
            self._sr = sr
            self._audio_pos = 0
        self._container = self._vstream = self._astream = None
        self._size = None
        self._tmp: Optional[Path] = None
        self._closed = False

    # ------------------------------------------------------------------ lifecycle
    def _open(self, height: int, width: int) -> None:
        import av

        if self.path.is_dir():
            raise OutputPathError(f"{self.path} is a folder, not a file name")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(prefix=f".{self.path.stem}.", suffix=".part.mp4", dir=self.path.parent)
        except OSError as exc:
            raise OutputPathError(f"cannot write {self.path} ({exc.strerror or exc})") from None
        os.close(fd)
        self._tmp = Path(name)
        self._container = av.open(str(self._tmp), mode="w", format="mp4")
        h2, w2 = height + height % 2, width + width % 2
        vs = self._container.add_stream("libx264" if "libx264" in av.codecs_available else "h264", rate=self.rate)
        vs.width, vs.height, vs.pix_fmt = w2, h2, "yuv420p"
        vs.options = {"crf": str(self.crf), "preset": self.preset}
        self._vstream = vs
        if self._audio is not None:
            layout = "mono" if self._audio.shape[0] == 1 else "stereo"
            a = self._container.add_stream("aac", rate=self._sr)
            a.layout = layout
            a.bit_rate = self.audio_bitrate
            self._astream = a
        self._size = (height, width)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self.abort()
        return False

    # ------------------------------------------------------------------ writing
    def write(self, frames) -> None:
        """Appends frames ([k, H, W, 3] or one [H, W, 3]); all must share one size."""
        if self._closed:
            raise VideoWriteError("writer is already closed")
        import av

        arr = to_uint8_frames(frames)
        if self._container is None:
            self._open(arr.shape[1], arr.shape[2])
        if arr.shape[1:3] != self._size:
            raise VideoWriteError(f"frame size {arr.shape[2]}x{arr.shape[1]} differs from the first frames' "
                                  f"{self._size[1]}x{self._size[0]}")
        pad_h, pad_w = self._size[0] % 2, self._size[1] % 2
        for img in arr:
            if pad_h or pad_w:
                img = np.pad(img, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = self.frames_written
            frame.time_base = 1 / self.rate
            for packet in self._vstream.encode(frame):
                self._container.mux(packet)
            self.frames_written += 1
            self._write_audio_until(self.frames_written / self.rate)

    def _write_audio_until(self, seconds) -> None:
        if self._astream is None:
            return
        import av

        stop = min(self._audio.shape[1], int(round(float(seconds) * self._sr)))
        layout = "mono" if self._audio.shape[0] == 1 else "stereo"
        while self._audio_pos < stop:
            end = min(stop, self._audio_pos + 4096)
            chunk = np.ascontiguousarray(np.clip(self._audio[:, self._audio_pos:end], -1.0, 1.0), dtype=np.float32)
            frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout=layout)
            frame.sample_rate = self._sr
            frame.pts = self._audio_pos
            frame.time_base = Fraction(1, self._sr)
            for packet in self._astream.encode(frame):
                self._container.mux(packet)
            self._audio_pos = end

    def close(self) -> Path:
        """Flushes both encoders, closes the file and renames it into place."""
        if self._closed:
            return self.path
        if self._container is None:
            self.abort()
            raise VideoWriteError(f"no frames were written; {self.path} was not created")
        try:
            if self._audio is not None:
                self._write_audio_until(self._audio.shape[1] / self._sr)
                for packet in self._astream.encode(None):
                    self._container.mux(packet)
            for packet in self._vstream.encode(None):
                self._container.mux(packet)
            self._container.close()
            self._container = None
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(self._tmp, 0o666 & ~umask)  # mkstemp made it private
            os.replace(self._tmp, self.path)
            self._tmp = None
        except BaseException:
            self.abort()
            raise
        self._closed = True
        return self.path

    def abort(self) -> None:
        """Stops writing and deletes the partial file (safe to call more than once)."""
        self._closed = True
        if self._container is not None:
            try:
                self._container.close()
            except Exception:  # closing a broken container may fail; the file is deleted anyway
                pass
            self._container = None
        if self._tmp is not None and self._tmp.exists():
            self._tmp.unlink()
        self._tmp = None


def probe(path) -> dict:
    """{"video_frames", "fps", "width", "height", "video_codec", "audio_codec", "audio_seconds",
    "video_seconds", "audio_sample_rate"} of an mp4 (decodes the video to count frames)."""
    import av

    out = {"audio_codec": None, "audio_seconds": 0.0, "audio_sample_rate": None}
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        out.update(video_codec=v.codec_context.name, width=v.width, height=v.height,
                   fps=float(v.average_rate) if v.average_rate else None)
        if c.streams.audio:
            a = c.streams.audio[0]
            out.update(audio_codec=a.codec_context.name, audio_sample_rate=a.sample_rate)
        frames = 0
        samples = 0
        for frame in c.decode(*c.streams):
            if isinstance(frame, av.VideoFrame):
                frames += 1
            else:
                samples += frame.samples
        out["video_frames"] = frames
        out["video_seconds"] = frames / out["fps"] if out["fps"] else 0.0
        if out["audio_sample_rate"]:
            out["audio_seconds"] = samples / out["audio_sample_rate"]
    return out
