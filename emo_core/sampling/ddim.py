"""DDIM (Song et al., 2021) over a model callable, k-diffusion style.

``Schedule`` holds the training noise schedule (linear / scaled-linear betas, optional
zero-terminal-SNR rescaling, Lin et al. 2024) and picks inference timesteps with the
spacings diffusers offers (``leading``, ``trailing``, ``linspace``). The schedule is kept in
float32 exactly as diffusers' ``DDIMScheduler`` computes it, so a float64 run reproduces
the reference numbers. ``ddim_step`` is pure; ``sample_ddim`` is the loop.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..checks import integer
from ..config import PREDICTION_TYPES


def rescale_zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Shifts and scales sqrt(alpha_bar) so the last timestep has zero SNR (Algorithm 1)."""
    abar_sqrt = torch.cumprod(1.0 - betas, dim=0).sqrt()
    first, last = abar_sqrt[0].clone(), abar_sqrt[-1].clone()
    abar_sqrt = (abar_sqrt - last) * (first / (first - last))
    abar = abar_sqrt ** 2
    alphas = torch.cat([abar[0:1], abar[1:] / abar[:-1]])
    return 1 - alphas


@dataclass(frozen=True)
class Schedule:
    num_train_timesteps: int = 1000
    beta_start: float = 0.00085
    beta_end: float = 0.012
    beta_schedule: str = "scaled_linear"
    prediction_type: str = "epsilon"
    rescale_betas_zero_snr: bool = False
    timestep_spacing: str = "leading"
    steps_offset: int = 1
    set_alpha_to_one: bool = True
    clip_sample: bool = False

    def __post_init__(self):
        if self.beta_schedule not in ("linear", "scaled_linear"):
            raise ValueError(f"beta_schedule must be 'linear' or 'scaled_linear', got {self.beta_schedule!r}")
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {self.prediction_type!r}")
        if self.timestep_spacing not in ("leading", "trailing", "linspace"):
            raise ValueError(f"timestep_spacing must be leading, trailing or linspace, got {self.timestep_spacing!r}")
        if self.clip_sample:
            raise ValueError("clip_sample=True is not supported (latent diffusion does not clip)")

    @classmethod
    def hallo(cls) -> "Schedule":
        return cls(beta_schedule="linear", prediction_type="v_prediction", rescale_betas_zero_snr=True,
                   timestep_spacing="trailing")

    @classmethod
    def for_prediction(cls, prediction_type: str) -> "Schedule":
        """The sampling schedule a model trained for ``prediction_type`` expects: SD's for epsilon,
        Hallo's zero-terminal-SNR trailing schedule for v and x0 prediction."""
        if prediction_type == "epsilon":
            return cls()
        return replace(cls.hallo(), prediction_type=prediction_type)

    def snr(self) -> torch.Tensor:
        """Signal-to-noise ratio alpha_bar / (1 - alpha_bar) per training timestep."""
        a = self.alphas_cumprod().double()
        return (a / (1 - a)).float()

    @classmethod
    def from_diffusers(cls, cfg: dict) -> "Schedule":
        """Reads a diffusers ``scheduler_config.json`` dict (unknown keys are ignored)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in cfg.items() if k in names})

    @classmethod
    def from_file(cls, path: str | Path) -> "Schedule":
        return cls.from_diffusers(json.loads(Path(path).read_text()))

    def alphas_cumprod(self) -> torch.Tensor:
        n = self.num_train_timesteps
        if self.beta_schedule == "linear":
            betas = torch.linspace(self.beta_start, self.beta_end, n, dtype=torch.float32)
        else:
            betas = torch.linspace(self.beta_start ** 0.5, self.beta_end ** 0.5, n, dtype=torch.float32) ** 2
        if self.rescale_betas_zero_snr:
            betas = rescale_zero_terminal_snr(betas)
        return torch.cumprod(1.0 - betas, dim=0)

    def timesteps(self, steps: int) -> list[int]:
        n = self.num_train_timesteps
        if not 1 <= steps <= n:
            raise ValueError(f"steps must be between 1 and {n}, got {steps}")
        if self.timestep_spacing == "linspace":
            ts = np.linspace(0, n - 1, steps).round()[::-1].astype(np.int64)
        elif self.timestep_spacing == "leading":
            ts = (np.arange(0, steps) * (n // steps)).round()[::-1].astype(np.int64) + self.steps_offset
        else:
            ts = np.round(np.arange(n, 0, -n / steps)).astype(np.int64) - 1
        return [int(t) for t in ts]


def predicted_x0_and_eps(output, x, alpha_prod_t, prediction_type):
    """Model output -> (x0, eps) for epsilon, v (Salimans & Ho, 2022) or x0 ("sample") prediction."""
    beta_prod_t = 1 - alpha_prod_t
    if prediction_type == "epsilon":
        return (x - beta_prod_t ** 0.5 * output) / alpha_prod_t ** 0.5, output
    if prediction_type == "sample":
        return output, (x - alpha_prod_t ** 0.5 * output) / beta_prod_t ** 0.5
    return alpha_prod_t ** 0.5 * x - beta_prod_t ** 0.5 * output, alpha_prod_t ** 0.5 * output + beta_prod_t ** 0.5 * x


def training_target(x0, noise, alpha_prod_t, prediction_type):
    """What the network learns to output for x_t = sqrt(a) x0 + sqrt(1-a) noise: the inverse of
    ``predicted_x0_and_eps``."""
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "sample":
        return x0
    return alpha_prod_t ** 0.5 * noise - (1 - alpha_prod_t) ** 0.5 * x0


def ddim_step(output, x, alpha_prod_t, alpha_prod_prev, prediction_type, eta=0.0, noise=None):
    """One DDIM update x_t -> x_{t-1} (Song et al. eq. 12). Returns (x_prev, x0)."""
    # (12): x0 and eps from the model output
    x0, eps = predicted_x0_and_eps(output, x, alpha_prod_t, prediction_type)
    # (16): sigma_t, 0 for deterministic DDIM
    variance = (1 - alpha_prod_prev) / (1 - alpha_prod_t) * (1 - alpha_prod_t / alpha_prod_prev)
    std = eta * variance ** 0.5
    # (12): direction pointing to x_t, then x_{t-1}
    direction = (1 - alpha_prod_prev - std ** 2) ** 0.5 * eps
    x_prev = alpha_prod_prev ** 0.5 * x0 + direction
    if eta > 0:
        if noise is None:
            raise ValueError("eta > 0 needs a noise tensor")
        x_prev = x_prev + std * noise
    return x_prev, x0


def check_noise_correlation(correlation, name: str = "noise_correlation") -> float:
    """``correlation`` as a float in [0, 1), else a ValueError naming ``name``."""
    c = float(correlation)
    if not 0.0 <= c < 1.0:
        raise ValueError(f"{name}: expected a fraction in [0, 1), got {correlation}")
    return c


def frame_noise(shape, correlation: float = 0.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """Unit Gaussian noise for a clip [b, C, f, h, w] whose frames share ``correlation`` of their
    variance (the mixed noise prior of PYoCo, Ge et al. 2023): sqrt(c) times one draw for all frames
    plus sqrt(1 - c) times a draw per frame, on the ``generator``'s device. Each frame is still
    standard normal; frames that start alike start in the same pose, so a clip does not wobble
    between the poses its frames' noise picks. ``correlation`` 0 draws exactly ``torch.randn(shape)``."""
    c = check_noise_correlation(correlation)
    device = generator.device if generator is not None else "cpu"
    noise = torch.randn(shape, generator=generator, device=device)
    if c == 0.0:
        return noise
    shared = torch.randn((*shape[:2], 1, *shape[3:]), generator=generator, device=device)
    return c ** 0.5 * shared + (1 - c) ** 0.5 * noise


def sample_ddim(model_fn: Callable, x: torch.Tensor, schedule: Schedule, steps: int, *, eta: float = 0.0,
                generator: torch.Generator | None = None, callback: Callable | None = None,
                start_t: int | None = None) -> torch.Tensor:
    """Runs ``steps`` DDIM steps from noise ``x``. ``model_fn(x, t) -> model output``.
    ``callback({"i", "t", "x", "x0", "output"})`` is called after every step (progress, previews,
    cancel); ``output`` is the model output the step used. ``start_t``: ``x`` is the state at
    that timestep and only the steps from it on run (img2img, a clip started from its join)."""
    steps = integer(steps, "steps", low=1)  # ValueError, not ZeroDivisionError, for 0 steps
    ac = schedule.alphas_cumprod()
    final = torch.tensor(1.0) if schedule.set_alpha_to_one else ac[0]
    stride = schedule.num_train_timesteps // steps
    timesteps = schedule.timesteps(steps)
    if start_t is not None:
        timesteps = [t for t in timesteps if t <= start_t]
    for i, t in enumerate(timesteps):
        output = model_fn(x, t)
        prev = t - stride
        a_t, a_prev = ac[t], (ac[prev] if prev >= 0 else final)
        noise = None
        if eta > 0:
            noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        x, x0 = ddim_step(output, x, a_t, a_prev, schedule.prediction_type, eta, noise)
        if callback is not None:
            callback({"i": i, "t": t, "x": x, "x0": x0, "output": output})
    return x
