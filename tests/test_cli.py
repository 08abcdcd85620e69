"""``python -m emo_core generate``: the tiny offline preset end to end, and bad input."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from emo_core.__main__ import main

REPO = Path(__file__).resolve().parents[1]
IMAGE, SPEECH = REPO / "samples" / "portrait.png", REPO / "samples" / "speech.wav"


def run(*argv):
    return main(["generate", *map(str, argv)])


def test_tiny_preset_writes_a_synced_mp4(tmp_path, capsys):
    from emo_core.preprocess.audio_io import load_audio
    from emo_core.video_out import probe

    out = tmp_path / "smoke.mp4"
    assert run("--image", IMAGE, "--audio", SPEECH, "-o", out, "--tiny", "--steps", "2") == 0
    assert "NOISE" in capsys.readouterr().err
    seconds = len(load_audio(SPEECH)) / 16000
    info = probe(out)
    assert info["video_codec"] == "h264" and info["audio_codec"] == "aac"
    assert info["video_frames"] == math.floor(seconds * 25 + 0.5)
    assert abs(info["video_seconds"] - seconds) <= 0.02
    assert abs(info["audio_seconds"] - seconds) < 0.15
    assert [p.name for p in tmp_path.iterdir()] == ["smoke.mp4"]


def test_missing_weights_explain_what_to_put_where(tmp_path):
    with pytest.raises(SystemExit) as err:
        run("--image", IMAGE, "--audio", SPEECH, "-o", tmp_path / "o.mp4", "--weights", tmp_path / "nothing")
    msg = str(err.value)
    assert "hallo/net.pth" in msg and "huggingface.co/fudan-generative-ai/hallo" in msg and "switched off" in msg
    assert not (tmp_path / "o.mp4").exists()


def test_image_without_a_face_is_a_clear_error(tmp_path):
    from PIL import Image

    blank = tmp_path / "wall.png"
    Image.fromarray(np.full((128, 128, 3), 128, np.uint8)).save(blank)
    with pytest.raises(SystemExit) as err:
        run("--image", blank, "--audio", SPEECH, "-o", tmp_path / "o.mp4", "--tiny", "--steps", "1")
    assert "no face" in str(err.value) and "full_frame" in str(err.value)
    assert not (tmp_path / "o.mp4").exists()


def test_bad_audio_and_output_names(tmp_path):
    (tmp_path / "empty.wav").write_bytes(b"")
    with pytest.raises(SystemExit, match="empty"):
        run("--image", IMAGE, "--audio", tmp_path / "empty.wav", "-o", tmp_path / "o.mp4", "--tiny")
    with pytest.raises(SystemExit, match="mp4"):
        run("--image", IMAGE, "--audio", SPEECH, "-o", tmp_path / "o.avi", "--tiny")


def test_interrupt_leaves_no_file(tmp_path, monkeypatch):
    from emo_core import video_out

    calls = {"n": 0}
    real = video_out.Mp4Writer.write

    def write(self, frames):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(self, frames)

    monkeypatch.setattr(video_out.Mp4Writer, "write", write)
    assert run("--image", IMAGE, "--audio", SPEECH, "-o", tmp_path / "o.mp4", "--tiny", "--steps", "1") == 130
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("fps", [25.0, 24.0])
def test_tiny_echomimic_writes_a_synced_mp4(tmp_path, capsys, fps):
    from emo_core.preprocess.audio_io import load_audio
    from emo_core.video_out import probe

    out = tmp_path / "echo.mp4"
    assert run("--image", IMAGE, "--audio", SPEECH, "-o", out, "--tiny-family", "echomimic", "--steps", "2",
               "--fps", fps) == 0
    err = capsys.readouterr().err
    assert "NOISE" in err and "echomimic" in err and "context windows" in err and "cfg 1" in err
    seconds = len(load_audio(SPEECH)) / 16000
    info = probe(out)
    assert info["video_codec"] == "h264" and info["audio_codec"] == "aac"
    assert info["video_frames"] == math.floor(seconds * fps + 0.5)
    assert abs(info["video_seconds"] - seconds) <= 0.5 / fps + 1e-6
    assert abs(info["audio_seconds"] - seconds) < 0.15
    assert [p.name for p in tmp_path.iterdir()] == ["echo.mp4"]


def test_tiny_family_is_not_for_real_weights(tmp_path):
    with pytest.raises(SystemExit, match="tiny-family"):
        run("--image", IMAGE, "--audio", SPEECH, "-o", tmp_path / "o.mp4", "--weights", tmp_path,
            "--tiny-family", "emo")


def test_missing_echomimic_weights_explain_what_to_put_where(tmp_path):
    folder = tmp_path / "echomimic"
    with pytest.raises(SystemExit) as err:
        run("--image", IMAGE, "--audio", SPEECH, "-o", tmp_path / "o.mp4", "--weights", folder, "--accelerated")
    msg = str(err.value)
    assert "denoising_unet_acc.pth" in msg and "whisper_tiny.pt" in msg and "BadToBest/EchoMimic" in msg
    assert "switched off" in msg and not (tmp_path / "o.mp4").exists()


def test_echomimic_folder_is_detected_and_accelerated_defaults(tmp_path, monkeypatch, capsys):
    import dataclasses

    import torch
    from test_echomimic import _write_echomimic_folder

    from emo_core import echomimic
    from emo_core.config import EmoConfig
    from emo_core.models.emo import EmoNet
    from emo_core.preprocess.whisper_features import tiny_whisper
    from emo_core.vae import tiny_vae

    cfg = EmoConfig.tiny(family="echomimic")
    folder = tmp_path / "models"
    folder.mkdir()
    _write_echomimic_folder(EmoNet(cfg), folder, accelerated=True)
    enc = tiny_whisper(cfg.audio.feature_dim, cfg.audio.feature_blocks)
    (folder / "audio_processor").mkdir()
    torch.save({"dims": dataclasses.asdict(enc.dims),
                "model_state_dict": {f"encoder.{k}": v for k, v in enc.state_dict().items()}},
               folder / "audio_processor" / "whisper_tiny.pt")
    (folder / "sd-vae-ft-mse").mkdir()
    (folder / "sd-vae-ft-mse" / "config.json").write_text("{}")
    monkeypatch.setattr(echomimic, "config_from_folder", lambda f, **kw: cfg)
    monkeypatch.setattr("emo_core.vae.load_vae", lambda f, **kw: tiny_vae(0))
    out = tmp_path / "o.mp4"
    assert run("--image", IMAGE, "--audio", SPEECH, "-o", out, "--weights", folder, "--size", "64",
               "--device", "cpu") == 0
    assert "6 steps, cfg 1," in capsys.readouterr().err
    assert out.is_file()
