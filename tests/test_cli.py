"""``python -m emo_core generate``: the tiny offline preset end to end, and bad input."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from emo_core.__main__ import main
from face_models import face_model_files  # noqa: F401 (fixture)

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
    assert "`hf download fudan-generative-ai/hallo" in msg and "huggingface-cli" not in msg  # today's CLI name
    assert not (tmp_path / "o.mp4").exists()


def test_image_without_a_face_is_a_clear_error(tmp_path):
    from PIL import Image

    blank = tmp_path / "wall.png"
    Image.fromarray(np.full((128, 128, 3), 128, np.uint8)).save(blank)
    with pytest.raises(SystemExit) as err:
        run("--image", blank, "--audio", SPEECH, "-o", tmp_path / "o.mp4", "--tiny", "--steps", "1")
    assert "no face" in str(err.value) and "full_frame" in str(err.value)
    assert not (tmp_path / "o.mp4").exists()


def test_bad_audio_and_output_names(tmp_path, capsys):
    (tmp_path / "empty.wav").write_bytes(b"")
    with pytest.raises(SystemExit, match="empty"):
        run("--image", IMAGE, "--audio", tmp_path / "empty.wav", "-o", tmp_path / "o.mp4", "--tiny")
    assert run("--image", IMAGE, "--audio", SPEECH, "-o", tmp_path / "o.avi", "--tiny") == 2
    assert "error: -o/--output: expected an .mp4 file name" in capsys.readouterr().err


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


def test_tiny_family_is_not_for_real_weights(tmp_path, capsys):
    assert run("--image", IMAGE, "--audio", SPEECH, "-o", tmp_path / "o.mp4", "--weights", tmp_path,
               "--tiny-family", "emo") == 2
    assert capsys.readouterr().err.startswith("error: --tiny-family:")


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

    from emo_core.families import echomimic
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


# ---- failing fast and clean: every bad option before any model work ---------------------------
@pytest.fixture()
def no_model_work(monkeypatch):
    """Building a pipeline or loading audio during these tests is a failure: options come first."""
    from emo_core import pipeline
    from emo_core.preprocess import audio_io

    def refuse(*a, **k):
        raise AssertionError("model work started before the options were checked")

    monkeypatch.setattr(pipeline.EmoPipeline, "tiny", classmethod(refuse))
    monkeypatch.setattr(pipeline.EmoPipeline, "from_folder", classmethod(refuse))
    monkeypatch.setattr(audio_io, "load_audio", refuse)


def _refused(tmp_path, capsys, *argv, output=None):
    """Runs generate in-process; returns stderr after checking the exit code (2), that the message
    names the option, that there is no traceback and that nothing appeared beside the output."""
    before = sorted(p.name for p in tmp_path.iterdir())
    out = tmp_path / "o.mp4" if output is None else output
    code = run("--image", IMAGE, "--audio", SPEECH, "-o", out, "--tiny", *argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("error: ") and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    return err


@pytest.mark.parametrize("argv, expected", [
    (("--steps", "0"), "error: --steps: expected an integer from 1 to 1000, got 0"),
    (("--steps", "-3"), "error: --steps: expected an integer from 1 to 1000, got -3"),
    (("--steps", "5000"), "error: --steps: expected an integer from 1 to 1000, got 5000"),
    (("--cfg", "nan"), "error: --cfg: expected a finite number >= 0, got nan"),
    (("--cfg", "-2"), "error: --cfg: expected a finite number >= 0, got -2"),
    (("--speed", "nan"), "error: --speed: expected a finite number >= 0, got nan"),
    (("--speed", "inf"), "error: --speed: expected a finite number >= 0, got inf"),
    (("--speed", "-1"), "error: --speed: expected a finite number >= 0, got -1"),
    (("--fps", "0"), "error: --fps: expected a finite number > 0, got 0"),
    (("--fps", "nan"), "error: --fps: expected a finite number > 0, got nan"),
    (("--fps", "-25"), "error: --fps: expected a finite number > 0, got -25"),
    (("--seed", "-1"), "error: --seed: expected an integer from 0 to 18446744073709551615, got -1"),
    (("--seed", str(2 ** 64)), "error: --seed: expected an integer from 0 to 18446744073709551615"),
    (("--crf", "99"), "error: --crf: expected a number from 0 to 51, got 99"),
    (("--crf", "nan"), "error: --crf: expected a number from 0 to 51, got nan"),
    (("--size", "100"), "error: --size: expected a positive multiple of 64 (the model's size multiple), got 100 "
                        "(try 64 or 128)"),
    (("--size", "0"), "error: --size: expected an integer >= 1, got 0"),
    (("--size", "-64"), "error: --size: expected an integer >= 1, got -64"),
    (("--expand", "0"), "error: --expand: expected a finite number > 0, got 0"),
    (("--expand", "nan"), "error: --expand: expected a finite number > 0, got nan"),
    (("--join-denoise", "0"), "error: --join-denoise: expected a fraction of the schedule in (0, 1], got 0.0"),
    (("--join-denoise", "nan"), "error: --join-denoise: expected a fraction of the schedule in (0, 1], got nan"),
    (("--noise-correlation", "1"), "error: --noise-correlation: expected a fraction in [0, 1), got 1.0"),
    (("--noise-correlation", "nan"), "error: --noise-correlation: expected a fraction in [0, 1), got nan"),
    (("--speed-guidance", "-1"), "error: --speed-guidance: expected a finite number >= 0, got -1"),
    (("--speed-guidance", "nan"), "error: --speed-guidance: expected a finite number >= 0, got nan"),
    (("--speed-guidance", "6", "--cfg", "1"), "error: --speed-guidance 6: needs classifier-free guidance, --cfg > 1"),
])
def test_bad_option_is_refused_before_any_model_work(tmp_path, capsys, no_model_work, argv, expected):
    err = _refused(tmp_path, capsys, *argv)
    assert err.startswith(expected), err


def test_bad_device_is_refused_before_any_model_work(tmp_path, capsys, no_model_work):
    import torch

    err = _refused(tmp_path, capsys, "--device", "gpu0")
    assert err.startswith("error: --device: expected cpu, cuda, cuda:N or mps, got 'gpu0'")
    if not torch.cuda.is_available():
        err = _refused(tmp_path, capsys, "--device", "cuda")
        assert err.startswith("error: --device: expected a device this machine has, got 'cuda' (torch sees no CUDA GPU")


def test_missing_image_or_audio_is_refused_before_any_model_work(tmp_path, capsys, no_model_work):
    assert run("--image", tmp_path / "nope.png", "--audio", SPEECH, "-o", tmp_path / "o.mp4", "--tiny") == 2
    assert capsys.readouterr().err.startswith(f"error: --image: expected an image file (png/jpg), got "
                                              f"{tmp_path / 'nope.png'} (not found)")
    assert run("--image", IMAGE, "--audio", tmp_path, "-o", tmp_path / "o.mp4", "--tiny") == 2
    assert capsys.readouterr().err.startswith(f"error: --audio: expected an audio or video file, got {tmp_path} "
                                              "(a folder)")
    assert list(tmp_path.iterdir()) == []


def test_missing_checkpoint_file_is_refused_before_any_model_work(tmp_path, capsys, no_model_work):
    assert run("--image", IMAGE, "--audio", SPEECH, "-o", tmp_path / "o.mp4", "--weights", tmp_path / "net.pth") == 2
    assert capsys.readouterr().err.startswith(f"error: --weights: expected a model folder or a checkpoint file, got "
                                              f"{tmp_path / 'net.pth'} (not found)")


def test_output_that_is_a_folder_is_refused_before_any_work(tmp_path, capsys, no_model_work):
    folder = tmp_path / "videos.mp4"  # even a folder named like a video
    folder.mkdir()
    err = _refused(tmp_path, capsys, output=folder)
    assert err.startswith(f"error: -o/--output: {folder} is a folder; expected a file name such as "
                          f"{folder / 'out.mp4'}")
    assert list(folder.iterdir()) == []


def test_output_under_a_file_is_refused_before_any_work(tmp_path, capsys, no_model_work):
    (tmp_path / "notes.txt").write_text("x")
    err = _refused(tmp_path, capsys, output=tmp_path / "notes.txt" / "o.mp4")
    assert err.startswith(f"error: -o/--output: cannot create the folder {tmp_path / 'notes.txt'}: "
                          f"{tmp_path / 'notes.txt'} is a file")


def test_unwritable_output_folder_is_refused_before_any_work(tmp_path, capsys, no_model_work, monkeypatch):
    """The output folder refuses new files (as a read-only folder does for a normal user; root
    ignores permissions, so the refusal is simulated where the writer would create its file)."""
    import tempfile

    from emo_core import video_out

    def refuse(*a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(video_out.tempfile, "mkstemp", refuse)
    err = _refused(tmp_path, capsys)
    monkeypatch.setattr(video_out.tempfile, "mkstemp", tempfile.mkstemp)
    assert err.startswith(f"error: -o/--output: cannot write in the folder {tmp_path.resolve()} "
                          "(Permission denied)")


def test_sigterm_mid_generation_leaves_nothing_beside_the_output(tmp_path):
    """SIGTERM (a job scheduler, `kill`, a container stop) cleans up exactly as Ctrl-C does."""
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "o.mp4"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "emo_core", "generate", "--tiny", "--steps", "2", "--image",
                             str(IMAGE), "--audio", str(SPEECH), "-o", str(out)], cwd=tmp_path, env=env,
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    lines = []
    deadline = time.time() + 240
    try:
        for line in proc.stderr:  # wait until the first clip is in the partial file
            lines.append(line)
            if "clip 2/" in line or time.time() > deadline:
                break
        assert any("clip 2/" in x for x in lines), "".join(lines)
        assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".part.mp4")], "no partial file to clean up"
        proc.send_signal(signal.SIGTERM)
        _, rest = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err = "".join(lines) + rest
    assert proc.returncode == 143, err
    assert "interrupted" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_foreign_checkpoint_file_is_refused_before_the_network_is_built(tmp_path, capsys, monkeypatch):
    import time

    import torch

    from emo_core.models import emo

    def built(*a, **k):
        raise AssertionError("the network was built before the checkpoint was read")

    monkeypatch.setattr(emo.EmoNet, "__init__", built)
    ckpt = tmp_path / "models" / "hallo" / "net.pth"
    ckpt.parent.mkdir(parents=True)
    torch.save({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(320, 4, 3, 3),
                "first_stage_model.decoder.conv_in.weight": torch.zeros(4)}, ckpt)
    t0 = time.perf_counter()
    with pytest.raises(SystemExit) as exc:  # a message, no traceback (exit code 1)
        run("--image", IMAGE, "--audio", SPEECH, "-o", tmp_path / "o.mp4", "--weights", ckpt)
    seconds = time.perf_counter() - t0
    err = str(exc.value)
    assert err.startswith(f"error: {ckpt}: not an EMO or Hallo checkpoint: expected the keys of Hallo's net.pth")
    assert "found 2 tensors under first_stage_model, model" in err
    assert seconds < 5.0  # audio decoding included; the refusal itself takes milliseconds
    assert not (tmp_path / "o.mp4").exists()


def _tiny_model_folder(folder, cfg):
    """Our checkpoint layout with its helper models: config.json + emo.safetensors, a diffusers
    VAE in sd-vae-ft-mse/ and a transformers wav2vec2 in wav2vec/wav2vec2-base-960h/."""
    import torch

    from emo_core.checkpoints import save_model
    from emo_core.preprocess.audio_features import tiny_wav2vec
    from emo_core.models.emo import EmoNet
    from emo_core.vae import tiny_vae

    torch.manual_seed(0)
    save_model(EmoNet(cfg), folder)
    tiny_vae(0).vae.save_pretrained(folder / "sd-vae-ft-mse")
    tiny_wav2vec(cfg.audio.feature_dim, cfg.audio.feature_blocks).save_pretrained(
        folder / "wav2vec" / "wav2vec2-base-960h")
    return folder


def test_weights_may_name_a_checkpoint_file(tmp_path, capsys, face_model_files, monkeypatch):
    import shutil

    import soundfile as sf
    from face_models import NAMES

    from emo_core.config import EmoConfig
    from emo_core.preprocess.audio_io import load_audio
    from emo_core.video_out import probe

    folder = _tiny_model_folder(tmp_path / "mine", EmoConfig.tiny(family="emo"))
    faces = folder / "face_analysis" / "models"  # Hallo's layout, beside the checkpoint
    faces.mkdir(parents=True)
    for name in NAMES:
        shutil.copyfile(face_model_files / name, faces / name)
    monkeypatch.setenv("EMO_MODELS_DIR", str(tmp_path / "mine" / "unused"))  # nothing is downloaded
    short = tmp_path / "short.wav"
    sf.write(short, load_audio(SPEECH)[:8000], 16000)  # 0.5 s
    out = tmp_path / "o.mp4"
    assert run("--image", IMAGE, "--audio", short, "-o", out, "--weights", folder / "emo.safetensors",
               "--size", "64", "--steps", "1", "--device", "cpu", "--no-face", "full_frame") == 0
    err = capsys.readouterr().err
    assert f"weights: emo checkpoint file {folder / 'emo.safetensors'} (VAE, audio and face models from {folder})" in err
    assert probe(out)["video_frames"] == math.floor(0.5 * 25 + 0.5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "o.mp4", "short.wav"]


def test_identity_fallback_has_the_models_width(tmp_path):
    """No ArcFace file and identity tokens that are not 512 wide: zeros of the model's width."""
    import warnings

    import torch

    from emo_core.pipeline import EmoPipeline
    from emo_core.preprocess.identity import FaceEmbedder

    pipe = EmoPipeline.tiny(family="hallo")
    assert pipe.cfg.identity_dim not in (None, 512)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        emb = FaceEmbedder(models_dir=tmp_path, dim=pipe.cfg.identity_dim).embed(None, None)
    assert emb.shape == (pipe.cfg.identity_dim,) and not emb.any()
    portrait = torch.rand(64, 64, 3)
    ref = pipe.encode_reference(portrait, face_embedding=torch.from_numpy(emb))
    assert ref.identity is not None


def test_library_refuses_the_same_values():
    """pipeline.generate / sample_ddim / guided: ValueError naming the argument, not a
    ZeroDivisionError or an all-black video."""
    import torch

    from emo_core.pipeline import EmoPipeline
    from emo_core.sampling.ddim import Schedule, sample_ddim
    from emo_core.sampling.guidance import guided

    with pytest.raises(ValueError, match="steps: expected an integer >= 1, got 0"):
        sample_ddim(lambda x, t: x, torch.zeros(1, 4, 1, 2, 2), Schedule.hallo(), 0)
    with pytest.raises(ValueError, match="guidance: expected a finite scale >= 0, got nan"):
        guided(None, None, None, float("nan"))
    pipe = EmoPipeline.tiny(family="emo")
    ref = pipe.encode_reference(torch.rand(64, 64, 3))
    windows = torch.zeros(8, pipe.cfg.audio.feature_blocks, pipe.cfg.audio.feature_dim)
    for kwargs, message in (({"steps": 0}, "steps: expected an integer from 1 to 1000, got 0"),
                            ({"guidance": float("inf")}, "guidance: expected a finite number >= 0, got inf"),
                            ({"seed": -5}, "seed: expected an integer from 0 to"),
                            ({"speed": torch.full((8,), float("nan"))}, "speed: expected finite degrees per frame")):
        with pytest.raises(ValueError, match=message):
            next(pipe.generate(ref, windows, **kwargs))


def test_weights_file_of_a_hallo_folder_reads_its_helpers_from_the_folder_above(tmp_path):
    import torch
    from safetensors.torch import save_file

    from emo_core.cli_generate import resolve_weights

    (tmp_path / "pretrained_models" / "hallo").mkdir(parents=True)
    ckpt = tmp_path / "pretrained_models" / "hallo" / "net.safetensors"
    save_file({"denoising_unet.conv_in.weight": torch.zeros(1)}, str(ckpt))
    assert resolve_weights(ckpt) == (tmp_path / "pretrained_models", ckpt)
    loose = tmp_path / "net.safetensors"
    save_file({"denoising_unet.conv_in.weight": torch.zeros(1)}, str(loose))
    assert resolve_weights(loose) == (tmp_path, loose)
    assert resolve_weights(tmp_path) == (tmp_path, None)


# ---- progress with time left ---------------------------------------------------------------
def test_progress_counts_clips_frames_and_time_left(tmp_path, capsys):
    """A log (not a terminal) gets one line per finished clip: clips done / total, frames, time left."""
    import re

    import soundfile as sf

    from emo_core.config import EmoConfig

    seconds, fps = 0.6, 25
    t = np.arange(int(seconds * 16000)) / 16000
    sf.write(tmp_path / "short.wav", (0.2 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), 16000)
    assert run("--image", IMAGE, "--audio", tmp_path / "short.wav", "-o", tmp_path / "o.mp4", "--tiny",
               "--steps", "1") == 0
    err = capsys.readouterr().err
    frames = math.floor(seconds * fps + 0.5)
    clips = -(-frames // EmoConfig.tiny().clip_frames)
    lines = [x for x in err.splitlines() if re.match(r"\s*clip \d+/\d+ done", x)]
    assert len(lines) == clips, err
    pattern = r"\s*clip (\d+)/(\d+) done \((\d+)/(\d+) frames, \d+:\d\d elapsed, (\d+:\d\d|\?) left\)"
    parsed = [re.fullmatch(pattern, x) for x in lines]
    assert all(parsed), lines
    assert [int(m[1]) for m in parsed] == list(range(1, clips + 1))
    assert {int(m[2]) for m in parsed} == {clips} and {int(m[4]) for m in parsed} == {frames}
    done = [int(m[3]) for m in parsed]
    assert done == sorted(done) and done[-1] == frames
    assert parsed[-1][5] == "0:00"  # nothing left at the end
    assert "\r" not in err  # no in-place redraws in a log


def test_progress_estimates_time_left_from_the_measured_rate():
    """On a terminal one line is redrawn in place; the time left is the measured time per step
    times the steps still to run, measured after the first clip (whose one-off costs are excluded)."""
    import io

    from emo_core.progress import ClipProgress, format_duration

    now = [100.0]
    out = io.StringIO()
    p = ClipProgress(10, 4, out, tty=True, clock=lambda: now[0], min_interval=0.0)
    clips, steps = 3, 2
    now[0] += 30.0  # the first step is slow (warm-up) ...
    p({"clip": 1, "clips": clips, "step": 1, "steps": steps})
    assert out.getvalue().endswith(f"| {format_duration(30.0 * 5)} left")  # 5 steps left at 30 s each
    now[0] += 2.0
    p({"clip": 1, "clips": clips, "step": 2, "steps": steps})
    for clip in (2, 3):
        for step in (1, 2):
            now[0] += 2.0  # ... the others take 2 s
            p({"clip": clip, "clips": clips, "step": step, "steps": steps})
            left = 2.0 * (clips * steps - ((clip - 1) * steps + step))
            assert out.getvalue().endswith(f"| {format_duration(left)} left")
    text = out.getvalue()
    assert "\n" not in text and text.count("\r") == clips * steps
    assert "clip 2/3 step 2/2 | 8/10 frames" in text and "clip 3/3 step 2/2 | 10/10 frames" in text
    p.close()
    assert out.getvalue().endswith("\n")
    assert format_duration(3725) == "1:02:05" and format_duration(float("nan")) == "?"
