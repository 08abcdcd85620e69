"""Fréchet distance between two Gaussians, shared by FID, FVD and E-FID.

    d^2 = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr( (S1^1/2 S2 S1^1/2)^1/2 )

The cross term is computed in float64 through two symmetric eigendecompositions instead of
``scipy.linalg.sqrtm(S1 @ S2)`` (the form used by pytorch-fid and StyleGAN-V): S1 @ S2 is not
symmetric, its square root can come back complex or NaN when a covariance is singular (fewer
samples than feature dimensions is the common case for FVD and E-FID), whereas
S1^1/2 S2 S1^1/2 is symmetric positive semi-definite, so its eigenvalues are real and negative
round-off can be clipped to zero. Both forms have the same trace (the eigenvalues of S1 S2 and
S1^1/2 S2 S1^1/2 coincide), so the numbers agree with the reference implementations wherever
those are well defined.
"""
from __future__ import annotations

import numpy as np


def _as_float64(name: str, x) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return arr


def sqrtm_psd(matrix: np.ndarray) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix (negative round-off clipped)."""
    m = _as_float64("matrix", matrix)
    m = 0.5 * (m + m.T)
    w, v = np.linalg.eigh(m)
    w = np.clip(w, 0.0, None)
    return (v * np.sqrt(w)) @ v.T


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """tr((S1 S2)^1/2) for two PSD matrices, computed as tr((S1^1/2 S2 S1^1/2)^1/2)."""
    root1 = sqrtm_psd(sigma1)
    inner = root1 @ _as_float64("sigma2", sigma2) @ root1
    inner = 0.5 * (inner + inner.T)
    w = np.linalg.eigvalsh(inner)
    return float(np.sqrt(np.clip(w, 0.0, None)).sum())


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Squared Fréchet (2-Wasserstein) distance between N(mu1, sigma1) and N(mu2, sigma2).

    This is the number reported as FID / FVD / E-FID. Inputs are cast to float64; shapes are
    checked and a mismatch names both shapes.
    """
    mu1 = np.atleast_1d(_as_float64("mu1", mu1))
    mu2 = np.atleast_1d(_as_float64("mu2", mu2))
    sigma1 = np.atleast_2d(_as_float64("sigma1", sigma1))
    sigma2 = np.atleast_2d(_as_float64("sigma2", sigma2))
    if mu1.shape != mu2.shape:
        raise ValueError(f"mean vectors differ in shape: {mu1.shape} vs {mu2.shape}")
    d = mu1.shape[0]
    for name, s in (("sigma1", sigma1), ("sigma2", sigma2)):
        if s.shape != (d, d):
            raise ValueError(f"{name} has shape {s.shape}, expected {(d, d)} to match the means")
    diff = mu1 - mu2
    value = float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt_product(sigma1, sigma2))
    # the exact value is >= 0; tiny negatives are round-off
    return max(value, 0.0)


def gaussian_stats(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance (rows are samples), like ``np.cov(rowvar=False)``."""
    f = _as_float64("features", features)
    if f.ndim != 2:
        raise ValueError(f"features must be [N, D], got shape {f.shape}")
    if f.shape[0] < 2:
        raise ValueError(f"need at least 2 feature vectors for a covariance, got {f.shape[0]}")
    mu = f.mean(axis=0)
    centred = f - mu
    sigma = centred.T @ centred / (f.shape[0] - 1)
    return mu, sigma


def frechet_distance_from_features(features1, features2) -> float:
    """Fréchet distance between the Gaussians fitted to two feature sets [N1, D] and [N2, D]."""
    f1 = np.asarray(features1)
    f2 = np.asarray(features2)
    if f1.ndim != 2 or f2.ndim != 2 or f1.shape[1] != f2.shape[1]:
        raise ValueError(f"feature sets must be [N, D] with the same D, got {f1.shape} and {f2.shape}")
    return frechet_distance(*gaussian_stats(f1), *gaussian_stats(f2))
