"""Diagnostics for the learning benchmark: do the motion frames carry the head across clips?

    .venv/bin/python bench/diag_motion.py RUN_DIR [--stage 2|3] [--configs DIR] [--set KEY=JSON]

Chaining clips works only if a clip starts where the previous one ended, i.e. if the model takes
the head pose (and its turn) from the motion frames. For a trained run it reports the model's
clean estimate x0 at a few noise levels (one model call from a noised ground-truth clip):

- pose carried: reference portrait at yaw 0, motion frames and clip holding still at yaw +-30;
  the x0's mean yaw towards the motion frames' side (30 = taken over whole, 0 = ignored),
  with the true motion frames and with reference copies as motion frames (the first clip);
- turn continued: clips turning at 4 deg/frame after true motion frames; the x0's yaw slope along
  the turn the motion frames show (the truth's is printed first; 0 = the turn is not continued).

At high noise (t >= 800) only the conditions can tell the pose, so that is where these matter.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from diag_common import (Clips, clips_of, decode_uint8, diag_parser, frames_uint8, load_from_args,  # noqa: E402
                         synthetic_clips, x0_estimate, yaws)
from emo_core.train import synthetic as S  # noqa: E402
from emo_core.train.loop import conditioning  # noqa: E402

POSE = 30.0  # degrees
STEPS = (500, 800, 950, 999)


def posed_clips(ec, cfg, codec, count: int, seed: int, size: int = 64) -> tuple[Clips, np.ndarray]:
    """Clips whose motion frames and frames hold still at yaw +-POSE (alternating); the reference
    portrait faces the camera. Returns the clips and the sign of each clip's yaw."""
    rng = np.random.default_rng(seed)
    k = ec.clip_frames + ec.motion_frames
    videos, refs, idents = [], [], []
    sign = np.where(np.arange(count) % 2 == 1, 1.0, -1.0)
    for s in sign:
        ident = S.Identity.random(rng)
        cx, cy = size / 2 + rng.uniform(-4, 4, 2)
        env = S.syllable_envelope(rng, k)
        wave = S.voice(rng, env)
        videos.append({"frames": np.stack([S.render(ident, cx, cy, s * POSE, e, size) for e in env]), "audio": wave,
                       "audio_features": S.audio_features(wave, k), "boxes": np.stack([S.face_box(ident, cx, cy, size)] * k),
                       "speed": np.zeros(k, np.float32)})
        refs.append(S.render(ident, cx, cy, 0.0, 0.0, size))
        idents.append(ident)
    return clips_of(ec, cfg, codec, videos, idents, refs), sign


def slopes(y: np.ndarray) -> np.ndarray:
    t = np.arange(y.shape[1])
    return np.array([np.polyfit(t, row, 1)[0] for row in y])


def x0_rows(net, sched, codec, c: Clips, speed, measure) -> list[str]:
    """``measure`` of the x0 estimates at STEPS, with true motion frames and with reference copies."""
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(c.latents.shape, generator=g)
    n = c.motion.shape[1]
    out = []
    for name, motion in (("true motion frames ", c.motion), ("reference as motion", c.reference[:, None].expand(-1, n, -1, -1, -1))):
        cond, _ = conditioning(net, c.reference, motion, c.mask, c.audio, speed)
        vals = [measure(decode_uint8(codec, x0_estimate(net, sched, c.latents, noise, t, cond))) for t in STEPS]
        out.append(f"  {name}: " + "  ".join(f"t={t}: {v:+.2f}" for t, v in zip(STEPS, vals)))
    return out


@torch.no_grad()
def main(argv=None):
    args = diag_parser(16).parse_args(argv)
    net, ec, codec, sched, cfg = load_from_args(args)
    f, n = ec.clip_frames, ec.motion_frames
    with_speed = args.stage == 3

    c, sign = posed_clips(ec, cfg, codec, args.n, seed=7)
    print(f"pose carried: x0 mean yaw towards the motion frames' pose ({POSE:g} = taken over whole, 0 = ignored)")
    for line in x0_rows(net, sched, codec, c, c.speed if with_speed else None,
                        lambda img: float(np.mean(yaws(img, c.identities).mean(1) * sign))):
        print(line)

    c = synthetic_clips(ec, cfg, codec, [np.full(n + f, 4.0)] * args.n, seed=321)
    truth = slopes(yaws(frames_uint8(c.pixels[:, n:]), c.identities))
    along = np.sign(truth)
    truth = truth * along
    print(f"turn continued: x0 yaw slope (deg/frame) along the true turn (truth {np.mean(truth):+.2f})")
    for line in x0_rows(net, sched, codec, c, c.speed if with_speed else None,
                        lambda img: float(np.mean(slopes(yaws(img, c.identities)) * along))):
        print(line)


if __name__ == "__main__":
    main()
