"""Sync metrics: lag sign convention, constant series and the lip-sync summary."""

import numpy as np
import pytest

from privfedtalk.metrics import lag_correlation, lip_sync_scores, pearson


def _shifted_pair(k, n=60, pad=8, seed=0):
    """Return (signal, reference) with signal[t] = reference[t - k] wherever both exist."""
    base = np.random.default_rng(seed).uniform(0, 1, size=n + 2 * pad)
    reference = base[pad : pad + n]
    signal = base[pad - k : pad - k + n]
    return signal, reference


@pytest.mark.parametrize("k", [-3, 2, 4])
def test_lag_correlation_recovers_shift(k):
    signal, reference = _shifted_pair(k)
    np.testing.assert_array_equal(signal[max(k, 0) : 60 + min(k, 0)], reference[max(-k, 0) : 60 - max(k, 0)])
    out = lag_correlation(signal, reference, max_lag=5)
    assert out["best_lag"] == k
    assert isinstance(out["best_lag"], int)
    assert out["best_corr"] == pytest.approx(1.0, abs=1e-12)
    assert out["corr"] < 0.5


def test_lag_zero_identity():
    x = np.sin(np.linspace(0, 6, 40))
    out = lag_correlation(x, x, max_lag=3)
    assert out == {"corr": pytest.approx(1.0), "best_corr": pytest.approx(1.0), "best_lag": 0}


def test_pearson_constant_and_known():
    assert pearson(np.full(10, 0.3), np.arange(10)) == 0.0
    assert pearson(np.arange(10), np.full(10, 7.0)) == 0.0
    x = np.arange(10.0)
    assert pearson(x, 2 * x + 1) == pytest.approx(1.0)
    assert pearson(x, -x) == pytest.approx(-1.0)
    with pytest.raises(ValueError):
        pearson(x, x[:5])


def test_lip_sync_scores():
    rng = np.random.default_rng(4)
    base = rng.uniform(0, 1, 70)
    loudness = base[5:65]
    # The mouth follows the audio 2 frames late: generated[t] = loudness[t - 2].
    generated = base[3:63]
    true_opening = generated.copy()
    scores = lip_sync_scores(generated, true_opening, loudness, max_lag=4)
    assert set(scores) == {
        "sync_corr",
        "sync_corr_best",
        "sync_lag",
        "audio_corr",
        "audio_corr_best",
        "audio_lag",
    }
    assert scores["sync_corr"] == pytest.approx(1.0)
    assert scores["sync_corr_best"] == pytest.approx(1.0)
    assert scores["sync_lag"] == 0
    assert scores["audio_lag"] == 2
    assert scores["audio_corr_best"] == pytest.approx(1.0)
    assert scores["audio_corr"] < 0.5
