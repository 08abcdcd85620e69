"""The price of every fast sampling setting, on a trained model, against Hallo's 40-step DDIM + CFG.

    .venv/bin/python bench/fast_sampling.py [--run runs/learning | --checkpoint PATH]

Two parts, in one run:

1. Quality, on the learning benchmark's trained tiny EMO (``bench/learning.py``; its stage-3
   checkpoint is reused: ``--checkpoint`` or the newest one under ``--run``/stage3, trained with
   ``learning.py`` first when there is none). Every setting samples the same held-out cases
   (``learning.eval_cases``: new identities and audio, clips chained by motion frames) with the
   same seeds through ``emo_core.train.loop.generate_clip`` (the inference conditioning, CFG 3.5)
   and is measured with ``learning.measure``: mouth/loudness correlation, head speed per asked
   speed, reference-colour error; plus the PSNR of its frames against the reference setting's
   frames (ddim-40, CFG 3.5, same seeds) and the tiny model's seconds per clip.
2. Speed at SD1.5 widths: Hallo's UNet layout (320/640/1280/1280, 2 layers per block, random
   weights), a 4-frame clip at an 8x8 latent (``--sd15-latent``), one full clip per setting through
   ``EmoPipeline.sample_clip`` (the code the CLI and nodes run) for the reference, the fast preset
   and the fast preset with deep_cache=2, all in this process; every setting also gets a per-clip
   cost from its UNet calls (counted on the tiny model: same schedule, so the same calls) times
   the measured seconds of such a call at SD1.5 widths (calibration clips, fastest of ``--repeat``).

The last line states the fast preset's price:
``fast preset: x<speedup> vs ddim-40 cfg-3.5, mouth r <fast> vs <reference>, psnr <dB> dB``
(speed-up of whole clips at SD1.5 widths, from the UNet calls when not timed whole; mouth r and PSNR
on the trained tiny model).
"""
from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import learning  # noqa: E402  (same folder: the learning benchmark's cases and measurements)
from bench_core import make_pipeline, sd15_width_config  # noqa: E402
from emo_core.models.backbone import DeepCache  # noqa: E402
from emo_core.sampling.presets import PRESETS  # noqa: E402
from emo_core.train.init import read_checkpoint  # noqa: E402
from emo_core.train.latents import build_codec  # noqa: E402
from emo_core.train.loop import build_net, load_config, schedule_for  # noqa: E402

GUIDANCE = 3.5


def settings() -> dict[str, dict]:
    """name -> sampler options (all at CFG 3.5); the first is the reference."""
    fast = PRESETS["fast"]
    iv = fast.guidance_interval
    out = {"ddim-40 cfg-3.5 (reference)": dict(sampler="ddim", steps=40)}
    for sampler, steps in (("ddim", 20), ("dpmpp_2m", 12), ("unipc", 10), ("euler", 12)):
        out[f"{sampler}-{steps}"] = dict(sampler=sampler, steps=steps)
        out[f"{sampler}-{steps} + interval"] = dict(sampler=sampler, steps=steps, guidance_interval=iv)
    preset = dict(sampler=fast.sampler, steps=fast.steps, guidance_interval=fast.guidance_interval)
    out["fast preset"] = preset
    out["fast + deep_cache=2"] = {**preset, "deep_cache": 2}
    return out


class CallLog:
    """Records every denoising-UNet call of ``net``: [rows per video, shallow (DeepCache reuse),
    seconds]; ``rows`` divides the batch by ``videos`` (the cases sampled side by side)."""

    def __init__(self, net, videos: int = 1):
        self.calls, self.videos, self._t0 = [], videos, 0.0
        unet = net.denoising_unet
        self._hooks = [unet.register_forward_pre_hook(self._pre), unet.register_forward_hook(self._post)]
        self._reuse = DeepCache.reuse
        log = self

        def reuse(cache, x):  # DeepCache's own decision, recorded
            r = log._reuse(cache, x)
            log.calls[-1][1] = r
            return r

        DeepCache.reuse = reuse

    def _pre(self, module, args):
        self.calls.append([args[0].shape[0] // self.videos, False, 0.0])
        self._t0 = time.perf_counter()

    def _post(self, module, args, out):
        self.calls[-1][2] = time.perf_counter() - self._t0

    def close(self):
        for h in self._hooks:
            h.remove()
        DeepCache.reuse = self._reuse

    def kinds(self) -> list[tuple[int, bool]]:
        return [(rows, shallow) for rows, shallow, _ in self.calls]


def newest_checkpoint(stage_dir: Path) -> Path | None:
    cks = [p for p in stage_dir.glob("checkpoint-*") if p.is_dir()]
    num = lambda p: int("".join(c for c in p.name.split("-")[-1] if c.isdigit()) or -1)
    return max(cks, key=num) if cks else None


def trained_model(args):
    """(net, schedule, codec, EmoConfig, config, checkpoint path) of the learning benchmark's stage 3."""
    ck = Path(args.checkpoint) if args.checkpoint else newest_checkpoint(Path(args.run) / "stage3")
    if ck is None:
        print(f"no stage-3 checkpoint under {args.run}: training one with bench/learning.py first")
        argv = ["--out", args.run, "--threads", str(args.threads), "--cases", "3", "--clips", "1"]
        if args.train_steps:
            argv += ["--steps", *map(str, args.train_steps)]
        learning.main(argv)
        ck = newest_checkpoint(Path(args.run) / "stage3")
    cfg = load_config(Path(args.configs) / "tiny_stage3.json", ['data.shards=["x"]', 'output.dir="x"', *args.set])
    cfg["init"] = {}
    net, ec, _ = build_net(cfg)
    net.load_state_dict(read_checkpoint(ck)[0])
    return net.eval(), schedule_for(cfg, ec), build_codec(cfg["latents"]), ec, cfg, ck


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def quality(args, table: dict) -> dict:
    torch.set_num_threads(args.threads)
    net, schedule, codec, ec, cfg, ck = trained_model(args)
    print(f"trained tiny EMO: {ck}")
    cases = learning.eval_cases(args.cases, ec.clip_frames, ec.motion_frames, 64, args.speeds, clips=args.clips)
    kw = dict(frames=ec.clip_frames, motion=ec.motion_frames, m=ec.audio.context, size=64,
              expand=cfg["data"]["mask_expand"], codec=codec, cfg_scale=GUIDANCE)
    clip_seconds = []
    generate = learning.generate_clip

    def timed(*a, **k):  # the sampling alone, not the measurements
        t0 = time.perf_counter()
        out = generate(*a, **k)
        clip_seconds.append(time.perf_counter() - t0)
        return out

    learning.generate_clip = timed
    results = {}
    try:
        for name, opts in table.items():
            same = next((n for n, o in table.items() if n in results and o == opts), None)
            if same:  # the same options under another name (the fast preset is one of the rows)
                results[name] = results[same]
                continue
            clip_seconds.clear()
            log = CallLog(net, len(cases))
            try:
                r = learning.evaluate(net, schedule, cases, **kw, **opts)
            finally:
                log.close()
            r["seconds_per_clip"] = sum(clip_seconds) / (len(clip_seconds) * len(cases))
            r["calls"] = log.kinds()[:len(log.calls) // len(clip_seconds)]  # one clip's calls
            results[name] = r
            print(f"  {name}: {r['seconds_per_clip']:.3f} s/clip, mouth r {r['mouth_corr']:.3f}", flush=True)
    finally:
        learning.generate_clip = generate
    ref = results[next(iter(table))]["images"]
    for r in results.values():
        r["psnr"] = psnr(r["images"], ref)
    truth = learning.measure(cases, np.stack([c["truth"] for c in cases]), ec.clip_frames)
    return {"results": results, "truth": truth, "cases": len(cases), "clips": args.clips, "frames": ec.clip_frames,
            "checkpoint": ck}


def sd15_speed(args, table: dict, calls: dict[str, list], full: list[str]) -> dict:
    """Seconds per 4-frame clip at SD1.5 widths: per setting of ``calls`` (its UNet calls per clip
    as (rows, shallow)), the sum of each call's measured cost, from calibration clips timed call by
    call (full and DeepCache-shallow calls of 1 and 2 rows, the fastest of ``--repeat``);
    the settings named in ``full`` are also timed as whole clips."""
    torch.set_num_threads(args.threads)
    cfg = sd15_width_config()
    t0 = time.perf_counter()
    pipe = make_pipeline(cfg, torch.device("cpu"), torch.float32)
    size, f = 8 * args.sd15_latent, cfg.clip_frames
    a = cfg.audio
    g = torch.Generator().manual_seed(0)
    windows = torch.randn(f, 2 * a.context + 1, a.feature_blocks, a.feature_dim, generator=g)
    h = size // 8
    region = {k: [torch.rand(1, (h >> lv) ** 2, generator=g) for lv in range(4)] for k in ("full", "face", "lip")}
    emb = torch.randn(cfg.identity_dim, generator=g) if cfg.identity_dim else None
    ref = pipe.encode_reference(torch.rand(size, size, 3, generator=g), emb, cache=True)
    print(f"  sd1.5 widths: model built and portrait encoded in {time.perf_counter() - t0:.0f} s", flush=True)

    def clip(opts, guidance=GUIDANCE):
        t = time.perf_counter()
        pipe.sample_clip(ref, windows, None, region_masks=region, guidance=guidance,
                         generator=torch.Generator().manual_seed(1), **opts)
        return time.perf_counter() - t

    cost: dict[tuple[int, bool], float] = {}
    for k in range(args.repeat):  # calibration: 2 steps with deep_cache=2 = one full + one shallow call
        for guidance in (GUIDANCE, 1.0):
            log = CallLog(pipe.net)
            try:
                clip(dict(sampler="ddim", steps=2, deep_cache=2), guidance)
            finally:
                log.close()
            for rows, shallow, sec in log.calls:
                cost[rows, shallow] = min(cost.get((rows, shallow), float("inf")), sec)
    print("  sd1.5 widths, seconds per UNet call: " + ", ".join(
        f"{rows} row{'s' if rows > 1 else ''} {'shallow' if sh else 'full'} {sec:.2f}"
        for (rows, sh), sec in sorted(cost.items())), flush=True)
    est = {n: sum(cost[k] for k in c) for n, c in calls.items()}
    whole = {}
    for n in full:
        whole[n] = clip(table[n])
        print(f"  sd1.5 widths, whole clip: {n}: {whole[n]:.1f} s (from the calls: {est[n]:.1f} s)", flush=True)
    gc.collect()
    return {"estimate": est, "whole": whole, "cost": cost}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", default="runs/learning", help="bench/learning.py --out folder (its stage3 checkpoint)")
    p.add_argument("--checkpoint", default=None, help="a stage-3 checkpoint of the learning benchmark")
    p.add_argument("--train-steps", type=int, nargs=3, default=None, metavar=("S1", "S2", "S3"),
                   help="optimizer steps per stage when no checkpoint exists (default: learning.py's)")
    p.add_argument("--configs", default=str(learning.CONFIGS))
    p.add_argument("--set", action="append", default=[], metavar="KEY=JSON", help="the run's config overrides")
    p.add_argument("--cases", type=int, default=12, help="held-out videos")
    p.add_argument("--clips", type=int, default=2, help="chained clips per video")
    p.add_argument("--speeds", type=float, nargs="+", default=[1.0, 4.0, 8.0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--sd15-latent", type=int, default=8, help="latent side at SD1.5 widths")
    p.add_argument("--sd15-clips", nargs="*", default=None, metavar="SETTING",
                   help="settings also timed as whole clips at SD1.5 widths (default: the reference, 'fast preset' "
                   "and 'fast + deep_cache=2'; minutes on a CPU; none: give the option alone)")
    p.add_argument("--repeat", type=int, default=2, help="SD1.5-width calibration runs (the fastest counts)")
    p.add_argument("--skip-sd15", action="store_true", help="(checks only) no SD1.5-width timing")
    args = p.parse_args(argv)
    t_start = time.time()
    table = settings()
    names = list(table)
    ref_name, fast_name = names[0], "fast preset"

    q = quality(args, table)
    res = q["results"]
    if args.sd15_clips is None:
        args.sd15_clips = [ref_name, fast_name, "fast + deep_cache=2"]
    unknown = [n for n in args.sd15_clips if n not in table]
    if unknown:
        raise SystemExit(f"--sd15-clips: unknown setting(s) {unknown}; known: {names}")
    sd = None if args.skip_sd15 else sd15_speed(args, table, {n: res[n]["calls"] for n in names}, args.sd15_clips)

    fast = PRESETS["fast"]
    print()
    print(f"trained tiny EMO ({q['checkpoint']}), {q['cases']} held-out videos x {q['clips']} chained clips of "
          f"{q['frames']} frames, CFG {GUIDANCE:g} everywhere; '+ interval': guidance only at sigma in "
          f"{list(fast.guidance_interval)}; PSNR against the reference's frames (same seeds).")
    if sd:
        print(f"SD1.5 s/clip: Hallo's UNet at SD1.5 widths (320/640/1280/1280, 2 layers), {args.sd15_latent}x"
              f"{args.sd15_latent} latent, {sd15_width_config().clip_frames} frames, {args.threads} thread(s): "
              "each setting's UNet calls per clip x the measured seconds of such a call (calibrated in this run; "
              "the work outside the UNet is left out)")
    speeds = sorted(res[ref_name]["speed"])
    print(f"{'setting':<30}{'calls':>6}{'rows':>5}{'shallow':>8}{'mouth r':>8}{'colour':>7}"
          + "".join(f"{f'v@{s:g}':>6}" for s in speeds)
          + f"{'PSNR dB':>8}{'tiny s':>7}{'SD1.5 s':>8}{'speed-up':>9}{'whole clip':>11}")
    for n in names:
        r = res[n]
        c = r["calls"]
        ps = "ref" if n == ref_name else f"{r['psnr']:.1f}"
        sd_s = f"{sd['estimate'][n]:.0f}" if sd else "-"
        sd_x = f"x{sd['estimate'][ref_name] / sd['estimate'][n]:.2f}" if sd else "-"
        sd_w = f"{sd['whole'][n]:.0f}" if sd and n in sd["whole"] else "-"
        print(f"{n:<30}{len(c):>6}{sum(k[0] for k in c):>5}{sum(k[1] for k in c):>8}{r['mouth_corr']:>8.3f}"
              f"{r['colour_err']:>7.3f}" + "".join(f"{r['speed'][s]:>6.2f}" for s in speeds)
              + f"{ps:>8}{r['seconds_per_clip']:>7.2f}{sd_s:>8}{sd_x:>9}{sd_w:>11}")
    t = q["truth"]
    print(f"{'truth (rendered clips)':<30}{'':>19}{t['mouth_corr']:>8.3f}{t['colour_err']:>7.3f}"
          + "".join(f"{t['speed'][s]:>6.2f}" for s in speeds))
    print("calls: UNet calls per clip; rows: batch rows over them (2 for a guided step); shallow: DeepCache calls "
          "(first down + last up block only); colour: reference-colour error (0..1); v@s: measured head speed "
          "(deg/frame) at asked speed s; tiny s: seconds per clip of the tiny model; SD1.5 s: from the calls; "
          "whole clip: SD1.5-width seconds of one whole clip through EmoPipeline.sample_clip, timed in this run")
    whole = bool(sd) and ref_name in sd["whole"] and fast_name in sd["whole"]
    print(f"total time {time.time() - t_start:.0f} s")
    ref_r, fast_r = res[ref_name]["mouth_corr"], res[fast_name]["mouth_corr"]
    speedup = float("nan") if not sd else sd["whole" if whole else "estimate"][ref_name] / sd[
        "whole" if whole else "estimate"][fast_name]
    print(f"speed-up at SD1.5 widths {'of whole clips timed' if whole else 'from the UNet calls'}")
    print(f"fast preset: x{speedup:.2f} vs ddim-40 cfg-3.5, mouth r {fast_r:.3f} vs {ref_r:.3f}, "
          f"psnr {res[fast_name]['psnr']:.1f} dB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
