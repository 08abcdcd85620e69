"""Input checks and conversions shared by the sampler nodes (no ComfyUI imports)."""
from __future__ import annotations

import numpy as np
import torch


class EmoNodeError(ValueError):
    """A wiring or input problem, with a message meant for the node's error box."""


def widget(name: str, check, value, *args):
    """``check(value, *args, name)`` from ``emo_core.checks`` (steps, guidance, speed, fps, seed, ...)
    with its ValueError turned into an EmoNodeError naming the widget. Widgets are checked in the
    node body too: saved workflows, the API and other nodes' outputs bypass the UI's limits."""
    try:
        return check(value, *args, name)
    except ValueError as exc:
        raise EmoNodeError(str(exc)) from None


def choice(name: str, value, options) -> str:
    if value not in options:
        raise EmoNodeError(f"{name}: expected one of {', '.join(map(str, options))}, got {value!r}")
    return value


def sampling_widgets(steps, cfg, seed) -> tuple[int, float, int]:
    """The DDIM widgets shared by the sampling nodes, checked: (steps, cfg, seed)."""
    from emo_core import checks

    return (widget("steps", checks.steps, steps), widget("cfg", checks.guidance, cfg),
            widget("seed", checks.seed, seed))


def sampling_preset(name, steps: int, cfg: float) -> tuple[int, float, str, tuple[float, float] | None]:
    """The preset widget: (steps, cfg, sampler, guidance interval). "custom" is DDIM with the
    steps and cfg widgets; a named preset is ``emo_core.sampling.presets``' (as the CLI's
    --preset), the steps and cfg widgets unused."""
    from emo_core.sampling.presets import preset

    from .types import CUSTOM_PRESET, PRESET_CHOICES

    choice("preset", name, PRESET_CHOICES)
    if name == CUSTOM_PRESET:
        return steps, cfg, "ddim", None
    chosen = widget("preset", preset, name)
    return chosen.steps, chosen.guidance, chosen.sampler, chosen.guidance_interval


def check_model(emo_model, reference, audio=None) -> None:
    if reference["model_key"] != emo_model.key:
        raise EmoNodeError("the EMO_REFERENCE was made by a different EMO model: connect the same "
                           "EMO Model Loader to EMO Reference Encode and to this node")
    if audio is not None:
        try:
            emo_model.pipe.audio_windows_ok(audio["windows"])
        except ValueError as exc:
            raise EmoNodeError(f"EMO_AUDIO does not fit this model ({exc}): encode the audio with the same "
                               "EMO model") from exc


def face_mask_for(mask, frames: int, size) -> torch.Tensor | None:
    """MASK [B, H, W] -> [H, W] (B == 1) or [frames, H, W]; checks size and frame count."""
    if mask is None:
        return None
    m = torch.as_tensor(mask).float()
    if m.ndim == 2:
        m = m[None]
    if tuple(m.shape[-2:]) != tuple(size):
        raise EmoNodeError(f"face mask is {m.shape[-1]}x{m.shape[-2]} but the prepared portrait is {size[1]}x{size[0]}: "
                           "make the mask from EMO Reference Encode's image output")
    if m.shape[0] == 1:
        return m[0]
    if m.shape[0] != frames:
        raise EmoNodeError(f"face mask has {m.shape[0]} frames but the audio gives {frames} video frames: "
                           "pass one mask, or one per video frame at the same fps")
    return m


def speed_for(speed, frames: int, fps: float) -> torch.Tensor | None:
    """EMO_SPEED -> [frames] degrees per output frame (a driving series is read by time and
    holds its last value past its end)."""
    if speed is None:
        return None
    if speed.get("constant") is not None:
        from emo_core import checks

        return torch.full((frames,), widget("speed (EMO_SPEED)", checks.speed, speed["constant"]))
    series = np.asarray(speed["speed"], np.float32)
    if series.size == 0 or not np.all(np.isfinite(series)) or (series < 0).any():
        raise EmoNodeError("speed (EMO_SPEED): expected finite speeds >= 0 for the driving frames, got "
                           f"{series.size} values{' with NaN/inf or negative ones' if series.size else ''}")
    t = np.arange(frames) / float(fps) * float(speed["fps"])
    idx = np.clip(np.round(t).astype(int), 0, len(series) - 1)
    return torch.from_numpy(series[idx].copy())


def regions_for(emo_model, regions, face_mask, size):
    """Hallo's per-level region masks, or None for models without region audio attention.
    Without an EMO_REGIONS input they are approximated from the face mask's box."""
    if not emo_model.cfg.audio.region_attention:
        return None
    from emo_core.preprocess.masks import region_masks_per_level

    if regions is None:
        if face_mask is None:
            raise EmoNodeError("this model (Hallo family) needs the face: connect EMO Face Mask's mask "
                               "(or its regions) to this node")
        regions = regions_from_mask(face_mask if face_mask.ndim == 2 else face_mask.amax(0))
    if tuple(regions["size"]) != tuple(size):
        raise EmoNodeError(f"face regions are for a {regions['size']} image but the portrait is {tuple(size)}")
    return region_masks_per_level(regions, size[0], levels=len(emo_model.cfg.unet.block_out_channels))


def regions_from_mask(mask: torch.Tensor) -> dict:
    """Approximate Hallo regions from a face box mask [H, W] (no landmarks)."""
    from emo_core.preprocess.masks import regions_from_box_mask

    r = regions_from_box_mask(mask)
    return {"full": r["full"], "face": r["face"], "lip": r["lip"], "size": tuple(mask.shape)}


class StepProgress:
    """Sampler callback: one ComfyUI progress bar over every step of every clip, the Cancel check,
    and a latent preview of the first frame's x0 by core's ``latent_preview`` where ComfyUI has
    previews on (``patcher``: what core's previewer reads, ``comfy_env.model_patcher``; None: no
    previews). With ``label``, a log line with the time left after every clip but the last."""

    def __init__(self, steps: int, clips: int, patcher=None, label: str | None = None):
        import time

        from .comfy_env import latent_previewer, progress_bar

        self.steps, self.clips, self.label = steps, clips, label
        self.bar = progress_bar(steps * clips)
        self.preview = None if patcher is None else latent_previewer(patcher)
        self.start = time.monotonic()

    def __call__(self, info: dict) -> None:
        from .comfy_env import check_interrupt

        clip, total = info.get("clip", 1), self.steps * self.clips
        x0 = info.get("x0")
        image = None
        if self.preview is not None and x0 is not None:
            image = self.preview(x0[:, :, 0] if x0.ndim == 5 else x0[:1])  # [1, 4, f, h, w] or core's [f, 4, h, w]
        # a clip may run fewer steps than the first (started from its join): its share of the bar is the same
        run = info.get("steps", self.steps) or self.steps
        self.bar.update_absolute((clip - 1) * self.steps + round(info["step"] * self.steps / run), total, image)
        if self.label and clip < self.clips and info["step"] == run:
            self._time_left(clip)
        check_interrupt()

    def _time_left(self, clip: int) -> None:
        import logging
        import time

        spent = time.monotonic() - self.start
        left = spent / clip * (self.clips - clip)
        logging.getLogger(__name__).info("%s: clip %d/%d done, %.1f s so far, about %.0f s left", self.label, clip,
                                         self.clips, spent, left)
