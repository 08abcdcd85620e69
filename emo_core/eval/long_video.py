"""Long videos: identity and mouth/loudness correlation per window (per minute by default), so
drift over a long video shows up, and how visible the joins between chained clips are.

- Windows: consecutive spans of ``window_s`` seconds from the first frame; a remainder shorter
  than half a window joins the last full window (a 10.2-minute video has 10 windows, the last
  72 s long; 10.6 minutes has 11).
- Identity per window: mean over the window's frames with a face of the per-frame F-SIM
  (ArcFace cosine to the reference portrait, ``fsim.face_similarity``).
- Mouth/loudness per window: ``motion.lagged_correlation`` of the mouth opening
  (``motion.mouth_opening``) with the loudness (``motion.loudness_per_frame``) over the window's
  frames: r at lag 0 and the best r within +-fps/5 frames.
- Drift of a per-window value: last window minus first window (0: no drift), with the worst
  window.
- Clip joins (``join_ratio``): given a per-frame motion series (head yaw, degrees) and the clip
  length, mean |change| from each clip's last frame to the next clip's first frame over mean
  |change| between neighbouring frames inside clips. About 1: the motion carries across the
  join; well above 1: every clip starts from its own pose, a visible cut. ``join_jump``: the
  change across joins alone, in degrees (a head that wobbles inside its clips lowers the ratio
  without making the joins any smaller).
"""
from __future__ import annotations

import numpy as np

from . import motion

LONG_VIDEO_PROTOCOL = {
    "windows": "consecutive windows of window_s seconds from the first frame; a remainder under half a window "
               "joins the last window",
    "identity": "per-frame ArcFace cosine to the reference portrait (F-SIM), mean over a window's frames with a face",
    "mouth_loudness": "Pearson r of inner-lip gap / eye corners with RMS dB per 1/fps, over a window's frames "
                      "(lag 0; best lag within +-fps/5)",
    "drift": "last window minus first window",
    "clip_joins": "mean |d yaw| across clip joins / mean |d yaw| inside clips (head yaw from face-mesh rotations)",
}


# ---- clip joins ----------------------------------------------------------------------------
def join_changes(series, clip_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """(|change| across clip joins, |change| inside clips) of a per-frame series [T] made of clips
    of ``clip_frames`` frames: the change from frame i to i+1 is across a join when i+1 starts a
    clip. Changes touching a NaN (a frame without a measurement) are left out."""
    x = np.asarray(series, np.float64)
    if x.ndim != 1:
        raise ValueError(f"join_changes takes one per-frame series [T], got shape {x.shape}")
    if int(clip_frames) < 1:
        raise ValueError(f"clip_frames must be >= 1, got {clip_frames}")
    d = np.abs(np.diff(x))  # d[i] = |x[i + 1] - x[i]|
    joins = np.zeros(d.shape[0], bool)
    joins[np.arange(int(clip_frames) - 1, d.shape[0], int(clip_frames))] = True
    ok = np.isfinite(d)
    return d[joins & ok], d[~joins & ok]


def pooled_join_changes(series, clip_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """``join_changes`` of one series [T], or of a list of them (several videos made of clips of
    the same length), pooled."""
    if isinstance(series, (list, tuple)) and len(series) and np.ndim(series[0]) == 1:
        parts = [join_changes(s, clip_frames) for s in series]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    return join_changes(series, clip_frames)


def join_ratio(series, clip_frames: int) -> float:
    """Mean |change| across clip joins over mean |change| inside clips (about 1 = seamless).

    ``series``: one per-frame motion series [T] (e.g. head yaw in degrees), or a list of them
    (several videos made of clips of the same length), whose joins and insides are pooled.
    NaN when no join was measured (a video of at most one clip); the inside mean is floored at
    1e-6, so a still head with a jump at the joins gives a large number, not a division by 0."""
    across, inside = pooled_join_changes(series, clip_frames)
    if across.size == 0:
        return float("nan")
    return float(across.mean() / max(inside.mean() if inside.size else 0.0, 1e-6))


def join_jump(series, clip_frames: int) -> float:
    """Mean |change| across clip joins in the series' own unit (degrees of yaw): the jump that
    ``join_ratio`` divides by the change inside clips, where a head that wobbles inside its clips
    makes the same jump look small. NaN when no join was measured."""
    across = pooled_join_changes(series, clip_frames)[0]
    return float(across.mean()) if across.size else float("nan")


# ---- windows -------------------------------------------------------------------------------
def window_ranges(num_frames: int, fps: float, window_s: float = 60.0) -> list[range]:
    """Frame ranges of consecutive windows of ``window_s`` seconds; a remainder shorter than half
    a window joins the last full window (a video shorter than one window is one window)."""
    if num_frames < 1:
        raise ValueError(f"need at least one frame, got {num_frames}")
    if not (fps > 0 and window_s > 0):
        raise ValueError(f"fps and window_s must be > 0, got fps={fps}, window_s={window_s}")
    bounds = [int(round(k * window_s * fps)) for k in range(int(num_frames / (window_s * fps)) + 2)]
    bounds = [b for b in bounds if b < num_frames] + [num_frames]
    bounds = sorted(set(bounds))
    if len(bounds) > 2 and bounds[-1] - bounds[-2] < window_s * fps / 2:
        del bounds[-2]
    return [range(a, b) for a, b in zip(bounds[:-1], bounds[1:])]


def per_window(fps: float, *, identity=None, mouth=None, loudness=None, window_s: float = 60.0,
               num_frames: int | None = None) -> list[dict]:
    """Per-window statistics of per-frame series (NaN: no measurement in that frame).

    ``identity``: similarity to the reference per frame (F-SIM); ``mouth``: mouth opening per
    frame; ``loudness``: audio level per frame (both needed for the correlation). One dict per
    window: ``start_s``, ``end_s``, ``frames``, and, where given, ``identity`` (mean) with
    ``identity_frames`` (frames with a value), ``mouth_loudness_r`` (lag 0),
    ``mouth_loudness_r_best`` and ``mouth_loudness_lag_frames`` (``motion.lagged_correlation``)."""
    series = {k: None if v is None else np.asarray(v, np.float64)
              for k, v in (("identity", identity), ("mouth", mouth), ("loudness", loudness))}
    lengths = {k: v.shape[0] for k, v in series.items() if v is not None}
    if num_frames is None:
        if not lengths:
            raise ValueError("per_window needs identity, mouth and loudness series, or num_frames")
        num_frames = max(lengths.values())
    short = {k: n for k, n in lengths.items() if n != num_frames}
    if short:
        raise ValueError(f"every series needs one value per frame ({num_frames}); got "
                         + ", ".join(f"{k}: {n}" for k, n in short.items()))
    max_lag = max(1, int(round(fps / 5)))
    rows = []
    for r in window_ranges(num_frames, fps, window_s):
        row = {"start_s": r.start / fps, "end_s": r.stop / fps, "frames": len(r)}
        if series["identity"] is not None:
            part = series["identity"][r.start:r.stop]
            ok = np.isfinite(part)
            row["identity"] = float(part[ok].mean()) if ok.any() else float("nan")
            row["identity_frames"] = int(ok.sum())
        if series["mouth"] is not None and series["loudness"] is not None:
            c = motion.lagged_correlation(series["mouth"][r.start:r.stop], series["loudness"][r.start:r.stop],
                                          max_lag=max_lag)
            row.update(mouth_loudness_r=c["corr_lag0"], mouth_loudness_r_best=c["corr_best"],
                       mouth_loudness_lag_frames=c["best_lag_frames"])
        rows.append(row)
    return rows


def drift(rows: list[dict], key: str) -> dict:
    """``first``, ``last``, ``drift`` (last - first; NaN with fewer than two windows), ``worst``
    (the lowest window) and ``windows`` (with a finite value) of ``key`` over per-window rows."""
    values = np.array([r.get(key, np.nan) for r in rows], np.float64)
    ok = np.flatnonzero(np.isfinite(values))
    if ok.size == 0:
        return {"first": float("nan"), "last": float("nan"), "drift": float("nan"), "worst": float("nan"),
                "windows": 0}
    first, last = float(values[ok[0]]), float(values[ok[-1]])
    return {"first": first, "last": last, "drift": last - first if ok.size > 1 else float("nan"),
            "worst": float(values[ok].min()), "windows": int(ok.size)}


# ---- one video -----------------------------------------------------------------------------
def mouth_series(faces, num_frames: int) -> np.ndarray:
    """Mouth opening per frame (``motion.mouth_opening``); NaN where no face with landmarks."""
    opening = np.full(num_frames, np.nan)
    for i, f in enumerate(faces or ()):
        if f is not None and getattr(f, "landmarks", None) is not None:
            opening[i] = motion.mouth_opening(f.landmarks)
    return opening


def yaw_series(faces, num_frames: int) -> np.ndarray:
    """Head yaw per frame in degrees (face-mesh rotations, ``motion.rotations_from_faces``); NaN
    where no face with landmarks."""
    yaw = np.full(num_frames, np.nan)
    rots, idx = motion.rotations_from_faces(list(faces or ()))
    if len(idx):
        yaw[idx] = motion.euler_yaw_pitch_roll(rots)[:, 0]
    return yaw


def long_video_stats(frames_or_video, faces=None, *, fps: float | None = None, audio=None, identity=None,
                     mouth=None, loudness=None, yaw=None, window_s: float = 60.0,
                     clip_frames: int | None = None, sample_rate: int = 16000) -> dict:
    """Per-window identity and mouth/loudness of one video, their drift, and its clip joins.

    Give an ``eval.video_io.Video`` (frames, fps, audio) or the frames [T, ...] with ``fps``;
    per-frame series are measured from ``faces`` (one Face or None per frame, as the evaluation's
    face analysis gives them) unless passed: ``mouth`` and ``yaw`` from the faces' landmarks,
    ``loudness`` from ``audio`` (mono, ``sample_rate``). ``identity``: per-frame F-SIM
    (``fsim.face_similarity(...).per_frame``) or None. ``clip_frames``: the generator's clip
    length, for ``join_ratio`` of the yaw (omitted when None).

    Returns ``window_s``, ``windows`` (``per_window`` rows), ``identity`` and
    ``mouth_loudness_r`` (``drift`` of the per-window values) and, with ``clip_frames``,
    ``join_ratio``."""
    frames = getattr(frames_or_video, "frames", frames_or_video)
    fps = getattr(frames_or_video, "fps", fps) if fps is None else fps
    if audio is None:
        audio = getattr(frames_or_video, "audio", None)
    if fps is None:
        raise ValueError("long_video_stats needs the frame rate: pass a Video or fps=")
    n = len(frames)
    if mouth is None and faces is not None:
        mouth = mouth_series(faces, n)
    if loudness is None and audio is not None:
        loudness = motion.loudness_per_frame(audio, sample_rate, fps, n)
    rows = per_window(fps, identity=identity, mouth=mouth, loudness=loudness, window_s=window_s, num_frames=n)
    out = {"window_s": float(window_s), "windows": rows}
    if identity is not None:
        out["identity"] = drift(rows, "identity")
    if mouth is not None and loudness is not None:
        out["mouth_loudness_r"] = drift(rows, "mouth_loudness_r")
    if clip_frames is not None:
        if yaw is None and faces is not None:
            yaw = yaw_series(faces, n)
        if yaw is not None:
            out["join_ratio"] = join_ratio(np.asarray(yaw, np.float64), clip_frames)
    return out
