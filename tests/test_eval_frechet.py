"""Fréchet distance: closed forms, symmetry, zero on identical sets, singular covariances,
and feature statistics saved and reloaded."""
import numpy as np
import pytest
from scipy.linalg import sqrtm

from emo_core.eval.frechet import frechet_distance, frechet_distance_from_features, gaussian_stats
from emo_core.eval.stats import FeatureStats, StatsAccumulator


def _random_spd(rng, d):
    a = rng.standard_normal((d, d))
    return a @ a.T + 0.1 * np.eye(d)


def test_diagonal_closed_form():
    # commuting covariances: d^2 = |mu1-mu2|^2 + sum (sqrt(a) - sqrt(b))^2
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 9.0])
    expected = 1.0 + 4.0 + (1 - 2) ** 2 + (2 - 1) ** 2 + 0.0
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, abs=1e-10)


def test_univariate_closed_form():
    assert frechet_distance([0.0], [[4.0]], [3.0], [[1.0]]) == pytest.approx(9.0 + 1.0, abs=1e-12)


def test_matches_scipy_sqrtm_form_and_is_symmetric():
    rng = np.random.default_rng(0)
    d = 6
    s1, s2 = _random_spd(rng, d), _random_spd(rng, d)
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    ref = float(np.real(np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * sqrtm(s1 @ s2))))
    d12 = frechet_distance(mu1, s1, mu2, s2)
    d21 = frechet_distance(mu2, s2, mu1, s1)
    assert d12 == pytest.approx(ref, rel=1e-9)
    assert d12 == pytest.approx(d21, rel=1e-9)


def test_zero_on_identical_sets_and_rank_deficient():
    rng = np.random.default_rng(1)
    feats = rng.standard_normal((10, 32))  # 10 samples in 32 dims: singular covariance
    assert frechet_distance_from_features(feats, feats) == pytest.approx(0.0, abs=1e-8)
    other = rng.standard_normal((12, 32)) + 0.5
    value = frechet_distance_from_features(feats, other)
    assert np.isfinite(value) and value > 0
    assert value == pytest.approx(frechet_distance_from_features(other, feats), rel=1e-8)


def test_shape_errors_are_clear():
    with pytest.raises(ValueError, match="same D"):
        frechet_distance_from_features(np.zeros((3, 4)), np.zeros((3, 5)))
    with pytest.raises(ValueError, match="at least 2"):
        gaussian_stats(np.zeros((1, 4)))
    with pytest.raises(ValueError, match="NaN"):
        frechet_distance([np.nan], [[1.0]], [0.0], [[1.0]])


def test_accumulator_matches_numpy_and_roundtrips(tmp_path):
    rng = np.random.default_rng(2)
    feats = rng.standard_normal((50, 5)) * 3 + 1000.0  # large common offset
    acc = StatsAccumulator(protocol={"metric": "fid", "network": "toy"})
    for chunk in np.array_split(feats, 4):
        acc.add(chunk)
    stats = acc.finalize()
    np.testing.assert_allclose(stats.mu, feats.mean(0), rtol=1e-12)
    np.testing.assert_allclose(stats.sigma, np.cov(feats, rowvar=False), rtol=1e-9, atol=1e-9)
    path = stats.save(tmp_path / "ref_stats.npz")
    loaded = FeatureStats.load(path)
    assert loaded.count == 50 and loaded.protocol["network"] == "toy"
    assert loaded.frechet(stats) == pytest.approx(0.0, abs=1e-8)


def test_protocol_mismatch_is_refused():
    rng = np.random.default_rng(3)
    a = FeatureStats.from_features(rng.standard_normal((5, 3)), {"metric": "fid", "input_size": 299})
    b = FeatureStats.from_features(rng.standard_normal((5, 3)), {"metric": "fid", "input_size": 224})
    with pytest.raises(ValueError, match="input_size"):
        a.frechet(b)
