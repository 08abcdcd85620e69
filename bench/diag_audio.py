"""Diagnostics for the learning benchmark: is the mouth driven by the audio path?

    .venv/bin/python bench/diag_audio.py RUN_DIR [--configs DIR]

For a trained run (``bench/learning.py --out RUN_DIR``) it takes training clips and held-out
cases and reports, for the predicted x0 at a few noise levels (one model call from a noised
ground-truth clip), the correlation of the measured mouth opening with the loudness, with the
clip's own audio and with the audio of another clip (shuffled). If the audio layers carry the
mouth, the own-audio correlation is high and the shuffled one is low.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from diag_common import decode_uint8, diag_parser, frames_uint8, load_from_args, synthetic_clips, x0_estimate  # noqa: E402
from emo_core.train import synthetic as S  # noqa: E402
from emo_core.train.loop import conditioning, generate_clip  # noqa: E402


def mouth_correlation(img: np.ndarray, c) -> float:
    mouth = [S.measure_frame(im, c.identities[i])["mouth"] for i in range(len(img)) for im in img[i]]
    return float(np.corrcoef(mouth, c.loudness)[0, 1])


@torch.no_grad()
def main(argv=None):
    args = diag_parser(16).parse_args(argv)
    net, ec, codec, sched, cfg = load_from_args(args)
    f, n = ec.clip_frames, ec.motion_frames
    c = synthetic_clips(ec, cfg, codec, [float([1, 4, 8][i % 3]) for i in range(args.n)], seed=123)
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(c.latents.shape, generator=g)
    for name, aud in (("own audio", c.audio), ("shuffled audio", c.audio.roll(1, 0)),
                      ("no audio", torch.zeros_like(c.audio))):
        cond, _ = conditioning(net, c.reference, c.motion, c.mask, aud, c.speed)
        line = [f"t={t}: {mouth_correlation(decode_uint8(codec, x0_estimate(net, sched, c.latents, noise, t, cond)), c):+.2f}"
                for t in (200, 500, 800, 950)]
        print(f"x0 mouth/loudness correlation, {name:<15}", "  ".join(line))
    # full DDIM sampling on the same clips: true motion frames vs reference copies as motion frames
    ref_pix = c.pixels[:, 0]
    for name, mot in (("true motion frames", c.pixels[:, :n]),
                      ("reference as motion", ref_pix[:, None].expand(-1, n, -1, -1, -1))):
        gen = generate_clip(net, codec, sched, ref_pix, mot, c.mask, c.audio, c.speed, f, steps=20, cfg_scale=2.0)
        print(f"sampled (20 DDIM steps, CFG 2), {name:<20} mouth/loudness correlation "
              f"{mouth_correlation(frames_uint8(gen), c):+.2f}")


if __name__ == "__main__":
    main()
