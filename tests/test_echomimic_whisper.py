"""Whisper features: our encoder against OpenAI's (random weights, built from dimensions, no
download), the log-mel front end, 30 s windows, and EchoMimic's per-frame windowing."""
import dataclasses

import numpy as np
import pytest
import torch

from emo_core.models.whisper import load_whisper_encoder
from emo_core.preprocess.whisper_features import (echomimic_frame_count, log_mel, whisper_states, whisper_windows,
                                                  window_indices)

whisper_model = pytest.importorskip("whisper.model", reason="openai-whisper is a test dependency (requirements-dev)")
whisper_audio = pytest.importorskip("whisper.audio")


@pytest.fixture(scope="module")
def openai_whisper(tmp_path_factory):
    """A small random Whisper in OpenAI's layout, saved as OpenAI saves tiny.pt."""
    torch.manual_seed(0)
    dims = whisper_model.ModelDimensions(n_mels=80, n_audio_ctx=1500, n_audio_state=64, n_audio_head=4,
                                         n_audio_layer=3, n_vocab=64, n_text_ctx=8, n_text_state=64,
                                         n_text_head=4, n_text_layer=1)
    model = whisper_model.Whisper(dims).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)  # also non-trivial LayerNorm weights and biases
    path = tmp_path_factory.mktemp("whisper") / "whisper_tiny.pt"
    torch.save({"dims": dataclasses.asdict(dims), "model_state_dict": model.state_dict()}, path)
    return model, path


def test_encoder_states_match_openai(openai_whisper):
    model, path = openai_whisper
    ours = load_whisper_encoder(path)  # weights_only=True inside
    mel = torch.randn(1, 80, 3000)
    states = {}
    hooks = [model.encoder.conv2.register_forward_hook(lambda m, i, o: states.__setitem__("conv2", o))]
    for n, block in enumerate(model.encoder.blocks):
        hooks.append(block.register_forward_hook(lambda m, i, o, n=n: states.__setitem__(n, o)))
    with torch.no_grad():
        final = model.encoder(mel)
        got = ours(mel)
        post = ours.ln_post(got[0, -1])
    for h in hooks:
        h.remove()
    embedding = torch.nn.functional.gelu(states["conv2"]).permute(0, 2, 1) + model.encoder.positional_embedding
    assert got.shape == (1, 4, 1500, 64)
    torch.testing.assert_close(got[0, 0], embedding[0], atol=1e-5, rtol=1e-5)
    for n in range(3):
        torch.testing.assert_close(got[0, n + 1], states[n][0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(post, final[0], atol=1e-5, rtol=1e-5)


def test_log_mel_matches_openai():
    rng = np.random.default_rng(0)
    t = np.arange(16000 * 3) / 16000
    wave = (0.3 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 3 * t)) + 0.05 * rng.standard_normal(t.size))
    wave = wave.astype(np.float32)
    ref = whisper_audio.log_mel_spectrogram(torch.from_numpy(wave))
    ours = log_mel(wave)
    assert ours.shape == ref.shape == (80, 300)
    torch.testing.assert_close(ours, ref, atol=2e-4, rtol=1e-4)


def test_states_cover_long_audio_in_30s_windows(openai_whisper):
    _, path = openai_whisper
    enc = load_whisper_encoder(path)
    wave = np.random.default_rng(1).standard_normal(16000 * 31 + 800).astype(np.float32) * 0.1
    states = whisper_states(enc, wave)
    mel_frames = wave.size // 160  # 3105
    assert states.shape == (1500 + (mel_frames - 3000) // 2, 4, 64)
    first = enc(log_mel(wave)[None, :, :3000])[0, :, :1500].transpose(0, 1)
    torch.testing.assert_close(states[:1500], first)


def test_windowing_any_fps():
    feats = torch.arange(12.0)[:, None, None].expand(12, 5, 3)
    assert echomimic_frame_count(12, 24) == 8 and echomimic_frame_count(12, 25) == 8
    idx = window_indices(8, 12, 24)
    assert idx[0].tolist() == [0, 0, 0, 0, 0, 1, 2, 3, 4, 5]  # c-4..c+5 clamped
    assert idx[5].tolist() == [6, 7, 8, 9, 10, 11, 11, 11, 11, 11]  # c = int(5 * 50 / 24) = 10
    for fps in (24, 25, 29.97, 30, 12.5):
        w = whisper_windows(feats, fps)
        assert w.shape[1:] == (10, 5, 3)
        assert w.shape[0] == int(np.ceil(12 * fps / 50))
        centre = torch.tensor([int(i * 50 / fps) for i in range(w.shape[0])]).clamp(max=11)
        assert torch.equal(w[:, 4, 0, 0].long(), centre)
