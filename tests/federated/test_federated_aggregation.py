"""Aggregation math: FedAvg/ISFA weights, the capped private weights, and the FedProx term."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from privfedtalk.federated.aggregation import (
    capped_weights,
    fedprox_term,
    normalized_weights,
    raw_weights,
    reliability_score,
)


@pytest.mark.parametrize("gamma", [0.0, 1.0, 8.0])
def test_weights_sum_to_one(gamma):
    rng = np.random.default_rng(0)
    counts = rng.integers(1, 500, size=7)
    scores = rng.random(7)
    assert normalized_weights(counts, scores, gamma).sum() == pytest.approx(1.0)
    assert normalized_weights(counts).sum() == pytest.approx(1.0)


def test_equal_scores_give_fedavg():
    counts = [10, 50, 200, 40]
    fedavg = np.array(counts) / sum(counts)
    np.testing.assert_allclose(normalized_weights(counts, [0.6] * 4, gamma=5.0), fedavg)
    np.testing.assert_allclose(normalized_weights(counts), fedavg)


def test_weights_increase_with_score():
    counts = [100, 100, 100, 100]
    scores = [0.1, 0.4, 0.7, 0.9]
    w = normalized_weights(counts, scores, gamma=3.0)
    assert np.all(np.diff(w) > 0)
    # Sharper with larger gamma.
    assert normalized_weights(counts, scores, gamma=6.0)[-1] > w[-1]


def test_large_gamma_does_not_overflow():
    w = normalized_weights([5, 5], [0.0, 1.0], gamma=2000.0)
    assert np.all(np.isfinite(w)) and w[1] == pytest.approx(1.0)
    assert np.all(np.isfinite(raw_weights([5, 5], [0.0, 1.0], 2000.0)))


def test_reliability_score_mixes_signals():
    assert reliability_score(1.0, 0.0, alpha=0.25) == pytest.approx(0.25)
    assert reliability_score(0.2, 0.8, alpha=0.5) == pytest.approx(0.5)


def test_capped_weights_bounded_and_independent_of_other_clients():
    m = 4
    w = capped_weights(
        [50, 300, 10_000, 120], [0.2, 1.0, 1.0, 0.5], gamma=2.0, expected_clients=m, reference_count=300
    )
    assert np.all(w <= 1.0 / m + 1e-12)
    assert w[1] == pytest.approx(1.0 / m) and w[2] == pytest.approx(1.0 / m)
    # Fixed denominator: removing a client leaves every other client's weight unchanged.
    w_without = capped_weights(
        [50, 300, 120], [0.2, 1.0, 0.5], gamma=2.0, expected_clients=m, reference_count=300
    )
    np.testing.assert_allclose(np.delete(w, 2), w_without)


def test_fedprox_gradient_equals_mu_times_distance():
    torch.manual_seed(0)
    w = [torch.randn(5, 3, requires_grad=True), torch.randn(7, requires_grad=True)]
    w_global = [torch.randn(5, 3), torch.randn(7)]
    mu = 0.37
    term = fedprox_term(w, w_global, mu)
    expected_value = 0.5 * mu * sum(float(((a.detach() - b) ** 2).sum()) for a, b in zip(w, w_global))
    assert float(term) == pytest.approx(expected_value, rel=1e-6)
    term.backward()
    for param, anchor in zip(w, w_global):
        torch.testing.assert_close(param.grad, mu * (param.detach() - anchor))
