"""Samplers in sigma space over a denoiser callable, k-diffusion style (Karras et al., 2022).

A state ``x`` at noise level ``sigma`` is ``x0 + sigma * eps``. A training schedule's timestep t
has ``sigma_t = sqrt((1 - abar_t) / abar_t)`` and the network sees ``x_t = x / sqrt(1 + sigma^2)``;
``Denoiser`` turns the integer-timestep ``model_fn(x_t, t)`` of any prediction type into
``denoise(x, sigma) -> x0``. A sampler is one short function
``sample_x(denoise, x, sigmas, *, callback=None)`` that keeps no state between calls and reports
``callback({"i", "sigma", "sigma_next", "x", "denoised"})`` after every step (``x``: the new state).

Zero terminal SNR (Hallo's schedule): ``abar`` of the last timestep is 0, so its sigma is infinite.
There the state holds the unit-variance noise itself (``x / sigma``, what DDIM starts from at
t = 999), and ``to_d`` / ``scale_state`` take that limit, so every sampler's first step from
sigma = inf is DDIM's. Multistep history is only kept from finite sigmas.

Deterministic DDIM is the Euler step in sigma space: ``sample_euler`` over ``model_sigmas`` gives
``ddim.sample_ddim``'s result (tests/test_samplers.py). The pipeline's default stays
``sample_ddim`` itself, bit for bit.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from ..checks import integer
from .ddim import Schedule, predicted_x0_and_eps


# ---- a schedule in sigma space ---------------------------------------------------------------
def sigma_table(schedule: Schedule) -> torch.Tensor:
    """sigma of every training timestep [T] in float64, increasing; inf where abar = 0. The
    square roots are taken in float32 as DDIM takes them, so DDIM's coefficients are
    sqrt(abar) and sigma * sqrt(abar) exactly (a float64 DDIM run is reproduced to rounding)."""
    a = schedule.alphas_cumprod()
    return (1 - a).sqrt().double() / a.sqrt().double()  # a = 0 -> inf


def sigma_to_t(table: torch.Tensor, sigma: float) -> int | float:
    """The (fractional) timestep of ``sigma``: log-sigma interpolation between the two nearest
    training timesteps (k-diffusion's ``sigma_to_t``); an int for a sigma of the table."""
    last = len(table) - 1
    if math.isinf(sigma):
        if not math.isinf(float(table[last])):
            raise ValueError("sigma = inf needs a zero-terminal-SNR schedule")
        return last
    finite = table[torch.isfinite(table)]
    log_sigma = math.log(min(max(sigma, float(finite[0])), float(finite[-1])))
    logs = finite.log()
    hi = int(torch.searchsorted(logs, torch.tensor(log_sigma, dtype=logs.dtype)).clamp(1, len(logs) - 1))
    lo_log, hi_log = float(logs[hi - 1]), float(logs[hi])
    w = (log_sigma - lo_log) / (hi_log - lo_log)
    t = (hi - 1) + w
    return int(round(t)) if abs(t - round(t)) < 1e-9 else t


def t_to_sigma(table: torch.Tensor, t: int | float) -> float:
    """sigma at a (fractional) timestep: log-sigma interpolation (the inverse of ``sigma_to_t``)."""
    if float(t).is_integer():
        return float(table[int(t)])
    lo = int(math.floor(t))
    a, b = float(table[lo]), float(table[lo + 1])
    if math.isinf(b):
        return math.inf
    w = t - lo
    return math.exp((1 - w) * math.log(a) + w * math.log(b))


def _final_sigma(schedule: Schedule, table: torch.Tensor) -> float:
    """Where DDIM's last step lands: abar = 1 (sigma 0) with ``set_alpha_to_one``, else timestep 0."""
    return 0.0 if schedule.set_alpha_to_one else float(table[0])


def model_sigmas(schedule: Schedule, steps: int) -> torch.Tensor:
    """The model's own timesteps as sigmas, in the schedule's spacing (DDIM's, e.g. Hallo's
    trailing: 999, 974, ... at 40 steps), then the final sigma: [steps + 1] float64.

    Each step ends where the next one starts. diffusers' DDIM ends a step at t - 1000 // steps
    instead, which with trailing or linspace spacing and a step count that does not divide 1000
    is up to one timestep away from the next one; ``sample_ddim`` keeps that behaviour."""
    steps = integer(steps, "steps", low=1)
    table = sigma_table(schedule)
    ts = schedule.timesteps(steps)
    return torch.tensor([float(table[t]) for t in ts] + [_final_sigma(schedule, table)], dtype=torch.float64)


def karras_sigmas(schedule: Schedule, steps: int, rho: float = 7.0) -> torch.Tensor:
    """Karras et al. (2022) eq. 5 between the schedule's smallest and largest finite sigma, then 0.
    With zero terminal SNR the first sigma is inf (DDIM's start at t = 999) and the ramp has
    ``steps - 1`` levels."""
    steps = integer(steps, "steps", low=1)
    table = sigma_table(schedule)
    finite = table[torch.isfinite(table)]
    head = [math.inf] if math.isinf(float(table[-1])) else []
    n = steps - len(head)
    if n < 1:
        return torch.tensor(head + [0.0], dtype=torch.float64)
    lo, hi = float(finite[0]) ** (1 / rho), float(finite[-1]) ** (1 / rho)
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    ramp = (hi + ramp * (lo - hi)) ** rho
    return torch.cat([torch.tensor(head, dtype=torch.float64), ramp, torch.zeros(1, dtype=torch.float64)])


SCHEDULES = {"model": model_sigmas, "karras": karras_sigmas}


def noise_start(noise: torch.Tensor, sigma: float) -> torch.Tensor:
    """The sampler's start state from unit noise, as DDIM starts: x_t = noise, so the state is
    ``noise * sqrt(1 + sigma^2)`` (k-diffusion's ``noise * sigma`` for large sigma), the noise
    itself at sigma = inf."""
    sigma = float(sigma)
    return noise if math.isinf(sigma) else noise * math.sqrt(1 + sigma * sigma)


def to_model_space(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """A state at ``sigma`` as the network's ``x_t = x / sqrt(1 + sigma^2)`` (DDIM's variable)."""
    sigma = float(sigma)
    return x if math.isinf(sigma) else x / math.sqrt(1 + sigma * sigma)


class Denoiser:
    """``model_fn(x_t, t) -> model output`` (epsilon, v or sample prediction, integer or fractional
    timesteps) as ``denoise(x, sigma) -> x0`` in sigma space (k-diffusion's
    ``DiscreteEpsDDPMDenoiser`` for every prediction type)."""

    def __init__(self, model_fn: Callable, schedule: Schedule):
        self.model_fn, self.prediction_type = model_fn, schedule.prediction_type
        self.alphas_cumprod, self.table = schedule.alphas_cumprod(), sigma_table(schedule)

    def __call__(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        sigma = float(sigma)
        t = sigma_to_t(self.table, sigma)
        if math.isinf(sigma):  # zero SNR: the state is the noise, x_t = noise, abar = 0
            if self.prediction_type == "epsilon":
                raise ValueError("an epsilon-prediction model cannot give x0 at zero SNR (sigma = inf)")
            x_t, abar = x, self.alphas_cumprod[t]
        elif isinstance(t, int):  # a training timestep: DDIM's own float32 abar and sqrt(abar)
            abar = self.alphas_cumprod[t]
            x_t = x * abar ** 0.5
        else:
            abar = 1.0 / (1.0 + sigma * sigma)
            x_t = x * math.sqrt(abar)
        x0, _ = predicted_x0_and_eps(self.model_fn(x_t, t), x_t, abar, self.prediction_type)
        return x0


# ---- the math of one step ----------------------------------------------------------------------
def to_d(x: torch.Tensor, sigma: float, denoised: torch.Tensor) -> torch.Tensor:
    """The probability-flow ODE's derivative dx/dsigma = (x - D(x; sigma)) / sigma (Karras et al.
    eq. 3); at sigma = inf the state is the unit noise, which is the limit."""
    return x if math.isinf(sigma) else (x - denoised) / sigma


def scale_state(x: torch.Tensor, sigma: float, sigma_next: float) -> torch.Tensor:
    """``sigma_next / sigma * x``; at sigma = inf the state is the unit noise: ``sigma_next * x``."""
    return x * sigma_next if math.isinf(sigma) else x * (sigma_next / sigma)


def _ratio(sigma: float, sigma_next: float) -> float:
    """sigma_next / sigma = exp(-h) in log-sigma time (0 from sigma = inf)."""
    return 0.0 if math.isinf(sigma) else sigma_next / sigma


def _neg_h(sigma: float, sigma_next: float) -> float:
    """-h = log(sigma_next / sigma), -inf when sigma_next = 0 or sigma = inf."""
    r = _ratio(sigma, sigma_next)
    return -math.inf if r == 0 else math.log(r)


def unipc_bh2_update(x, sigma, sigma_next, m0, history=None, m_next=None):
    """UniPC with B(h) = e^h - 1 (Zhao et al. 2023, bh2), data prediction, order <= 2: the
    predictor UniP from ``x`` at ``sigma`` (x0 estimate ``m0``; ``history``: (sigma, x0) of the
    previous point or None), or, with ``m_next`` (x0 at the predicted point), the corrector UniC."""
    hh = _neg_h(sigma, sigma_next)
    h_phi_1 = _ratio(sigma, sigma_next) - 1.0  # expm1(-h)
    b_h = h_phi_1
    x_base = scale_state(x, sigma, sigma_next) - h_phi_1 * m0
    d1 = rk = None
    if history is not None:
        s1, m1 = history
        rk = math.log(sigma / s1) / -hh  # (lambda_s1 - lambda_s0) / h, < 0
        d1 = (m1 - m0) / rk
    if m_next is None:  # UniP-2: rho = 1/2
        return x_base if d1 is None else x_base - b_h * 0.5 * d1
    if d1 is None:  # UniC-1: rho = 1/2
        return x_base - b_h * 0.5 * (m_next - m0)
    b1 = (h_phi_1 / hh - 1.0) / b_h
    b2 = ((h_phi_1 / hh - 1.0) / hh - 0.5) * 2.0 / b_h
    rho_a = (b1 - b2) / (1.0 - rk)  # solves [[1, 1], [rk, 1]] rho = [b1, b2]
    rho_b = b1 - rho_a
    return x_base - b_h * (rho_a * d1 + rho_b * (m_next - m0))


def _report(callback, i, sigma, sigma_next, x, denoised):
    if callback is not None:
        callback({"i": i, "sigma": sigma, "sigma_next": sigma_next, "x": x, "denoised": denoised})


# ---- samplers ----------------------------------------------------------------------------------
@torch.no_grad()
def sample_euler(denoise: Callable, x: torch.Tensor, sigmas: torch.Tensor, *, callback: Callable | None = None
                 ) -> torch.Tensor:
    """Euler's method on the probability-flow ODE (Karras et al. Algorithm 1 without churn);
    written as x0 + sigma_next * d, which is deterministic DDIM's update."""
    for i in range(len(sigmas) - 1):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        denoised = denoise(x, s)
        x = denoised + s_next * to_d(x, s, denoised)
        _report(callback, i, s, s_next, x, denoised)
    return x


@torch.no_grad()
def sample_dpmpp_2m(denoise: Callable, x: torch.Tensor, sigmas: torch.Tensor, *, callback: Callable | None = None
                    ) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2): second-order multistep in log-sigma time;
    first order (DDIM) at the first step, after sigma = inf and onto sigma = 0."""
    old = s_prev = None
    for i in range(len(sigmas) - 1):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        denoised = denoise(x, s)
        d = denoised
        if old is not None and s_next > 0:
            r = math.log(s_prev / s) / math.log(s / s_next)  # h_last / h
            d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old
        x = scale_state(x, s, s_next) + (1 - _ratio(s, s_next)) * d
        old, s_prev = (denoised, s) if math.isfinite(s) else (None, None)
        _report(callback, i, s, s_next, x, denoised)
    return x


@torch.no_grad()
def sample_unipc(denoise: Callable, x: torch.Tensor, sigmas: torch.Tensor, *, callback: Callable | None = None
                 ) -> torch.Tensor:
    """UniPC-bh2 of order 2 (Zhao et al. 2023; diffusers' ``UniPCMultistepScheduler`` with
    ``solver_order=2``, ``lower_order_final``): every new model output first corrects the step
    that reached it (UniC, no extra evaluation), then predicts the next state (UniP)."""
    history = last = None  # history: (sigma, x0) of the previous finite point; last: the step to correct
    for i in range(len(sigmas) - 1):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        denoised = denoise(x, s)
        if last is not None:
            x = unipc_bh2_update(*last, m_next=denoised)
        step = (x, s, s_next, denoised, history if s_next > 0 else None)
        x = unipc_bh2_update(*step)
        last = step if math.isfinite(s) else None
        history = (s, denoised) if math.isfinite(s) else None
        _report(callback, i, s, s_next, x, denoised)
    return x


SAMPLERS = {"euler": sample_euler, "dpmpp_2m": sample_dpmpp_2m, "unipc": sample_unipc}
SAMPLER_NAMES = ("ddim", *SAMPLERS)  # "ddim": ddim.sample_ddim, the default


def check_sampler(value, name: str = "sampler") -> str:
    """A sampler name of ``SAMPLER_NAMES``."""
    if value not in SAMPLER_NAMES:
        raise ValueError(f"{name}: expected one of {', '.join(SAMPLER_NAMES)}, got {value!r}")
    return value


def sample(name: str, model_fn: Callable, noise: torch.Tensor, schedule: Schedule, steps: int, *,
           sigmas: torch.Tensor | None = None, callback: Callable | None = None,
           start_t: int | None = None) -> torch.Tensor:
    """Runs sampler ``name`` from unit ``noise`` over ``sigmas`` (default: ``model_sigmas``) with
    the integer-timestep ``model_fn(x_t, t)``; returns the result in the network's space (x_t).
    ``start_t``: ``noise`` is instead the network's state x_t at that timestep, and only the
    sigmas from its sigma on run (as ``sample_ddim``'s ``start_t``)."""
    sampler = SAMPLERS[check_sampler(name)] if name != "ddim" else sample_euler
    sigmas = model_sigmas(schedule, steps) if sigmas is None else sigmas
    if start_t is None:
        x = noise_start(noise, float(sigmas[0]))
    else:
        start = t_to_sigma(sigma_table(schedule), start_t)
        sigmas = sigmas[sigmas <= start * (1 + 1e-6)]
        x = noise * math.sqrt(1 + float(sigmas[0]) ** 2)  # x_t -> the state x0 + sigma eps
    x = sampler(Denoiser(model_fn, schedule), x, sigmas, callback=callback)
    return to_model_space(x, float(sigmas[-1]))


def sigma_interval(schedule: Schedule, lo: float, hi: float) -> Callable[[int | float], bool]:
    """``in_interval(t)``: whether timestep t's sigma lies in [lo, hi] (``hi`` may be inf)."""
    lo, hi = float(lo), float(hi)
    if math.isnan(lo) or math.isnan(hi) or lo < 0 or hi < lo:
        raise ValueError(f"guidance interval: expected 0 <= lo <= hi (sigmas), got ({lo:g}, {hi:g})")
    table = sigma_table(schedule)
    return lambda t: lo <= t_to_sigma(table, t) <= hi
