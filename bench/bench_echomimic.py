"""Seconds per frame: EchoMimic-accelerated settings beside Hallo settings, same-size model, one run.

    .venv/bin/python bench/bench_echomimic.py [--size tiny|small|sd15] [--frames 48] [--latent 16]
                                              [--device cuda] [--dtype float16]

Both families are built with the same UNet and temporal widths (random weights):
- EchoMimic accelerated: the whole video as one latent sequence, 12-frame context windows
  overlapping by 3, shifted every step, 6 DDIM steps, no guidance (one forward per window);
- Hallo: 16-frame clips with 2 motion frames through ReferenceNet per clip, 40 DDIM steps,
  classifier-free guidance 3.5 (both halves batched).
Only latent sampling is timed (ReferenceNet included, VAE excluded: it costs the same per frame
for both). The table gives seconds per frame for each and their ratio. On CPU compare the
ratio, not absolute times.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from emo_core.config import EmoConfig, TemporalConfig, UNetConfig
from emo_core.families.echomimic import sample_video
from emo_core.models.backbone import Conditioning
from emo_core.models.emo import EmoNet
from emo_core.sampling.ddim import Schedule, sample_ddim
from emo_core.sampling.guidance import guided

SIZES = {
    "tiny": UNetConfig(block_out_channels=(16, 32, 32, 32), layers_per_block=1, attention_head_dim=2,
                       cross_attention_dim=16, norm_num_groups=8),
    "small": UNetConfig(block_out_channels=(64, 128, 128, 128), layers_per_block=1, attention_head_dim=4,
                        cross_attention_dim=64, norm_num_groups=32),
    "sd15": UNetConfig(),
}


def configs(size: str) -> tuple[EmoConfig, EmoConfig]:
    unet = SIZES[size]
    temporal = TemporalConfig(num_attention_heads=min(8, unet.block_out_channels[0] // 8),
                              norm_num_groups=unet.norm_num_groups)
    echo = dataclasses.replace(EmoConfig.echomimic(), unet=unet, temporal=temporal)
    hallo = dataclasses.replace(EmoConfig.hallo(), unet=unet, temporal=dataclasses.replace(temporal, in_plain_blocks=False))
    return echo, hallo


def build(cfg: EmoConfig, device, dtype) -> EmoNet:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return EmoNet(cfg).to(device=device, dtype=dtype).eval().requires_grad_(False)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


@torch.no_grad()
def run_echomimic(net: EmoNet, frames: int, latent: int, steps: int = 6, guidance: float = 1.0) -> torch.Tensor:
    a = net.cfg.audio
    windows = torch.randn(frames, a.window, a.feature_blocks, a.feature_dim)
    ref = torch.randn(1, 4, latent, latent)
    mask = torch.ones(latent * 8, latent * 8)
    return sample_video(net, ref, windows, Schedule.hallo(), steps, face_mask=mask, guidance=guidance,
                        generator=torch.Generator().manual_seed(0), storage_device=net.device)


@torch.no_grad()
def run_hallo(net: EmoNet, frames: int, latent: int, steps: int = 40, guidance: float = 3.5) -> torch.Tensor:
    cfg, dev, dt = net.cfg, net.device, net.dtype
    f, n = cfg.clip_frames, cfg.motion_frames
    a = cfg.audio
    ref = torch.randn(1, 4, latent, latent, device=dev, dtype=dt)
    identity = net.identity_tokens(torch.randn(1, cfg.identity_dim, device=dev, dtype=dt))
    null_identity = net.identity_tokens(None)
    reference = net.reference_features(ref, identity)
    face = net.face_features(torch.ones(1, latent * 8, latent * 8, device=dev, dtype=dt))
    levels = len(cfg.unet.block_out_channels)
    masks = {r: [torch.ones(1, (latent >> lv) ** 2, device=dev, dtype=dt) for lv in range(levels)]
             for r in ("full", "face", "lip")}
    motion = ref[:, None].expand(1, n, -1, -1, -1)  # Hallo's first clip: copies of the reference
    clips = []
    for _ in range(-(-frames // f)):
        windows = torch.randn(1, f, 2 * a.context + 1, a.feature_blocks, a.feature_dim, device=dev, dtype=dt)
        cond = Conditioning(reference=reference.with_motion(net.motion_features(motion, identity)), identity=identity,
                            audio=net.audio_tokens(windows), face=face, region_masks=masks, region_weights=(1.0, 1.0, 1.0))
        x = torch.randn(1, 4, f, latent, latent, generator=torch.Generator().manual_seed(0)).to(dev, dt)
        clip = sample_ddim(guided(net, cond, null_identity, guidance), x, Schedule.hallo(), steps)
        motion = clip[:, :, -n:].transpose(1, 2)  # Hallo re-encodes the decoded frames; the cost is the VAE's
        clips.append(clip)
    return torch.cat(clips, dim=2)[:, :, :frames]


def timed(fn, device, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", choices=sorted(SIZES), default="tiny")
    p.add_argument("--frames", type=int, default=48, help="video length in frames")
    p.add_argument("--latent", type=int, default=16, help="latent side (image side / 8)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"))
    p.add_argument("--threads", type=int, default=1, help="CPU threads (1 is fastest on a busy small machine)")
    p.add_argument("--repeats", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    echo_cfg, hallo_cfg = configs(args.size)
    echo, hallo = build(echo_cfg, device, dtype), build(hallo_cfg, device, dtype)
    count = lambda m: sum(p.numel() for p in m.denoising_unet.parameters()) / 1e6
    run_echomimic(echo, min(args.frames, 13), args.latent, steps=1)  # warm-up
    run_hallo(hallo, hallo_cfg.clip_frames, args.latent, steps=1)
    t_echo = timed(lambda: run_echomimic(echo, args.frames, args.latent), device, args.repeats)
    t_hallo = timed(lambda: run_hallo(hallo, args.frames, args.latent), device, args.repeats)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {args.threads} thread(s)"
    print(f"device: {name}; dtype {args.dtype}; UNet size '{args.size}' {SIZES[args.size].block_out_channels}; "
          f"latent {args.latent}x{args.latent} (image {8 * args.latent}px); {args.frames} frames")
    print(f"{'settings':52s} {'backbone M':>10s} {'s total':>9s} {'s/frame':>9s}")
    rows = [("EchoMimic accelerated: 6 steps, no CFG, 12/3 windows", count(echo), t_echo),
            ("Hallo: 40 steps, CFG 3.5, 16-frame clips + 2 motion", count(hallo), t_hallo)]
    for label, params, secs in rows:
        print(f"{label:52s} {params:10.2f} {secs:9.3f} {secs / args.frames:9.4f}")
    print(f"speed-up EchoMimic-accelerated vs Hallo settings: {t_hallo / t_echo:.1f}x")


if __name__ == "__main__":
    main()
