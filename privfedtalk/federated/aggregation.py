"""Aggregation math as pure functions: reliability scores, relative weights, normalisation, FedProx.

The capped weight of a private round is DP math and lives in privacy/dp.py (`capped_weight`).
"""

from __future__ import annotations

import numpy as np
import torch


def reliability_score(identity_consistency: float, temporal_stability: float, alpha: float) -> float:
    """ISFA score s = α·ID + (1 − α)·TS, both signals already in [0, 1]."""
    return alpha * identity_consistency + (1.0 - alpha) * temporal_stability


def relative_weight(sample_count: float, score: float | None = None, gamma: float = 0.0) -> float:
    """A client's unnormalised weight: n (FedAvg) or n·exp(γ·(s − 1)) (ISFA, s in [0, 1]).

    exp(γ·(s − 1)) ≤ 1, so a score can only lower a weight (never push it past a cap), and large γ
    cannot overflow. Relative to ISFA's n·exp(γ·s) this is a common factor e^−γ, which cancels when
    the weights are normalised.
    """
    if sample_count < 0:
        raise ValueError("sample counts must be non-negative")
    if score is None or gamma == 0.0:
        return float(sample_count)
    return float(sample_count) * float(np.exp(gamma * (score - 1.0)))


def thresholded_weight(sample_count: float, score: float, threshold: float) -> float:
    """A client's unnormalised weight under the threshold rule: n if s >= threshold, else 0."""
    if sample_count < 0:
        raise ValueError("sample counts must be non-negative")
    return float(sample_count) if score >= threshold else 0.0


def normalized_weights(relative) -> np.ndarray:
    """Weights summing to 1 (the server knows every report: no privacy)."""
    raw = np.asarray(relative, dtype=np.float64)
    total = raw.sum()
    if total <= 0:
        raise ValueError("all clients have zero weight (no samples?)")
    return raw / total


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
