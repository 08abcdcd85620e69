"""Diagnostics for the learning benchmark: does the asked head speed change the motion?

    .venv/bin/python bench/diag_speed.py RUN_DIR [--configs DIR]

For a trained run (``bench/learning.py --out RUN_DIR``) it takes fresh synthetic clips, noises
each to a few steps t and measures the head speed (|slope| of the per-frame yaw, as the
benchmark does) of the model's clean estimate x0 when asked speeds 0 / 1 / 4 / 8, then samples
the same clips with DDIM at each asked speed. ``--motion true`` gives the clips their true
previous frames (turning at 4 deg/frame) as motion frames, so the turn direction is known. If the speed layers work, the measured speed rises
with the asked one (at high t, where the noisy clip says little about the motion).
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from emo_core.train import synthetic as S  # noqa: E402
from emo_core.train.loop import conditioning, generate_clip  # noqa: E402
from emo_core.sampling.ddim import predicted_x0_and_eps  # noqa: E402
from diag_audio import diag_parser, load_trained  # noqa: E402  (same folder)
from learning import clip_speed  # noqa: E402


def speeds_of(img, idents):
    return [clip_speed(np.array([S.measure_frame(im, idents[i])["yaw"] for im in img[i]]), img.shape[1])
            for i in range(len(img))]


def asked_speed(b: int, n: int, f: int, s: float, motion: str) -> torch.Tensor:
    """[b, n + f] speeds: the motion frames' own (4 deg/frame when they are true frames), then ``s``."""
    lead = s if motion == "reference" else 4.0
    return torch.tensor([[lead] * n + [s] * f] * b)


@torch.no_grad()
def main(argv=None):
    p = diag_parser(12, stage=False)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-sampling", action="store_true")
    p.add_argument("--motion", choices=("reference", "true"), default="reference",
                   help="motion frames: reference copies (a video's first clip: the turn direction is open) or the "
                        "clip's true previous frames, turning at 4 deg/frame (a later clip: the direction is known)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    net, ec, codec, sched, cfg = load_trained(Path(args.run), Path(args.configs), 3, args.set)
    ac = sched.alphas_cumprod()
    from emo_core.preprocess.audio_features import window_features
    from emo_core.train.data import box_mask

    rng = np.random.default_rng(321)
    f, n = ec.clip_frames, ec.motion_frames
    clips, idents, feats, boxes, true_speed = [], [], [], [], []
    for i in range(args.n):
        ident = S.Identity.random(rng)
        sp = float([1, 4, 8][i % 3])
        v = S.make_video(rng, ident, n + f, 64, np.array([4.0] * n + [sp] * f))
        clips.append(v["frames"])
        idents.append(ident)
        feats.append(window_features(torch.from_numpy(v["audio_features"]), ec.audio.context, n, n + f))
        boxes.append(box_mask(torch.from_numpy(v["boxes"][n:]), 64, cfg["data"]["mask_expand"]))
        true_speed.append(sp)
    pix = torch.from_numpy(np.stack(clips)).permute(0, 1, 4, 2, 3).float() / 127.5 - 1
    lat = codec.encode(pix.flatten(0, 1)).unflatten(0, pix.shape[:2])
    clip_lat = lat[:, n:].permute(0, 2, 1, 3, 4)
    ref_pix = pix[:, 0]
    ref_lat = codec.encode(ref_pix)
    motion_pix = ref_pix[:, None].expand(-1, n, -1, -1, -1) if args.motion == "reference" else pix[:, :n]
    motion_lat = codec.encode(motion_pix.flatten(0, 1)).unflatten(0, motion_pix.shape[:2])
    audio = torch.stack(feats)
    mask = torch.stack(boxes)
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(clip_lat.shape, generator=g)
    img = ((pix[:, n:].permute(0, 1, 3, 4, 2) + 1) * 127.5).round().byte().numpy()
    print(f"ground truth: true speeds {true_speed[:3]}..., measured mean {np.mean(speeds_of(img, idents)):.2f}")
    asked = (0.0, 1.0, 4.0, 8.0)
    for t in (500, 800, 950):
        a = ac[t]
        x = a.sqrt() * clip_lat + (1 - a).sqrt() * noise
        line = []
        for s in asked:
            speed = asked_speed(len(x), n, f, s, args.motion)
            cond, _ = conditioning(net, ref_lat, motion_lat, mask, audio, speed)
            out = net(x, torch.full((len(x),), t), cond)
            x0, _ = predicted_x0_and_eps(out, x, a, sched.prediction_type)
            im = ((codec.decode(x0.permute(0, 2, 1, 3, 4).flatten(0, 1)) + 1) * 127.5).round().byte()
            im = im.permute(0, 2, 3, 1).numpy().reshape(len(x), f, 64, 64, 3)
            line.append(f"asked {s:g}: {np.mean(speeds_of(im, idents)):.2f}")
        print(f"x0 estimate at t={t}: measured speed " + "  ".join(line))
    if args.no_sampling:
        return
    line = []
    for s in asked:
        speed = asked_speed(len(clips), n, f, s, args.motion)
        gen = generate_clip(net, codec, sched, ref_pix, motion_pix, mask, audio, speed, f, steps=20, cfg_scale=2.0)
        im = ((gen.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 1, 3, 4, 2).numpy()
        line.append(f"asked {s:g}: {np.mean(speeds_of(im, idents)):.2f}")
    print("sampled (20 DDIM steps, CFG 2): measured speed " + "  ".join(line))


if __name__ == "__main__":
    main()
