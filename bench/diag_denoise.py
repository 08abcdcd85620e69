"""Diagnostics for the learning benchmark: does the trained model denoise at every noise level?

    .venv/bin/python bench/diag_denoise.py RUN_DIR [--stage 1|2|3] [--set KEY=JSON ...]

For a trained run (``bench/learning.py --out RUN_DIR``) it noises fresh synthetic clips to each
timestep of a 20-step sampling schedule and prints the mean squared error of the model's x0
estimate, beside the error of the noisy clip itself (x_t / sqrt(alpha_bar)). A model that uses
its input has an x0 error that falls as the noise falls; one that cannot pass the noise through
(its error at mid noise above its error at pure noise) leaves per-pixel noise in its samples.
It also prints how strongly the x0 estimate follows a small random change of the input.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from diag_common import diag_parser, load_from_args, synthetic_clips, x0_estimate  # noqa: E402
from emo_core.train.loop import conditioning  # noqa: E402


@torch.no_grad()
def main(argv=None):
    args = diag_parser(8).parse_args(argv)
    net, ec, codec, sched, cfg = load_from_args(args)
    c = synthetic_clips(ec, cfg, codec, [4.0] * args.n, seed=5)
    clip = c.latents
    cond, _ = conditioning(net, c.reference, c.motion, c.mask, c.audio if args.stage >= 2 else None,
                           c.speed if args.stage == 3 else None)
    ac = sched.alphas_cumprod()
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(clip.shape, generator=g)
    print(f"{sched.prediction_type} prediction; latent variance around the mean "
          f"{float(((clip - clip.mean()) ** 2).mean()):.4f}")
    print(f"{'t':>5} {'SNR':>9} {'x0 error':>9} {'noisy error':>12} {'x0 follows input':>17}")
    for t in sched.timesteps(20):
        a = ac[t]
        x0 = x0_estimate(net, sched, clip, noise, t, cond)
        d = 0.01 * torch.randn(clip.shape, generator=g)
        x0d = x0_estimate(net, sched, clip, noise + d / (1 - a).sqrt(), t, cond)  # the same x_t moved by d
        noisy = float((1 - a) / a * noise.pow(2).mean()) if a > 1e-6 else float("inf")  # x_t / sqrt(a) - x0
        print(f"{t:>5} {float(a / (1 - a)):>9.4f} {float(((x0 - clip) ** 2).mean()):>9.4f} {noisy:>12.4f} "
              f"{float((x0d - x0).norm() / d.norm()):>17.3f}")


if __name__ == "__main__":
    main()
