"""Custom types passed between the EMO nodes, with their payloads.

Core types used as they are: IMAGE [B, H, W, C] float 0..1; MASK [B, H, W] float 0..1;
LATENT {"samples": tensor}; AUDIO {"waveform": [B, C, T], "sample_rate": int}; VAE (ComfyUI's
VAE, adapted by ``nodes.model.ComfyVae``); VIDEO (ComfyUI's file-backed ``VideoFromFile``);
FACE_LANDMARKS (core's MediaPipe Face Landmarker output: {"frames": [[face_dict]],
"image_size": (H, W), ...}, face_dict with bbox_xyxy, landmarks_xy, landmarks_3d,
transformation_matrix); AUDIO_ENCODER_OUTPUT (core's AudioEncoderEncode output:
{"encoded_audio", "encoded_audio_all_layers": tuple of [B, T50, C], "audio_samples"}).
Core's custom sampling (``comfy_extras/nodes_custom_sampler.py``): SAMPLER (``comfy.samplers.KSAMPLER``),
SIGMAS (1-D float32 tensor of noise levels, ending at 0), NOISE (``generate_noise(latent)``, ``seed``);
EMO Guider's GUIDER is ``nodes.guider.EmoGuiderObject`` (``sample(noise, latent_image, sampler,
sigmas, denoise_mask, callback, disable_pbar, seed)`` and a ``model_patcher`` with the SD1.5 latent
format, as SamplerCustomAdvanced needs). The LATENT of EMO Guider and EMO Sample Clip is core's:
{"samples": [frames, 4, h, w] unscaled SD1.5 latents (as core's samplers return them, so core's
latent nodes and VAE Decode take it), "emo_clip": {"index", "start", "frames" (those before the
end of the audio), "total"}} (core's nodes ignore the extra key).

EMO_MODEL      ``nodes.model.EmoModel``: the EmoPipeline (network, VAE, DDIM schedule) kept on
               the offload device and loaded through a ModelPatcher when a node runs, plus
               where its helper models are (wav2vec2 folder, face model folder; for EchoMimic
               the folder with audio_processor/whisper_tiny.pt) and
               ``tiny`` (random weights: output is noise). Read-only for every node.
EMO_AUDIO      dict: "windows" float32 CPU tensor: per-frame wav2vec2 features [T', L, C] (the
               sampler cuts each clip's ±m windows, so long audio stays small; for Hallo-family
               models T' >= T, the rows past T being the last frames' window context), or whisper
               windows [T, window, L, C] for EchoMimic (window = 2(2m+1), L = 1 + blocks),
               "fps" float, "frames" int T = round(seconds * fps), "seconds" float,
               "source" ("emo-wav2vec2" | "emo-whisper" | "comfy-audio-encoder").
EMO_REFERENCE  dict: "state" (emo_core.pipeline.ReferenceState on the CPU: the prepared
               portrait, its latent, identity tokens, cached ReferenceNet features),
               "image" [H, W, 3], "size" (H, W), "model_key" (which EMO_MODEL made it),
               "face_box" (x0, y0, x1, y1) of the face in "image", or None (no face found).
EMO_SPEED      dict: "speed" [T] float32 degrees per frame or None, "constant" float or None
               (one target for every frame), "fps" float (frames the series is measured in).
EMO_REGIONS    dict: "full" / "face" / "lip" [H, W] float masks (Hallo's audio-attention
               regions of the reference face), "size" (H, W).
EMO_FRAMING    ``emo_core.preprocess.framing.Framing`` (frozen dataclass): where EMO Reference
               Encode's prepared portrait comes from in the photo. "box" (x0, y0, x1, y1) int
               pixels of the photo (may reach past its border: that part was filled per
               "pad_mode", "edge" or "reflect"), "image_size" the photo's (H, W), "size" the
               portrait's (H, W), "face_box" the chosen face (x0, y0, x1, y1) or None, "score"
               its detector score, "mode" ("face", "center", "none", "full_frame"),
               "other_faces" ((box, score, reason or None), ...) the detections not used.
               EMO Paste Back reads it.
"""
from emo_core.sampling.presets import PRESETS

EMO_MODEL = "EMO_MODEL"
EMO_AUDIO = "EMO_AUDIO"
EMO_REFERENCE = "EMO_REFERENCE"
EMO_SPEED = "EMO_SPEED"
EMO_REGIONS = "EMO_REGIONS"
EMO_FRAMING = "EMO_FRAMING"
CATEGORY = "EMO"

# Inputs shared by the sampling nodes (same widgets, same order in the workflows).
STEPS = ("INT", {"default": 40, "min": 1, "max": 1000, "tooltip": "DDIM steps (Hallo: 40; EchoMimic accelerated: 6); "
                                                                  "used with preset 'custom'"})
CFG = ("FLOAT", {"default": 3.5, "min": 0.0, "max": 20.0, "step": 0.1,
                 "tooltip": "classifier-free guidance scale (<= 1: no guidance, one pass per step; "
                            "EchoMimic accelerated: 1); used with preset 'custom' or a connected SAMPLER"})
SEED = ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": True,
                "tooltip": "noise seed: the same seed and inputs give the same video"})
# The inputs every sampling node starts with, and its DDIM widgets (in this order: saved
# workflows list widget values by position).
SOURCE_INPUTS = {
    "emo_model": (EMO_MODEL, {"tooltip": "the network from EMO Model Loader"}),
    "reference": (EMO_REFERENCE, {"tooltip": "the portrait's features from EMO Reference Encode"}),
    "emo_audio": (EMO_AUDIO, {"tooltip": "per-frame audio features from EMO Audio Encode (sets the frame count)"}),
}
SAMPLING_WIDGETS = {"steps": STEPS, "cfg": CFG, "seed": SEED}
# Named sampling settings: emo_core.sampling.presets (the CLI's --preset) plus "custom" = the
# steps / cfg widgets with DDIM. The last required widget of a sampling node, so that
# workflows saved before it existed still load (their values keep their positions).
CUSTOM_PRESET = "custom"
PRESET_CHOICES = [CUSTOM_PRESET, *PRESETS]


def _preset_tooltip() -> str:
    def one(name, p):
        interval = "" if p.guidance_interval is None else " (guidance at sigma {}..{} only)".format(*p.guidance_interval)
        return f"{name}: {p.sampler}, {p.steps} steps, cfg {p.guidance:g}{interval}"

    return ("custom: DDIM with the steps and cfg widgets; " + "; ".join(one(n, p) for n, p in PRESETS.items())
            + ". A named preset sets sampler, steps and cfg (the steps / cfg widgets are then unused)")


PRESET = (PRESET_CHOICES, {"default": CUSTOM_PRESET, "tooltip": _preset_tooltip()})
CLIP_INDEX = ("INT", {"default": 0, "min": 0, "max": 100000,
                      "tooltip": "which clip of the audio to sample (0 = the first; see 'clips')"})
CONDITIONING_INPUTS = {
    "face_mask": ("MASK", {"tooltip": "face-locator mask from EMO Face Mask (where the face may move); "
                                      "without it the whole frame"}),
    "regions": (EMO_REGIONS, {"tooltip": "Hallo's full/face/lip audio-attention regions from EMO Face Mask "
                                         "(Hallo-layout models)"}),
    "speed": (EMO_SPEED, {"tooltip": "head-motion speed from EMO Speed (EMO-layout models with speed layers; "
                                     "others ignore it)"}),
}
