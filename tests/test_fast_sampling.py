"""generate_clip's sampler options (what bench/fast_sampling.py prices) and the benchmark's call log."""
import sys
from pathlib import Path

import numpy as np
import torch

from emo_core.sampling.ddim import sample_ddim
from emo_core.sampling.guidance import guided
from emo_core.train.latents import build_codec
from emo_core.train.loop import build_net, conditioning, generate_clip, load_config, schedule_for

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))


def _tiny():
    cfg = load_config(ROOT / "emo_core/train/configs/tiny_stage3.json", ['data.shards=["x"]', 'output.dir="x"'])
    cfg["init"] = {}
    net, ec, _ = build_net(cfg)
    return net.eval(), ec, build_codec(cfg["latents"]), schedule_for(cfg, ec)


def _inputs(ec, b=1):
    g = torch.Generator().manual_seed(3)
    ref = torch.rand(b, 3, 64, 64, generator=g) * 2 - 1
    mot = ref[:, None].expand(-1, ec.motion_frames, -1, -1, -1)
    mask = torch.zeros(b, 1, 64, 64)
    mask[..., 16:48, 16:48] = 1
    a = ec.audio
    audio = torch.randn(b, ec.clip_frames, 2 * a.context + 1, a.feature_blocks, a.feature_dim, generator=g)
    speed = torch.full((b, ec.motion_frames + ec.clip_frames), 2.0)
    return ref, mot, mask, audio, speed


@torch.no_grad()
def test_generate_clip_ddim_default_is_the_old_path():
    net, ec, codec, schedule = _tiny()
    ref, mot, mask, audio, speed = _inputs(ec)
    out = generate_clip(net, codec, schedule, ref, mot, mask, audio, speed, ec.clip_frames, steps=3, cfg_scale=2.0,
                        seed=5)
    # the old body: DDIM over guided(net) from the same noise
    ref_lat = codec.encode(ref)
    motion_lat = codec.encode(mot.flatten(0, 1)).unflatten(0, mot.shape[:2])
    cond, null = conditioning(net, ref_lat, motion_lat, mask, audio, speed)
    g = torch.Generator().manual_seed(5)
    x = torch.randn((1, ref_lat.shape[1], ec.clip_frames, *ref_lat.shape[-2:]), generator=g)
    x = sample_ddim(guided(lambda x, t, c: net(x, t, c), cond, null, 2.0), x, schedule, 3)
    old = codec.decode(x.permute(0, 2, 1, 3, 4).flatten(0, 1).float()).unflatten(0, (1, ec.clip_frames))
    assert torch.equal(out, old)


@torch.no_grad()
def test_generate_clip_sampler_interval_deep_cache_and_call_log():
    from fast_sampling import CallLog, settings

    net, ec, codec, schedule = _tiny()
    ref, mot, mask, audio, speed = _inputs(ec, b=2)
    kw = dict(steps=6, cfg_scale=3.5, seed=1)
    log = CallLog(net, videos=2)
    try:
        a = generate_clip(net, codec, schedule, ref, mot, mask, audio, speed, ec.clip_frames, sampler="dpmpp_2m",
                          guidance_interval=(0.28, 5.42), **kw)
        n_interval = len(log.calls)
        b = generate_clip(net, codec, schedule, ref, mot, mask, audio, speed, ec.clip_frames, sampler="dpmpp_2m",
                          guidance_interval=(0.28, 5.42), deep_cache=2, **kw)
    finally:
        log.close()
    assert torch.isfinite(a).all() and torch.isfinite(b).all() and not torch.equal(a, b)
    first, second = log.kinds()[:n_interval], log.kinds()[n_interval:]
    assert len(first) == len(second) == 6
    assert {r for r, _ in first} == {1, 2} and not any(s for _, s in first)  # interval: guided and not
    assert any(s for _, s in second)  # deep cache: some shallow calls
    assert [r for r, _ in first] == [r for r, _ in second]
    names = list(settings())
    assert names[0].startswith("ddim-40") and "fast preset" in names and "fast + deep_cache=2" in names
    assert np.isfinite(float(a.mean()))
