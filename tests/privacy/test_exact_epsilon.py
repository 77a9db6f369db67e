"""The reported observer ε is never below the ε of the mechanism the code implements.

An independent numerical computation (no dp_accounting): the worst-case one-dimensional pair of
output distributions over T rounds (the target's clipped, weighted update of size w_max·C = 1 along
one axis, every other client contributing 0, Gaussian noise of std z), privacy losses on a fine grid,
composed by convolution. Coarsening the outputs into bins and rounding losses down only lowers δ(ε)
(data processing), so the result is a LOWER bound on the mechanism's true ε: a reported ε below it is
wrong. The mechanism that skipped rounds with fewer than 2 sampled clients fails this check.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import signal, stats

from privfedtalk.config import load_config
from privfedtalk.privacy.dp import PrivacyAccountant
from privfedtalk.privacy.mechanism import PrivacyMechanism

DELTA = 1e-5
LOSS_STEP = 2e-3


def gaussian_bins(z: float, means, weights, edges) -> np.ndarray:
    """Probability of each output bin under the mixture Σ weights·N(mean, z²)."""
    cdf = sum(w * stats.norm.cdf(edges, loc=mu, scale=z) for mu, w in zip(means, weights))
    mass = np.diff(cdf)
    mass[0] += cdf[0]
    mass[-1] += sum(weights) - cdf[-1]
    return mass


def loss_pmf(p: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, int]:
    """Privacy-loss distribution of one round under p against q, on the grid k·LOSS_STEP (rounded down)."""
    keep = p > 0
    losses = np.log(p[keep]) - np.log(np.maximum(q[keep], 1e-300))
    index = np.floor(losses / LOSS_STEP).astype(np.int64)
    low = int(index.min())
    pmf = np.bincount(index - low, weights=p[keep])
    return pmf, low


def composed_losses(pmf: np.ndarray, low: int, rounds: int) -> tuple[np.ndarray, np.ndarray]:
    """(losses, probabilities) of the sum of `rounds` independent one-round losses."""
    total, offset = np.array([1.0]), 0
    for _ in range(rounds):
        total = np.clip(signal.fftconvolve(total, pmf), 0.0, None)
        offset += low
    return (np.arange(len(total)) + offset) * LOSS_STEP, total


def exact_epsilon(p: np.ndarray, q: np.ndarray, rounds: int) -> float:
    """max over both orders of the smallest ε with δ(ε) = E[(1 − e^(ε − L))+] ≤ DELTA after `rounds`."""
    worst = 0.0
    for a, b in ((p, q), (q, p)):
        losses, mass = composed_losses(*loss_pmf(a, b), rounds)
        lo, hi = 0.0, 60.0
        for _ in range(50):
            mid = 0.5 * (lo + hi)
            if np.sum(mass * np.clip(1.0 - np.exp(mid - losses), 0.0, None)) > DELTA:
                lo = mid
            else:
                hi = mid
        worst = max(worst, lo)
    return worst


def output_grid(z: float) -> np.ndarray:
    return np.linspace(-1 - 14 * z, 1 + 14 * z, 40_001)


def poisson_pair(z: float, q: float, n: int, skip_below: int = 0):
    """(with target, without target) per-round output pmfs for Poisson sampling at rate q of n clients.

    skip_below > 0 models the old mechanism: a round whose sample has fewer clients releases a
    point mass ("skipped", the last bin here) instead of a noisy sum.
    """
    edges = output_grid(z)
    others_with = stats.binom(n - 1, q)  # the other clients, when the target is in the data
    others_without = stats.binom(n - 1, q)  # the same n-1 clients are all there is without it
    if not skip_below:
        with_target = gaussian_bins(z, [0.0, 1.0], [1 - q, q], edges)
        without = gaussian_bins(z, [0.0], [1.0], edges)
        return with_target, without
    # Target sampled: released iff at least skip_below - 1 others; not sampled: at least skip_below.
    release_in = q * others_with.sf(skip_below - 2)
    release_out = (1 - q) * others_with.sf(skip_below - 1)
    with_target = gaussian_bins(z, [1.0, 0.0], [release_in, release_out], edges)
    without_release = others_without.sf(skip_below - 1)
    without = gaussian_bins(z, [0.0], [without_release], edges)
    return np.append(with_target, 1 - release_in - release_out), np.append(without, 1 - without_release)


def fixed_size_pair(z: float, m: int, n: int):
    """Replace-one: the target's update +1 in one dataset, −1 in the other; included with prob m/n."""
    edges = output_grid(z)
    p = m / n
    return (
        gaussian_bins(z, [0.0, 1.0], [1 - p, p], edges),
        gaussian_bins(z, [0.0, -1.0], [1 - p, p], edges),
    )


def reported(*overrides, clients=8, rounds=6) -> PrivacyMechanism:
    """The run's own mechanism (same calibration and accountant as `privfedtalk train`), T releases."""
    cfg = load_config(
        None,
        [
            "privacy.dp=true",
            "privacy.secure_aggregation=true",
            "privacy.target_epsilon=8",
            f"federated.rounds={rounds}",
            *overrides,
        ],
    )
    mech = PrivacyMechanism(cfg, [f"client{i:04d}" for i in range(clients)], dims=10)
    for _ in range(rounds):
        mech.charge(mech.noise_multiplier, [])
    return mech


@pytest.mark.parametrize("accountant", ["rdp", "pld"])
def test_poisson_rounds_report_at_least_the_exact_epsilon(accountant):
    mech = reported(
        "federated.sampling=poisson", "federated.clients_per_round=4", f"privacy.accountant={accountant}"
    )
    exact = exact_epsilon(*poisson_pair(mech.noise_multiplier, 0.5, 8), rounds=6)
    assert 4 < exact <= mech.epsilons()["epsilon_observer"] + 1e-6


def test_fixed_size_rounds_report_at_least_the_exact_epsilon():
    mech = reported("federated.sampling=fixed_size", "federated.clients_per_round=4")
    exact = exact_epsilon(*fixed_size_pair(mech.noise_multiplier, 4, 8), rounds=6)
    assert 2 < exact <= mech.epsilons()["epsilon_observer"] + 1e-6
    # The check can fail: accounting the same noise as add/remove (half the sensitivity) under-reports.
    wrong = PrivacyAccountant(DELTA, sampling="poisson", sampling_rate=0.5, accountant="pld")
    wrong.step(mech.noise_multiplier, 6)
    assert exact > wrong.epsilon() + 0.5


def test_the_old_skipping_mechanism_fails_the_check():
    """Skipping rounds with < 2 sampled clients (and charging nothing) leaks more than reported."""
    mech = reported("federated.sampling=poisson", "federated.clients_per_round=4", "privacy.accountant=pld")
    skipping = exact_epsilon(*poisson_pair(mech.noise_multiplier, 0.5, 8, skip_below=2), rounds=6)
    assert skipping > mech.epsilons()["epsilon_observer"] + 0.1
    assert math.isfinite(skipping)
