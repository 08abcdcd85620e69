"""EMO Audio Encode: AUDIO (or core's AUDIO_ENCODER_OUTPUT) -> per-frame wav2vec2 windows, or
whisper-tiny windows for EchoMimic-family models (``cfg.audio.encoder == "whisper"``)."""
from __future__ import annotations

from .types import CATEGORY, EMO_AUDIO, EMO_MODEL

CORE_ENCODER_TOOLTIP = (
    "Optional instead of 'audio': the output of core's Audio Encoder Encode with a wav2vec2-base model "
    "(12 blocks of 768). Close to, but not the same as, what Hallo's weights were trained on: core runs "
    "wav2vec2 at its native 50 Hz and, for base models, without input normalisation, and its features are "
    "interpolated to the video frame rate after the transformer (Hallo interpolates before it, on "
    "normalised audio). Expect slightly weaker lip sync; prefer the 'audio' input when you can. EchoMimic "
    "models need whisper-tiny's states (5 of 384): connect 'audio' for them.")


def features_from_core_encoder(output: dict, fps: float, m: int, blocks: int, width: int):
    """core AUDIO_ENCODER_OUTPUT -> ([T, L, C] per-frame features, seconds); the sampler cuts the
    ±m windows clip by clip."""
    import torch
    import torch.nn.functional as F

    from emo_core.preprocess.audio_features import SAMPLE_RATE, num_frames_for

    layers = output.get("encoded_audio_all_layers")
    if not layers:
        raise ValueError("AUDIO_ENCODER_OUTPUT has no 'encoded_audio_all_layers' (use a wav2vec2 audio encoder)")
    layers = list(layers)[1:]  # index 0 is the transformer input, as transformers' hidden_states[0]
    if len(layers) != blocks or layers[0].shape[-1] != width:
        raise ValueError(f"the audio encoder gives {len(layers)} blocks of {layers[0].shape[-1]}; this EMO model "
                         f"needs {blocks} blocks of {width} (a wav2vec2-base model)")
    samples = int(output["audio_samples"])
    frames = num_frames_for(samples, fps, SAMPLE_RATE)
    if frames < 1:
        raise ValueError(f"the audio ({samples / SAMPLE_RATE:.3f} s) is shorter than one video frame at {fps:g} fps")
    feats = torch.stack([x[0].float().cpu() for x in layers], dim=1)  # [T50, L, C]
    t50 = feats.shape[0]
    flat = feats.reshape(t50, -1).T[None]  # [1, L*C, T50]
    per_frame = F.interpolate(flat, size=frames, mode="linear", align_corners=True)[0].T.reshape(frames, blocks, width)
    return per_frame, samples / SAMPLE_RATE


def whisper_windows_from_core_encoder(output: dict, fps: float, m: int, states: int, width: int):
    """core AUDIO_ENCODER_OUTPUT from a whisper encoder of the model's size -> ([T, 2(2m+1), S, C], seconds).
    Anything else (wav2vec2, a larger whisper) is an error: EchoMimic's weights need whisper-tiny."""
    import torch

    from emo_core.preprocess.whisper_features import SAMPLE_RATE, windows_from_states

    layers = list(output.get("encoded_audio_all_layers") or ())
    got = f"{len(layers)} states of {layers[0].shape[-1]}" if layers else "no per-layer states"
    if len(layers) != states or layers[0].shape[-1] != width:
        raise ValueError(f"this EchoMimic-family model needs whisper-tiny features ({states} states of {width}: "
                         f"the input embedding and every block); the AUDIO_ENCODER_OUTPUT has {got}. Connect the "
                         "'audio' input instead (the model's own whisper-tiny is used)")
    samples = int(output["audio_samples"])
    feats = torch.stack([x[0].float().cpu() for x in layers], dim=1)  # [T50, S, C]
    return windows_from_states(feats, samples, fps, m), samples / SAMPLE_RATE


class EmoAudioEncode:
    CATEGORY = CATEGORY
    FUNCTION = "encode"
    RETURN_TYPES = (EMO_AUDIO, "INT")
    RETURN_NAMES = ("emo_audio", "frames")
    DESCRIPTION = ("wav2vec2 features of every video frame (all blocks, frames i-2..i+2), computed exactly as "
                   "Hallo's weights expect; for EchoMimic models whisper-tiny features (10 feature frames around "
                   "each video frame, at any fps). 'frames' = round(audio seconds x fps).")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "emo_model": (EMO_MODEL, {"tooltip": "from EMO Model Loader (its wav2vec2 model is used)"}),
                "fps": ("FLOAT", {"default": 25.0, "min": 1.0, "max": 120.0, "step": 0.01,
                                  "tooltip": "video frame rate (Hallo was trained at 25)"}),
            },
            "optional": {
                "audio": ("AUDIO", {"tooltip": "speech or singing; any rate or channel count (mixed to 16 kHz mono)"}),
                "audio_encoder_output": ("AUDIO_ENCODER_OUTPUT", {"tooltip": CORE_ENCODER_TOOLTIP}),
            },
        }

    def encode(self, emo_model, fps, audio=None, audio_encoder_output=None):
        from emo_core import checks

        from .common import widget

        fps = widget("fps", checks.fps, fps)
        a = emo_model.cfg.audio
        if (audio is None) == (audio_encoder_output is None):
            raise ValueError("connect exactly one of 'audio' (recommended) or 'audio_encoder_output'")
        whisper = a.encoder == "whisper"
        if audio_encoder_output is not None:
            make = whisper_windows_from_core_encoder if whisper else features_from_core_encoder
            windows, seconds = make(audio_encoder_output, fps, a.context, a.feature_blocks, a.feature_dim)
            frames, source = windows.shape[0], "comfy-audio-encoder"
        else:  # the model family's own features (Hallo's: computed as Hallo's preprocessing)
            from emo_core.preprocess.audio_io import duration_seconds, from_comfy_audio

            wave = from_comfy_audio(audio)
            seconds = duration_seconds(wave)
            with emo_model.audio_model() as model:
                windows, frames = emo_model.pipe.audio_conditioning(model, wave, fps)
            source = "emo-whisper" if whisper else "emo-wav2vec2"
        windows = windows.float().cpu().contiguous()
        out = {"windows": windows, "fps": float(fps), "frames": int(frames), "seconds": float(seconds),
               "source": source}
        return (out, out["frames"])


NODE_CLASS_MAPPINGS = {"EmoAudioEncode": EmoAudioEncode}
NODE_DISPLAY_NAME_MAPPINGS = {"EmoAudioEncode": "EMO Audio Encode"}
