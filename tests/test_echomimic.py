"""EchoMimic family: golden parity, strict loading of its four files, context windows, config."""
import io
import json
from dataclasses import replace

import pytest
import torch

from emo_core.checkpoints import CheckpointError
from emo_core.config import ConfigError, EmoConfig
from emo_core.context_windows import average_over_windows, shifted, uniform_windows, windowed_model
from emo_core.families.echomimic import config_from_folder, find_files, load_echomimic, sample_video
from emo_core.models.emo import EmoNet
from emo_core.sampling.ddim import Schedule


@pytest.fixture(scope="module")
def echomimic_golden(shared_dir):
    return shared_dir / "golden" / "echomimic"


def test_parity_with_echomimic_golden(echomimic_golden):
    from emo_core.parity import detect_family, run_parity

    assert detect_family(echomimic_golden) == "echomimic"
    out = io.StringIO()
    ok = run_parity(echomimic_golden, out=out)
    report = out.getvalue()
    assert ok, report
    assert "c.video" in report and "b.bank.09" in report and "d.indices_fps25" in report


# ---- context windows ----------------------------------------------------------------------------
def test_windows_match_echomimic_schedule(echomimic_golden):
    meta = json.loads((echomimic_golden / "cases.json").read_text())
    base = uniform_windows(7, 4, 1)
    assert [shifted(base, step, 7) for step in range(3)] == meta["windows_per_step"]
    assert uniform_windows(3, 4, 1) == [[0, 1, 2]]
    assert uniform_windows(24, 12, 3) == [[(s + k) % 24 for k in range(12)] for s in (0, 9, 18)]
    with pytest.raises(ValueError):
        uniform_windows(10, 4, 4)


def test_average_over_windows_is_the_mean_and_model_sees_only_windows():
    x = torch.randn(1, 2, 50, 3, 3)
    seen = []

    def window_fn(xw, t, idx):
        seen.append(xw.shape[2])
        return xw * 2  # a per-frame model: the average of identical per-frame values is that value

    out = average_over_windows(window_fn, x, 0, shifted(uniform_windows(50, 12, 3), 3, 50), window_batch=2)
    torch.testing.assert_close(out, x * 2)
    assert max(seen) == 12  # the model never sees more than one window's frames per row

    # Frames covered twice get the mean of both windows' values.
    calls = iter([torch.zeros(1, 1, 4, 1, 1), torch.ones(1, 1, 4, 1, 1), torch.full((1, 1, 4, 1, 1), 3.0)])
    mean = average_over_windows(lambda xw, t, idx: next(calls), torch.zeros(1, 1, 7, 1, 1), 0, uniform_windows(7, 4, 1))
    assert mean.flatten().tolist() == [1.5, 1.5, 1.5, 0.5, 1.0, 1.0, 2.0]


def test_windowed_model_shifts_every_step():
    steps = [999, 666, 332]
    firsts = []

    def window_fn(xw, t, idx):
        firsts.append(idx[0][0])
        return xw

    model_fn = windowed_model(window_fn, 7, 4, 1, steps)
    for t in steps:
        model_fn(torch.zeros(1, 1, 7, 1, 1), t)
    assert firsts == [0, 3, 6, 2, 5, 1, 4, 0, 3]


# ---- model, config, loading ---------------------------------------------------------------------
def test_echomimic_config_options():
    cfg = EmoConfig.echomimic()
    assert cfg.audio.in_cross_attention and cfg.audio.cross_attention_scale == 3.0
    assert cfg.audio.window == 10 and cfg.audio.tokens == 50
    assert EmoConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ConfigError, match="context_overlap"):
        replace(cfg, context_overlap=12)
    with pytest.raises(ConfigError, match="tokens"):
        replace(cfg.audio, tokens=32)
    with pytest.raises(ConfigError, match="region"):
        replace(cfg.audio, region_attention=True)
    # Hallo's layout is unchanged by the new options.
    assert EmoConfig.hallo().chaining == "motion_frames" and EmoConfig.hallo().reference_cross_attention


def test_echomimic_model_layout():
    net = EmoNet(EmoConfig.tiny(family="echomimic"))
    keys = set(net.state_dict())
    assert net.audioproj is None and not any(".audio_modules." in k for k in keys)
    assert not any(k.startswith("reference_unet.") and ".attn2." in k for k in keys)
    assert net.denoising_unet.down_blocks[0].attentions[0].transformer_blocks[0].attn2.to_k.in_features == 16
    assert net.face_locator.conv_in.in_channels == 1


def _write_echomimic_folder(net: EmoNet, folder, accelerated=False, fmt=".pth"):
    from safetensors.torch import save_file

    sd = net.denoising_unet.state_dict()
    parts = {
        "denoising_unet": {k: v for k, v in sd.items() if ".motion_modules." not in k},
        "motion_module": {k: v for k, v in sd.items() if ".motion_modules." in k},
        "reference_unet": net.reference_unet.state_dict(),
        "face_locator": net.face_locator.state_dict(),
    }
    for part, state in parts.items():
        stem = f"{part}_acc" if accelerated and part in ("denoising_unet", "motion_module") else part
        state = {k: v.clone().contiguous() for k, v in state.items()}
        if fmt == ".pth":
            torch.save(state, folder / f"{stem}.pth")
        else:
            save_file(state, str(folder / f"{stem}.safetensors"))


@pytest.mark.parametrize("accelerated,fmt", [(False, ".pth"), (True, ".safetensors")])
def test_load_released_files_strictly(tmp_path, accelerated, fmt):
    torch.manual_seed(0)
    cfg = EmoConfig.tiny(family="echomimic")
    net = EmoNet(cfg)
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.1)
    _write_echomimic_folder(net, tmp_path, accelerated, fmt)
    assert find_files(tmp_path).accelerated == accelerated
    loaded = load_echomimic(tmp_path, config=cfg)
    for k, v in net.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k


def test_load_rejects_wrong_keys(tmp_path):
    cfg = EmoConfig.tiny(family="echomimic")
    net = EmoNet(cfg)
    _write_echomimic_folder(net, tmp_path)
    fl = torch.load(tmp_path / "face_locator.pth", weights_only=True)
    fl["conv_extra.weight"] = torch.zeros(1)
    torch.save(fl, tmp_path / "face_locator.pth")
    with pytest.raises(CheckpointError, match="unexpected"):
        load_echomimic(tmp_path, config=cfg)
    (tmp_path / "face_locator.pth").unlink()
    with pytest.raises(FileNotFoundError, match="face_locator"):
        load_echomimic(tmp_path, config=cfg)


def test_config_from_golden_folder(echomimic_golden):
    cfg = config_from_folder(echomimic_golden, clip_frames=4, context_overlap=1)
    assert cfg.unet.cross_attention_dim == 48 and cfg.audio.token_dim == 384
    assert cfg.temporal.num_attention_heads == 2 and cfg.face_locator_channels == (4, 8, 16, 32)
    assert cfg.face_locator_in_channels == 1 and cfg.chaining == "context_windows"


def test_sample_video_long_sequence_accelerated_settings():
    torch.manual_seed(0)
    net = EmoNet(EmoConfig.tiny(family="echomimic")).eval()
    frames = 23  # several windows with wrap-around
    lat = sample_video(net, torch.randn(1, 4, 16, 16), torch.randn(frames, 10, 2, 16), Schedule.hallo(), 2,
                       face_mask=torch.ones(128, 128), guidance=1.0, generator=torch.Generator().manual_seed(1))
    assert lat.shape == (1, 4, frames, 16, 16) and torch.isfinite(lat).all()
    guided = sample_video(net, torch.zeros(1, 4, 16, 16), torch.zeros(frames, 10, 2, 16), Schedule.hallo(), 1,
                          generator=torch.Generator().manual_seed(1), guidance=2.5, window_batch=3)
    assert guided.shape == lat.shape and torch.isfinite(guided).all()
    with pytest.raises(ValueError, match="chaining"):
        sample_video(EmoNet(EmoConfig.tiny(family="hallo")), torch.randn(1, 4, 16, 16),
                     torch.randn(4, 5, 2, 8), Schedule.hallo(), 1)


def test_download_helper_names_every_file(tmp_path):
    from emo_core.families.echomimic import ensure_echomimic, repo_files
    from emo_core.hub import ModelFileMissing

    names = [p for p, _, _ in repo_files(accelerated=True)]
    assert names == ["denoising_unet_acc.pth", "motion_module_acc.pth", "reference_unet.pth", "face_locator.pth",
                     "audio_processor/whisper_tiny.pt"]
    with pytest.raises(ModelFileMissing, match="BadToBest/EchoMimic") as err:
        ensure_echomimic(tmp_path, accelerated=True, download=False)
    assert str(tmp_path / "denoising_unet_acc.pth") in str(err.value)
