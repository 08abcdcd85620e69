"""The tiny presets: random weights in each family's layout (``EmoConfig.tiny``), for tests and
offline smoke runs. Everything runs; the video is noise."""
from __future__ import annotations


def tiny_audio_model(cfg):
    """The random audio encoder of the tiny preset, of the width and depth ``cfg`` expects
    (whisper-shaped for the EchoMimic layout, wav2vec2 otherwise)."""
    if cfg.audio.encoder == "whisper":
        from ..preprocess.whisper_features import tiny_whisper

        return tiny_whisper(cfg.audio.feature_dim, cfg.audio.feature_blocks)
    from ..preprocess.audio_features import tiny_wav2vec

    return tiny_wav2vec(cfg.audio.feature_dim, cfg.audio.feature_blocks)
