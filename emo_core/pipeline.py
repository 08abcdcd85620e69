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
from dataclasses import dataclass
from typing import Callable, Iterator

import torch

from .chaining import chain_clips, take_padded
from .config import EmoConfig
from .models.attention import ReferenceFeatures
from .models.backbone import Conditioning
from .models.emo import EmoNet
from .sampling.ddim import Schedule, sample_ddim
from .sampling.guidance import guided
from .vae import Vae


class Interrupted(RuntimeError):
    """Raised by a progress callback to stop generation cleanly."""


@dataclass
class ReferenceState:
    """The portrait, encoded once per video."""

    image: torch.Tensor  # [H, W, 3] 0..1
    latent: torch.Tensor  # [1, 4, h, w]
    identity: torch.Tensor | None  # [1, n, D] identity tokens or None
    features: ReferenceFeatures | None  # ReferenceNet features of the portrait (None: caching off)

    @property
    def size(self) -> tuple[int, int]:
        return self.image.shape[0], self.image.shape[1]

    def to(self, device) -> "ReferenceState":
        """A copy with the model-side tensors on ``device`` (this state is not changed)."""
        return ReferenceState(self.image, self.latent.to(device),
                              None if self.identity is None else self.identity.to(device),
                              None if self.features is None else self.features.to(device))


class EmoPipeline:
    def __init__(self, net: EmoNet, vae: Vae, schedule: Schedule, *, device="cpu", dtype=torch.float32):
        self.net = net.to(device=device, dtype=dtype).eval().requires_grad_(False)
        self.vae, self.schedule = vae, schedule
        self.device, self.dtype = torch.device(device), dtype

    @property
    def cfg(self) -> EmoConfig:
        return self.net.cfg

    # ---- construction ------------------------------------------------------------------------
    @classmethod
    def tiny(cls, seed: int = 0, *, family: str = "hallo", device="cpu") -> "EmoPipeline":
        """Random tiny weights and a random tiny VAE: runs everything offline, outputs noise."""
        from .vae import tiny_vae

        with torch.random.fork_rng():
            torch.manual_seed(seed)
            net = EmoNet(EmoConfig.tiny(family=family, speed=family != "hallo"))
        schedule = Schedule.for_prediction(net.cfg.prediction_type)
        return cls(net, tiny_vae(seed), schedule, device=device)

    @classmethod
    def from_folder(cls, folder, *, device="cpu", dtype=torch.float32, vae: Vae | None = None,
                    schedule: Schedule | None = None) -> "EmoPipeline":
        """Loads a model folder (ours or Hallo's ``pretrained_models``) and, unless given, the
        VAE from its ``sd-vae-ft-mse`` (or ``vae``) subfolder."""
        from pathlib import Path

        from .checkpoints import load_model
        from .vae import load_vae

        folder = Path(folder)
        net = load_model(folder, device=device, dtype=dtype)
        if vae is None:
            sub = next((folder / n for n in ("sd-vae-ft-mse", "vae") if (folder / n).is_dir()), None)
            if sub is None:
                raise FileNotFoundError(f"no VAE in {folder}: put the sd-vae-ft-mse folder there or pass a VAE")
            vae = load_vae(sub, device=device)
        if schedule is None:
            schedule = Schedule.for_prediction(net.cfg.prediction_type)
        return cls(net, vae, schedule, device=device, dtype=dtype)

    # ---- inputs ------------------------------------------------------------------------------
    def check_image(self, image: torch.Tensor) -> torch.Tensor:
        if image.ndim != 3 or image.shape[-1] != 3:
            raise ValueError(f"reference image must be [H, W, 3] with values in 0..1; got {tuple(image.shape)}")
        m = self.cfg.size_multiple
        h, w = image.shape[:2]
        if h % m or w % m:
            raise ValueError(f"reference image is {w}x{h}; width and height must be multiples of {m} "
                             f"(e.g. {max(m, w // m * m)}x{max(m, h // m * m)}): resize or crop it first")
        return image.float().clamp(0, 1)

    @torch.no_grad()
    def encode_reference(self, image: torch.Tensor, face_embedding: torch.Tensor | None = None, *,
                         cache: bool = True) -> ReferenceState:
        image = self.check_image(image)
        latent = self.vae.encode_images(image[None]).to(self.device, self.dtype)
        emb = None if face_embedding is None else face_embedding.reshape(1, -1)
        identity = self.net.identity_tokens(emb, batch=1)
        features = self.net.reference_features(latent, identity) if cache else None
        return ReferenceState(image, latent, identity, features)

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

    def clip_windows(self, audio: torch.Tensor, frames: range) -> torch.Tensor:
        """The windows of ``frames`` (past the end: the last frame's window, as padding)."""
        if audio.ndim == 4:
            return take_padded(audio, frames)
        total, m = audio.shape[0], self.cfg.audio.context
        centre = torch.arange(frames.start, frames.stop).clamp(max=total - 1)
        return audio[(centre[:, None] + torch.arange(-m, m + 1)).clamp(0, total - 1)]

    # ---- one clip ----------------------------------------------------------------------------
    @torch.no_grad()
    def sample_clip(self, ref: ReferenceState, audio_windows: torch.Tensor, motion_latents: torch.Tensor | None, *,
                    face_mask: torch.Tensor | None = None, region_masks=None, region_weights=None,
                    speed: torch.Tensor | None = None, steps: int = 40, guidance: float = 3.5,
                    generator: torch.Generator | None = None, callback: Callable | None = None) -> torch.Tensor:
        """Denoises one clip. audio_windows [f, window, L, C]; motion_latents [n, 4, h, w], or None
        for the paper's first clip (zero feature maps as motion frames); face_mask [H, W];
        speed [f] deg/frame. Returns latents [1, 4, f, h, w]."""
        net, f, n = self.net, audio_windows.shape[0], self.cfg.motion_frames
        if audio_windows.ndim != 4:
            raise ValueError(f"sample_clip takes the clip's windows [f, window, blocks, size]; got "
                             f"{tuple(audio_windows.shape)} (see clip_windows)")
        audio = net.audio_tokens(self.audio_windows_ok(audio_windows)[None])
        face = None if face_mask is None else net.face_features(self._mask(face_mask, ref)[None])
        motion = None
        if motion_latents is not None and motion_latents.shape[0] > 0:
            motion = net.motion_features(motion_latents[None].to(self.device, self.dtype), ref.identity)
        elif n > 0:
            spatial = (ref.features or net.reference_features(ref.latent, ref.identity)).spatial
            motion = {k: v.new_zeros(v.shape[0], n, *v.shape[1:]) for k, v in spatial.items()}
        speed_tokens = None if speed is None else net.speed_tokens(speed.reshape(1, -1).to(self.device, torch.float32))
        cond = Conditioning(reference=None, identity=ref.identity, audio=audio, face=face, speed=speed_tokens,
                            region_masks=region_masks, region_weights=region_weights)
        null_identity = net.identity_tokens(None, batch=1)

        def with_reference(features: ReferenceFeatures):
            c = Conditioning(**{**cond.__dict__, "reference": features.with_motion(motion)})
            return guided(net, c, null_identity, guidance)

        if ref.features is not None:  # built once per clip: the portrait's features are reused by every step
            guided_fn = with_reference(ref.features)
        else:  # caching off: the portrait goes through ReferenceNet at every step
            guided_fn = lambda x, t: with_reference(net.reference_features(ref.latent, ref.identity))(x, t)

        def model_fn(x, t):
            return guided_fn(x.to(self.dtype), t).float()

        h, w = ref.latent.shape[-2:]
        x = torch.randn((1, net.cfg.unet.in_channels, f, h, w), generator=generator,
                        device=generator.device if generator is not None else "cpu").to(self.device)
        step_cb = None if callback is None else (lambda s: callback({"step": s["i"] + 1, "steps": steps}))
        return sample_ddim(model_fn, x, self.schedule, steps, callback=step_cb)

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
                 callback: Callable | None = None) -> Iterator[torch.Tensor]:
        """Yields clips of frames [k, H, W, 3] in 0..1; in total exactly one frame per row of
        ``audio_windows`` ([T, window, blocks, size], or wav2vec features [T, blocks, size]). face_mask: [H, W] for the whole video or [T, H, W] per frame (each
        clip uses the union of its frames' masks, as EMO). speed: [T] degrees per frame."""
        windows = self.audio_windows_ok(audio_windows)
        total = windows.shape[0]
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
                yield from self._generate_context_windows(ref, windows, face_mask, steps, guidance, generator, callback)
            return
        f, n = self.cfg.clip_frames, self.cfg.motion_frames
        clips = -(-total // f)
        initial = ref.image[None].expand(n, -1, -1, -1) if motion_start == "reference" and n else None

        def make_clip(index: int, frames: range, motion_pixels):
            mask = face_mask
            if face_mask is not None and face_mask.ndim == 3:
                mask = take_padded(face_mask, frames).amax(0)
            clip_speed = None if speed is None else take_padded(speed, frames)
            motion_latents = None if motion_pixels is None else self.vae.encode_images(motion_pixels)
            cb = None if callback is None else (lambda s: callback({"clip": index + 1, "clips": clips, **s}))
            latents = self.sample_clip(ref, self.clip_windows(windows, frames), motion_latents, face_mask=mask,
                                       region_masks=region_masks, region_weights=region_weights, speed=clip_speed,
                                       steps=steps, guidance=guidance, generator=generator, callback=cb)
            return self.decode(latents)

        with _release_memory(self.device):
            yield from chain_clips(total, f, n, make_clip, initial)


    def _generate_context_windows(self, ref, windows, face_mask, steps, guidance, generator, callback):
        """EchoMimic's strategy: the whole video is one latent sequence sampled with
        overlapping context windows (latents stay on the CPU), then decoded clip by clip."""
        from .echomimic import sample_video

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
