"""Procedural talking faces for the learning test (no downloads, seconds to generate).

Each video shows one *identity* (face colour, background colour, eye colour, face shape) on a
plain background. Over time:

- the mouth opening follows the loudness of the video's audio track: a harmonic "voice"
  whose amplitude follows a random syllable envelope (silences and bursts);
- the head turns left and right (yaw between +-``YAW_MAX``, turning back at the limits) at a
  speed in degrees per frame that changes every 6-16 frames: the eyes and mouth slide across
  the face oval as sin(yaw);
- the face drifts slowly across the frame, so the face-locator box, not the reference
  image, says where the face is.

Audio features are a documented stand-in for wav2vec: per frame, log band energies of
``blocks`` sub-windows in ``dim`` bands (shape [T, blocks, dim], like wav2vec's
[T, layers, hidden]). Shards use the format of ``emo_core.train.data`` with ground-truth
boxes, rotations and speeds.

``measure_frame`` reads back what a generated frame shows (face centre, face colour, mouth
opening, yaw) knowing the identity, for the learning benchmark.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .data import write_manifest, write_shard

FPS = 25
SR = 16000
YAW_MAX = 40.0  # degrees
FEATURE_SHIFT = 0.6  # eye/mouth horizontal shift at 90 degrees, in face radii
# Mouth half-height at full loudness and half-width, in face radii: wide and tall enough that an
# open mouth spans several 4x4-pixel cells of the PixelLatent (at 64 px a face radius is 16-20 px).
MOUTH_OPEN = 0.5
MOUTH_WIDTH = 0.5


@dataclass
class Identity:
    face: np.ndarray  # RGB 0..1
    background: np.ndarray
    eyes: np.ndarray
    aspect: float  # face height / width
    radius: float  # face half-width as a fraction of the image side

    @classmethod
    def random(cls, rng: np.random.Generator) -> "Identity":
        while True:
            face = rng.uniform(0.35, 1.0, 3)
            bg = rng.uniform(0.0, 1.0, 3)
            if np.abs(face - bg).sum() > 0.8:  # visible face
                break
        eyes = rng.uniform(0.0, 0.3, 3)
        return cls(face, bg, eyes, float(rng.uniform(1.0, 1.25)), float(rng.uniform(0.25, 0.31)))


def syllable_envelope(rng: np.random.Generator, n: int) -> np.ndarray:
    """Per-frame loudness in [0, 1]: silences and syllables of 3-10 frames, lightly smoothed."""
    env = np.zeros(n)
    i = 0
    while i < n:
        length = int(rng.integers(3, 11))
        env[i:i + length] = 0.0 if rng.random() < 0.3 else rng.uniform(0.3, 1.0)
        i += length
    kernel = np.array([0.25, 0.5, 0.25])
    return np.clip(np.convolve(np.pad(env, 1, mode="edge"), kernel, mode="valid"), 0, 1)


def voice(rng: np.random.Generator, envelope: np.ndarray, fps: int = FPS, sr: int = SR) -> np.ndarray:
    """A harmonic tone (random pitch) whose amplitude follows ``envelope``; float32 16 kHz."""
    n = int(round(len(envelope) * sr / fps))
    t = np.arange(n) / sr
    f0 = rng.uniform(110, 240)
    tone = sum(np.sin(2 * np.pi * f0 * k * t + rng.uniform(0, 2 * np.pi)) / k for k in (1, 2, 3))
    amp = np.interp(t * fps - 0.5, np.arange(len(envelope)), envelope)
    wave = 0.3 * amp * tone / 1.8 + 0.002 * rng.standard_normal(n)
    return wave.astype(np.float32)


def loudness(wave: np.ndarray, num_frames: int, fps: int = FPS, sr: int = SR) -> np.ndarray:
    """RMS per video frame."""
    hop = sr // fps
    w = np.pad(wave, (0, max(0, num_frames * hop - len(wave))))[: num_frames * hop]
    return np.sqrt((w.reshape(num_frames, hop) ** 2).mean(1))


def audio_features(wave: np.ndarray, num_frames: int, blocks: int = 2, dim: int = 8, fps: int = FPS,
                   sr: int = SR) -> np.ndarray:
    """Stand-in for wav2vec features: [T, blocks, dim] log band energies (``blocks`` sub-windows
    per frame, ``dim`` log-spaced bands between 60 Hz and 4 kHz), roughly unit scale."""
    hop = sr // fps
    w = np.pad(wave, (0, max(0, num_frames * hop - len(wave))))[: num_frames * hop]
    sub = w.reshape(num_frames, blocks, hop // blocks)
    spec = np.abs(np.fft.rfft(sub * np.hanning(sub.shape[-1]), axis=-1)) ** 2
    freqs = np.fft.rfftfreq(sub.shape[-1], 1 / sr)
    edges = np.geomspace(60, 4000, dim + 1)
    bands = np.stack([spec[..., (freqs >= a) & (freqs < b)].sum(-1) for a, b in zip(edges[:-1], edges[1:])], -1)
    return ((np.log10(bands + 1e-6) + 3.0) / 3.0).astype(np.float32)


def yaw_track(rng: np.random.Generator, n: int, speed) -> np.ndarray:
    """Yaw in [-YAW_MAX, YAW_MAX] moving ``speed`` degrees per frame (a number, or one per frame),
    turning back at the limits: a triangle wave for a constant speed."""
    period = 4 * YAW_MAX
    step = np.broadcast_to(np.asarray(speed, np.float64), (n,))
    phase = rng.uniform(0, period) + np.concatenate([[0.0], np.cumsum(step[1:])])
    u = np.mod(phase, period)
    return np.where(u < 2 * YAW_MAX, u - YAW_MAX, 3 * YAW_MAX - u)


def speed_schedule(rng: np.random.Generator, n: int, speeds, segment=(6, 17)) -> np.ndarray:
    """Per-frame head speed that changes every 6-16 frames to another of ``speeds``, so the
    motion frames of a clip do not tell the speed of the frames that follow them."""
    out = np.empty(n)
    i = 0
    while i < n:
        length = int(rng.integers(*segment))
        out[i:i + length] = float(rng.choice(speeds))
        i += length
    return out


def yaw_rotation(yaw_deg: np.ndarray) -> np.ndarray:
    a = np.deg2rad(yaw_deg)
    r = np.zeros((len(a), 3, 3))
    r[:, 0, 0] = r[:, 2, 2] = np.cos(a)
    r[:, 0, 2], r[:, 2, 0] = np.sin(a), -np.sin(a)
    r[:, 1, 1] = 1
    return r.astype(np.float32)


def face_box(identity: Identity, cx: float, cy: float, size: int) -> np.ndarray:
    rx = identity.radius * size
    ry = rx * identity.aspect
    return np.array([cx - rx, cy - ry, cx + rx, cy + ry], np.float32)


def _soft(d: np.ndarray) -> np.ndarray:
    """Inside (d<0) -> 1, outside -> 0, one-pixel antialiased edge (d in pixels)."""
    return np.clip(0.5 - d, 0.0, 1.0)


def render(identity: Identity, cx: float, cy: float, yaw: float, mouth: float, size: int) -> np.ndarray:
    """One frame, uint8 [size, size, 3]."""
    return (_paint(identity, cx, cy, yaw, mouth, size, (0, 0, size, size)) * 255 + 0.5).clip(0, 255).astype(np.uint8)


def _paint(identity: Identity, cx: float, cy: float, yaw: float, mouth: float, size: int,
           window: tuple[int, int, int, int]) -> np.ndarray:
    """The pixels (x0, y0, x1, y1) = ``window`` of the frame ``render`` draws, float RGB 0..1."""
    x0, y0, x1, y1 = window
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float64) + 0.5
    rx = identity.radius * size
    ry = rx * identity.aspect
    img = np.broadcast_to(identity.background, (y1 - y0, x1 - x0, 3)).copy()

    def ellipse(ex, ey, ax, ay):
        r = np.sqrt(((xx - ex) / ax) ** 2 + ((yy - ey) / ay) ** 2)
        return _soft((r - 1) * min(ax, ay))

    def paint(alpha, colour):
        img[:] = img * (1 - alpha[..., None]) + np.asarray(colour) * alpha[..., None]

    paint(ellipse(cx, cy, rx, ry), identity.face)
    shift = FEATURE_SHIFT * rx * math.sin(math.radians(yaw))
    eye_r = 0.17 * rx
    for side in (-1, 1):
        paint(ellipse(cx + side * 0.36 * rx + shift, cy - 0.25 * ry, eye_r, eye_r), identity.eyes)
    half_h = 0.05 * rx + MOUTH_OPEN * rx * float(mouth)
    paint(ellipse(cx + shift, cy + 0.45 * ry, MOUTH_WIDTH * rx, half_h), (0.05, 0.0, 0.02))
    return img


def face_path(rng: np.random.Generator, identity: Identity, n: int, size: int) -> np.ndarray:
    """[n, 2] face centres drifting in a straight line between two random points."""
    rx = identity.radius * size
    ry = rx * identity.aspect
    lo = np.array([rx + 1, ry + 1])
    hi = np.array([size - rx - 1, size - ry - 1])
    a, b = rng.uniform(lo, hi), rng.uniform(lo, hi)
    return a + (b - a) * np.linspace(0, 1, n)[:, None]


def make_video(rng: np.random.Generator, identity: Identity, n: int, size: int, speed,
               blocks: int = 2, dim: int = 8) -> dict:
    """One video; ``speed`` in degrees per frame, a number or one per frame."""
    env = syllable_envelope(rng, n)
    wave = voice(rng, env)
    yaw = yaw_track(rng, n, speed)
    centres = face_path(rng, identity, n, size)
    frames = np.stack([render(identity, cx, cy, y, m, size) for (cx, cy), y, m in zip(centres, yaw, env)])
    boxes = np.stack([face_box(identity, cx, cy, size) for cx, cy in centres])
    spd = np.abs(np.diff(yaw, prepend=yaw[0] - (yaw[1] - yaw[0]) if n > 1 else yaw[0])).astype(np.float32)
    return {"frames": frames, "boxes": boxes, "rotations": yaw_rotation(yaw), "speed": spd, "audio": wave,
            "audio_features": audio_features(wave, n, blocks, dim), "envelope": env, "yaw": yaw, "centres": centres}


def make_dataset(out_dir, videos: int, frames: int, size: int = 64, seed: int = 0,
                 speeds=(0.0, 1.0, 2.0, 4.0, 6.0, 8.0), blocks: int = 2, dim: int = 8) -> list[Path]:
    """Writes ``videos`` synthetic shards (one identity each) and their manifest."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    entries, paths = [], []
    for i in range(videos):
        ident = Identity.random(rng)
        v = make_video(rng, ident, frames, size, speed_schedule(rng, frames, speeds), blocks, dim)
        name = f"synthetic_{seed}_{i:04d}.safetensors"
        paths.append(write_shard(out / name, v["frames"], v["boxes"], v["rotations"], v["speed"], fps=FPS,
                                 source=f"synthetic seed {seed} #{i}", audio_features=v["audio_features"],
                                 audio=v["audio"], audio_model=f"synthetic-bands-{blocks}x{dim}"))
        entries.append({"shard": name, "frames": frames, "source": f"synthetic #{i}"})
    write_manifest(out, {"shards": entries, "skipped": []})
    return paths


# --------------------------------------------------------------------------- measuring
def _luma(img: np.ndarray) -> np.ndarray:
    return img @ np.array([0.299, 0.587, 0.114])


def measure_frame(img: np.ndarray, identity: Identity) -> dict:
    """What a (generated) frame shows, given the identity it should show.

    Face pixels are those closer to the face colour than to the background colour (eyes and
    mouth are filled in inside the face's bounding box). Returns the face centre (x, y),
    its median colour, the mouth opening (darkness in the lower face, 0..~1) and the yaw
    (degrees, ``fit_yaw``)."""
    x = img.astype(np.float64) / 255 if img.dtype == np.uint8 else np.asarray(img, np.float64)
    size = x.shape[0]
    d_face = np.abs(x - identity.face).sum(-1)
    d_bg = np.abs(x - identity.background).sum(-1)
    skin = d_face < d_bg
    ys, xs = np.nonzero(skin)
    if len(xs) < 4:
        return {"found": False, "centre": (size / 2, size / 2), "colour": x.reshape(-1, 3).mean(0),
                "mouth": 0.0, "yaw": 0.0}
    x0, x1, y0, y1 = np.percentile(xs, 2), np.percentile(xs, 98) + 1, np.percentile(ys, 2), np.percentile(ys, 98) + 1
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    rx, ry = max((x1 - x0) / 2, 1.0), max((y1 - y0) / 2, 1.0)
    colour = np.median(x[skin], axis=0)
    lum_face = max(_luma(identity.face), 1e-3)
    dark = np.clip((lum_face - _luma(x)) / lum_face, 0, 1)
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    inside = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 < 0.85 ** 2
    lower = inside & (yy > cy + 0.1 * ry)
    mouth = float(dark[lower].sum() / max(1.0, np.pi * rx * ry * 0.3))
    yaw = fit_yaw(x, identity, (cx, cy), guess=_feature_yaw(dark * inside, cx, rx))
    return {"found": True, "centre": (float(cx), float(cy)), "colour": colour, "mouth": mouth, "yaw": yaw}


def _feature_yaw(weight: np.ndarray, cx: float, rx: float) -> float:
    """Yaw from where the dark features' centroid sits from the face centre: right within about
    20 degrees, below the truth beyond (the outer eye and the mouth leave the inner face)."""
    if weight.sum() <= 1e-6:
        return 0.0
    xx = np.arange(weight.shape[1]) + 0.5
    off = float((weight.sum(0) * (xx - cx)).sum() / weight.sum()) / (FEATURE_SHIFT * rx)
    return math.degrees(math.asin(float(np.clip(off, -1, 1))))


def fit_yaw(img: np.ndarray, identity: Identity, centre: tuple[float, float], guess: float = 0.0,
            limit: float = 60.0) -> float:
    """The yaw (degrees) whose rendering of ``identity`` best matches ``img`` (float RGB 0..1)
    around the face at ``centre``: the mouth opening at the ``guess``, the yaw on a 3-degree grid
    within +-``limit``, the face's position and the mouth opening more finely, then the yaw to a
    fraction of a degree (each fine step: the vertex of a parabola through the best grid points).

    Fitting the face model, as pose estimators fit a 3D face, reads the yaw without bias over
    the whole range (a centroid of the dark pixels reads 40 degrees as about 27), so a driving
    video's measured speed is the speed that drew it."""
    size = img.shape[0]
    cx, cy = centre
    rx = identity.radius * size
    ry = rx * identity.aspect
    window = (int(max(0, cx - rx - 3)), int(max(0, cy - ry - 3)),
              int(min(size, cx + rx + 4)), int(min(size, cy + ry + 4)))
    crop = img[window[1]:window[3], window[0]:window[2]]

    def err(yaw, mouth, x, y):
        return float(((_paint(identity, x, y, yaw, mouth, size, window) - crop) ** 2).sum())

    mouth = min(np.linspace(0, 1, 6), key=lambda m: err(guess, m, cx, cy))
    yaw = min(np.arange(-limit, limit + 1e-6, 3.0), key=lambda a: err(a, mouth, cx, cy))
    cx = _parabola_min(cx + np.arange(-1.0, 1.01, 0.25), lambda x: err(yaw, mouth, x, cy))
    cy = _parabola_min(cy + np.arange(-1.0, 1.01, 0.25), lambda y: err(yaw, mouth, cx, y))
    mouth = _parabola_min(np.linspace(0, 1, 11), lambda m: err(yaw, m, cx, cy))
    return _parabola_min(yaw + np.arange(-3.0, 3.01, 0.5), lambda a: err(a, mouth, cx, cy))


def _parabola_min(grid: np.ndarray, f) -> float:
    """Where ``f`` is least: its best grid point, moved to the vertex of the parabola through it
    and its neighbours (at most half a grid step)."""
    e = np.array([f(v) for v in grid])
    i = int(np.clip(e.argmin(), 1, len(grid) - 2))
    curve = e[i - 1] - 2 * e[i] + e[i + 1]
    step = 0.5 * (e[i - 1] - e[i + 1]) / curve if curve > 0 else 0.0
    return float(grid[i] + (grid[1] - grid[0]) * np.clip(step, -0.5, 0.5))
