"""Feature statistics (mean, covariance, count) that can be accumulated, saved and reused.

A reference set such as the HDTF test split is expensive to featurise; its statistics are
saved once as ``.npz`` (``mu``, ``sigma``, ``count`` and the protocol as JSON) and compared
against every new run. Statistics carry the protocol that produced them (network, crop, size,
frame window, fps); comparing two statistics with different protocols is refused, because the
number would not mean anything.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .frechet import frechet_distance

# protocol keys that must agree for two statistics to be comparable
_COMPARABLE_KEYS = ("metric", "network", "feature_dim", "input_size", "crop", "clip_frames", "fps")


@dataclass
class FeatureStats:
    mu: np.ndarray
    sigma: np.ndarray
    count: int
    protocol: dict = field(default_factory=dict)

    @classmethod
    def from_features(cls, features, protocol: dict | None = None) -> "FeatureStats":
        acc = StatsAccumulator(protocol=protocol)
        acc.add(features)
        return acc.finalize()

    def save(self, path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as f:
            np.savez(f, mu=self.mu, sigma=self.sigma, count=np.int64(self.count),
                     protocol=np.array(json.dumps(self.protocol, sort_keys=True)))
        return path

    @classmethod
    def load(cls, path) -> "FeatureStats":
        with np.load(Path(path), allow_pickle=False) as z:
            missing = {"mu", "sigma", "count"} - set(z.files)
            if missing:
                raise ValueError(f"{path} is not a feature-statistics file: missing {sorted(missing)}")
            protocol = json.loads(str(z["protocol"])) if "protocol" in z.files else {}
            return cls(mu=z["mu"].astype(np.float64), sigma=z["sigma"].astype(np.float64),
                       count=int(z["count"]), protocol=protocol)

    def check_comparable(self, other: "FeatureStats") -> None:
        diffs = [f"{k}: {self.protocol.get(k)!r} vs {other.protocol.get(k)!r}"
                 for k in _COMPARABLE_KEYS
                 if k in self.protocol and k in other.protocol and self.protocol[k] != other.protocol[k]]
        if diffs:
            raise ValueError("feature statistics were made with different protocols: " + "; ".join(diffs))
        if self.mu.shape != other.mu.shape:
            raise ValueError(f"feature dimensions differ: {self.mu.shape[0]} vs {other.mu.shape[0]}")

    def frechet(self, other: "FeatureStats") -> float:
        self.check_comparable(other)
        return frechet_distance(self.mu, self.sigma, other.mu, other.sigma)


class StatsAccumulator:
    """Streaming mean/covariance in float64 (sum and shifted sum of outer products).

    Features are shifted by the first batch's mean before accumulating, which keeps the
    one-pass covariance accurate when features have a large common offset.
    """

    def __init__(self, protocol: dict | None = None):
        self.protocol = dict(protocol or {})
        self.count = 0
        self._shift = None
        self._sum = None
        self._outer = None

    def add(self, features) -> None:
        f = np.asarray(features, dtype=np.float64)
        if f.ndim == 1:
            f = f[None]
        if f.ndim != 2:
            raise ValueError(f"features must be [N, D], got shape {f.shape}")
        if f.shape[0] == 0:
            return
        if not np.all(np.isfinite(f)):
            raise ValueError("features contain NaN or infinite values")
        if self._shift is None:
            self._shift = f.mean(axis=0)
            d = f.shape[1]
            self._sum = np.zeros(d)
            self._outer = np.zeros((d, d))
        elif f.shape[1] != self._shift.shape[0]:
            raise ValueError(f"feature dimension changed: {self._shift.shape[0]} then {f.shape[1]}")
        c = f - self._shift
        self._sum += c.sum(axis=0)
        self._outer += c.T @ c
        self.count += f.shape[0]

    def finalize(self) -> FeatureStats:
        if self.count < 2:
            raise ValueError(f"need at least 2 feature vectors for statistics, got {self.count}")
        mean_c = self._sum / self.count
        sigma = (self._outer - self.count * np.outer(mean_c, mean_c)) / (self.count - 1)
        sigma = 0.5 * (sigma + sigma.T)
        protocol = dict(self.protocol)
        protocol.setdefault("feature_dim", int(self._shift.shape[0]))
        return FeatureStats(mu=self._shift + mean_c, sigma=sigma, count=self.count, protocol=protocol)
