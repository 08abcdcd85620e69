"""EMO Sample Clip (one clip of the temporal UNet -> LATENT) and EMO Decode Clip (LATENT -> IMAGE).

For hand-built chains: clip k takes the last n decoded frames of clip k-1 as motion frames.
EMO Generate (chain.py) does the whole audio in one node."""
from __future__ import annotations

from .types import (CATEGORY, CLIP_INDEX, CONDITIONING_INPUTS, CUSTOM_PRESET, EMO_MODEL, PRESET, SAMPLING_WIDGETS,
                    SOURCE_INPUTS)


class EmoSampleClip:
    CATEGORY = CATEGORY
    FUNCTION = "sample"
    RETURN_TYPES = ("LATENT", "INT")
    RETURN_NAMES = ("latent", "clips")
    DESCRIPTION = ("Denoises clip 'clip_index' (f frames; Hallo: 16) with classifier-free guidance (DDIM, or the "
                   "preset's sampler). 'latent' is core's LATENT (frames in the batch, unscaled SD1.5 latents: core's "
                   "latent nodes and VAE Decode take it); 'clips' is how many clips the audio needs.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                **SOURCE_INPUTS,
                "clip_index": CLIP_INDEX,
                **SAMPLING_WIDGETS,
                "preset": PRESET,
            },
            "optional": {
                **CONDITIONING_INPUTS,
                "motion_frames": ("IMAGE", {"tooltip": "the previous clip's decoded frames (the last n are used); "
                                                       "without it clip 0 starts from copies of the portrait"}),
            },
        }

    def sample(self, emo_model, reference, emo_audio, clip_index, steps, cfg, seed, preset=CUSTOM_PRESET,
               face_mask=None, regions=None, speed=None, motion_frames=None):
        import torch

        from .common import StepProgress, sampling_preset, sampling_widgets
        from .comfy_env import model_patcher, soft_empty_cache

        steps, cfg, seed = sampling_widgets(steps, cfg, seed)
        steps, cfg, sampler, interval = sampling_preset(preset, steps, cfg)
        clip = ClipInputs(emo_model, reference, emo_audio, clip_index, face_mask, regions, speed, motion_frames)
        patcher = model_patcher(emo_model.pipe.schedule)
        progress = StepProgress(steps, 1, patcher=patcher)
        try:
            with emo_model.loaded() as pipe:
                latents = clip.sample(pipe, steps=steps, guidance=cfg, generator=torch.Generator().manual_seed(seed),
                                      callback=progress, sampler=sampler, guidance_interval=interval)
                latents = latents.float().cpu()
        finally:
            soft_empty_cache()
        samples = patcher.model.latent_format.process_out(latents[0].transpose(0, 1)).contiguous()
        return ({"samples": samples, "emo_clip": clip.info()}, clip.clips)


class ClipInputs:
    """One clip's inputs, checked (no model run): the frames of ``clip_index``, its motion frames,
    face mask, regions and speed. Shared by EMO Sample Clip and EMO Guider."""

    def __init__(self, emo_model, reference, emo_audio, clip_index, face_mask=None, regions=None, speed=None,
                 motion_frames=None):
        import torch

        from emo_core import checks
        from emo_core.chaining import plan_clips
        from emo_core.pipeline import clip_face_mask, first_motion_pixels
        from emo_core.windows import take_padded

        from .common import EmoNodeError, check_model, face_mask_for, regions_for, speed_for, widget

        clip_index = widget("clip_index", lambda v, name: checks.integer(v, name, low=0), clip_index)
        check_model(emo_model, reference, emo_audio)
        cfgm = emo_model.cfg
        if cfgm.chaining == "context_windows":
            raise EmoNodeError(f"{emo_model.name} ({cfgm.family}) samples the whole video as one latent sequence with "
                               "overlapping context windows, not clip by clip: use EMO Generate (whole audio) instead "
                               "of EMO Sample Clip / EMO Guider")
        total, size = emo_audio["frames"], reference["size"]
        plan = plan_clips(total, cfgm.clip_frames)
        if clip_index >= len(plan):
            raise EmoNodeError(f"clip_index {clip_index} is past the end: the audio gives {total} frames = "
                               f"{len(plan)} clips of {cfgm.clip_frames}")
        frames = plan[clip_index]
        n = cfgm.motion_frames
        mask = face_mask_for(face_mask, total, size)
        clip_mask = clip_face_mask(mask, frames)
        if motion_frames is None:
            if clip_index > 0:
                raise EmoNodeError(f"clip {clip_index} needs the previous clip's frames: connect EMO Decode Clip's "
                                   "IMAGE to motion_frames")
            motion_pixels = None
            if n:
                motion_pixels = first_motion_pixels(cfgm, reference["image"], clip_mask, reference.get("face_box"))
        else:
            if tuple(motion_frames.shape[1:3]) != tuple(size):
                raise EmoNodeError(f"motion frames are {tuple(motion_frames.shape[1:3])}, the portrait {tuple(size)}")
            motion_pixels = motion_frames[-n:, ..., :3].float() if n else None
            if n and motion_pixels.shape[0] < n:  # fewer frames than needed: repeat the first
                pad = motion_pixels[:1].expand(n - motion_pixels.shape[0], -1, -1, -1)
                motion_pixels = torch.cat([pad, motion_pixels])
        sp = speed_for(speed, total, emo_audio["fps"])
        self.emo_model, self.reference, self.emo_audio = emo_model, reference, emo_audio
        self.index, self.frames, self.total, self.clips = clip_index, frames, total, len(plan)
        self.motion_pixels = motion_pixels
        self.mask = clip_mask
        self.regions = regions_for(emo_model, regions, mask, size)
        self.speed = None if sp is None else take_padded(sp, frames)

    @property
    def latent_shape(self) -> tuple[int, int, int, int]:
        """The clip's latent in core's layout: [frames, 4, h, w]."""
        h, w = self.reference["state"].latent.shape[-2:]
        return (len(self.frames), self.emo_model.cfg.unet.in_channels, h, w)

    def info(self) -> dict:
        valid = max(0, min(self.emo_model.cfg.clip_frames, self.total - self.frames.start))
        return {"index": self.index, "start": self.frames.start, "frames": valid, "total": self.total}

    def sample(self, pipe, **kwargs):
        """``pipe.sample_clip`` on this clip (``kwargs``: steps, guidance, generator, noise, callback,
        interval, sample_fn, ...) -> latents [1, 4, f, h, w]."""
        state = self.reference["state"].to(pipe.device)
        motion_latents = None if self.motion_pixels is None else pipe.vae.encode_images(self.motion_pixels)
        return pipe.sample_clip(state, pipe.clip_windows(self.emo_audio["windows"], self.frames), motion_latents,
                                face_mask=self.mask, region_masks=self.regions, speed=self.speed, **kwargs)


class EmoDecodeClip:
    CATEGORY = CATEGORY
    FUNCTION = "decode"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("images",)
    DESCRIPTION = "Decodes an EMO clip latent to frames (padding frames past the end of the audio are dropped)."

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"emo_model": (EMO_MODEL, {"tooltip": "the model whose VAE decodes the clip"}),
                             "latent": ("LATENT", {"tooltip": "one clip from EMO Sample Clip, or from "
                                                             "SamplerCustomAdvanced with EMO Guider, possibly edited "
                                                             "by core's latent nodes (core's layout: frames in the "
                                                             "batch)"})}}

    def decode(self, emo_model, latent):
        from .comfy_env import latent_format

        samples = latent["samples"]
        if samples.ndim == 4 and samples.shape[1] == 4:  # core's layout: frames in the batch, unscaled
            samples = latent_format().process_in(samples.float()).transpose(0, 1)[None]
        # else the layout EMO Sample Clip had before core's: scaled latents [1, 4, f, h, w]
        if samples.ndim != 5 or samples.shape[1] != 4:
            raise ValueError(f"expected core's LATENT [frames, 4, h, w]; got {tuple(samples.shape)} (use EMO "
                             "Sample Clip's or SamplerCustomAdvanced's output)")
        with emo_model.loaded() as pipe:
            frames = pipe.decode(samples.to(pipe.device, pipe.dtype)).float().cpu()
        keep = latent.get("emo_clip", {}).get("frames", frames.shape[0])
        return (frames[:keep].contiguous(),)


NODE_CLASS_MAPPINGS = {"EmoSampleClip": EmoSampleClip, "EmoDecodeClip": EmoDecodeClip}
NODE_DISPLAY_NAME_MAPPINGS = {"EmoSampleClip": "EMO Sample Clip", "EmoDecodeClip": "EMO Decode Clip"}
