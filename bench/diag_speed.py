"""Diagnostics for the learning benchmark: does the asked head speed change the motion?

    .venv/bin/python bench/diag_speed.py RUN_DIR [--configs DIR] [--motion reference|true]

For a trained run (``bench/learning.py --out RUN_DIR``) it takes fresh synthetic clips, noises
each to a few steps t and measures the head speed (|slope| of the per-frame yaw, as the
benchmark does) of the model's clean estimate x0 when asked speeds 0 / 1 / 4 / 8, then samples
the same clips with DDIM at each asked speed. ``--motion true`` gives the clips their true
previous frames (turning at 4 deg/frame) as motion frames, so the turn direction is known.
If the speed layers work, the measured speed rises with the asked one (at high t, where the
noisy clip says little about the motion). It also prints the x0 error (latent MSE) given each
clip's true speed against the speed of a clip turning at another speed: when the speed layers
carry no speed information the two are equal.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from diag_common import decode_uint8, diag_parser, frames_uint8, load_from_args, synthetic_clips, x0_estimate, yaws  # noqa: E402
from emo_core.train.loop import conditioning, generate_clip  # noqa: E402
from learning import clip_speed  # noqa: E402

LEAD_SPEED = 4.0  # deg/frame of the true motion frames


def speeds_of(img, idents):
    return [clip_speed(y, img.shape[1]) for y in yaws(img, idents)]


def speeds_for(speed: torch.Tensor, n: int, motion: str) -> torch.Tensor:
    """Per-frame speeds [b, n + f] whose clip frames are ``speed``'s; the motion frames keep their own
    speed when they are true frames and take the clip's when they are reference copies."""
    return speed if motion == "true" else torch.cat([speed[:, n:n + 1].expand(-1, n), speed[:, n:]], 1)


def asked_speed(b: int, n: int, f: int, s: float, motion: str) -> torch.Tensor:
    """[b, n + f] speeds asking ``s`` of the clip frames (true motion frames turn at ``LEAD_SPEED``)."""
    return speeds_for(torch.tensor([[LEAD_SPEED] * n + [s] * f] * b), n, motion)


@torch.no_grad()
def main(argv=None):
    p = diag_parser(12, stage=False)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-sampling", action="store_true")
    p.add_argument("--motion", choices=("reference", "true"), default="reference",
                   help="motion frames: reference copies (a video's first clip: the turn direction is open) or the "
                        "clip's true previous frames, turning at 4 deg/frame (a later clip: the direction is known)")
    args = p.parse_args(argv)
    net, ec, codec, sched, cfg = load_from_args(args, stage=3)
    f, n = ec.clip_frames, ec.motion_frames
    true_speed = [float([1, 4, 8][i % 3]) for i in range(args.n)]
    c = synthetic_clips(ec, cfg, codec, [np.array([LEAD_SPEED] * n + [sp] * f) for sp in true_speed], seed=321)
    ref_pix = c.pixels[:, 0]
    motion_pix = ref_pix[:, None].expand(-1, n, -1, -1, -1) if args.motion == "reference" else c.pixels[:, :n]
    motion_lat = codec.encode(motion_pix.flatten(0, 1)).unflatten(0, motion_pix.shape[:2])
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(c.latents.shape, generator=g)
    img = frames_uint8(c.pixels[:, n:])
    print(f"ground truth: true speeds {true_speed[:3]}..., measured mean {np.mean(speeds_of(img, c.identities)):.2f}")
    asked = (0.0, 1.0, 4.0, 8.0)
    for t in (500, 800, 950):
        line = []
        for s in asked:
            cond, _ = conditioning(net, c.reference, motion_lat, c.mask, c.audio, asked_speed(args.n, n, f, s, args.motion))
            im = decode_uint8(codec, x0_estimate(net, sched, c.latents, noise, t, cond))
            line.append(f"asked {s:g}: {np.mean(speeds_of(im, c.identities)):.2f}")
        print(f"x0 estimate at t={t}: measured speed " + "  ".join(line))
    true_sp, other_sp = speeds_for(c.speed, n, args.motion), speeds_for(c.speed.roll(1, 0), n, args.motion)
    line = []
    for t in (950, 500):
        err = []
        for sp in (true_sp, other_sp):
            cond, _ = conditioning(net, c.reference, motion_lat, c.mask, c.audio, sp)
            err.append(float(((x0_estimate(net, sched, c.latents, noise, t, cond) - c.latents) ** 2).mean()))
        line.append(f"t={t}: {err[0]:.5f} / {err[1]:.5f}")
    print("x0 error with the true speed / another clip's speed: " + "  ".join(line))
    if args.no_sampling:
        return
    line = []
    for s in asked:
        gen = generate_clip(net, codec, sched, ref_pix, motion_pix, c.mask, c.audio,
                            asked_speed(args.n, n, f, s, args.motion), f, steps=20, cfg_scale=2.0)
        line.append(f"asked {s:g}: {np.mean(speeds_of(frames_uint8(gen), c.identities)):.2f}")
    print("sampled (20 DDIM steps, CFG 2): measured speed " + "  ".join(line))


if __name__ == "__main__":
    main()
