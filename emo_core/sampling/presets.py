"""Named sampling settings, the one place the CLI and the nodes read them from.

``quality`` is Hallo's own setting (DDIM, 40 steps, CFG 3.5). ``fast`` is DPM++ 2M over the
model's own timesteps (10 steps) with guidance only on the middle noise levels, sigma in
[0.28, 5.42] (the interval of Kynkäänniemi et al. 2024, arXiv 2404.07724): on Hallo's schedule
that is 6 of the 10 steps, so 16 forwards of batch 1 instead of quality's 80. Its price in lip
sync, head motion, identity and PSNR on a trained model, and its speed-up at SD1.5 widths, are
``bench/fast_sampling.py``'s table (12 steps, 20 forwards, measured under x4 there).
"""
from __future__ import annotations

from dataclasses import dataclass

from .samplers import check_sampler


@dataclass(frozen=True)
class Preset:
    sampler: str
    steps: int
    guidance: float
    guidance_interval: tuple[float, float] | None = None


PRESETS = {
    "quality": Preset("ddim", 40, 3.5),
    "fast": Preset("dpmpp_2m", 10, 3.5, (0.28, 5.42)),
}


def preset(name: str, option: str = "preset") -> Preset:
    """The preset called ``name``; ValueError naming ``option`` and the known names otherwise."""
    if name not in PRESETS:
        raise ValueError(f"{option}: expected one of {', '.join(PRESETS)}, got {name!r}")
    p = PRESETS[name]
    check_sampler(p.sampler)
    return p
