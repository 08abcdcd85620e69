"""Motion statistics users ask for: head motion, mouth vs loudness, flicker, A/V offset.

All functions take plain arrays; ``evaluate`` feeds them face-analysis results.

- Head motion: per-frame rotation speed (degrees/frame, the geodesic angle between successive
  head rotations, the same quantity as ``preprocess.pose.rotation_speed`` that drives EMO's
  speed buckets) -> mean/std in degrees per frame and per second; pose diversity = mean over
  yaw/pitch/roll of the standard deviation of the angle over the video (degrees).
- Mouth opening: inner-lip gap (mesh points 13, 14) divided by the outer eye-corner distance
  (33, 263). Loudness: RMS level in dB of the audio over each frame's 1/fps interval (centred
  on the frame time). Their Pearson correlation at lag 0, and the lag within +-max_lag frames
  where it peaks (positive lag: the mouth follows the audio, i.e. audio leads).
- Flicker: mean absolute grey-level change between successive frames (0..255), and the mean
  absolute second temporal difference |I(t+1) - 2 I(t) + I(t-1)|, which stays low for smooth
  motion and rises with frame-to-frame flicker.
- A/V offset: SyncNet's offset when available; otherwise the mouth/loudness peak lag, labelled
  as such.
"""
from __future__ import annotations

import numpy as np

MOUTH_INNER = (13, 14)
EYE_OUTER = (33, 263)


def geodesic_angles(rotations: np.ndarray) -> np.ndarray:
    """Angle in degrees between successive rotation matrices [T, 3, 3] -> [T-1]."""
    r = np.asarray(rotations, dtype=np.float64)
    rel = np.einsum("tij,tkj->tik", r[1:], r[:-1])           # R_t R_{t-1}^T
    cos = (np.trace(rel, axis1=1, axis2=2) - 1.0) / 2.0
    return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))


def euler_yaw_pitch_roll(rotations: np.ndarray) -> np.ndarray:
    """[T, 3, 3] -> [T, 3] degrees (yaw about y, pitch about x, roll about z; R = Ry Rx Rz)."""
    r = np.asarray(rotations, dtype=np.float64)
    pitch = np.arcsin(np.clip(-r[:, 1, 2], -1, 1))
    yaw = np.arctan2(r[:, 0, 2], r[:, 2, 2])
    roll = np.arctan2(r[:, 1, 0], r[:, 1, 1])
    return np.degrees(np.stack([yaw, pitch, roll], axis=1))


def head_motion_stats(rotations: np.ndarray, fps: float, speed: np.ndarray | None = None) -> dict:
    """Rotation-speed and pose-diversity statistics of a head-rotation sequence."""
    r = np.asarray(rotations, dtype=np.float64)
    if r.ndim != 3 or r.shape[1:] != (3, 3) or r.shape[0] < 2:
        raise ValueError(f"need rotations [T>=2, 3, 3], got shape {r.shape}")
    sp = geodesic_angles(r) if speed is None else np.asarray(speed, dtype=np.float64)
    sp = sp[np.isfinite(sp)]
    ypr = euler_yaw_pitch_roll(r)
    std = ypr.std(axis=0)
    return {
        "rotation_speed_mean_deg_per_frame": float(sp.mean()) if sp.size else float("nan"),
        "rotation_speed_std_deg_per_frame": float(sp.std()) if sp.size else float("nan"),
        "rotation_speed_mean_deg_per_s": float(sp.mean() * fps) if sp.size else float("nan"),
        "pose_diversity_deg": float(std.mean()),
        "yaw_std_deg": float(std[0]), "pitch_std_deg": float(std[1]), "roll_std_deg": float(std[2]),
    }


def mouth_opening(landmarks: np.ndarray) -> float:
    lm = np.asarray(landmarks, dtype=np.float64)[:, :2]
    eye = np.linalg.norm(lm[EYE_OUTER[0]] - lm[EYE_OUTER[1]])
    if eye <= 0:
        return float("nan")
    return float(np.linalg.norm(lm[MOUTH_INNER[0]] - lm[MOUTH_INNER[1]]) / eye)


def loudness_per_frame(audio: np.ndarray, sr: int, fps: float, num_frames: int, floor_db: float = -80.0) -> np.ndarray:
    """RMS level (dB re full scale) over each frame's interval, centred on the frame time."""
    audio = np.asarray(audio, dtype=np.float64)
    half = sr / fps / 2
    out = np.full(num_frames, floor_db)
    for i in range(num_frames):
        c = i * sr / fps
        seg = audio[max(0, int(c - half)):max(0, int(c + half))]
        if seg.size:
            rms = np.sqrt(np.mean(seg ** 2))
            out[i] = max(20 * np.log10(rms + 1e-12), floor_db)
    return out


def _pearson(x, y) -> float:
    m = np.isfinite(x) & np.isfinite(y)
    if m.sum() < 3:
        return float("nan")
    a, b = x[m] - x[m].mean(), y[m] - y[m].mean()
    den = np.sqrt((a ** 2).sum() * (b ** 2).sum())
    return float((a * b).sum() / den) if den > 0 else float("nan")


def lagged_correlation(mouth: np.ndarray, loudness: np.ndarray, max_lag: int = 5) -> dict:
    """Correlation of mouth[t + lag] with loudness[t] for lag in -max_lag..max_lag."""
    x, y = np.asarray(mouth, np.float64), np.asarray(loudness, np.float64)
    n = min(len(x), len(y))
    x, y = x[:n], y[:n]
    corr = {}
    for lag in range(-max_lag, max_lag + 1):
        if lag >= 0:
            corr[lag] = _pearson(x[lag:], y[:n - lag])
        else:
            corr[lag] = _pearson(x[:n + lag], y[-lag:])
    finite = {k: v for k, v in corr.items() if np.isfinite(v)}
    best = max(finite, key=finite.get) if finite else 0
    return {"corr_lag0": corr[0], "best_lag_frames": int(best),
            "corr_best": finite.get(best, float("nan"))}


def flicker(frames: np.ndarray) -> dict:
    """Frame-to-frame change statistics on grey levels (0..255)."""
    f = np.asarray(frames)
    if f.ndim != 4 or f.shape[0] < 3:
        raise ValueError(f"need at least 3 frames [T, H, W, 3], got shape {f.shape}")
    grey = f.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    d1 = np.abs(np.diff(grey, axis=0)).mean(axis=(1, 2))
    d2 = np.abs(grey[2:] - 2 * grey[1:-1] + grey[:-2]).mean(axis=(1, 2))
    return {"mean_abs_diff": float(d1.mean()), "mean_abs_second_diff": float(d2.mean()),
            "max_abs_diff": float(d1.max())}


def rotations_from_faces(faces: list) -> tuple[np.ndarray, np.ndarray]:
    """Head rotations [N, 3, 3] of the frames whose face has landmarks, and their indices.

    Uses ``emo_core.preprocess.pose.head_rotations`` (the definition behind EMO's speed
    signal) when that module is present; otherwise rotations relative to the first frame by a
    Kabsch alignment of rigid face-mesh points (same construction, documented fallback).
    """
    idx = np.array([i for i, f in enumerate(faces)
                    if f is not None and getattr(f, "landmarks", None) is not None], dtype=np.int64)
    if idx.size == 0:
        return np.zeros((0, 3, 3)), idx
    sub = [faces[i] for i in idx]
    try:
        from emo_core.preprocess.pose import head_rotations
    except ImportError:
        head_rotations = None
    if head_rotations is not None:
        return np.asarray(head_rotations(sub), dtype=np.float64), idx
    from .expression import RIGID_POINTS, kabsch_similarity

    ref = np.asarray(sub[0].landmarks, np.float64)[RIGID_POINTS]
    rots = [kabsch_similarity(ref, np.asarray(f.landmarks, np.float64)[RIGID_POINTS])[1] for f in sub]
    return np.stack(rots), idx
