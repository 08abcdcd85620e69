"""Seconds per guided denoising step of the backbone UNet: as shipped, without SDPA, channels_last, torch.compile.

    .venv/bin/python bench/unet_speed.py [--frames 4] [--size 64] [--repeats 3] [--threads N] [--device cpu]

One step is the call the pipeline's samplers make: the guided ``model_fn(x, t)`` of
``emo_core.conditioning.denoiser`` over one clip's conditioning (portrait and motion-frame
features, audio windows, face mask, region masks), CFG 3.5 batched as [uncond, cond], so the
backbone sees 2 x frames images. The model is Hallo's layout at SD1.5 widths with random weights
(``bench_core.sd15_width_config`` / ``make_pipeline``), float32; ``--size`` is the latent side
(64 = 512 px).

Settings, all on the same weights, inputs and timesteps:

- ``shipped``: the code as it is (every attention is ``F.scaled_dot_product_attention``,
  ``emo_core.models.attention.attend_projected``).
- ``plain attention``: the same attention written out (``softmax(q k^T * scale) v`` through
  diffusers' ``Attention.get_attention_scores``, as its non-SDPA ``AttnProcessor``), sliced
  over batch x heads so the score matrix stays under ``PLAIN_SLICE_ELEMENTS`` (as diffusers'
  sliced attention; the full [rows x heads, Lq, Lk] matrix would not fit at 512 px): what SDPA buys.
- ``channels_last``: the backbone's conv weights in ``torch.channels_last`` (what
  ``EmoPipeline(..., channels_last=True)`` does); the convolutions' outputs, and the feature maps
  after them, follow their weights.
- ``torch.compile``: ``torch.compile(backbone)`` (mode default); its first calls (compilation)
  are reported apart. A failure to compile prints its first line and drops the setting.

Timing: one warm-up round, then ``--repeats`` rounds, each running every setting once
(A B C D A B C D ...) so machine load falls on all alike; every round uses its own timestep of
the 40-step schedule and the same latents. Per setting: the median seconds per step, its
speed-up over ``shipped`` (shipped's median / its own; < 1: slower) and the largest |difference|
of its outputs from shipped's in the same round (float noise only); ``paired``: the median over
rounds of shipped's seconds / the setting's in the same round (robust to a machine whose speed
drifts between rounds). The last line names the setting with the best paired speed-up:
``unet speed: <setting> x<paired speed-up> vs shipped``.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch
from einops import rearrange

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_core import make_pipeline, sd15_width_config  # noqa: E402
from emo_core.conditioning import clip_conditioning, denoiser  # noqa: E402
from emo_core.config import EmoConfig  # noqa: E402
from emo_core.models import attention as attention_module  # noqa: E402

GUIDANCE = 3.5
PLAIN_SLICE_ELEMENTS = 2 ** 28  # attention scores per slice of the plain formula (1 GiB in float32)
SETTINGS = ("shipped", "plain attention", "channels_last", "torch.compile")


@dataclasses.dataclass
class Case:
    """One clip's inputs on a pipeline: ``model_fn(model)`` is the pipeline's guided step
    (``model(x, t, cond)`` in place of the network when given)."""

    pipe: object
    x: torch.Tensor  # [1, 4, f, h, w] latents
    timesteps: list[int]
    model_fn: Callable[[Callable | None], Callable]


def make_case(cfg, size: int, device, dtype=torch.float32, seed: int = 0) -> Case:
    """The pipeline (``bench_core.make_pipeline``) and one clip's conditioning at latent side
    ``size``: random portrait, identity, audio windows, motion frames, face and region masks."""
    pipe = make_pipeline(cfg, device, dtype)
    g = torch.Generator().manual_seed(seed)
    f, n, a = cfg.clip_frames, cfg.motion_frames, cfg.audio
    px = 8 * size
    windows = torch.randn(f, a.window, a.feature_blocks, a.feature_dim, generator=g)
    face = torch.zeros(px, px)
    face[px // 4:3 * px // 4, px // 4:3 * px // 4] = 1
    regions = None
    if a.region_attention:
        levels = len(cfg.unet.block_out_channels)
        regions = {k: [torch.rand(1, (size >> lv) ** 2, generator=g).to(device) for lv in range(levels)]
                   for k in ("full", "face", "lip")}
    emb = torch.randn(cfg.identity_dim, generator=g) if cfg.identity_dim else None
    speed = torch.full((f,), 2.0) if cfg.speed is not None else None
    ref = pipe.encode_reference(torch.rand(px, px, 3, generator=g), emb, cache=True)
    motion = torch.randn(n, cfg.unet.in_channels, size, size, generator=g) if n else None
    x = torch.randn(1, cfg.unet.in_channels, f, size, size, generator=g).to(device)
    with torch.no_grad():
        cond = clip_conditioning(pipe.net, ref, audio_windows=windows, face_mask=face.to(device, dtype),
                                 speed=speed, region_masks=regions)

    def model_fn(model: Callable | None = None) -> Callable:
        # as EmoPipeline.sample_clip builds it (the sampler's state in float32, the network in its dtype)
        with torch.no_grad():
            fn = denoiser(pipe.net, ref, cond, pipe.rule, motion, frames=f, guidance=GUIDANCE, model=model)
        return lambda x, t: fn(x.to(dtype), t).to(torch.float32)

    return Case(pipe, x, pipe.schedule.timesteps(40), model_fn)


# ---- the settings ----------------------------------------------------------------------------
def plain_attend_projected(attn, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``attention.attend_projected`` without SDPA: diffusers' plain attention scores (baddbmm,
    softmax) and a bmm, in slices of batch x heads."""
    h = attn.heads
    q, k, v = (rearrange(t, "b l (h d) -> (b h) l d", h=h) for t in (q, k, v))
    out = q.new_empty(q.shape[0], q.shape[1], v.shape[2])
    step = max(1, PLAIN_SLICE_ELEMENTS // (q.shape[1] * k.shape[1]))
    for i in range(0, q.shape[0], step):
        out[i:i + step] = torch.bmm(attn.get_attention_scores(q[i:i + step], k[i:i + step]), v[i:i + step])
    out = rearrange(out, "(b h) l d -> b l (h d)", h=h)
    return attn.to_out[1](attn.to_out[0](out))


@contextlib.contextmanager
def plain_attention():
    """Every EMO attention processor (they all end in ``attention.attend_projected``) uses the
    plain formula while inside."""
    shipped = attention_module.attend_projected
    attention_module.attend_projected = plain_attend_projected
    try:
        yield
    finally:
        attention_module.attend_projected = shipped


@contextlib.contextmanager
def channels_last(module: torch.nn.Module):
    """``module``'s 4-d weights (its convolutions) in channels_last while inside."""
    module.to(memory_format=torch.channels_last)
    try:
        yield
    finally:
        module.to(memory_format=torch.contiguous_format)


@dataclasses.dataclass
class Setting:
    name: str
    fn: Callable  # model_fn(x, t)
    context: Callable = contextlib.nullcontext  # entered around every call


def make_settings(case: Case, names=SETTINGS) -> tuple[list[Setting], dict[str, str]]:
    """The settings of ``names`` on ``case`` and, per setting that could not be made, why."""
    unet = case.pipe.net.denoising_unet
    out, skipped = [], {}
    for name in names:
        if name == "shipped":
            out.append(Setting(name, case.model_fn(None)))
        elif name == "plain attention":
            out.append(Setting(name, case.model_fn(None), plain_attention))
        elif name == "channels_last":
            out.append(Setting(name, case.model_fn(None), lambda: channels_last(unet)))
        elif name == "torch.compile":
            try:
                compiled = torch.compile(unet)
            except Exception as e:  # noqa: BLE001 (any toolchain failure is reported, not fatal)
                skipped[name] = first_line(e)
                continue
            out.append(Setting(name, case.model_fn(lambda x, t, c: compiled(x, t, c))))
        else:
            raise ValueError(f"unknown setting {name!r}; known: {SETTINGS}")
    return out, skipped


def compile_report() -> str:
    """What dynamo did in this process: graphs compiled, graph breaks (the first reason)."""
    from torch._dynamo.utils import counters

    breaks = counters["graph_break"]
    first = next(iter(breaks), "")
    return (f"torch.compile: {counters['stats']['unique_graphs']} graph(s) compiled, {sum(breaks.values())} graph "
            f"break(s)" + (f", first: {first.strip().splitlines()[0]}" if first else ""))


def first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"


def sync(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize()


@torch.no_grad()
def call(case: Case, s: Setting, t: int) -> tuple[torch.Tensor, float]:
    """(output, seconds) of one guided step of ``s`` at timestep ``t``."""
    device = case.x.device
    x = case.x
    with s.context():
        sync(device)
        t0 = time.perf_counter()
        y = s.fn(x, t)
        sync(device)
        seconds = time.perf_counter() - t0
    return y.contiguous(), seconds


def measure(case: Case, settings: list[Setting], repeats: int, warmup: int = 1, log=print) -> dict[str, dict]:
    """Interleaved rounds (every setting once per round, in order); the first ``warmup`` rounds
    are not timed. Per setting: ``seconds`` (timed rounds), ``warmup`` (seconds of the warm-up
    calls), ``diff`` (largest |output - shipped's output| of the same round; settings[0] is
    the reference), ``failed`` (first line of an error; the setting is then left out)."""
    res = {s.name: {"seconds": [], "warmup": [], "diff": 0.0, "failed": None, "max_abs": 0.0} for s in settings}
    ts = case.timesteps
    for r in range(warmup + repeats):
        t = ts[(len(ts) // 2 + r) % len(ts)]  # a new timestep every round (compile must not specialise on one)
        ref = None
        for s in settings:
            if res[s.name]["failed"]:
                continue
            try:
                y, sec = call(case, s, t)
            except Exception as e:  # noqa: BLE001 (torch.compile's toolchain failures land here)
                if s is settings[0]:
                    raise
                res[s.name]["failed"] = first_line(e)
                log(f"  {s.name}: failed: {res[s.name]['failed']}")
                continue
            if ref is None:
                ref = y
            res[s.name]["diff"] = max(res[s.name]["diff"], float((y - ref).abs().max()))
            res[s.name]["max_abs"] = max(res[s.name]["max_abs"], float(y.abs().max()))
            res[s.name]["warmup" if r < warmup else "seconds"].append(sec)
            log(f"  {'warm-up' if r < warmup else f'round {r - warmup + 1}'} t={t} {s.name}: {sec:.2f} s")
    return res


def table(res: dict[str, dict], skipped: dict[str, str], scale: float) -> tuple[list[str], str, float]:
    """Printed lines, the fastest setting and its speed-up over shipped (the paired one: the
    median over rounds of shipped's seconds / the setting's in the same round, so a machine
    that speeds up or slows down between rounds does not count)."""
    ship = res["shipped"]["seconds"]
    base = statistics.median(ship)
    lines = [f"{'setting':<18}{'median s/step':>14}{'speed-up':>10}{'paired':>8}{'max |diff|':>12}{'rel diff':>10}"
             "  per round; notes"]
    best, best_x = "shipped", 1.0
    for name, r in res.items():
        if r["failed"] or not r["seconds"]:
            lines.append(f"{name:<18}{'-':>14}{'-':>10}{'-':>8}{'-':>12}{'-':>10}  failed: {r['failed']}")
            continue
        med = statistics.median(r["seconds"])
        rounds = [a / b for a, b in zip(ship, r["seconds"])]
        paired = statistics.median(rounds)
        note = " ".join(f"x{v:.2f}" for v in rounds)
        if name == "torch.compile":
            note += "; warm-up (compiling): " + ", ".join(f"{w:.1f} s" for w in r["warmup"])
        lines.append(f"{name:<18}{med:>14.3f}{f'x{base / med:.3f}':>10}{f'x{paired:.3f}':>8}{r['diff']:>12.2e}"
                     f"{r['diff'] / scale:>10.1e}  {note}")
        if paired > best_x:
            best, best_x = name, paired
    for name, why in skipped.items():
        lines.append(f"{name:<18}{'-':>14}{'-':>10}{'-':>8}{'-':>12}{'-':>10}  skipped: {why}")
    return lines, best, best_x


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=None, help="frames per clip (default: bench_core's SD1.5-width 4)")
    p.add_argument("--size", type=int, default=64, help="latent side (64 = 512 px; a multiple of 8)")
    p.add_argument("--repeats", type=int, default=3, help="timed rounds (after one warm-up round)")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds first (torch.compile compiles in them)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--model", choices=("sd15", "tiny"), default="sd15",
                   help="sd15: SD1.5 widths (default); tiny: the tests' tiny Hallo-family config (checks only)")
    p.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=SETTINGS,
                   help="which settings (shipped always runs first)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here")
    cfg = sd15_width_config() if args.model == "sd15" else EmoConfig.tiny(family="hallo")
    if args.frames:
        cfg = dataclasses.replace(cfg, clip_frames=args.frames)
    t0 = time.perf_counter()
    case = make_case(cfg, args.size, device)
    names = ["shipped", *[n for n in args.settings if n != "shipped"]]
    settings, skipped = make_settings(case, names)
    f = cfg.clip_frames
    widths = "SD1.5 widths" if args.model == "sd15" else "tiny widths"
    print(f"{widths} (Hallo's layout, random weights), latent {args.size}x{args.size} ({8 * args.size} px), "
          f"{f} frames + {cfg.motion_frames} motion frames, CFG {GUIDANCE:g} batched (2 x {f} images per step), "
          f"float32, {device}, {torch.get_num_threads()} thread(s), torch {torch.__version__}; "
          f"built in {time.perf_counter() - t0:.0f} s", flush=True)
    res = measure(case, settings, args.repeats, args.warmup, log=lambda s: print(s, flush=True))
    scale = res["shipped"]["max_abs"]
    lines, best, x = table(res, skipped, scale)
    print()
    print("\n".join(lines))
    print(f"median of {args.repeats} interleaved round(s) after {args.warmup} warm-up; speed-up: shipped's "
          f"median / the setting's (< 1: slower); paired: median over rounds of shipped's seconds / the setting's "
          f"in the same round (per round: each round's); max |diff|: largest |output - shipped output| of the "
          f"same round; rel diff: over max |output| ({scale:.2f})")
    if "torch.compile" in res:
        print(compile_report())
    print(f"unet speed: {best} x{x:.2f} vs shipped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
