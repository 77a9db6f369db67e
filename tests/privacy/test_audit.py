"""Canary audit (Andrew et al.): ε of two Gaussians against dp_accounting and brute force, the cosine
statistics, the bootstrap, and simulated federated rounds (DP off, the Gaussian mechanism, known noise).
"""

import math

import dp_accounting
import numpy as np
import pytest
from scipy.stats import norm

from privfedtalk.errors import PrivacyError
from privfedtalk.privacy.audit import (
    CanaryAudit,
    GaussianFit,
    audit_canaries,
    bootstrap_epsilon,
    canary_cosines,
    canary_directions,
    epsilon_from_statistics,
    epsilon_two_gaussians,
    fit_gaussian,
    max_round_cosines,
)

DELTA = 1e-5
# Simulation sizes: 250 inserted + 250 held-out canaries in R^20000. The other inserted canaries add
# variance (k - 1) / d = 0.0125 (in units of C^2) to a canary's cosine numerator, small against z^2.
DIMENSION = 20_000
CANARIES = 250


# ------------------------------------------------------------------------------- ε of two Gaussians


def _hockey_stick(epsilon, p, q):
    """sup_S P(S) - e^ε Q(S) by brute-force quadrature of max(p - e^ε q, 0) on a fine grid."""
    low = min(p[0] - 15 * p[1], q[0] - 15 * q[1])
    high = max(p[0] + 15 * p[1], q[0] + 15 * q[1])
    y = np.linspace(low, high, 400_001)
    gap = np.maximum(norm.pdf(y, *p) - math.exp(epsilon) * norm.pdf(y, *q), 0.0)
    return float(np.trapezoid(gap, y))


@pytest.mark.parametrize("delta", [1e-3, 1e-5, 1e-8])
@pytest.mark.parametrize("sigma", [0.3, 1.0, 2.0, 8.0])
def test_equal_variances_match_the_gaussian_mechanism(sigma, delta):
    # Gap 1 with std sigma is the Gaussian mechanism with sensitivity 1 and noise sigma, at any
    # location and scale.
    expected = dp_accounting.get_epsilon_gaussian(sigma, delta)
    assert epsilon_two_gaussians(GaussianFit(1.0, sigma), GaussianFit(0.0, sigma), delta) == pytest.approx(
        expected, rel=1e-8
    )
    shifted = epsilon_two_gaussians(GaussianFit(-3.0, 1e-3 * sigma), GaussianFit(-3.001, 1e-3 * sigma), delta)
    assert shifted == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize(
    "first, second, delta",
    [((1.0, 1.3), (0.0, 1.0), 1e-5), ((0.0, 0.7), (0.2, 1.0), 1e-5), ((3.0, 0.5), (0.0, 2.0), 1e-6)],
)
def test_unequal_variances_reach_delta_exactly_by_brute_force(first, second, delta):
    epsilon = epsilon_two_gaussians(GaussianFit(*first), GaussianFit(*second), delta)
    worst = max(_hockey_stick(epsilon, first, second), _hockey_stick(epsilon, second, first))
    assert worst == pytest.approx(delta, rel=1e-4)
    # A slightly smaller ε does not reach δ, so ε is the smallest one that does.
    smaller = 0.99 * epsilon
    assert max(_hockey_stick(smaller, first, second), _hockey_stick(smaller, second, first)) > 1.05 * delta


def test_unequal_variances_monotone_and_symmetric():
    gaps = [0.0, 0.25, 0.5, 1.0, 2.0, 4.0]
    epsilons = [epsilon_two_gaussians(GaussianFit(gap, 1.3), GaussianFit(0.0, 1.0), DELTA) for gap in gaps]
    assert all(b > a for a, b in zip(epsilons, epsilons[1:]))
    # A std ratio alone leaks, more so the larger it is; equal Gaussians leak nothing.
    ratios = [1.0, 1.05, 1.2, 2.0]
    spread = [epsilon_two_gaussians(GaussianFit(0.0, r), GaussianFit(0.0, 1.0), DELTA) for r in ratios]
    assert spread[0] == 0.0 and all(b > a for a, b in zip(spread, spread[1:]))
    for p, q in [((1.0, 1.3), (0.0, 1.0)), ((0.0, 0.4), (0.0, 1.0))]:
        forward = epsilon_two_gaussians(GaussianFit(*p), GaussianFit(*q), DELTA)
        assert epsilon_two_gaussians(GaussianFit(*q), GaussianFit(*p), DELTA) == forward
        mirrored = epsilon_two_gaussians(GaussianFit(-p[0], p[1]), GaussianFit(-q[0], q[1]), DELTA)
        assert mirrored == pytest.approx(forward, rel=1e-9)
    # Nearly equal stds approach the equal-std value continuously (no cancellation in the roots).
    equal = epsilon_two_gaussians(GaussianFit(1.0, 1.0), GaussianFit(0.0, 1.0), DELTA)
    nearly = epsilon_two_gaussians(GaussianFit(1.0, 1.0 + 1e-12), GaussianFit(0.0, 1.0), DELTA)
    assert nearly == pytest.approx(equal, rel=1e-8)


def test_epsilon_edge_cases():
    # Total variation below δ: (0, δ)-DP.
    assert epsilon_two_gaussians(GaussianFit(1e-7, 1.0), GaussianFit(0.0, 1.0), 1e-3) == 0.0
    assert epsilon_two_gaussians(GaussianFit(1e5, 1.0), GaussianFit(0.0, 1.0), DELTA) == math.inf
    assert epsilon_from_statistics([1.0, 1.0, 1.0], [0.0, 0.0, 0.0], DELTA) == math.inf
    with pytest.raises(PrivacyError, match="std"):
        epsilon_two_gaussians(GaussianFit(0.0, 0.0), GaussianFit(1.0, 1.0), DELTA)
    with pytest.raises(PrivacyError, match="delta"):
        epsilon_two_gaussians(GaussianFit(0.0, 1.0), GaussianFit(1.0, 1.0), 0.0)
    with pytest.raises(PrivacyError, match="at least 2"):
        epsilon_from_statistics([1.0], [0.0, 0.1], DELTA)


# --------------------------------------------------------------------------------------- statistics


def test_canary_directions_are_unit_and_reproducible():
    directions = canary_directions(50, 1000, np.random.default_rng(1))
    assert directions.shape == (50, 1000)
    np.testing.assert_allclose(np.linalg.norm(directions, axis=1), 1.0, rtol=1e-12)
    np.testing.assert_array_equal(directions, canary_directions(50, 1000, np.random.default_rng(1)))
    assert not np.array_equal(directions, canary_directions(50, 1000, np.random.default_rng(2)))
    # Independent random directions are nearly orthogonal in high dimension: cosines ~ N(0, 1 / d).
    off_diagonal = (directions @ directions.T)[~np.eye(50, dtype=bool)]
    assert np.std(off_diagonal) == pytest.approx(1000**-0.5, rel=0.1)


def test_cosine_statistics_by_hand():
    directions = np.array([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 1.0]])
    np.testing.assert_allclose(canary_cosines(directions, [3.0, 4.0, 0.0]), [0.6, 0.8, 0.0])
    rounds = np.array([[3.0, 4.0, 0.0], [0.0, 0.0, 0.0], [0.0, -1.0, 1.0]])
    # The zero round released nothing and is skipped; otherwise the maximum over rounds.
    np.testing.assert_allclose(max_round_cosines(directions, rounds), [0.6, 0.8, 0.5**0.5])
    with pytest.raises(PrivacyError, match="zero norm"):
        canary_cosines(directions, np.zeros(3))
    with pytest.raises(PrivacyError, match="shape"):
        canary_cosines(directions, np.ones(4))


def test_fit_gaussian_is_mean_and_unbiased_std():
    assert fit_gaussian([1.0, 2.0, 3.0, 4.0]) == pytest.approx((2.5, np.std([1, 2, 3, 4], ddof=1)))


# ---------------------------------------------------------------------------------------- bootstrap


def test_bootstrap_interval_covers_the_truth_and_narrows_with_more_canaries():
    rng = np.random.default_rng(5)
    truth = dp_accounting.get_epsilon_gaussian(1.0, DELTA)  # N(1, 1) vs N(0, 1)

    def interval(count, seed):
        inserted, held_out = rng.normal(1.0, 1.0, count), rng.normal(0.0, 1.0, count)
        return bootstrap_epsilon(
            inserted, held_out, DELTA, np.random.default_rng(seed), samples=200, confidence=0.99
        )

    small, large = interval(100, 0), interval(2000, 0)
    for _, low, high in (small, large):
        assert 0 <= low <= truth <= high
    assert large.high - large.low < 0.5 * (small.high - small.low)
    # Reproducible from the Generator alone.
    inserted, held_out = rng.normal(1.0, 1.0, 100), rng.normal(0.0, 1.0, 100)
    first = bootstrap_epsilon(inserted, held_out, DELTA, np.random.default_rng(9), samples=50)
    assert first == bootstrap_epsilon(inserted, held_out, DELTA, np.random.default_rng(9), samples=50)


# ------------------------------------------------------------------------------ simulated FL rounds


@pytest.fixture(scope="module")
def canaries():
    """500 directions in R^20000 (float32, 40 MB) and a mask inserting exactly half of them."""
    rng = np.random.default_rng(2024)
    directions = canary_directions(2 * CANARIES, DIMENSION, rng, dtype=np.float32)
    inserted = np.zeros(2 * CANARIES, dtype=bool)
    inserted[rng.permutation(2 * CANARIES)[:CANARIES]] = True
    return directions, inserted


def _canary_sum(directions, inserted, clip_norm=1.0):
    return clip_norm * directions[inserted].sum(axis=0, dtype=np.float64)


def _statistics(directions, inserted, release):
    cosines = canary_cosines(directions, release)
    return cosines[inserted], cosines[~inserted]


def test_dp_off_estimate_is_large(canaries):
    directions, inserted = canaries
    rng = np.random.default_rng(11)
    # No noise, no clipping beyond scaling; 100 other clients send random updates of norm 0.5 to 1.
    others = rng.standard_normal((100, DIMENSION))
    others *= (rng.uniform(0.5, 1.0, 100) / np.linalg.norm(others, axis=1))[:, None]
    release = _canary_sum(directions, inserted) + others.sum(axis=0)
    epsilon = epsilon_from_statistics(*_statistics(directions, inserted, release), DELTA)
    assert epsilon > 20


def _ideal_estimates(noise_multiplier, count, draws=300, seed=0):
    """The estimator on exact Gaussian statistics N(1 / z, 1) vs N(0, 1) with `count` canaries each."""
    rng = np.random.default_rng(seed)
    return np.array(
        [
            epsilon_from_statistics(
                rng.normal(1 / noise_multiplier, 1, count), rng.normal(0, 1, count), DELTA
            )
            for _ in range(draws)
        ]
    )


@pytest.mark.parametrize("noise_multiplier", [0.5, 1.0, 2.0])
def test_gaussian_mechanism_estimate_approaches_analytic_epsilon(canaries, noise_multiplier):
    """One round, each inserted canary at norm C = 1, noise std z C on every coordinate.

    In high dimension the cosines are Gaussian with mean gap / std = 1 / z, so the estimate behaves
    like the estimator on exact Gaussian statistics N(1/z, 1) vs N(0, 1) with the same number of
    canaries. That estimator is biased upwards at finite size (any fitted std mismatch adds ε at
    δ = 1e-5) and has spread s; both are measured here (250 canaries each: bias ~ 1.05 s, with
    s = 1.6, 1.2, 1.0 for z = 0.5, 1, 2). Tolerance: the estimate lies within 3 s of the ideal
    estimator's mean (the largest deviation over 12 canary sets x 3 z was 1.9 s), and that mean within
    1.5 s of the analytic ε.
    """
    directions, inserted = canaries
    analytic = dp_accounting.get_epsilon_gaussian(noise_multiplier, DELTA)
    rng = np.random.default_rng(int(100 * noise_multiplier))
    release = _canary_sum(directions, inserted) + rng.normal(0.0, noise_multiplier, DIMENSION)
    member, held_out = _statistics(directions, inserted, release)
    estimate = epsilon_from_statistics(member, held_out, DELTA)
    ideal = _ideal_estimates(noise_multiplier, CANARIES)
    spread = ideal.std()
    assert abs(ideal.mean() - analytic) < 1.5 * spread
    assert abs(estimate - ideal.mean()) < 3 * spread, (estimate, analytic, ideal.mean(), spread)
    # The 99 % bootstrap interval covers the analytic ε (it did for all 12 canary sets x 3 z tried).
    _, low, high = bootstrap_epsilon(
        member, held_out, DELTA, np.random.default_rng(0), samples=300, confidence=0.99
    )
    assert low <= analytic <= high
    # The fitted Gaussians themselves: mean gap / std is 1 / z up to 4 standard errors (delta method:
    # the gap's error and the std's relative error 1 / sqrt(2 n)).
    gap = 1 / noise_multiplier
    standardized_gap = (member.mean() - held_out.mean()) / held_out.std(ddof=1)
    standard_error = ((2 + gap**2 / 2) / CANARIES) ** 0.5
    assert standardized_gap == pytest.approx(gap, abs=4 * standard_error)


def test_known_noise_breaks_the_guarantee(canaries):
    """Seeded noise: an attacker who can regenerate the noise subtracts it and sees DP off."""
    directions, inserted = canaries
    noise = np.random.default_rng(1234).normal(0.0, 1.0, DIMENSION)  # z = 1 from a readable seed
    release = _canary_sum(directions, inserted) + noise
    unknown = epsilon_from_statistics(*_statistics(directions, inserted, release), DELTA)
    regenerated = np.random.default_rng(1234).normal(0.0, 1.0, DIMENSION)
    known = epsilon_from_statistics(*_statistics(directions, inserted, release - regenerated), DELTA)
    assert unknown < 10  # analytic ε(z = 1, δ = 1e-5) = 4.38
    assert known > 20 and known > 5 * unknown


def test_audit_canaries_all_iterates_sees_more_than_the_final_model(canaries):
    """Eight rounds with noise z = 0.5 each; every inserted canary takes part in exactly one round.

    The final model carries all eight noises (gap / std ~ 2 / sqrt(8), analytic ε = 2.9), while the
    round a canary took part in has gap / std ~ 2 (analytic ε = 10), which the maximum over rounds
    exposes: the all-iterates estimate is the larger one (by 2x to 6x over 20 seeds).
    """
    directions, inserted = canaries
    rng = np.random.default_rng(7)
    rounds = 8
    round_of_canary = rng.integers(0, rounds, size=len(inserted))
    round_updates = np.stack(
        [
            _canary_sum(directions, inserted & (round_of_canary == t)) + rng.normal(0.0, 0.5, DIMENSION)
            for t in range(rounds)
        ]
    )
    audit = audit_canaries(
        directions,
        inserted,
        delta=DELTA,
        rng=np.random.default_rng(0),
        round_updates=round_updates,
        bootstrap_samples=100,
    )
    assert isinstance(audit, CanaryAudit)
    assert (audit.inserted_count, audit.held_out_count) == (CANARIES, CANARIES)
    for threat in (audit.final_model, audit.all_iterates):
        assert 0 <= threat.epsilon.low <= threat.epsilon.high
    assert audit.all_iterates.epsilon.estimate > 1.5 * audit.final_model.epsilon.estimate
    # The final delta defaults to the sum of the rounds; with only the final delta there is no
    # all-iterates estimate.
    only_final = audit_canaries(
        directions,
        inserted,
        delta=DELTA,
        rng=np.random.default_rng(0),
        final_model_delta=round_updates.sum(axis=0),
        bootstrap_samples=100,
    )
    assert only_final.all_iterates is None
    assert only_final.final_model == audit.final_model


def test_audit_canaries_rejects_bad_masks(canaries):
    directions, inserted = canaries
    with pytest.raises(PrivacyError, match="bool mask"):
        audit_canaries(
            directions,
            inserted.astype(int),
            delta=DELTA,
            rng=np.random.default_rng(0),
            final_model_delta=np.ones(DIMENSION),
        )
    with pytest.raises(PrivacyError, match="final_model_delta, round_updates"):
        audit_canaries(directions, inserted, delta=DELTA, rng=np.random.default_rng(0))
