"""bench/unet_speed.py at tiny size: every setting gives shipped's guided step up to float noise,
the settings leave the model as they found it, and the script prints its table and summary line.
(torch.compile is left out here: compiling takes minutes even at tiny widths.)"""
import sys
from pathlib import Path

import pytest
import torch

from emo_core.config import EmoConfig
from emo_core.models import attention

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import unet_speed  # noqa: E402

FAST = ["shipped", "plain attention", "channels_last"]


@pytest.fixture(scope="module")
def case():
    torch.set_num_threads(1)
    return unet_speed.make_case(EmoConfig.tiny(family="hallo"), 8, "cpu")


@torch.no_grad()
def test_plain_attention_is_sdpa_sliced_or_not(monkeypatch):
    from diffusers.models.attention_processor import Attention

    torch.manual_seed(0)
    attn = Attention(query_dim=8, heads=2, dim_head=4)
    q, k, v = torch.randn(3, 5, 8), torch.randn(3, 7, 8), torch.randn(3, 7, 8)
    want = attention.attend_projected(attn, q, k, v)
    torch.testing.assert_close(unet_speed.plain_attend_projected(attn, q, k, v), want, rtol=1e-5, atol=1e-6)
    monkeypatch.setattr(unet_speed, "PLAIN_SLICE_ELEMENTS", 2 * 5 * 7)  # slices of 2 of the 6 (batch x heads) rows
    torch.testing.assert_close(unet_speed.plain_attend_projected(attn, q, k, v), want, rtol=1e-5, atol=1e-6)


@torch.no_grad()
def test_settings_match_shipped_and_restore_the_model(case):
    unet = case.pipe.net.denoising_unet
    shipped_attend = attention.attend_projected
    settings, skipped = unet_speed.make_settings(case, FAST)
    assert [s.name for s in settings] == FAST and not skipped
    log = []
    res = unet_speed.measure(case, settings, repeats=2, log=log.append)
    # interleaved: warm-up round, then 2 rounds of A B C, each round at its own timestep
    assert [line.rsplit(": ", 1)[0] for line in log] == [
        f"  {r} t={t} {name}" for r, t in (("warm-up", 499), ("round 1", 474), ("round 2", 449)) for name in FAST]
    scale = res["shipped"]["max_abs"]
    assert scale > 0.1
    for name in FAST:
        r = res[name]
        assert r["failed"] is None and len(r["seconds"]) == 2 and len(r["warmup"]) == 1
        assert all(s > 0 for s in r["seconds"])
        assert r["diff"] <= 1e-5 * scale, (name, r["diff"], scale)
    assert res["plain attention"]["diff"] > 0  # it did run another formula
    # the settings leave nothing behind: SDPA again, contiguous conv weights, same output as before
    assert attention.attend_projected is shipped_attend
    convs = [m.weight for m in unet.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(w.is_contiguous() for w in convs)
    y, _ = unet_speed.call(case, settings[0], 474)
    y2, _ = unet_speed.call(case, settings[0], 474)
    assert torch.equal(y, y2)
    lines, best, x = unet_speed.table(res, {"torch.compile": "RuntimeError: no compiler"}, scale)
    assert len(lines) == 1 + len(FAST) + 1 and lines[-1].startswith("torch.compile") and "skipped" in lines[-1]
    assert best in FAST and x >= 1.0


@torch.no_grad()
def test_channels_last_runs_channels_last_convolutions(case):
    unet = case.pipe.net.denoising_unet
    setting = next(s for s in unet_speed.make_settings(case, ["channels_last"])[0])
    formats = []
    hook = unet.conv_in.register_forward_hook(
        lambda m, a, out: formats.append((m.weight.is_contiguous(), out.is_contiguous())))
    try:
        unet_speed.call(case, setting, 499)
    finally:
        hook.remove()
    assert formats == [(False, False)]  # weights and feature maps were channels_last inside the call
    assert unet.conv_in.weight.is_contiguous()


def test_a_failing_setting_is_reported_not_fatal(case):
    def broken(x, t):
        raise RuntimeError("compiler not found\nmore text")

    settings, _ = unet_speed.make_settings(case, ["shipped"])
    settings.append(unet_speed.Setting("torch.compile", broken))
    res = unet_speed.measure(case, settings, repeats=1, log=lambda s: None)
    assert res["torch.compile"]["failed"] == "RuntimeError: compiler not found"
    lines, best, x = unet_speed.table(res, {}, 1.0)
    assert best == "shipped" and x == 1.0 and "failed: RuntimeError: compiler not found" in lines[-1]


def test_main_prints_table_and_summary(capsys):
    assert unet_speed.main(["--model", "tiny", "--size", "8", "--repeats", "1", "--threads", "1",
                            "--settings", *FAST]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1].startswith("unet speed: ") and out[-1].endswith(" vs shipped")
    name, ratio = out[-1][len("unet speed: "):-len(" vs shipped")].rsplit(" x", 1)
    assert name in FAST and float(ratio) >= 1.0
    rows = {line.split("  ")[0].strip() for line in out if line.startswith(tuple(FAST))}
    assert rows >= set(FAST)


@torch.no_grad()
def test_pipeline_channels_last_option(tmp_path):
    """EmoPipeline(..., channels_last=True) (through from_folder): the backbone's convolutions in
    channels_last, the same video up to float rounding; off by default."""
    from emo_core.checkpoints import save_model
    from emo_core.models.emo import EmoNet
    from emo_core.pipeline import EmoPipeline
    from emo_core.vae import tiny_vae

    torch.manual_seed(0)
    save_model(EmoNet(EmoConfig.tiny(family="emo")), tmp_path / "m")
    tiny_vae(0).vae.save_pretrained(tmp_path / "m" / "sd-vae-ft-mse")
    pipes = [EmoPipeline.from_folder(tmp_path / "m"), EmoPipeline.from_folder(tmp_path / "m", channels_last=True)]
    convs = [[m.weight for m in p.net.denoising_unet.modules()
              if isinstance(m, torch.nn.Conv2d) and m.kernel_size != (1, 1)] for p in pipes]
    assert convs[0] and all(w.is_contiguous() for w in convs[0])
    assert all(w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous() for w in convs[1])
    g = torch.Generator().manual_seed(2)
    image = torch.rand(64, 64, 3, generator=g)
    a = pipes[0].cfg.audio
    windows = torch.randn(6, a.window, a.feature_blocks, a.feature_dim, generator=g)
    speed = torch.full((6,), 3.0)
    videos = [torch.cat(list(p.generate(p.encode_reference(image), windows, speed=speed, steps=3, guidance=3.5,
                                        seed=1))) for p in pipes]
    assert videos[0].shape == (6, 64, 64, 3)
    torch.testing.assert_close(videos[1], videos[0], rtol=0, atol=1e-4)  # float rounding, nothing more
