"""Seconds per generated frame and peak memory of the EMO pipeline, reference caching on/off.

    .venv/bin/python bench/bench_core.py [--device cuda] [--dtype float16] [--skip-sd15]

Two models: the tiny test config, and an SD1.5-width model (Hallo's layout at SD1.5 widths,
random weights) at a small latent size. Each runs the same clips with the portrait's
ReferenceNet features computed once per video ("cache on") and recomputed at every denoising
step ("cache off"); the rows are printed side by side with their ratio. On CPU compare ratios,
not absolute times.
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import os
import threading
import time

import torch

from emo_core.config import EmoConfig
from emo_core.models.emo import EmoNet
from emo_core.pipeline import EmoPipeline
from emo_core.sampling.ddim import Schedule
from emo_core.vae import tiny_vae


class PeakMemory:
    """Peak resident memory (CPU, sampled) or peak allocated memory (CUDA) above the start."""

    def __init__(self, device: torch.device):
        self.device, self.peak, self._stop = device, 0, threading.Event()

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            self.base = self._rss()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss() - self.base)
            time.sleep(0.005)

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self.base
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, self._rss() - self.base)


def sd15_width_config() -> EmoConfig:
    hallo = EmoConfig.hallo()
    return dataclasses.replace(hallo, clip_frames=4, motion_frames=2)


def make_pipeline(cfg: EmoConfig, device, dtype) -> EmoPipeline:
    torch.manual_seed(0)
    with torch.device(device):
        net = EmoNet(cfg)
    return EmoPipeline(net, tiny_vae(0), Schedule.hallo(), device=device, dtype=dtype)


def run(pipe: EmoPipeline, size: int, frames: int, steps: int, cache: bool) -> tuple[float, int]:
    cfg = pipe.cfg
    a = cfg.audio
    windows = torch.randn(frames, 2 * a.context + 1, a.feature_blocks, a.feature_dim)
    h = size // 8
    region = {k: [torch.rand(1, (h >> lv) ** 2) for lv in range(4)] for k in ("full", "face", "lip")}
    emb = torch.randn(cfg.identity_dim) if cfg.identity_dim else None
    gc.collect()
    with PeakMemory(pipe.device) as mem:
        start = time.perf_counter()
        ref = pipe.encode_reference(torch.rand(size, size, 3), emb, cache=cache)
        n = sum(c.shape[0] for c in pipe.generate(ref, windows, region_masks=region, steps=steps, guidance=3.5))
        if pipe.device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    assert n == frames
    return seconds / frames, mem.peak


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--skip-sd15", action="store_true")
    ap.add_argument("--repeat", type=int, default=2, help="interleaved runs per setting; the fastest counts")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    cases = [("tiny", EmoConfig.tiny(family="hallo"), 64, 8, 4)]
    if not args.skip_sd15:
        cases.append(("sd15-width", sd15_width_config(), 128, 8, 2))
    print(f"device {device} ({torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}), {args.dtype}, "
          f"{args.threads} thread(s), torch {torch.__version__}")
    print(f"{'model':12s} {'latent':>7s} {'frames':>6s} {'steps':>5s} {'cache':>6s} {'s/frame':>9s} {'peak MiB':>9s}")
    for name, cfg, size, frames, steps in cases:
        pipe = make_pipeline(cfg, device, dtype)
        run(pipe, size, cfg.clip_frames, 1, True)  # warm-up
        results = {True: (float("inf"), 0), False: (float("inf"), 0)}
        for _ in range(args.repeat):  # interleaved, so machine load hits both settings alike
            for cache in (True, False):
                spf, peak = run(pipe, size, frames, steps, cache)
                results[cache] = (min(results[cache][0], spf), max(results[cache][1], peak))
        for cache in (True, False):
            spf, peak = results[cache]
            print(f"{name:12s} {f'{size // 8}x{size // 8}':>7s} {frames:>6d} {steps:>5d} {'on' if cache else 'off':>6s} "
                  f"{spf:>9.3f} {peak / 2**20:>9.0f}")
        print(f"{name:12s} caching speed-up: x{results[False][0] / results[True][0]:.2f}")
        del pipe
        gc.collect()


if __name__ == "__main__":
    main()
