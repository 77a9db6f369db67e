"""Fréchet distance: identity, mean shift, symmetry, non-negativity, singular covariances."""

import numpy as np
import pytest

from privfedtalk.metrics import frechet_distance, frechet_from_stats, gaussian_stats


def _features(n=200, d=8, seed=0):
    rng = np.random.default_rng(seed)
    mix = rng.standard_normal((d, d))
    return rng.standard_normal((n, d)) @ mix


def test_identical_sets_zero():
    f = _features()
    _, sigma = gaussian_stats(f)
    assert frechet_distance(f, f.copy()) <= 1e-6 * np.trace(sigma)


def test_mean_shift_equal_covariance():
    f = _features()
    v = np.linspace(-1.0, 2.0, f.shape[1])
    assert frechet_distance(f, f + v) == pytest.approx(float(v @ v), rel=1e-6)


def test_symmetric_and_nonnegative():
    a = _features(seed=1)
    b = _features(n=150, seed=2) * 0.5 + 0.3
    dab = frechet_distance(a, b)
    dba = frechet_distance(b, a)
    assert dab > 0
    assert dab == pytest.approx(dba, rel=1e-8)


def test_from_stats_known_gaussians():
    # Diagonal covariances: distance = ||dmu||^2 + sum (sqrt(a_i) - sqrt(b_i))^2.
    a = np.array([1.0, 4.0, 9.0])
    b = np.array([4.0, 1.0, 9.0])
    mu1, mu2 = np.zeros(3), np.array([1.0, 0.0, 2.0])
    expected = 5.0 + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_from_stats(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected)


def test_singular_covariance_is_finite():
    # Fewer samples than dimensions -> rank-deficient covariances.
    a = _features(n=5, d=16, seed=3)
    b = _features(n=6, d=16, seed=4)
    d = frechet_distance(a, b)
    assert np.isfinite(d) and d >= 0


def test_one_dimensional_and_errors():
    x = np.arange(10.0)
    assert frechet_distance(x, x + 3.0) == pytest.approx(9.0)
    with pytest.raises(ValueError):
        frechet_distance(np.zeros((1, 3)), np.zeros((5, 3)))
    with pytest.raises(ValueError):
        frechet_distance(np.ones((4, 3)), np.ones((4, 2)))


def test_eps_fallback_when_sqrtm_fails(monkeypatch):
    # Force the first sqrtm call to fail, as it can for a singular product, to exercise the eps * I retry.
    from privfedtalk.metrics import frechet as fr

    real_sqrtm = fr.linalg.sqrtm
    calls = []

    def flaky(a):
        calls.append(a)
        return np.full_like(a, np.nan) if len(calls) == 1 else real_sqrtm(a)

    monkeypatch.setattr(fr.linalg, "sqrtm", flaky)
    s = np.diag([1.0, 0.0])
    d = frechet_from_stats(np.zeros(2), s, np.ones(2), s, eps=1e-6)
    assert len(calls) == 2
    np.testing.assert_allclose(calls[1], (s + 1e-6 * np.eye(2)) @ (s + 1e-6 * np.eye(2)))
    assert d == pytest.approx(2.0, abs=1e-6)
