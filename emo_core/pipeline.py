"""EmoPipeline: portrait + audio features -> video frames, clip by clip.

The pieces, in the order they run:
1. ``encode_reference``: the portrait through the VAE and ReferenceNet, once per video.
2. per clip: the motion frames through ReferenceNet (once per clip), the clip's audio
   tokens, face-locator features and speed tokens; DDIM with classifier-free guidance;
   VAE decode of the clip (so memory does not grow with the video's length).
3. ``chaining.chain_clips`` carries the last n frames into the next clip.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch

from . import checks, families
from .chaining import chain_clips, first_motion_frames, join_start, join_timestep
from .conditioning import ReferenceState, clip_conditioning, denoiser, encode_portrait
from .config import EmoConfig
from .models.backbone import DeepCache
from .models.emo import EmoNet
from .sampling.ddim import Schedule, check_noise_correlation, frame_noise, sample_ddim
from .sampling.guidance import check_speed_guidance
from .sampling.samplers import check_sampler, sigma_interval, to_model_space
from .sampling.samplers import sample as sample_sigmas
from .vae import Vae
from .windows import frame_windows, take_padded

__all__ = ["EmoPipeline", "ReferenceState"]


def clip_face_mask(face_mask: torch.Tensor | None, frames: range) -> torch.Tensor | None:
    """A clip's face-locator mask [H, W]: ``face_mask`` itself when it is one for the whole video,
    the union of the clip's frames' masks when it is [T, H, W] (as EMO)."""
    if face_mask is not None and face_mask.ndim == 3:
        return take_padded(face_mask, frames).amax(0)
    return face_mask


def first_motion_pixels(cfg: EmoConfig, image: torch.Tensor, face_mask: torch.Tensor | None = None,
                        reference_box=None) -> torch.Tensor:
    """The first clip's motion frames [n, H, W, 3] from the reference image [H, W, 3]: its copies,
    with the face moved into the first clip's ``face_mask`` for families that place them (EMO's;
    ``chaining.first_motion_frames``). ``reference_box``: the face (x0, y0, x1, y1) in the image."""
    place = families.family_of(cfg).place_first_motion and reference_box is not None
    frames = first_motion_frames(image.permute(2, 0, 1), cfg.motion_frames, reference_box if place else None,
                                 face_mask)
    return frames.permute(0, 2, 3, 1)


class EmoPipeline:
    """``reference_rule``: how reference and motion-frame features are laid out over the CFG
    halves, "hallo" (Hallo's own pipeline, exactly) or "clean"; None: the model family's own
    (``emo_core.families``). ``channels_last``: the backbone's convolution weights (and so its
    feature maps) in ``torch.channels_last``, equal up to float rounding; off by default (on
    CPU within the noise of ``bench/unet_speed.py``; measure it there for your device)."""

    def __init__(self, net: EmoNet, vae: Vae, schedule: Schedule, *, device="cpu", dtype=torch.float32,
                 reference_rule: str | None = None, channels_last: bool = False):
        self.net = net.to(device=device, dtype=dtype).eval().requires_grad_(False)
        if channels_last:
            self.net.denoising_unet.to(memory_format=torch.channels_last)
        self.vae, self.schedule = vae, schedule
        self.device, self.dtype = torch.device(device), dtype
        self.rule = families.reference_rule(net.cfg, reference_rule)

    @property
    def cfg(self) -> EmoConfig:
        return self.net.cfg

    # ---- construction ------------------------------------------------------------------------
    @classmethod
    def tiny(cls, seed: int = 0, *, family: str = "hallo", device="cpu", reference_rule: str | None = None
             ) -> "EmoPipeline":
        """Random tiny weights and a random tiny VAE: runs everything offline, outputs noise."""
        from .vae import tiny_vae

        with torch.random.fork_rng():
            torch.manual_seed(seed)
            net = EmoNet(EmoConfig.tiny(family=family, speed=family != "hallo"))
        return cls(net, tiny_vae(seed), families.schedule_for(net.cfg), device=device, reference_rule=reference_rule)

    @classmethod
    def from_folder(cls, path, *, device="cpu", dtype=torch.float32, vae: Vae | None = None,
                    schedule: Schedule | None = None, reference_rule: str | None = None,
                    accelerated: bool | None = None, config: EmoConfig | None = None,
                    channels_last: bool = False) -> "EmoPipeline":
        """Loads a model folder or weights file (ours, Hallo's ``pretrained_models`` or net.pth, or
        EchoMimic's; ``families.load_net``), its schedule (``families.schedule_for``) and, unless
        given, the VAE of its ``sd-vae-ft-mse`` (or ``vae``) folder."""
        from .vae import load_vae

        net, folder = families.load_net(path, device=device, dtype=dtype, accelerated=accelerated, config=config)
        if vae is None:
            sub = families.vae_folder(folder)
            if sub is None:
                raise FileNotFoundError(f"no VAE for {path}: put SD's sd-vae-ft-mse folder (config.json + weights) "
                                        f"in {folder}, or pass a VAE")
            vae = load_vae(sub, device=device)
        schedule = schedule or families.schedule_for(net.cfg, folder)
        return cls(net, vae, schedule, device=device, dtype=dtype, reference_rule=reference_rule,
                   channels_last=channels_last)

    # ---- inputs ------------------------------------------------------------------------------
    def check_image(self, image: torch.Tensor) -> torch.Tensor:
        if image.ndim != 3 or image.shape[-1] != 3:
            raise ValueError(f"reference image must be [H, W, 3] with values in 0..1; got {tuple(image.shape)}")
        m = self.cfg.size_multiple
        h, w = image.shape[:2]
        if h % m or w % m:
            raise ValueError(f"reference image is {w}x{h}; width and height must be multiples of {m} "
                             f"(e.g. {max(m, w // m * m)}x{max(m, h // m * m)}): resize or crop it first")
        # float64 stays float64 (parity runs); everything else is read as float32
        return image.to(torch.float64 if image.dtype == torch.float64 else torch.float32).clamp(0, 1)

    @torch.no_grad()
    def encode_reference(self, image: torch.Tensor, face_embedding: torch.Tensor | None = None, *,
                         cache: bool = True) -> ReferenceState:
        image = self.check_image(image)
        latent = self.vae.encode_images(image[None]).to(self.device, self.dtype)
        return encode_portrait(self.net, latent, face_embedding, self.rule, image=image, cache=cache)

    def audio_windows_ok(self, audio: torch.Tensor) -> torch.Tensor:
        """Checks the audio conditioning: per-frame windows [T, window, blocks, size], or, for
        wav2vec-family models, per-frame features [T, blocks, size] whose ±m windows are cut
        clip by clip (5x less memory for long audio)."""
        a = self.cfg.audio
        shape = (a.window, a.feature_blocks, a.feature_dim)
        per_frame = a.encoder == "wav2vec2" and audio.ndim == 3 and tuple(audio.shape[1:]) == shape[1:]
        if not per_frame and (audio.ndim != 4 or tuple(audio.shape[1:]) != shape):
            raise ValueError(f"audio features must be [frames, {shape[0]}, {shape[1]}, {shape[2]}] "
                             f"(window, {a.encoder} blocks, size) for this model"
                             + (f" or [frames, {shape[1]}, {shape[2]}]" if a.encoder == "wav2vec2" else "")
                             + f"; got {tuple(audio.shape)}")
        if audio.shape[0] < 1:
            raise ValueError("audio features cover no video frame: the audio is shorter than one frame")
        return audio

    def audio_conditioning(self, audio_model, wave16k, fps: float) -> tuple[torch.Tensor, int]:
        """(audio features, video frames = round(seconds x fps)) of mono 16 kHz audio, as this
        model's family computes them: whisper windows (EchoMimic) or wav2vec2 per-frame features
        [T', blocks, size]; for Hallo's family T' may exceed the frames (``families.hallo``, quirk 7)."""
        from .preprocess.audio_features import AudioFeatureExtractor

        a = self.cfg.audio
        if a.encoder == "whisper":
            from .preprocess.whisper_features import windows_for_video

            windows = windows_for_video(audio_model, wave16k, fps, a.context)
            return windows, windows.shape[0]
        clip = self.cfg.clip_frames if families.family_of(self.cfg).audio_as_hallo else None
        extractor = AudioFeatureExtractor(audio_model, fps=fps, m=a.context, clip_length=clip)
        # per-frame features: the pipeline cuts each clip's ±m windows (memory stays 5x smaller)
        return extractor.encode(wave16k), extractor.num_frames(len(wave16k))

    def clip_windows(self, audio: torch.Tensor, frames: range) -> torch.Tensor:
        """The windows of ``frames`` (past the end: the last frame's window, as padding)."""
        if audio.ndim == 4:
            return take_padded(audio, frames)
        return frame_windows(audio, self.cfg.audio.context, frames)

    # ---- one clip ----------------------------------------------------------------------------
    @torch.no_grad()
    def sample_clip(self, ref: ReferenceState, audio_windows: torch.Tensor, motion_latents: torch.Tensor | None, *,
                    face_mask: torch.Tensor | None = None, region_masks=None, region_weights=None,
                    speed: torch.Tensor | None = None, steps: int = 40, guidance: float = 3.5,
                    generator: torch.Generator | None = None, noise: torch.Tensor | None = None,
                    callback: Callable | None = None, sampler: str = "ddim",
                    guidance_interval: tuple[float, float] | None = None, deep_cache: int | None = None,
                    interval: Callable | None = None, sample_fn: Callable | None = None,
                    start_from: torch.Tensor | None = None, join_denoise: float = 1.0,
                    speed_guidance: float | None = None, noise_correlation: float | None = None) -> torch.Tensor:
        """Denoises one clip. audio_windows [f, window, L, C]; motion_latents [n, 4, h, w], or None
        for the paper's first clip (zero feature maps as motion frames); face_mask [H, W];
        speed [f] deg/frame; noise [1, 4, f, h, w] (default: drawn in float32 from ``generator``).
        ``callback({"step", "steps", "x", "x0", "output"})`` after every step. ``sampler``: "ddim"
        (``sample_ddim``) or one of ``samplers.SAMPLERS`` over the model's own timesteps;
        ``guidance_interval`` (lo, hi): guidance only at sigmas in [lo, hi] (``samplers.sigma_interval``);
        ``deep_cache`` N: a full UNet forward every N steps, the shallow branch in between (``DeepCache``).
        ``interval(t) -> bool``: guidance only at those timesteps (instead of ``guidance_interval``).
        ``sample_fn(model_fn, noise, callback) -> latents``: an outside sampler (ComfyUI's, see
        ``sampling.discrete``) run on the guided ``model_fn(x_t, t)`` from this clip's unit noise
        instead of ``sampler``; ``steps`` is then unused.
        ``start_from`` [4, h, w] (the previous clip's last frame, latents) with ``join_denoise`` < 1:
        the clip starts from that frame noised to that level of the schedule and runs the steps from
        there (``chaining.join_timestep``).
        ``speed_guidance``: its own guidance scale on the speed (``guidance.guided_speed``; needs
        ``guidance`` > 1; no effect without a speed or speed layers); None: the family's default
        (EMO's when ``guidance`` > 1; ``speed_guidance == guidance``: plain CFG).
        ``noise_correlation``: the share of the drawn noise all frames have in common
        (``ddim.frame_noise``); None: the family's default (0 for every family: see the README's *Speed control*).
        Returns latents [1, 4, f, h, w]."""
        steps, guidance = checks.steps(steps), checks.guidance(guidance, "guidance")
        sampler = check_sampler(sampler)
        speed_guidance = self.resolve_speed_guidance(speed_guidance, guidance, speed)
        if guidance_interval is not None:
            interval = sigma_interval(self.schedule, *guidance_interval)
        f = audio_windows.shape[0]
        if audio_windows.ndim != 4:
            raise ValueError(f"sample_clip takes the clip's windows [f, window, blocks, size]; got "
                             f"{tuple(audio_windows.shape)} (see clip_windows)")
        cond = clip_conditioning(self.net, ref, audio_windows=self.audio_windows_ok(audio_windows),
                                 face_mask=None if face_mask is None else self._mask(face_mask, ref), speed=speed,
                                 region_masks=region_masks, region_weights=region_weights)
        model = None
        if deep_cache is not None:
            cache = DeepCache(deep_cache)
            model = lambda x, t, c: self.net.denoising_unet(x, t, c, cache=cache)
        guided_fn = denoiser(self.net, ref, cond, self.rule, motion_latents, frames=f, guidance=guidance,
                             interval=interval, model=model, speed_guidance=speed_guidance)
        # The sampler's state stays in float32 (float64 for float64 models) whatever the network runs in.
        state = torch.float64 if self.dtype == torch.float64 else torch.float32

        def model_fn(x, t):
            return guided_fn(x.to(self.dtype), t).to(state)

        if noise is None:
            h, w = ref.latent.shape[-2:]
            if noise_correlation is None:
                noise_correlation = families.family_of(self.cfg).noise_correlation
            noise = frame_noise((1, self.cfg.unet.in_channels, f, h, w), noise_correlation, generator)
        if sample_fn is not None:
            return sample_fn(model_fn, noise.to(self.device, state), callback)
        x, start_t, run = noise.to(self.device, state), None, steps
        if start_from is not None and (start_t := join_timestep(self.schedule, steps, join_denoise)) is not None:
            x = join_start(x, start_from[None].to(self.device, state), self.schedule, start_t)
            run = sum(t <= start_t for t in self.schedule.timesteps(steps))
        if sampler != "ddim":
            return self._sample_sigmas(sampler, model_fn, x, steps, callback, start_t, run)
        step_cb = None if callback is None else (
            lambda s: callback({"step": s["i"] + 1, "steps": run, "x": s["x"], "x0": s["x0"], "output": s["output"]}))
        return sample_ddim(model_fn, x, self.schedule, steps, callback=step_cb, start_t=start_t)

    def resolve_speed_guidance(self, value: float | None, guidance: float, speed: torch.Tensor | None) -> float | None:
        """The speed's guidance scale a clip is sampled with: ``value``, or the model family's default
        when CFG is on (None when there is no speed to guide or no speed layers); checked."""
        if speed is None or self.net.speed_encoder is None:
            return None
        if value is None:
            return families.family_of(self.cfg).speed_guidance if guidance > 1.0 else None
        check_speed_guidance(guidance, value)
        return value

    def _sample_sigmas(self, sampler: str, model_fn: Callable, noise: torch.Tensor, steps: int, callback,
                       start_t: int | None = None, run: int | None = None):
        """A sigma-space sampler (``samplers.sample``); the callback sees DDIM's variables (x_t)."""
        last = {}

        def recording(x, t):
            last["output"] = model_fn(x, t)
            return last["output"]

        step_cb = None if callback is None else (
            lambda s: callback({"step": s["i"] + 1, "steps": run or steps, "x": to_model_space(s["x"], s["sigma_next"]),
                                "x0": s["denoised"], "output": last["output"]}))
        return sample_sigmas(sampler, recording, noise, self.schedule, steps, callback=step_cb, start_t=start_t)

    def _mask(self, mask: torch.Tensor, ref: ReferenceState) -> torch.Tensor:
        if mask.shape[-2:] != ref.image.shape[:2]:
            raise ValueError(f"face mask is {tuple(mask.shape[-2:])} but the reference image is {ref.size}")
        return mask.to(self.device, self.dtype)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """latents [1, 4, f, h, w] -> frames [f, H, W, 3] in 0..1."""
        return self.vae.decode_latents(latents[0].transpose(0, 1))

    # ---- a whole video -----------------------------------------------------------------------
    def generate(self, ref: ReferenceState, audio_windows: torch.Tensor, *, face_mask: torch.Tensor | None = None,
                 region_masks=None, region_weights=None, speed: torch.Tensor | None = None, steps: int = 40,
                 guidance: float = 3.5, seed: int = 0, motion_start: str = "reference",
                 callback: Callable | None = None, num_frames: int | None = None, sampler: str = "ddim",
                 guidance_interval: tuple[float, float] | None = None, deep_cache: int | None = None,
                 interval: Callable | None = None, sample_fn: Callable | None = None,
                 join_denoise: float | None = None, speed_guidance: float | None = None,
                 noise_correlation: float | None = None, reference_box=None) -> Iterator[torch.Tensor]:
        """Yields clips of frames [k, H, W, 3] in 0..1; in total exactly ``num_frames`` frames (default:
        one per row of ``audio_windows``: [T, window, blocks, size], or wav2vec features [T, blocks,
        size], whose rows past ``num_frames`` are window context only). face_mask: [H, W] for the
        whole video or [T, H, W] per frame (each clip uses the union of its frames' masks, as EMO).
        speed: [T] degrees per frame. ``sampler``, ``guidance_interval``, ``deep_cache``, ``interval``,
        ``sample_fn``: as ``sample_clip``. ``join_denoise``: every clip after the first starts from the
        previous clip's last frame at this level of the schedule (``chaining.join_timestep``; 1 = from
        pure noise; None: the model family's default, 1 for Hallo and EchoMimic as their own code
        does; not used with ``sample_fn``, whose sigmas are the caller's). ``speed_guidance``,
        ``noise_correlation``: as ``sample_clip``. ``reference_box``: the face (x0, y0, x1, y1) in the
        reference image's pixels; with ``face_mask``, models of a family that places the first
        motion frames (EMO's) get copies of the reference with the face moved into the first clip's
        mask (``chaining.first_motion_frames``)."""
        steps, guidance, seed = checks.steps(steps), checks.guidance(guidance, "guidance"), checks.seed(seed)
        sampler = check_sampler(sampler)
        if guidance_interval is not None:
            sigma_interval(self.schedule, *guidance_interval)  # checked before the first clip
        if deep_cache is not None:
            DeepCache(deep_cache)
        if self.cfg.chaining == "context_windows" and (sampler != "ddim" or guidance_interval or deep_cache
                                                       or interval or sample_fn):
            raise ValueError(f"sampler: this model samples the whole video in context windows, with DDIM over "
                             f"every timestep's windows; got sampler={sampler!r}, "
                             f"guidance_interval={guidance_interval}, deep_cache={deep_cache}")
        join_denoise = families.family_of(self.cfg).join_denoise if join_denoise is None else join_denoise
        join_timestep(self.schedule, steps, join_denoise)  # checked before the first clip
        speed_guidance = self.resolve_speed_guidance(speed_guidance, guidance, speed)  # checked before the first clip
        noise_correlation = check_noise_correlation(families.family_of(self.cfg).noise_correlation
                                                    if noise_correlation is None else noise_correlation)
        if speed is not None and not bool(torch.isfinite(speed).all() and (speed >= 0).all()):
            raise ValueError("speed: expected finite degrees per frame >= 0 for every frame, got NaN/inf or negative")
        windows = self.audio_windows_ok(audio_windows)
        total = windows.shape[0] if num_frames is None else int(num_frames)
        if not 1 <= total <= windows.shape[0]:
            raise ValueError(f"num_frames must be between 1 and the audio's {windows.shape[0]} rows, got {num_frames}")
        if motion_start not in ("reference", "zeros"):
            raise ValueError(f"motion_start must be 'reference' or 'zeros', got {motion_start!r}")
        for name, value in (("face_mask", face_mask if face_mask is not None and face_mask.ndim == 3 else None),
                            ("speed", speed)):
            if value is not None and value.shape[0] != total:
                raise ValueError(f"{name} covers {value.shape[0]} frames but the audio covers {total}: "
                                 "pass one value per video frame (same fps)")
        generator = torch.Generator().manual_seed(seed)
        if self.cfg.chaining == "context_windows":
            with _release_memory(self.device):
                yield from self._generate_context_windows(ref, windows[:total], face_mask, steps, guidance, generator,
                                                          callback)
            return
        f, n = self.cfg.clip_frames, self.cfg.motion_frames
        clips = -(-total // f)

        initial = None
        if motion_start == "reference" and n:
            initial = first_motion_pixels(self.cfg, ref.image, clip_face_mask(face_mask, range(f)), reference_box)

        def make_clip(index: int, frames: range, motion_pixels):
            mask = clip_face_mask(face_mask, frames)
            clip_speed = None if speed is None else take_padded(speed, frames)
            motion_latents = None if motion_pixels is None else self.vae.encode_images(motion_pixels)
            cb = None if callback is None else (lambda s: callback({"clip": index + 1, "clips": clips, **s}))
            latents = self.sample_clip(ref, self.clip_windows(windows, frames), motion_latents, face_mask=mask,
                                       region_masks=region_masks, region_weights=region_weights, speed=clip_speed,
                                       steps=steps, guidance=guidance, generator=generator, callback=cb,
                                       sampler=sampler, guidance_interval=guidance_interval, deep_cache=deep_cache,
                                       interval=interval, sample_fn=sample_fn,
                                       start_from=None if index == 0 or motion_latents is None else motion_latents[-1],
                                       join_denoise=join_denoise, speed_guidance=speed_guidance,
                                       noise_correlation=noise_correlation)
            return self.decode(latents)

        with _release_memory(self.device):
            yield from chain_clips(total, f, n, make_clip, initial)


    def _generate_context_windows(self, ref, windows, face_mask, steps, guidance, generator, callback):
        """EchoMimic's strategy: the whole video is one latent sequence sampled with
        overlapping context windows (latents stay on the CPU), then decoded clip by clip."""
        from .families.echomimic import sample_video

        mask = None
        if face_mask is not None:
            mask = self._mask(face_mask.amax(0) if face_mask.ndim == 3 else face_mask, ref)
        cb = None if callback is None else (lambda s: callback({"clip": 1, "clips": 1, **s}))
        latents = sample_video(self.net, ref.latent, windows, self.schedule, steps, face_mask=mask,
                               guidance=guidance, generator=generator, callback=cb)
        for chunk in latents.split(self.cfg.clip_frames, dim=2):
            yield self.decode(chunk)


@contextlib.contextmanager
def _release_memory(device: torch.device):
    """Frees cached accelerator memory when generation ends, normally or not."""
    try:
        yield
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()
