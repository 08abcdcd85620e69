"""Diagnostics for the learning benchmark: is the mouth driven by the audio path?

    .venv/bin/python bench/diag_audio.py RUN_DIR [--configs DIR]

For a trained run (``bench/learning.py --out RUN_DIR``) it takes training clips and held-out
cases and reports, for the predicted x0 at a few noise levels (one model call from a noised
ground-truth clip), the correlation of the measured mouth opening with the loudness, with the
clip's own audio and with the audio of another clip (shuffled). If the audio layers carry the
mouth, the own-audio correlation is high and the shuffled one is low.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from emo_core.train import synthetic as S  # noqa: E402
from emo_core.train.init import read_checkpoint  # noqa: E402
from emo_core.train.latents import build_codec  # noqa: E402
from emo_core.train.loop import build_net, conditioning, load_config, schedule_for  # noqa: E402
from emo_core.sampling.ddim import predicted_x0_and_eps  # noqa: E402


@torch.no_grad()
def load_trained(run: Path, configs: Path, stage: int, sets=()):
    """The newest checkpoint of ``run``'s stage with its tiny config (plus the ``--set`` overrides
    the run was trained with): (net, EmoConfig, codec, schedule, config)."""
    cfg = load_config(configs / f"tiny_stage{stage}.json", ['data.shards=["x"]', 'output.dir="x"', *sets])
    cfg["init"] = {}
    net, ec, _ = build_net(cfg)
    ck = sorted((run / f"stage{stage}").glob("checkpoint-*"))[-1]
    net.load_state_dict(read_checkpoint(ck)[0])
    return net.eval(), ec, build_codec(cfg["latents"]), schedule_for(cfg, ec), cfg


def diag_parser(n: int, stage: bool = True) -> argparse.ArgumentParser:
    """The arguments every diagnostic takes: the run folder, the configs it was trained with, how many clips."""
    p = argparse.ArgumentParser()
    p.add_argument("run")
    p.add_argument("--configs", default=str(ROOT / "emo_core" / "train" / "configs"))
    if stage:
        p.add_argument("--stage", type=int, default=3)
    p.add_argument("--n", type=int, default=n)
    p.add_argument("--set", action="append", default=[], metavar="KEY=JSON", help="the run's config overrides")
    return p


def main(argv=None):
    args = diag_parser(16).parse_args(argv)
    torch.set_num_threads(1)
    net, ec, codec, sched, cfg = load_trained(Path(args.run), Path(args.configs), args.stage, args.set)
    ac = sched.alphas_cumprod()
    from emo_core.preprocess.audio_features import window_features
    from emo_core.train.data import box_mask

    rng = np.random.default_rng(123)
    f, n = ec.clip_frames, ec.motion_frames
    clips, idents, louds, feats, refs, boxes, speeds = [], [], [], [], [], [], []
    for i in range(args.n):
        ident = S.Identity.random(rng)
        v = S.make_video(rng, ident, n + f, 64, float([1, 4, 8][i % 3]))
        clips.append(v["frames"])
        idents.append(ident)
        louds.append(S.loudness(v["audio"], n + f)[n:])
        feats.append(window_features(torch.from_numpy(v["audio_features"]), ec.audio.context, n, n + f))
        refs.append(v["frames"][0])
        boxes.append(box_mask(torch.from_numpy(v["boxes"][n:]), 64, cfg["data"]["mask_expand"]))
        speeds.append(torch.from_numpy(v["speed"]))
    pix = torch.from_numpy(np.stack(clips)).permute(0, 1, 4, 2, 3).float() / 127.5 - 1
    lat = codec.encode(pix.flatten(0, 1)).unflatten(0, pix.shape[:2])
    clip_lat = lat[:, n:].permute(0, 2, 1, 3, 4)
    motion_lat = lat[:, :n]
    ref_lat = codec.encode(pix[:, 0])
    audio = torch.stack(feats)
    mask = torch.stack(boxes)
    speed = torch.stack(speeds)
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(clip_lat.shape, generator=g)
    for name, aud in (("own audio", audio), ("shuffled audio", audio.roll(1, 0)), ("no audio", torch.zeros_like(audio))):
        cond, _ = conditioning(net, ref_lat, motion_lat, mask, aud, speed)
        line = []
        for t in (200, 500, 800, 950):
            a = ac[t]
            x = a.sqrt() * clip_lat + (1 - a).sqrt() * noise
            out = net(x, torch.full((len(x),), t), cond)
            x0, _ = predicted_x0_and_eps(out, x, a, sched.prediction_type)
            img = ((codec.decode(x0.permute(0, 2, 1, 3, 4).flatten(0, 1)) + 1) * 127.5).round().byte()
            img = img.permute(0, 2, 3, 1).numpy().reshape(len(x), f, 64, 64, 3)
            mouth = [S.measure_frame(im, idents[i])["mouth"] for i in range(len(x)) for im in img[i]]
            loud = np.concatenate(louds)
            line.append(f"t={t}: {np.corrcoef(mouth, loud)[0, 1]:+.2f}")
        print(f"x0 mouth/loudness correlation, {name:<15}", "  ".join(line))
    # full DDIM sampling on the same clips: true motion frames vs reference copies as motion frames
    from emo_core.train.loop import generate_clip

    ref_pix = pix[:, 0]
    for name, mot in (("true motion frames", pix[:, :n]), ("reference as motion", ref_pix[:, None].expand(-1, n, -1, -1, -1))):
        gen = generate_clip(net, codec, sched, ref_pix, mot, mask, audio, speed, f, steps=20, cfg_scale=2.0)
        img = ((gen.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 1, 3, 4, 2).numpy()
        mouth = [S.measure_frame(im, idents[i])["mouth"] for i in range(len(img)) for im in img[i]]
        print(f"sampled (20 DDIM steps, CFG 2), {name:<20} mouth/loudness correlation "
              f"{np.corrcoef(mouth, np.concatenate(louds))[0, 1]:+.2f}")


if __name__ == "__main__":
    main()
