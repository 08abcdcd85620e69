"""EMO Generate: the whole audio, clip after clip with motion frames carried over.

Every clip is written to an H.264 + AAC mp4 as soon as it is decoded (the VIDEO output is
backed by that file), so a long song never has to sit in memory: set keep_frames to
"last" and wire VIDEO into Save Video. IMAGE + AUDIO + fps also fit core's Create Video.
"""
from __future__ import annotations

import math

from .types import CATEGORY, CONDITIONING_INPUTS, CUSTOM_PRESET, PRESET, SAMPLING_WIDGETS, SOURCE_INPUTS


def check_audio_matches(audio: dict, emo_audio: dict) -> None:
    """The AUDIO to mux must be the audio the features were made from (same length)."""
    from .common import EmoNodeError

    wave = audio["waveform"]
    seconds = wave.shape[-1] / float(audio["sample_rate"])
    if abs(seconds - emo_audio["seconds"]) > 1.0 / emo_audio["fps"]:
        raise EmoNodeError(f"the AUDIO input is {seconds:.3f} s but EMO_AUDIO was encoded from {emo_audio['seconds']:.3f} s "
                           "of audio: connect the same AUDIO to EMO Audio Encode and EMO Generate")


class EmoGenerate:
    CATEGORY = CATEGORY
    FUNCTION = "generate"
    RETURN_TYPES = ("IMAGE", "AUDIO", "VIDEO", "FLOAT")
    RETURN_NAMES = ("images", "audio", "video", "fps")
    DESCRIPTION = ("Generates the whole video: round(audio seconds x fps) frames, clip by clip, each clip starting "
                   "from the last frames of the previous one (EchoMimic: the whole video as one latent sequence with "
                   "overlapping context windows, decoded clip by clip; accelerated weights: 6 steps, cfg 1). "
                   "Streams to an mp4 (VIDEO output).")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                **SOURCE_INPUTS,
                "audio": ("AUDIO", {"tooltip": "the same audio as EMO Audio Encode's; muxed into the VIDEO and "
                                               "passed through unchanged"}),
                **SAMPLING_WIDGETS,
                "motion_start": (["reference", "zeros"], {
                    "default": "reference", "tooltip": "first clip's motion frames: copies of the portrait (Hallo) "
                                                       "or none (the paper's zero maps)"}),
                "keep_frames": (["all", "last"], {
                    "default": "all", "tooltip": "all: IMAGE holds every frame; last: IMAGE holds only the last frame "
                                                 "(long videos: use the VIDEO output, which is streamed to disk)"}),
                "preset": (PRESET[0], {**PRESET[1], "tooltip": PRESET[1]["tooltip"] + ". With 'sampler' and 'sigmas' "
                                       "connected it must be custom (they choose the sampling; an error otherwise)"}),
            },
            "optional": {
                **CONDITIONING_INPUTS,
                "sampler": ("SAMPLER", {"tooltip": "optional core SAMPLER (KSamplerSelect: euler, dpmpp_2m, ...): with "
                                                   "'sigmas', every clip is sampled by it with the cfg widget (steps "
                                                   "is then unused; preset must be custom); without: the preset"}),
                "sigmas": ("SIGMAS", {"tooltip": "optional noise levels for 'sampler' (EMO Scheduler)"}),
                "join_denoise": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.05,
                                           "tooltip": "seamless clip joins: every clip after the first starts from "
                                                      "the previous clip's last frame at this fraction of the "
                                                      "schedule (1 = from pure noise; 0 = the model's default: EMO "
                                                      "0.6, Hallo and EchoMimic 1, as their own code). Not used with "
                                                      "a connected SAMPLER + SIGMAS"}),
                "speed_guidance": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 30.0, "step": 0.5,
                                             "tooltip": "how strongly the head follows the asked speed (EMO Speed): "
                                                        "the speed's own guidance scale, with cfg > 1 (0 = the "
                                                        "model's default: EMO 5; equal to cfg = plain guidance). "
                                                        "Only for models with speed layers"}),
            },
        }

    def generate(self, emo_model, reference, emo_audio, audio, steps, cfg, seed, motion_start="reference",
                 keep_frames="all", preset=CUSTOM_PRESET, face_mask=None, regions=None, speed=None, sampler=None,
                 sigmas=None, join_denoise=0.0, speed_guidance=0.0):
        import uuid

        import torch

        from emo_core.preprocess.audio_io import AudioError
        from emo_core.video_out import Mp4Writer, OutputPathError, check_output_path

        from .common import (EmoNodeError, StepProgress, check_model, choice, face_mask_for, regions_for,
                             sampling_preset, sampling_widgets, speed_for)
        from .comfy_env import make_video, model_patcher, soft_empty_cache, temp_dir

        steps, cfg, seed = sampling_widgets(steps, cfg, seed)
        choice("motion_start", motion_start, ("reference", "zeros"))
        choice("keep_frames", keep_frames, ("all", "last"))
        steps, cfg, sampler_name, interval = sampling_preset(preset, steps, cfg)
        if not 0.0 <= float(join_denoise) <= 1.0:
            raise EmoNodeError(f"join_denoise: expected 0 (the model's default) or a fraction of the schedule up to 1, "
                               f"got {join_denoise}")
        join = None if float(join_denoise) == 0.0 else float(join_denoise)
        if not 0.0 <= float(speed_guidance) < float("inf"):
            raise EmoNodeError(f"speed_guidance: expected 0 (the model's default) or a guidance scale > 0, "
                               f"got {speed_guidance}")
        if float(speed_guidance) > 0.0 and cfg <= 1.0 and speed is not None:
            raise EmoNodeError(f"speed_guidance {speed_guidance:g} needs cfg > 1 (got {cfg:g}): set cfg above 1, or "
                               "speed_guidance to 0")
        speed_scale = None if float(speed_guidance) == 0.0 else float(speed_guidance)
        if (sampler is not None or sigmas is not None) and preset != CUSTOM_PRESET:
            raise EmoNodeError(f"preset {preset!r} chooses its own sampler and steps, so does the connected SAMPLER + "
                               "SIGMAS: set preset to custom (the SAMPLER, SIGMAS and the cfg widget then decide), or "
                               "disconnect 'sampler' and 'sigmas'")
        # context-window models (EchoMimic) denoise the whole video at once: one pass of `steps`
        windowed = emo_model.cfg.chaining == "context_windows"
        if windowed and (sampler_name, interval) != ("ddim", None):
            raise EmoNodeError(f"preset {preset!r}: {emo_model.name} samples the whole video in context windows with "
                               "DDIM only: use preset custom or quality")
        check_model(emo_model, reference, emo_audio)
        check_audio_matches(audio, emo_audio)
        total, size, fps = emo_audio["frames"], reference["size"], emo_audio["fps"]
        mask = face_mask_for(face_mask, total, size)
        sp = speed_for(speed, total, fps)
        wave = audio["waveform"]
        if wave.ndim != 3 or wave.shape[-1] == 0:
            raise AudioError(f"AUDIO waveform must be [B, C, T] with samples; got {tuple(wave.shape)}")
        mux = wave[0].float().cpu()
        if mux.shape[0] > 2:
            mux = mux.mean(0, keepdim=True)
        path = temp_dir() / f"emo_{uuid.uuid4().hex[:12]}.mp4"
        try:  # before any sampling: a temp folder that cannot be written must not cost the whole run
            check_output_path(path)
        except OutputPathError as exc:
            raise EmoNodeError(f"cannot write the video to ComfyUI's temp folder: {exc}") from None
        sample_fn = None
        if (sampler is None) != (sigmas is None):
            raise EmoNodeError("connect both 'sampler' and 'sigmas' (core's custom sampling), or neither (DDIM)")
        if sampler is not None:
            from .guider import check_sigmas, core_sample_fn

            if windowed:
                raise EmoNodeError(f"{emo_model.name} samples the whole video in context windows with DDIM: "
                                   "disconnect 'sampler' and 'sigmas'")
            steps = check_sigmas(sigmas).shape[0] - 1
            sample_fn = core_sample_fn(sampler, sigmas, emo_model.pipe.schedule, cfg=cfg, seed=seed)
        progress = StepProgress(steps, 1 if windowed else math.ceil(total / emo_model.cfg.clip_frames),
                                patcher=model_patcher(emo_model.pipe.schedule), label="EMO Generate")
        kept = []
        last = None
        try:
            with emo_model.loaded() as pipe, Mp4Writer(path, fps, audio=mux, sample_rate=int(audio["sample_rate"])) as writer:
                state = reference["state"].to(pipe.device)
                for clip in pipe.generate(state, emo_audio["windows"], face_mask=mask,
                                          region_masks=regions_for(emo_model, regions, mask, size), speed=sp,
                                          steps=steps, guidance=cfg, seed=seed, motion_start=motion_start,
                                          callback=progress, num_frames=total, sampler=sampler_name,
                                          guidance_interval=interval, sample_fn=sample_fn, join_denoise=join,
                                          speed_guidance=speed_scale, reference_box=reference.get("face_box")):
                    clip = clip.float().cpu()
                    if clip.shape[0] == 0:
                        continue
                    writer.write(clip)
                    last = clip[-1:]
                    if keep_frames == "all":
                        kept.append(clip)
        finally:
            soft_empty_cache()
        images = torch.cat(kept) if keep_frames == "all" else last.clone()
        return (images, audio, make_video(path), float(fps))


NODE_CLASS_MAPPINGS = {"EmoGenerate": EmoGenerate}
NODE_DISPLAY_NAME_MAPPINGS = {"EmoGenerate": "EMO Generate (whole audio)"}
