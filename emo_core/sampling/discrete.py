"""A training schedule as ComfyUI core's discrete model sampling sees it (no ComfyUI import).

Core's samplers (``comfy/k_diffusion/sampling.py``) work in sigma space with EPS-style scaling:
the state is ``x = x0 + sigma * eps``, the network sees ``x / sqrt(1 + sigma^2)``, and
``comfy.model_sampling.ModelSamplingDiscrete`` holds one sigma per training timestep. With zero
terminal SNR (Hallo: v-prediction, ``rescale_betas_zero_snr``) the last timestep's sigma is
infinite; core clamps it to a finite value, alpha_bar = 4.8973451890853435e-08
(``rescale_zero_terminal_snr_sigmas``), sigma about 4518.8, and starts from
``noise * sqrt(1 + sigma^2)`` there (``EPS.noise_scaling`` with ``max_denoise``), so the network's
input at that sigma is the unit noise itself, as DDIM's at t = 999.

``ModelSampling`` is that object for any ``Schedule`` (same attributes and methods as core's
``ModelSamplingDiscrete`` + ``V_PREDICTION`` / ``EPS`` / ``X0``), so core's schedulers
(``comfy.samplers.calculate_sigmas``) run on it. ``SigmaDenoiser`` maps a core sigma back to the
model's timestep (``samplers.sigma_to_t`` on the clamped table) and returns x0: at core's terminal
sigma it is the library's sigma = inf step (DDIM's first step), elsewhere ``samplers.Denoiser``'s
arithmetic. Euler over ``core_model_sigmas`` therefore reproduces ``ddim.sample_ddim`` (the only
difference: the first Euler step's ``x0 * sigma_next / 4518.8`` term, tests/test_guider.py).
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from .ddim import Schedule
from .samplers import Denoiser, karras_sigmas, model_sigmas, sigma_table, sigma_to_t, t_to_sigma

ZSNR_TERMINAL_ALPHA_BAR = 4.8973451890853435e-08  # comfy.model_sampling.rescale_zero_terminal_snr_sigmas
ZSNR_TERMINAL_SIGMA = math.sqrt((1 - ZSNR_TERMINAL_ALPHA_BAR) / ZSNR_TERMINAL_ALPHA_BAR)


def core_sigma_table(schedule: Schedule) -> torch.Tensor:
    """``samplers.sigma_table`` [T] float64 with a zero-terminal-SNR inf replaced by core's
    terminal sigma."""
    table = sigma_table(schedule).clone()
    if math.isinf(float(table[-1])):
        table[-1] = ZSNR_TERMINAL_SIGMA
    return table


def _finite(sigmas: torch.Tensor) -> torch.Tensor:
    return torch.where(torch.isinf(sigmas), torch.full_like(sigmas, ZSNR_TERMINAL_SIGMA), sigmas).float()


def core_model_sigmas(schedule: Schedule, steps: int) -> torch.Tensor:
    """The model's own DDIM timesteps (``samplers.model_sigmas``) as core SIGMAS (float32), the
    zero-SNR start at core's terminal sigma."""
    return _finite(model_sigmas(schedule, steps))


def core_karras_sigmas(schedule: Schedule, steps: int) -> torch.Tensor:
    """``samplers.karras_sigmas`` (the terminal sigma first, then Karras' ramp) as core SIGMAS."""
    return _finite(karras_sigmas(schedule, steps))


def _reshape(sigma: torch.Tensor, ndim: int) -> torch.Tensor:
    """core's ``reshape_sigma``."""
    if sigma.nelement() == 1:
        return sigma.view(())
    return sigma.view(sigma.shape[:1] + (1,) * (ndim - 1))


class ModelSampling(torch.nn.Module):
    """Core's ``ModelSamplingDiscrete`` (+ the prediction type's mixin) over ``schedule``:
    ``sigmas`` / ``log_sigmas`` buffers (float32), ``sigma_min``, ``sigma_max``, ``timestep``,
    ``sigma``, ``percent_to_sigma``, ``calculate_input``, ``calculate_denoised``,
    ``noise_scaling``, ``inverse_noise_scaling``."""

    def __init__(self, schedule: Schedule):
        super().__init__()
        self.schedule, self.prediction_type = schedule, schedule.prediction_type
        table = core_sigma_table(schedule)
        self.zsnr = schedule.rescale_betas_zero_snr
        self.num_timesteps = len(table)
        self.sigma_data = 1.0
        self.register_buffer("sigmas", table.float())
        self.register_buffer("log_sigmas", table.log().float())

    @property
    def sigma_min(self):
        return self.sigmas[0]

    @property
    def sigma_max(self):
        return self.sigmas[-1]

    def timestep(self, sigma):
        log_sigma = sigma.log()
        dists = log_sigma.to(self.log_sigmas.device) - self.log_sigmas[:, None]
        return dists.abs().argmin(dim=0).view(sigma.shape).to(sigma.device)

    def sigma(self, timestep):
        t = torch.clamp(timestep.float().to(self.log_sigmas.device), min=0, max=(len(self.sigmas) - 1))
        low, high, w = t.floor().long(), t.ceil().long(), t.frac()
        log_sigma = (1 - w) * self.log_sigmas[low] + w * self.log_sigmas[high]
        return log_sigma.exp().to(timestep.device)

    def percent_to_sigma(self, percent):
        if percent <= 0.0:
            return 999999999.9
        if percent >= 1.0:
            return 0.0
        return self.sigma(torch.tensor((1.0 - percent) * 999.0)).item()

    def calculate_input(self, sigma, noise):
        sigma = _reshape(sigma, noise.ndim)
        return noise / (sigma ** 2 + self.sigma_data ** 2) ** 0.5

    def calculate_denoised(self, sigma, model_output, model_input):
        sigma = _reshape(sigma, model_output.ndim)
        if self.prediction_type == "epsilon":
            return model_input - model_output * sigma
        if self.prediction_type == "sample":
            return model_output
        d = self.sigma_data
        return (model_input * d ** 2 / (sigma ** 2 + d ** 2)
                - model_output * sigma * d / (sigma ** 2 + d ** 2) ** 0.5)

    def noise_scaling(self, sigma, noise, latent_image, max_denoise=False):
        sigma = _reshape(sigma, noise.ndim)
        noise = noise * torch.sqrt(1.0 + sigma ** 2.0) if max_denoise else noise * sigma
        return noise + latent_image

    def inverse_noise_scaling(self, sigma, latent):
        return latent


class SigmaDenoiser:
    """``model_fn(x_t, t)`` (the model's integer or fractional timesteps) as core's denoiser
    ``denoise(x, sigma) -> x0`` for states at core sigmas.

    sigma -> t: ``samplers.sigma_to_t`` on ``core_sigma_table`` (log-sigma interpolation; t within
    1e-4 of a training timestep, as float32 SIGMAS of table sigmas are, is that timestep and uses
    DDIM's float32 alpha_bar). Zero terminal SNR: a sigma at or above core's terminal sigma is the
    library's sigma = inf (the network input ``x / sqrt(1 + sigma^2)`` is the noise, alpha_bar 0)."""

    def __init__(self, model_fn: Callable, schedule: Schedule):
        self.library = Denoiser(model_fn, schedule)  # the library's denoiser does the math
        self.table = core_sigma_table(schedule)
        self.zsnr = schedule.rescale_betas_zero_snr
        self.last = len(self.table) - 1

    def timestep(self, sigma: float) -> int | float:
        t = sigma_to_t(self.table, float(sigma))
        if isinstance(t, float) and abs(t - round(t)) < 1e-4:
            t = int(round(t))
        return t

    def __call__(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        sigma = float(sigma)
        t = self.timestep(sigma)
        lo, hi = float(self.table[0]), float(self.table[-1])
        if self.zsnr and (t == self.last or sigma >= hi):  # core's clamped terminal sigma: the library's inf
            return self.library(x / math.sqrt(1.0 + sigma * sigma), math.inf)
        if isinstance(t, int) and lo * (1 - 1e-5) <= sigma <= hi * (1 + 1e-5):  # a training timestep
            return self.library(x, float(self.library.table[t]))
        return self.library(x, sigma)


def percent_interval(schedule: Schedule, start: float, end: float) -> Callable[[int | float], bool] | None:
    """``in_interval(t)`` for guidance between ``start`` and ``end``, fractions of the schedule as
    core's timestep ranges count them (0: the noisiest timestep, 1: the cleanest;
    ``ModelSampling.percent_to_sigma``); None for the whole schedule (0, 1)."""
    start, end = float(start), float(end)
    if not (0.0 <= start <= end <= 1.0):
        raise ValueError(f"guidance interval: expected 0 <= start <= end <= 1, got ({start:g}, {end:g})")
    if start <= 0.0 and end >= 1.0:
        return None
    ms = ModelSampling(schedule)
    hi = math.inf if start <= 0.0 else ms.percent_to_sigma(start)
    lo = ms.percent_to_sigma(end)
    table = core_sigma_table(schedule)
    return lambda t: lo <= t_to_sigma(table, t) <= hi
