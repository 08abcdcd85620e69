"""EMO Guider (GUIDER for core's SamplerCustomAdvanced) and EMO Scheduler (SIGMAS).

Core's custom sampling (``comfy_extras/nodes_custom_sampler.py``): SamplerCustomAdvanced calls
``guider.sample(noise, latent_image, sampler, sigmas, denoise_mask, callback, disable_pbar,
seed)``; a core SAMPLER (``comfy.samplers.KSAMPLER``) then calls
``sampler.sample(model_wrap, sigmas, extra_args, callback, noise, latent_image, denoise_mask,
disable_pbar)`` and its sampler function calls ``model_wrap(x, sigma * s_in, **extra_args)`` for
x0. ``CoreModelWrap`` is that model_wrap for one EMO clip: core's LATENT layout [frames, 4, h, w]
(SD1.5 scaled latents inside, unscaled at the node boundary), the schedule as core's discrete
model sampling (``emo_core.sampling.discrete``: v-prediction, zero terminal SNR at core's clamped
sigma), x0 from the library's guided clip denoiser. The model patcher core reads is
``comfy_env.model_patcher``'s stand-in. No ComfyUI import at module level.
"""
from __future__ import annotations

from .types import CATEGORY, CLIP_INDEX, CONDITIONING_INPUTS, EMO_MODEL, SOURCE_INPUTS

SCHEDULERS = ["emo", "karras", "exponential", "simple", "sgm_uniform", "normal", "ddim_uniform", "beta",
              "linear_quadratic", "kl_optimal"]


class CoreModelWrap:
    """``model_wrap(x, sigma, **extra_args) -> x0`` for core's samplers over one clip: x [f, 4, h, w]
    (scaled latents, state at ``sigma``), the clip's ``model_fn(x_t, t)`` on [1, 4, f, h, w]."""

    def __init__(self, model_fn, schedule, device, cfg: float = 1.0):
        from emo_core.sampling.discrete import ModelSampling, SigmaDenoiser

        from .comfy_env import CoreBaseModel, CorePatcher

        self.inner_model = CoreBaseModel(ModelSampling(schedule).to(device))
        self.model_patcher = CorePatcher(self.inner_model, device)
        self.cfg = cfg
        self.denoise = SigmaDenoiser(model_fn, schedule)

    def __call__(self, x, sigma, model_options=None, seed=None, **kwargs):
        from .comfy_env import check_interrupt

        check_interrupt()
        sigma = sigma.reshape(-1)
        if sigma.numel() > 1 and not bool((sigma == sigma[0]).all()):
            raise ValueError("EMO Guider: every frame of a clip is at the same noise level; got several sigmas")
        x5 = x.transpose(0, 1)[None]
        return self.denoise(x5, float(sigma[0]))[0].transpose(0, 1).to(x.dtype)


def run_core_sampler(sampler, sigmas, model_fn, schedule, noise, latent_image=None, *, device, cfg=1.0,
                     callback=None, disable_pbar=True, seed=None):
    """Core's ``sampler.sample`` over one clip. noise [f, 4, h, w] unit; latent_image scaled latents
    (None: zeros) -> the final state [f, 4, h, w] (scaled latents; x0 when sigmas end at 0)."""
    import torch

    wrap = CoreModelWrap(model_fn, schedule, device, cfg)
    noise = noise.to(device, torch.float32)
    latent = torch.zeros_like(noise) if latent_image is None else latent_image.to(device, torch.float32)
    sigmas = sigmas.to(device)
    extra_args = {"model_options": {"transformer_options": {"sample_sigmas": sigmas}}, "seed": seed}
    return sampler.sample(wrap, sigmas, extra_args, callback, noise, latent, None, disable_pbar)


def core_sample_fn(sampler, sigmas, schedule, *, cfg=1.0, seed=None, latent_image=None, callback=None,
                   disable_pbar=True, raw=False):
    """``sample_fn`` for ``EmoPipeline.sample_clip``: runs core's sampler on the clip's model_fn.
    ``callback``: core's ``callback(step, x0, x, total_steps)`` (None: the library callback gets
    {"step", "steps", "x0"}, x0 [1, 4, f, h, w] as from the library's samplers). Returns
    [1, 4, f, h, w]: the network's x_t at the last sigma, or with ``raw`` core's state
    x0 + sigma * eps."""
    from emo_core.sampling.samplers import to_model_space

    def fn(model_fn, noise, lib_callback):
        cb = callback
        if cb is None and lib_callback is not None:
            cb = lambda i, x0, x, total: lib_callback({"step": i + 1, "steps": total,
                                                       "x0": x0.transpose(0, 1)[None]})
        out = run_core_sampler(sampler, sigmas, model_fn, schedule, noise[0].transpose(0, 1), latent_image,
                               device=noise.device, cfg=cfg, callback=cb, disable_pbar=disable_pbar, seed=seed)
        out = out.to(noise.dtype).transpose(0, 1)[None]
        return out if raw else to_model_space(out, float(sigmas[-1]))

    return fn


def check_sigmas(sigmas):
    from .common import EmoNodeError

    if sigmas is None or sigmas.ndim != 1 or sigmas.shape[0] < 2:
        got = None if sigmas is None else tuple(sigmas.shape)
        raise EmoNodeError(f"SIGMAS: expected at least 2 noise levels, got {got}")
    return sigmas


class EmoGuiderObject:
    """The GUIDER: one clip's conditioning, sampled by whatever core SAMPLER and SIGMAS it is given."""

    def __init__(self, clip, cfg: float, interval):
        from .comfy_env import model_patcher

        self.clip, self.cfg, self.interval = clip, cfg, interval
        self.model_patcher = model_patcher(clip.emo_model.pipe.schedule)
        self.inner_model = self.model_patcher.model

    def sample(self, noise, latent_image, sampler, sigmas, denoise_mask=None, callback=None, disable_pbar=False,
               seed=None):
        import torch

        from .common import EmoNodeError
        from .comfy_env import soft_empty_cache

        if sigmas.shape[-1] == 0:
            return latent_image
        if denoise_mask is not None:
            raise EmoNodeError("EMO Guider: noise masks (partial denoising of a region) are not supported")
        shape = self.clip.latent_shape
        if tuple(noise.shape) != shape or tuple(latent_image.shape) != shape:
            raise EmoNodeError(f"EMO Guider: the latent must be this clip's [frames, 4, h, w] = {list(shape)}, got "
                               f"{list(latent_image.shape)}: use EMO Guider's latent output")
        fmt = self.inner_model.latent_format
        latent_in = None if torch.count_nonzero(latent_image) == 0 else fmt.process_in(latent_image.float())
        try:
            with self.clip.emo_model.loaded() as pipe:
                fn = core_sample_fn(sampler, sigmas, pipe.schedule, cfg=self.cfg, seed=seed, latent_image=latent_in,
                                    callback=callback, disable_pbar=disable_pbar, raw=True)
                out = self.clip.sample(pipe, guidance=self.cfg, interval=self.interval,
                                       noise=noise.float().transpose(0, 1)[None], sample_fn=fn)
                out = out[0].transpose(0, 1).float().cpu()
        finally:
            soft_empty_cache()
        return fmt.process_out(out)


class EmoGuider:
    CATEGORY = CATEGORY
    FUNCTION = "guider"
    RETURN_TYPES = ("GUIDER", "LATENT", "INT")
    RETURN_NAMES = ("guider", "latent", "clips")
    DESCRIPTION = ("One clip of the audio as a GUIDER for core's SamplerCustomAdvanced: any core SAMPLER (euler, "
                   "dpmpp_2m, ...) and SIGMAS (EMO Scheduler) sample the EMO network with classifier-free guidance. "
                   "'latent' is the clip's empty latent (frames in the batch); decode with EMO Decode Clip.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                **SOURCE_INPUTS,
                "clip_index": CLIP_INDEX,
                "cfg": ("FLOAT", {"default": 3.5, "min": 1.0, "max": 20.0, "step": 0.1,
                                  "tooltip": "classifier-free guidance scale (1 = off, one forward per step)"}),
            },
            "optional": {
                **CONDITIONING_INPUTS,
                "motion_frames": ("IMAGE", {"tooltip": "the previous clip's decoded frames (the last n are used); "
                                                       "without it clip 0 starts from copies of the portrait"}),
                "guidance_start": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.01,
                                             "tooltip": "guidance from this fraction of the schedule (0 = the "
                                                        "noisiest step, core's percent convention)"}),
                "guidance_end": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01,
                                           "tooltip": "guidance up to this fraction of the schedule (1 = the last "
                                                      "step); outside the interval one forward without guidance"}),
            },
        }

    def guider(self, emo_model, reference, emo_audio, clip_index, cfg, face_mask=None, regions=None, speed=None,
               motion_frames=None, guidance_start=0.0, guidance_end=1.0):
        import torch

        from emo_core import checks
        from emo_core.sampling.discrete import percent_interval

        from .common import EmoNodeError, widget
        from .sampler import ClipInputs

        cfg = widget("cfg", checks.guidance, cfg)
        clip = ClipInputs(emo_model, reference, emo_audio, clip_index, face_mask, regions, speed, motion_frames)
        try:
            interval = percent_interval(emo_model.pipe.schedule, guidance_start, guidance_end)
        except ValueError as exc:
            raise EmoNodeError(str(exc)) from None
        latent = {"samples": torch.zeros(clip.latent_shape), "emo_clip": clip.info()}
        return (EmoGuiderObject(clip, cfg, interval), latent, clip.clips)


class EmoScheduler:
    CATEGORY = CATEGORY
    FUNCTION = "sigmas"
    RETURN_TYPES = ("SIGMAS",)
    RETURN_NAMES = ("sigmas",)
    DESCRIPTION = ("Noise levels (SIGMAS) of the EMO model's training schedule for core's samplers: 'emo' = the "
                   "model's own DDIM timesteps (Hallo: trailing, zero terminal SNR; euler over them is DDIM), the "
                   "others are core's schedulers on this schedule.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "emo_model": (EMO_MODEL, {"tooltip": "the network from EMO Model Loader (its noise schedule)"}),
            "scheduler": (SCHEDULERS, {"default": "emo", "tooltip": "emo: the model's own DDIM timesteps; others: "
                                                                   "core's schedulers (karras, simple, ...)"}),
            "steps": ("INT", {"default": 40, "min": 1, "max": 1000, "tooltip": "sampling steps (model evaluations "
                                                                              "for first-order samplers)"}),
            "denoise": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01,
                                  "tooltip": "fraction of the schedule to run (1 = from pure noise), as core's "
                                             "BasicScheduler"}),
        }}

    def sigmas(self, emo_model, scheduler, steps, denoise=1.0):
        import torch

        from emo_core import checks

        from .common import EmoNodeError, choice, widget

        choice("scheduler", scheduler, SCHEDULERS)
        steps = widget("steps", checks.steps, steps)
        if not 0.0 <= float(denoise) <= 1.0:
            raise EmoNodeError(f"denoise: expected 0..1, got {denoise}")
        if float(denoise) <= 0.0:
            return (torch.FloatTensor([]),)
        total = int(steps / float(denoise))
        return (sigmas_for(emo_model.pipe.schedule, scheduler, total)[-(steps + 1):],)


def sigmas_for(schedule, scheduler: str, steps: int):
    """SIGMAS [steps + 1] float32 for ``scheduler`` on ``schedule``."""
    from emo_core.sampling.discrete import ModelSampling, core_model_sigmas

    from .common import EmoNodeError

    if scheduler == "emo":
        return core_model_sigmas(schedule, steps)
    try:
        import comfy.samplers
    except ImportError:
        raise EmoNodeError(f"scheduler {scheduler!r} is core's: it needs ComfyUI ('emo' works without)") from None
    return comfy.samplers.calculate_sigmas(ModelSampling(schedule), scheduler, steps).float()


NODE_CLASS_MAPPINGS = {"EmoGuider": EmoGuider, "EmoScheduler": EmoScheduler}
NODE_DISPLAY_NAME_MAPPINGS = {"EmoGuider": "EMO Guider (one clip, for SamplerCustomAdvanced)",
                              "EmoScheduler": "EMO Scheduler (SIGMAS)"}
