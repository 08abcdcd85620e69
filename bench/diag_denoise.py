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

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from emo_core.preprocess.audio_features import window_features  # noqa: E402
from emo_core.sampling.ddim import predicted_x0_and_eps  # noqa: E402
from emo_core.train import synthetic as S  # noqa: E402
from emo_core.train.data import box_mask  # noqa: E402
from emo_core.train.loop import conditioning  # noqa: E402
from diag_audio import diag_parser, load_trained  # noqa: E402  (same folder)


def clips_for(ec, cfg, codec, n: int, seed: int = 5):
    """n synthetic clips (motion frames first) as latents and their conditions."""
    rng = np.random.default_rng(seed)
    f, m = ec.clip_frames, ec.motion_frames
    frames, feats, boxes, speeds = [], [], [], []
    for _ in range(n):
        v = S.make_video(rng, S.Identity.random(rng), m + f, 64, 4.0)
        frames.append(v["frames"])
        feats.append(window_features(torch.from_numpy(v["audio_features"]), ec.audio.context, m, m + f))
        boxes.append(box_mask(torch.from_numpy(v["boxes"][m:]), 64, cfg["data"]["mask_expand"]))
        speeds.append(torch.from_numpy(v["speed"]))
    pix = torch.from_numpy(np.stack(frames)).permute(0, 1, 4, 2, 3).float() / 127.5 - 1
    lat = codec.encode(pix.flatten(0, 1)).unflatten(0, pix.shape[:2])
    return (lat[:, m:].permute(0, 2, 1, 3, 4), codec.encode(pix[:, 0]), lat[:, :m], torch.stack(boxes),
            torch.stack(feats), torch.stack(speeds))


@torch.no_grad()
def main(argv=None):
    args = diag_parser(8).parse_args(argv)
    torch.set_num_threads(1)
    net, ec, codec, sched, cfg = load_trained(Path(args.run), Path(args.configs), args.stage, args.set)
    clip, ref, motion, mask, audio, speed = clips_for(ec, cfg, codec, args.n)
    cond, _ = conditioning(net, ref, motion, mask, audio if args.stage >= 2 else None,
                           speed if args.stage == 3 else None)
    ac = sched.alphas_cumprod()
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(clip.shape, generator=g)
    print(f"{sched.prediction_type} prediction; latent variance around the mean "
          f"{float(((clip - clip.mean()) ** 2).mean()):.4f}")
    print(f"{'t':>5} {'SNR':>9} {'x0 error':>9} {'noisy error':>12} {'x0 follows input':>17}")
    for t in sched.timesteps(20):
        a = ac[t]
        x = a.sqrt() * clip + (1 - a).sqrt() * noise
        ts = torch.full((len(x),), t)
        x0, _ = predicted_x0_and_eps(net(x, ts, cond), x, a, sched.prediction_type)
        d = 0.01 * torch.randn(x.shape, generator=g)
        x0d, _ = predicted_x0_and_eps(net(x + d, ts, cond), x + d, a, sched.prediction_type)
        noisy = float(((x / a.sqrt() - clip) ** 2).mean()) if a > 1e-6 else float("inf")
        print(f"{t:>5} {float(a / (1 - a)):>9.4f} {float(((x0 - clip) ** 2).mean()):>9.4f} {noisy:>12.4f} "
              f"{float((x0d - x0).norm() / d.norm()):>17.3f}")


if __name__ == "__main__":
    main()
