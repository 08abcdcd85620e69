"""Can one temporal module continue a motion from its motion frames? (capacity check, CPU minutes)

    .venv/bin/python bench/temporal_extrapolation.py [--motion 2] [--heads 2] [--steps 8000]

EMO's speed is a magnitude; the direction of a head turn has to come from the motion frames, so
the temporal modules must continue the motion those frames show. This trains one AnimateDiff
temporal module (the tiny configs' widths: 48 channels, 8 norm groups) alone on the cleanest form
of that task: per spatial position, features move linearly, x_k = a + k v; the module gets the
first ``--motion`` frames clean as motion frames and nothing for the clip's frames (what an x0
estimate at pure noise has), and must output the clip's frames. It prints the error next to two
baselines, copying the last motion frame and averaging the motion frames, and the share of the
motion beyond copying the last frame that the module explains (1 = perfect extrapolation).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from emo_core.models.temporal import TemporalModule  # noqa: E402


def linear_motion(batch: int, frames: int, channels: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """[batch, frames, channels, size, size] with x_k = a + k v per position and channel."""
    a = torch.randn(batch, channels, size, size, generator=generator)
    v = 0.3 * torch.randn(batch, channels, size, size, generator=generator)
    k = torch.arange(frames, dtype=torch.float32).view(1, -1, 1, 1, 1)
    return a[:, None] + k * v[:, None]


def continue_motion(module: TemporalModule, motion: torch.Tensor, frames: int) -> torch.Tensor:
    """The module's clip frames [b, frames, c, h, w] from the motion frames alone (clip input zero)."""
    b, _, c, h, w = motion.shape
    clip = torch.zeros(b * frames, c, h, w)
    return module(clip, frames, motion).view(b, frames, c, h, w)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--motion", type=int, default=2, help="motion frames (the tiny configs' n)")
    p.add_argument("--frames", type=int, default=6, help="clip frames (the tiny configs' f)")
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--channels", type=int, default=48)
    p.add_argument("--steps", type=int, default=8000)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    n, f, size = args.motion, args.frames, 4
    module = TemporalModule(args.channels, args.heads, 1, 2, 32, 8)
    opt = torch.optim.AdamW(module.parameters(), lr=args.lr)
    g = torch.Generator().manual_seed(1)
    t0 = time.time()
    for _ in range(args.steps):
        x = linear_motion(args.batch, n + f, args.channels, size, g)
        loss = (continue_motion(module, x[:, :n], f) - x[:, n:]).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    with torch.no_grad():
        x = linear_motion(256, n + f, args.channels, size, torch.Generator().manual_seed(2))
        target = x[:, n:]
        err = float((continue_motion(module, x[:, :n], f) - target).pow(2).mean())
        copy_last = float((x[:, n - 1:n] - target).pow(2).mean())
        mean_motion = float((x[:, :n].mean(1, keepdim=True) - target).pow(2).mean())
    print(f"{args.steps} steps in {time.time() - t0:.0f} s ({n} motion frames, {args.heads} heads): "
          f"error {err:.3f}; copy the last motion frame {copy_last:.3f}; mean of the motion frames {mean_motion:.3f}")
    print(f"motion beyond copying the last frame explained: {1 - err / copy_last:.2f} (1 = perfect extrapolation)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
