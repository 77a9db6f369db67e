"""Aggregation math and strategies: FedAvg/ISFA weights, the capped private weight, FedProx, server step."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from privfedtalk.config import load_config
from privfedtalk.federated.aggregation import (
    fedprox_term,
    normalized_weights,
    relative_weight,
    reliability_score,
)
from privfedtalk.federated.strategy import ISFA, ClientReport, FedProx, Strategy, build_strategy
from privfedtalk.privacy.dp import capped_weight


def isfa_weights(counts, scores, gamma):
    return normalized_weights([relative_weight(n, s, gamma) for n, s in zip(counts, scores)])


@pytest.mark.parametrize("gamma", [0.0, 1.0, 8.0])
def test_weights_sum_to_one(gamma):
    rng = np.random.default_rng(0)
    counts = rng.integers(1, 500, size=7)
    scores = rng.random(7)
    assert isfa_weights(counts, scores, gamma).sum() == pytest.approx(1.0)
    assert normalized_weights(counts).sum() == pytest.approx(1.0)


def test_equal_scores_give_fedavg():
    counts = [10, 50, 200, 40]
    fedavg = np.array(counts) / sum(counts)
    np.testing.assert_allclose(isfa_weights(counts, [0.6] * 4, gamma=5.0), fedavg)
    np.testing.assert_allclose(normalized_weights(counts), fedavg)


def test_weights_increase_with_score_and_match_the_paper_rule():
    counts = [100, 100, 100, 100]
    scores = [0.1, 0.4, 0.7, 0.9]
    w = isfa_weights(counts, scores, gamma=3.0)
    assert np.all(np.diff(w) > 0)
    paper = np.array(counts) * np.exp(3.0 * np.array(scores))  # n·exp(γ·s), normalised
    np.testing.assert_allclose(w, paper / paper.sum())
    assert isfa_weights(counts, scores, gamma=6.0)[-1] > w[-1]  # sharper with larger gamma


def test_large_gamma_does_not_overflow():
    w = isfa_weights([5, 5], [0.0, 1.0], gamma=2000.0)
    assert np.all(np.isfinite(w)) and w[1] == pytest.approx(1.0)


def test_reliability_score_mixes_signals():
    assert reliability_score(1.0, 0.0, alpha=0.25) == pytest.approx(0.25)
    assert reliability_score(0.2, 0.8, alpha=0.5) == pytest.approx(0.5)


def test_capped_weight_is_bounded_and_depends_on_the_client_alone():
    m, reference = 4, 300
    w = [
        capped_weight(relative_weight(n, s, 2.0), m, reference)
        for n, s in [(50, 0.2), (300, 1.0), (10_000, 1.0)]
    ]
    assert max(w) <= 1.0 / m + 1e-12
    assert w[1] == pytest.approx(1.0 / m) and w[2] == pytest.approx(1.0 / m)
    assert w[0] == pytest.approx(50 / 300 * np.exp(2.0 * (0.2 - 1.0)) / m)


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


# ------------------------------------------------------------------------------------------ strategies


def reports(scores):
    return [
        ClientReport(f"client{i:04d}", 100, {"identity_consistency": s, "temporal_stability": s})
        for i, s in enumerate(scores)
    ]


def test_each_method_builds_its_strategy_and_instructions_differ():
    fedavg = build_strategy(load_config(None, ["federated.method=fedavg"]))
    fedprox = build_strategy(load_config(None, ["federated.method=fedprox", "federated.mu=0.05"]))
    isfa = build_strategy(load_config(None, ["federated.method=isfa"]))
    assert type(fedavg) is Strategy and type(fedprox) is FedProx and type(isfa) is ISFA
    assert fedavg.configure_round(0).mu == 0 and not fedavg.configure_round(0).compute_signals
    assert (
        fedprox.configure_round(0).mu == pytest.approx(0.05)
        and not fedprox.configure_round(0).compute_signals
    )
    assert isfa.configure_round(0).compute_signals
    unequal = reports([0.2, 0.9, 0.9])
    assert fedavg.weights(unequal) == pytest.approx({r.client_id: 1 / 3 for r in unequal})
    isfa_w = isfa.weights(unequal)
    assert isfa_w["client0000"] < 1 / 3 < isfa_w["client0001"]


def test_server_step_is_global_plus_lr_times_release():
    strategy = build_strategy(load_config(None, ["federated.server_lr=0.5"]))
    out = strategy.apply(torch.tensor([1.0, 2.0]), torch.tensor([2.0, -2.0]))
    torch.testing.assert_close(out, torch.tensor([2.0, 1.0]))
    local_only = build_strategy(load_config(None, ["federated.server_lr=0"]))
    torch.testing.assert_close(local_only.apply(torch.ones(2), torch.ones(2)), torch.ones(2))
