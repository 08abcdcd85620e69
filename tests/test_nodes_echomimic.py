"""EchoMimic through the nodes (ComfyUI stubbed as in test_nodes_errors): the tiny preset with its
random whisper, whisper windows at any fps, the 1-channel face mask, EMO Generate with context
windows, and the loader's EchoMimic choices."""
from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

from face_models import face_mirror, face_model_files  # noqa: F401  (fixtures)
from test_nodes_errors import comfy, portrait, speech  # noqa: F401  (fixtures)


def _tiny():
    from nodes.loader import TINY_ECHOMIMIC_CHOICE, EmoModelLoader

    return EmoModelLoader().load(TINY_ECHOMIMIC_CHOICE)[0]


def test_choices_are_offered_without_downloading(comfy):
    from nodes.loader import ECHOMIMIC_ACC_CHOICE, ECHOMIMIC_CHOICE, TINY_ECHOMIMIC_CHOICE, EmoModelLoader

    choices = EmoModelLoader.INPUT_TYPES()["required"]["model"][0]
    assert {ECHOMIMIC_ACC_CHOICE, ECHOMIMIC_CHOICE, TINY_ECHOMIMIC_CHOICE} <= set(choices)
    assert not (Path(sys.modules["folder_paths"].models_dir) / "emo" / "echomimic").exists()


@pytest.mark.parametrize("fps", [25.0, 24.0, 30.0])
def test_whisper_windows_one_per_video_frame(comfy, speech, fps):
    from nodes.audio import EmoAudioEncode

    model = _tiny()
    a = model.cfg.audio
    assert a.encoder == "whisper" and model.cfg.chaining == "context_windows"
    out, frames = EmoAudioEncode().encode(model, fps, audio=speech)
    seconds = speech["waveform"].shape[-1] / speech["sample_rate"]
    assert frames == math.floor(seconds * fps + 0.5) == out["frames"]
    assert out["windows"].shape == (frames, a.window, a.feature_blocks, a.feature_dim)
    assert out["source"] == "emo-whisper" and out["windows"].dtype == torch.float32


def test_core_encoder_output_that_does_not_fit_is_refused(comfy):
    from nodes.audio import EmoAudioEncode

    model = _tiny()
    a = model.cfg.audio
    wav2vec = tuple(torch.randn(1, 50, 768) for _ in range(13))
    with pytest.raises(ValueError, match="whisper-tiny features .* 'audio' input"):
        EmoAudioEncode().encode(model, 25.0, audio_encoder_output={
            "encoded_audio": wav2vec[-1], "encoded_audio_all_layers": wav2vec, "audio_samples": 16000})
    fits = tuple(torch.randn(1, 1500, a.feature_dim) for _ in range(a.feature_blocks))  # padded 30 s window
    out, frames = EmoAudioEncode().encode(model, 25.0, audio_encoder_output={
        "encoded_audio": fits[-1], "encoded_audio_all_layers": fits, "audio_samples": 16000})
    assert frames == 25 and out["windows"].shape == (25, a.window, a.feature_blocks, a.feature_dim)
    assert torch.equal(out["windows"][-1, -1, 0], fits[0][0, 49])  # clamped to the real second of audio


def test_generate_whole_video_with_context_windows(comfy, portrait, speech):
    from nodes.audio import EmoAudioEncode
    from nodes.chain import EmoGenerate
    from nodes.common import EmoNodeError
    from nodes.face_mask import EmoFaceMask
    from nodes.reference import EmoReferenceEncode
    from nodes.sampler import EmoSampleClip

    model = _tiny()
    assert model.cfg.face_locator_in_channels == 1
    ref, image, _ = EmoReferenceEncode().encode(model, portrait, size=64)
    emo_audio, frames = EmoAudioEncode().encode(model, 25.0, audio=speech)
    mask, regions = EmoFaceMask().mask(image)
    images, audio, video, fps = EmoGenerate().generate(model, ref, emo_audio, speech, 6, 1.0, 0, face_mask=mask)
    assert images.shape == (frames, 64, 64, 3) and audio is speech and fps == 25.0
    bar = comfy["bars"][-1]
    assert bar.total == 6 and bar.values[-1] == 6  # one pass over the whole video
    from emo_core.video_out import probe

    assert probe(Path(video.get_stream_source()))["video_frames"] == frames
    # a per-frame mask batch works too (its union is used)
    per_frame = mask.expand(frames, -1, -1).clone()
    again = EmoGenerate().generate(model, ref, emo_audio, speech, 1, 1.0, 0, face_mask=per_frame)[0]
    assert again.shape[0] == frames
    with pytest.raises(EmoNodeError, match="EMO Generate"):
        EmoSampleClip().sample(model, ref, emo_audio, 0, 1, 1.0, 0, face_mask=mask)


def test_wav2vec_features_do_not_fit_an_echomimic_model(comfy, portrait, speech):
    from nodes.audio import EmoAudioEncode
    from nodes.chain import EmoGenerate
    from nodes.common import EmoNodeError
    from nodes.loader import TINY_CHOICE, EmoModelLoader
    from nodes.reference import EmoReferenceEncode

    model = _tiny()
    ref, _, _ = EmoReferenceEncode().encode(model, portrait, size=64)
    hallo = EmoModelLoader().load(TINY_CHOICE)[0]
    wrong = EmoAudioEncode().encode(hallo, 25.0, audio=speech)[0]
    with pytest.raises(EmoNodeError, match="encode the audio with the same EMO model"):
        EmoGenerate().generate(model, ref, wrong, speech, 1, 1.0, 0)


def _write_folder(folder: Path, accelerated: bool):
    from test_echomimic import _write_echomimic_folder

    from emo_core.config import EmoConfig
    from emo_core.models.emo import EmoNet

    folder.mkdir(parents=True, exist_ok=True)
    net = EmoNet(EmoConfig.tiny(family="echomimic"))
    _write_echomimic_folder(net, folder, accelerated=accelerated)
    return net


def test_local_echomimic_folder_is_one_choice_and_loads(comfy, monkeypatch):
    import dataclasses

    from emo_core.families import echomimic
    from emo_core.config import EmoConfig
    from emo_core.hub import ModelFileMissing
    from emo_core.preprocess.whisper_features import tiny_whisper
    from nodes.loader import ACCELERATED_SUFFIX, EmoModelLoader

    root = Path(sys.modules["folder_paths"].models_dir) / "emo"
    folder = root / "my_echomimic"
    _write_folder(folder, accelerated=False)
    _write_folder(folder, accelerated=True)
    choices = EmoModelLoader.INPUT_TYPES()["required"]["model"][0]
    assert "my_echomimic/" in choices and "my_echomimic/" + ACCELERATED_SUFFIX in choices
    assert not any(c.startswith("my_echomimic/") and c.endswith(".pth") for c in choices)
    tiny_cfg = EmoConfig.tiny(family="echomimic")
    monkeypatch.setattr(echomimic, "config_from_folder", lambda folder, **kw: tiny_cfg)
    from emo_core.vae import tiny_vae

    monkeypatch.setattr("emo_core.vae.load_vae", lambda folder, **kw: tiny_vae(0))
    (folder / "sd-vae-ft-mse").mkdir()
    model = EmoModelLoader().load("my_echomimic/" + ACCELERATED_SUFFIX)[0]
    assert model.format == "echomimic" and model.name.endswith(ACCELERATED_SUFFIX) and model.folder == folder
    with pytest.raises(ModelFileMissing, match="whisper_tiny.pt"):
        with model.audio_model():
            pass
    enc = tiny_whisper(tiny_cfg.audio.feature_dim, tiny_cfg.audio.feature_blocks)
    (folder / "audio_processor").mkdir()
    sd = {f"encoder.{k}": v for k, v in enc.state_dict().items()}
    torch.save({"dims": dataclasses.asdict(enc.dims), "model_state_dict": sd}, folder / "audio_processor" / "tiny.pt")
    with model.audio_model() as loaded:
        assert loaded.num_states == tiny_cfg.audio.feature_blocks


def test_download_choice_offline_explains(comfy):
    from emo_core.hub import ModelFileMissing
    from nodes.loader import ECHOMIMIC_ACC_CHOICE, EmoModelLoader

    with pytest.raises(ModelFileMissing) as err:
        EmoModelLoader().load(ECHOMIMIC_ACC_CHOICE, "auto", download=False)
    msg = str(err.value)
    folder = Path(sys.modules["folder_paths"].models_dir) / "emo" / "echomimic"
    assert str(folder / "denoising_unet_acc.pth") in msg and "whisper_tiny.pt" in msg
