"""Learning benchmark: does a tiny EMO trained through all three stages on procedural
talking faces learn what EMO claims? (A benchmark, not a CI test: about 20-30 min on CPU.)

    .venv/bin/python bench/learning.py --out runs/learning

Trains ``emo_core/train/configs/tiny_stage{1,2,3}.json`` on a synthetic set
(``emo_core.train.synthetic``: identities = colours/shapes, mouth opening = audio loudness,
head yaw speed = the speed condition, changing every 6-16 frames; face drifting across the
frame), then samples held-out identities and audio with DDIM + CFG, each video as ``--clips``
clips chained by motion frames (the first clip's motion frames are reference copies), and
prints, for the untrained and the trained model:

- mouth/loudness correlation (Pearson, over all generated frames; goal >= 0.7)
- reference-colour error (mean |face colour - reference face colour|, 0..1)
- measured head speed for each asked speed (should rise with it): per clip the |slope| of a
  line fitted to the per-frame yaw (``synthetic.measure_frame``: the yaw whose rendering of the
  identity best matches the frame, unbiased over the whole +-40 degrees), so jitter averages out,
  averaged over the clips (mean |d yaw|, which counts jitter as motion, is printed too), and the
  first clip's alone (its motion frames are copies of the reference, held still: the speed
  condition is all it has)
- the same from a driving video: each held-out truth video's head speed, measured per frame from
  its frames (``preprocess.pose.rotation_speed``, as EMO Speed measures one), asked of the
  trained model; its speed should come back out (the summary's speed error counts it)
- seams where clips join: mean |d yaw| from a clip's last frame to the next clip's first frame
  over mean |d yaw| between neighbouring frames inside clips (about 1: the motion frames carry the
  pose across the join; well above 1: each clip starts from its own pose, a visible cut)
- face centre inside the face-locator box and nearer its centre than the reference's face
  position (fraction of frames; the box is on the other side of the frame)

The latent codec is the configs' ``PixelLatent`` (2x2 average pooling folded to 48 channels at
1/8 resolution): nothing is downloaded. The ``truth`` column applies the same measurements to
the rendered ground-truth clips of the held-out cases (what a perfect model would score).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from diag_common import frames_uint8  # noqa: E402  (same folder)
from emo_core.chaining import first_motion_frames  # noqa: E402
from emo_core.eval.long_video import join_jump, join_ratio  # noqa: E402
from emo_core.families import FAMILIES  # noqa: E402
from emo_core.train import synthetic as S  # noqa: E402
from emo_core.train.latents import PixelLatent, build_codec  # noqa: E402
from emo_core.train.loop import build_net, generate_clip, load_config, schedule_for, train  # noqa: E402
from emo_core.train.init import read_checkpoint  # noqa: E402

CONFIGS = ROOT / "emo_core" / "train" / "configs"


def eval_cases(n: int, frames: int, motion: int, size: int, speeds, seed: int = 10_000, clips: int = 1):
    """Held-out identities and audio (seeds never used for training), ``clips * frames`` frames each."""
    rng = np.random.default_rng(seed)
    cases = []
    total = frames * clips
    for i in range(n):
        ident = S.Identity.random(rng)
        rx = ident.radius * size
        ry = rx * ident.aspect
        ax = rng.choice([rx + 1, size - rx - 1])  # reference at one side ...
        bx = size - ax  # ... the locator box at the other
        cy = rng.uniform(ry + 1, size - ry - 1)
        ref = S.render(ident, ax, cy, 0.0, 0.0, size)
        env = S.syllable_envelope(rng, total + 4)[2:2 + total]
        env = np.clip(env + rng.uniform(0, 1, total) * (env.std() < 0.1), 0, 1)  # some variation in every clip
        wave = S.voice(rng, env)
        feats = S.audio_features(wave, total)
        speed = float(speeds[i % len(speeds)])
        yaw = S.yaw_track(rng, total, speed)
        truth = np.stack([S.render(ident, bx, cy, y, e, size) for y, e in zip(yaw, env)])
        cases.append({"identity": ident, "reference": ref, "box": S.face_box(ident, bx, cy, size),
                      "reference_box": S.face_box(ident, ax, cy, size),
                      "centre": (bx, cy), "ref_centre": (ax, cy), "loudness": S.loudness(wave, total), "features": feats,
                      "speed": speed, "truth": truth})
    return cases


def driving_speed(video: np.ndarray, identity) -> np.ndarray:
    """A driving video's per-frame head speed as users get it (EMO Speed, ``--speed`` from a
    video): the yaw read from each frame, as rotations, through ``preprocess.pose.rotation_speed``."""
    from emo_core.preprocess.pose import rotation_speed

    yaw = np.array([S.measure_frame(f, identity)["yaw"] for f in video])
    return rotation_speed(S.yaw_rotation(yaw))


def _pix(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(img).permute(2, 0, 1).float() / 127.5 - 1


def clip_slopes(yaw: np.ndarray, frames: int) -> list[float]:
    """Per clip of ``frames``: the absolute slope of a least-squares line through the yaw track
    (degrees per frame)."""
    if frames < 2:
        return []
    t = np.arange(frames, dtype=np.float64)
    return [abs(np.polyfit(t, yaw[i:i + frames], 1)[0]) for i in range(0, len(yaw) - frames + 1, frames)]


def clip_speed(yaw: np.ndarray, frames: int) -> float:
    """Head speed of a video from its per-frame measured yaw (degrees): ``clip_slopes`` averaged
    over the clips, so frame-to-frame jitter averages out instead of adding to the speed (mean
    |d yaw| counts every wobble as motion)."""
    slopes = clip_slopes(yaw, frames)
    return float(np.mean(slopes)) if slopes else 0.0


def measure(cases, imgs, frames: int) -> dict:
    """The benchmark's numbers for generated (or ground-truth) videos uint8 [b, T, S, S, 3] made of
    clips of ``frames``."""
    mouth, loud, colour_err, inside, yaws = [], [], [], [], []
    speeds: dict[float, list] = {}
    jitter: dict[float, list] = {}
    first: dict[float, list] = {}  # the first clip's speed (its motion frames are still reference copies)
    for c, clip in zip(cases, imgs):
        ms = [S.measure_frame(f, c["identity"]) for f in clip]
        mouth += [x["mouth"] for x in ms]
        loud += list(c["loudness"])
        colour_err += [float(np.abs(x["colour"] - c["identity"].face).mean()) for x in ms]
        x0, y0, x1, y1 = c["box"]
        # inside the box, and nearer the box's centre than the reference's face centre
        inside += [float(x["found"] and x0 <= x["centre"][0] <= x1 and y0 <= x["centre"][1] <= y1
                         and abs(x["centre"][0] - c["centre"][0]) < abs(x["centre"][0] - c["ref_centre"][0]))
                   for x in ms]
        yaw = np.array([x["yaw"] for x in ms])
        speeds.setdefault(c["speed"], []).append(clip_speed(yaw, frames))
        slopes = clip_slopes(yaw, frames)
        first.setdefault(c["speed"], []).append(slopes[0] if slopes else 0.0)
        jitter.setdefault(c["speed"], []).append(float(np.abs(np.diff(yaw)).mean()))
        yaws.append(yaw)
    corr = float(np.corrcoef(mouth, loud)[0, 1]) if np.std(mouth) > 0 else 0.0
    return {"mouth_corr": corr, "colour_err": float(np.mean(colour_err)), "inside_box": float(np.mean(inside)),
            "speed": {k: float(np.mean(v)) for k, v in sorted(speeds.items())},
            "abs_dyaw": {k: float(np.mean(v)) for k, v in sorted(jitter.items())},
            "speed_first_clip": {k: float(np.mean(v)) for k, v in sorted(first.items())},
            "seam": join_ratio(yaws, frames), "seam_degrees": join_jump(yaws, frames), "images": imgs}


@torch.no_grad()
def evaluate(net, schedule, cases, frames: int, motion: int, m: int, size: int, expand: float, codec=None,
             steps: int = 20, cfg_scale: float = 2.0, seed: int = 0, **sample_kw) -> dict:
    """Generates each case's video clip after clip as EMO does: the first clip's motion frames
    are copies of the reference with its face moved into the locator box, as the pipeline makes
    them (``chaining.first_motion_frames``), every later clip's are the last ``motion`` generated frames.
    ``sample_kw``: ``generate_clip``'s sampler options (sampler, guidance_interval, deep_cache)."""
    from emo_core.preprocess.audio_features import window_features
    from emo_core.train.data import box_mask

    codec = codec or PixelLatent(4)
    net.eval()
    ref = torch.stack([_pix(c["reference"]) for c in cases])
    join = sample_kw.pop("join_denoise", 1.0)
    mask = torch.stack([box_mask(torch.tensor(c["box"])[None], size, expand) for c in cases])
    mot = torch.stack([first_motion_frames(r, motion, c["reference_box"], m)
                       for r, c, m in zip(ref, cases, mask)]) if motion else None
    total = len(cases[0]["loudness"])
    # per-frame speed over the whole video: a driving video's measured track, or the asked speed
    track = torch.tensor(np.stack([c.get("speed_track", np.full(total, c["speed"])) for c in cases]), dtype=torch.float32)
    out = []
    for k, start in enumerate(range(0, total, frames)):
        audio = torch.stack([window_features(torch.from_numpy(c["features"]), m, start, start + frames) for c in cases])
        speed = track[:, (torch.arange(start - motion, start + frames)).clamp(min=0)]  # motion frames, then the clip
        gen = generate_clip(net, codec, schedule, ref, mot, mask, audio, speed, frames, steps=steps,
                            cfg_scale=cfg_scale, seed=seed + k, join_denoise=join if k else 1.0, **sample_kw)
        out.append(gen)
        if motion:
            mot = gen[:, -motion:]
    return measure(cases, frames_uint8(torch.cat(out, 1)), frames)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/learning")
    p.add_argument("--videos", type=int, default=240)
    p.add_argument("--frames", type=int, default=48, help="frames per synthetic video")
    p.add_argument("--steps", type=int, nargs=3, default=None, metavar=("S1", "S2", "S3"),
                   help="optimizer steps per stage (default: the tiny configs' steps)")
    p.add_argument("--cases", type=int, default=24, help="held-out videos to sample")
    p.add_argument("--clips", type=int, default=3, help="clips per held-out video, chained by motion frames")
    p.add_argument("--speeds", type=float, nargs="+", default=[1.0, 4.0, 8.0], help="asked head speeds (deg/frame)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--ddim-steps", type=int, default=20)
    p.add_argument("--cfg", type=float, default=2.0, help="classifier-free guidance scale when sampling")
    p.add_argument("--join-denoise", type=float, default=None,
                   help="clips after the first start from their last motion frame at this level of the schedule "
                        "(default: the EMO family's, emo_core.families; 1 = from pure noise)")
    p.add_argument("--speed-guidance", type=float, default=None,
                   help="its own guidance scale on the speed (emo_core.sampling.guidance.guided_speed; default: the "
                        "EMO family's, emo_core.families; equal to --cfg: plain CFG)")
    p.add_argument("--noise-correlation", type=float, default=None,
                   help="share of the initial noise a clip's frames have in common (default: the EMO family's)")
    p.add_argument("--speed-from-t", type=int, default=None,
                   help="speed guidance only at timesteps >= this (plain CFG below)")
    p.add_argument("--eval-only", default=None, metavar="CHECKPOINT",
                   help="skip training; evaluate this stage-3 checkpoint (diagnostics)")
    p.add_argument("--configs", default=str(CONFIGS), help="folder with tiny_stage{1,2,3}.json")
    p.add_argument("--set", action="append", default=[], metavar="KEY=JSON",
                   help="config override for all three stages (e.g. train.seed=5)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0],
                   help="training seeds: 0 = the configs' seeds; each seed s > 0 trains with train.seed = 10 s + stage "
                        "and samples with seed s; several seeds run one after another (--jobs at once), each in "
                        "OUT/seed<s>, and the summary takes the worst seed")
    p.add_argument("--jobs", type=int, default=1, help="seeds trained at the same time (one process each)")
    args = p.parse_args(argv)
    if len(args.seeds) > 1:
        return run_seeds(args, argv if argv is not None else sys.argv[1:])
    torch.set_num_threads(args.threads)
    seed = args.seeds[0]
    out = Path(args.out)
    t_start = time.time()
    data = out / "synthetic"
    if not (data / "manifest.json").is_file():
        S.make_dataset(data, args.videos, args.frames, 64, seed=1)
    print(f"synthetic set: {args.videos} videos x {args.frames} frames at {data} ({time.time() - t_start:.0f} s)")

    prev = None
    results = []
    for stage in (1, 2, 3):
        sets = [f"data.shards={json.dumps([str(data)])}", f"output.dir={json.dumps(str(out / f'stage{stage}'))}",
                "output.progress=false", *([f"train.seed={10 * seed + stage}"] if seed else []), *args.set]
        if args.steps:
            sets.append(f"train.max_steps={args.steps[stage - 1]}")
            sets.append(f"output.checkpoint_every={args.steps[stage - 1]}")
        cfg = load_config(Path(args.configs) / f"tiny_stage{stage}.json", sets)
        cfg["init"] = {"checkpoint": str(prev)} if prev else {}
        if args.eval_only:
            results.append(cfg)
            continue
        t0 = time.time()
        r = train(cfg, log=lambda s: print("  " + s))
        prev = r.final
        first, last = np.mean(r.losses[:50]), np.mean(r.losses[-50:])
        print(f"stage {stage}: {r.steps} steps in {time.time() - t0:.0f} s, loss {first:.4f} -> {last:.4f}")
        results.append(cfg)
    prev = Path(args.eval_only) if args.eval_only else prev

    cfg = results[-1]
    join_denoise = FAMILIES["emo"].join_denoise if args.join_denoise is None else args.join_denoise
    speed_guidance = FAMILIES["emo"].speed_guidance if args.speed_guidance is None else args.speed_guidance
    noise_correlation = FAMILIES["emo"].noise_correlation if args.noise_correlation is None else args.noise_correlation
    trained, ec, _ = build_net({**cfg, "init": {}})
    state, _, _ = read_checkpoint(prev)
    trained.load_state_dict(state)
    untrained, _, _ = build_net({**cfg, "init": {}})
    schedule = schedule_for(cfg, ec)
    cases = eval_cases(args.cases, ec.clip_frames, ec.motion_frames, 64, args.speeds, clips=args.clips)
    kw = dict(frames=ec.clip_frames, motion=ec.motion_frames, m=ec.audio.context, size=64,
              expand=cfg["data"]["mask_expand"], codec=build_codec(cfg["latents"]), steps=args.ddim_steps,
              cfg_scale=args.cfg, seed=seed, join_denoise=join_denoise, speed_guidance=speed_guidance,
              noise_correlation=noise_correlation,
              speed_from_t=args.speed_from_t)
    t_eval = time.time()
    r_un = evaluate(untrained, schedule, cases, **kw)
    r_tr = evaluate(trained, schedule, cases, **kw)
    r_gt = measure(cases, np.stack([c["truth"] for c in cases]), ec.clip_frames)
    # each held-out truth video as the driving video: its measured speed in, the generated video's out
    r_drive = evaluate(trained, schedule, [{**c, "speed_track": driving_speed(c["truth"], c["identity"])} for c in cases],
                       **kw)
    print(f"sampling and measuring: {time.time() - t_eval:.0f} s ({args.ddim_steps} DDIM steps, CFG {args.cfg:g}, "
          f"speed guidance {speed_guidance}, join denoise {join_denoise:g}, noise correlation {noise_correlation:g})")
    try:
        from PIL import Image

        grid = np.concatenate([np.concatenate(list(video[:2 * ec.clip_frames]), 1) for video in r_tr["images"][:8]], 0)
        Image.fromarray(grid).save(out / "trained_samples.png")
    except Exception as exc:  # the picture is a convenience only
        print(f"(could not save the sample grid: {exc})")

    def row(name, *vals, fmt="{:.3f}"):
        print(f"{name:<46}" + "".join(f"{fmt.format(v):>11}" for v in vals))

    print()
    print(f"held-out: {args.cases} videos of {args.clips} chained clips of {ec.clip_frames} frames, new identities "
          "and audio ('truth' = the same measurements on rendered ground-truth videos)")
    print(f"{'metric':<46}{'untrained':>11}{'trained':>11}{'truth':>11}")
    rs = (r_un, r_tr, r_gt)
    row("mouth/loudness correlation (>= 0.7)", *(r["mouth_corr"] for r in rs))
    row("reference-colour error (0..1, lower)", *(r["colour_err"] for r in rs))
    row("face centre in locator box, not at ref", *(r["inside_box"] for r in rs))
    row("clip joins: |d yaw| across / inside (~1)", *(r["seam"] for r in rs))
    row("  (|d yaw| across joins, degrees)", *(r["seam_degrees"] for r in rs))
    for s in sorted(r_tr["speed"]):
        row(f"head speed asked {s:g} deg/frame -> measured", *(r["speed"][s] for r in rs))
    for s in sorted(r_tr["speed"]):
        row(f"  (first clip alone at asked {s:g})", *(r["speed_first_clip"][s] for r in rs))
    for s in sorted(r_tr["speed"]):
        print(f"{f'driving video at {s:g} -> its speed -> measured':<46}{'-':>11}{r_drive['speed'][s]:>11.3f}"
              f"{r_gt['speed'][s]:>11.3f}")
    for s in sorted(r_tr["speed"]):
        row(f"  (mean |d yaw| at asked {s:g}, jitter included)", *(r["abs_dyaw"][s] for r in rs))
    sp = [r_tr["speed"][s] for s in sorted(r_tr["speed"])]
    print(f"trained head speed monotonic in the asked speed: {all(a < b for a, b in zip(sp, sp[1:]))}")
    print(f"total time {time.time() - t_start:.0f} s")
    results = {k: {kk: vv for kk, vv in v.items() if kk != "images"}
               for k, v in (("untrained", r_un), ("trained", r_tr), ("truth", r_gt), ("driving", r_drive))}
    results["seed"] = seed
    (out / "results.json").write_text(json.dumps(results, indent=1))
    print(summary_line([results]))
    return 0


def speed_error(results: dict, which=("trained", "driving")) -> float:
    """Largest relative error of the trained model's measured head speed against the truth's,
    over the asked speeds and (where measured) the speeds taken from the driving videos."""
    gt = results["truth"]["speed"]
    runs = [results[w]["speed"] for w in which if w in results]
    return max(abs(r[k] - gt[k]) / max(gt[k], 1e-6) for r in runs for k in gt)


def monotonic(results: dict) -> bool:
    sp = [v for _, v in sorted(results["trained"]["speed"].items(), key=lambda kv: float(kv[0]))]
    return all(a < b for a, b in zip(sp, sp[1:]))


def summary_line(runs: list[dict]) -> str:
    """The worst seed's numbers: largest join ratio and speed error, smallest mouth r."""
    joins = max(r["trained"]["seam"] for r in runs)
    err = max(speed_error(r) for r in runs)
    mouth = min(r["trained"]["mouth_corr"] for r in runs)
    return f"summary: joins {joins:.2f}, speed error {err:.2f}, mouth r {mouth:.3f}"


def seed_table(runs: list[dict]) -> str:
    """One row per seed: mouth r, joins (ratio, and the jump in degrees), the speed error (asked,
    driving), monotonic, the measured speeds asked and from the driving videos (truth)."""
    lines = [f"{'seed':>4}  {'mouth r':>7}  {'joins':>5}  {'jump':>5}  {'speed error (asked, driving)':>28}  "
             "monotonic  asked -> measured (truth); driving video -> measured"]
    for r in runs:
        speeds = "  ".join(f"{k}: {v:.2f} ({r['truth']['speed'][k]:.2f})" for k, v in r["trained"]["speed"].items())
        if "driving" in r:
            speeds += ";  " + "  ".join(f"{v:.2f}" for v in r["driving"]["speed"].values())
        err = f"{speed_error(r):.2f} ({speed_error(r, ('trained',)):.2f}, " + (
            f"{speed_error(r, ('driving',)):.2f})" if "driving" in r else "-)")
        jump = r["trained"].get("seam_degrees")  # degrees (not in results written before it was measured)
        jump = "-" if jump is None else f"{jump:.1f}"
        lines.append(f"{r['seed']:>4}  {r['trained']['mouth_corr']:>7.3f}  {r['trained']['seam']:>5.2f}  {jump:>5}  "
                     f"{err:>28}  {str(monotonic(r)):>9}  {speeds}")
    return "\n".join(lines)


def run_seeds(args, argv: list[str]) -> int:
    """Each seed in its own process (``--jobs`` at once), then one row per seed and the summary."""
    import subprocess

    drop = {"--seeds", "--jobs", "--out"}
    base, skip = [], False
    for a in argv:
        if skip and not a.startswith("--"):
            continue
        skip = a.split("=")[0] in drop
        if not skip:
            base.append(a)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pending, running, codes = list(args.seeds), [], {}
    t0 = time.time()
    while pending or running:
        while pending and len(running) < max(1, args.jobs):
            s = pending.pop(0)
            log = open(out / f"seed{s}.log", "w")
            cmd = [sys.executable, __file__, *base, "--seeds", str(s), "--out", str(out / f"seed{s}")]
            print(f"seed {s}: {' '.join(cmd[1:])} > {out / f'seed{s}.log'}", flush=True)
            running.append((s, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT), log))
        time.sleep(5)
        for item in list(running):
            s, proc, log = item
            if proc.poll() is not None:
                log.close()
                running.remove(item)
                codes[s] = proc.returncode
                print(f"seed {s}: finished ({proc.returncode}) after {time.time() - t0:.0f} s", flush=True)
    failed = [s for s, c in codes.items() if c]
    if failed:
        print(f"seeds {failed} failed: see their logs in {out}")
        return 1
    runs = [json.loads((out / f"seed{s}" / "results.json").read_text()) for s in args.seeds]
    print()
    print(seed_table(runs))
    print(summary_line(runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
