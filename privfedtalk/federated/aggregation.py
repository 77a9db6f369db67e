"""Aggregation weights: FedAvg, FedProx (same server rule as FedAvg) and ISFA. Pure functions."""

from __future__ import annotations

import numpy as np
import torch


def reliability_score(identity_consistency: float, temporal_stability: float, alpha: float) -> float:
    """ISFA score s = α·ID + (1 − α)·TS, both signals already in [0, 1]."""
    return alpha * identity_consistency + (1.0 - alpha) * temporal_stability


def raw_weights(sample_counts, scores=None, gamma: float = 0.0) -> np.ndarray:
    """Unnormalised weights n_k·exp(γ·s_k); scores=None (or γ = 0) is FedAvg's n_k.

    exp(γ·s) is computed relative to the largest score so that large γ cannot overflow; the
    common factor cancels in every normalisation below.
    """
    counts = np.asarray(sample_counts, dtype=np.float64)
    if np.any(counts < 0):
        raise ValueError("sample counts must be non-negative")
    if scores is None or gamma == 0.0:
        return counts
    s = np.asarray(scores, dtype=np.float64)
    return counts * np.exp(gamma * (s - s.max()))


def normalized_weights(sample_counts, scores=None, gamma: float = 0.0) -> np.ndarray:
    """FedAvg (scores=None) or ISFA weights, summing to 1."""
    raw = raw_weights(sample_counts, scores, gamma)
    total = raw.sum()
    if total <= 0:
        raise ValueError("all clients have zero weight (no samples?)")
    return raw / total


def capped_weights(
    sample_counts, scores, gamma: float, expected_clients: float, reference_count: float
) -> np.ndarray:
    """Weights for the private round: each w_k ≤ w_max = 1/expected_clients, with a fixed denominator.

    The fixed-denominator estimator (McMahan et al. 2018) divides by the *expected* number of
    clients instead of the realised total weight, so no single client's presence changes another's
    weight; together with the cap this bounds one client's influence on the sum by w_max·C (the DP
    sensitivity). A client with reference_count samples and the best score gets exactly w_max.
    The weights sum to about 1 when clients are typical; the estimator stays unbiased.
    """
    counts = np.asarray(sample_counts, dtype=np.float64)
    if scores is None or gamma == 0.0:
        relative = counts / reference_count
    else:
        # exp(γ(s − 1)) ≤ 1 for scores in [0, 1]: the score can only lower a weight, never exceed the cap.
        relative = counts / reference_count * np.exp(gamma * (np.asarray(scores, dtype=np.float64) - 1.0))
    return np.minimum(relative, 1.0) / expected_clients


def fedprox_term(parameters, global_parameters, mu: float) -> torch.Tensor:
    """FedProx proximal term (μ/2)·‖w − w_global‖² over the shared parameters.

    Its gradient is μ·(w − w_global).
    """
    total = None
    for w, w0 in zip(parameters, global_parameters):
        term = (w - w0.detach()).pow(2).sum()
        total = term if total is None else total + term
    if total is None:
        return torch.zeros(())
    return 0.5 * mu * total
