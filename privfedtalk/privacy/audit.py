"""Empirical privacy estimation from random canary clients in one training run (Andrew et al., ICLR 2024,
"One-shot Empirical Privacy Estimation for Federated Learning"): the pure math, no model.

The method. The auditor draws k random unit directions in R^d. About half are inserted: a canary
client, sampled like any other client, sends its direction scaled to the clip norm C as its update
(`canary_directions` draws the directions; scaling is `clip_norm * direction`). The other half are
never inserted and serve as the null sample. After training, each direction gets one statistic:

- final model (the adversary sees only theta_T): the cosine of the direction with the final model
  delta theta_T - theta_0 (`canary_cosines`);
- all iterates (the adversary sees every released round update): the maximum over rounds t of the
  cosine with the round's model delta theta_t - theta_{t-1} (`max_round_cosines`), as in the paper
  and its released code.

A Gaussian is fitted to the statistics of the inserted and of the held-out directions, and the
estimate is the ε at δ of that pair of Gaussians (`epsilon_two_gaussians`): the smallest ε for which
the hockey-stick divergence is at most δ in both orders. For the Gaussian mechanism the cosines are
asymptotically Gaussian as d grows, with mean gap / std -> 1 / z, so the estimate tends to the
mechanism's ε. (For all iterates the held-out maximum is not Gaussian; fitting a Gaussian is the
paper's approximation.) `bootstrap_epsilon` resamples canaries for a confidence interval, and
`audit_canaries` runs the whole estimate for both threat models.

The audit is a measurement, not a protection: its randomness comes from an explicit Generator so
that an audit can be reproduced. The directions must not be known to whoever draws the DP noise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from scipy.special import log_ndtr

from privfedtalk.errors import PrivacyError

# ε beyond which the two fitted Gaussians are treated as perfectly distinguishable (returned as inf).
_EPSILON_CEILING = 1e6
# Relative width at which the bisection for ε stops.
_EPSILON_RTOL = 1e-10


class GaussianFit(NamedTuple):
    mean: float
    std: float


class EpsilonInterval(NamedTuple):
    """A point estimate of ε and a bootstrap confidence interval [low, high] around it."""

    estimate: float
    low: float
    high: float


@dataclass(frozen=True)
class ThreatModelAudit:
    """The estimate for one threat model: ε with its interval, and the two fitted Gaussians."""

    epsilon: EpsilonInterval
    inserted: GaussianFit
    held_out: GaussianFit


@dataclass(frozen=True)
class CanaryAudit:
    """Result of `audit_canaries`; `all_iterates` is None when only the final delta was given."""

    delta: float
    confidence: float
    inserted_count: int
    held_out_count: int
    final_model: ThreatModelAudit
    all_iterates: ThreatModelAudit | None


# --------------------------------------------------------------------------------------------- canaries


def canary_directions(count: int, dimension: int, rng: np.random.Generator, dtype=np.float64) -> np.ndarray:
    """`count` directions drawn uniformly from the unit sphere in R^dimension, shape (count, dimension).

    A canary client's update is `clip_norm * direction`, so it passes clipping unchanged.
    """
    if count < 1 or dimension < 2:
        raise PrivacyError(f"need count >= 1 and dimension >= 2, got count={count}, dimension={dimension}")
    directions = rng.standard_normal((count, dimension), dtype=dtype)
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    return directions


def _as_directions(directions) -> np.ndarray:
    values = np.asarray(directions)
    if values.ndim != 2 or values.shape[0] < 1:
        raise PrivacyError(f"canary directions must have shape (count, dimension), got {values.shape}")
    if not np.issubdtype(values.dtype, np.floating):
        values = values.astype(np.float64)
    return values


def _cosines_with_rows(directions: np.ndarray, updates: np.ndarray) -> np.ndarray:
    """Cosines (count, rounds) of each direction with each row of `updates` (rounds, dimension).

    Columns of rows with zero norm are NaN.
    """
    if updates.ndim != 2 or updates.shape[1] != directions.shape[1]:
        raise PrivacyError(
            f"updates must have shape (rounds, {directions.shape[1]}) to match the canary directions, "
            f"got {updates.shape}"
        )
    if not np.all(np.isfinite(updates)):
        raise PrivacyError("model updates contain NaN or infinite values; the audit needs finite updates")
    direction_norms = np.linalg.norm(directions.astype(np.float64, copy=False), axis=1)
    if not np.all(direction_norms > 0) or not np.all(np.isfinite(direction_norms)):
        raise PrivacyError("every canary direction must be a finite nonzero vector")
    update_norms = np.linalg.norm(updates.astype(np.float64, copy=False), axis=1)
    dots = (directions @ updates.T).astype(np.float64, copy=False)
    with np.errstate(invalid="ignore", divide="ignore"):
        cosines = dots / direction_norms[:, None] / update_norms[None, :]
    cosines[:, update_norms == 0] = np.nan
    return cosines


def canary_cosines(directions, update) -> np.ndarray:
    """Cosine (count,) of each canary direction (count, dimension) with one update (dimension,).

    This is the final-model statistic when `update` is the final model delta theta_T - theta_0.
    """
    values = _as_directions(directions)
    cosines = _cosines_with_rows(values, np.asarray(update).reshape(1, -1))[:, 0]
    if np.isnan(cosines).any():
        raise PrivacyError("the update has zero norm, so its cosine with a canary is undefined")
    return cosines


def max_round_cosines(directions, round_updates) -> np.ndarray:
    """All-iterates statistic (count,): for each direction, the maximum over rounds of its cosine with
    that round's released model delta. `round_updates` has shape (rounds, dimension) (or is a sequence
    of (dimension,) vectors); rounds whose update is exactly zero (nothing released) are skipped.
    """
    values = _as_directions(directions)
    if isinstance(round_updates, np.ndarray):
        updates = round_updates
    else:
        updates = np.stack([np.asarray(u).ravel() for u in round_updates])
    cosines = _cosines_with_rows(values, updates)
    released = ~np.isnan(cosines[0])
    if not released.any():
        raise PrivacyError("every round update has zero norm; there is no released update to audit")
    return cosines[:, released].max(axis=1)


# --------------------------------------------------------------------------------- ε of two Gaussians


def _log1mexp(x: float) -> float:
    """log(1 - exp(x)) for x <= 0, accurate near 0 and for very negative x."""
    if x >= 0:
        return -math.inf
    return math.log(-math.expm1(x)) if x > -math.log(2.0) else math.log1p(-math.exp(x))


def _log_mass_above(threshold: float, mean: float, std: float) -> float:
    return float(log_ndtr((mean - threshold) / std))


def _log_mass_below(threshold: float, mean: float, std: float) -> float:
    return float(log_ndtr((threshold - mean) / std))


def _log_mass_between(low: float, high: float, mean: float, std: float) -> float:
    a, b = (low - mean) / std, (high - mean) / std
    if a >= b:
        return -math.inf
    # Take the difference in the tail where the interval lies, where the cdf values are not close to 1.
    if a > 0:
        upper, lower = float(log_ndtr(-a)), float(log_ndtr(-b))
    else:
        upper, lower = float(log_ndtr(b)), float(log_ndtr(a))
    return upper + _log1mexp(lower - upper)


def _log_mass_outside(low: float, high: float, mean: float, std: float) -> float:
    return float(np.logaddexp(_log_mass_below(low, mean, std), _log_mass_above(high, mean, std)))


def _log_hockey_stick(epsilon: float, p: GaussianFit, q: GaussianFit) -> float:
    """log of the hockey-stick divergence sup_S P(S) - e^ε Q(S) = P(L > ε) - e^ε Q(L > ε) of
    P = N(p.mean, p.std²) from Q = N(q.mean, q.std²), with privacy loss L(y) = log p(y) - log q(y).

    L(y) = a y² + b y + c is quadratic, so the region {L > ε} is a half-line (a = 0), the outside of
    the roots (a > 0, P wider) or the interval between them (a < 0, P narrower).
    """
    a = 0.5 / q.std**2 - 0.5 / p.std**2
    b = p.mean / p.std**2 - q.mean / q.std**2
    c = 0.5 * (q.mean / q.std) ** 2 - 0.5 * (p.mean / p.std) ** 2 + math.log(q.std / p.std)
    c_eps = c - epsilon
    if a == 0.0:
        if b == 0.0:
            return _log1mexp(epsilon) if c_eps > 0 else -math.inf
        threshold = -c_eps / b
        if b > 0:
            log_p, log_q = _log_mass_above(threshold, *p), _log_mass_above(threshold, *q)
        else:
            log_p, log_q = _log_mass_below(threshold, *p), _log_mass_below(threshold, *q)
    else:
        discriminant = b * b - 4.0 * a * c_eps
        if discriminant <= 0:
            # L - ε keeps the sign of a everywhere: the region is all of R (a > 0) or empty (a < 0).
            return _log1mexp(epsilon) if a > 0 else -math.inf
        # Roots in the cancellation-free form, so that a -> 0 tends to the linear case.
        half = -0.5 * (b + math.copysign(math.sqrt(discriminant), b))
        low, high = sorted((half / a, c_eps / half))
        if a > 0:
            log_p, log_q = _log_mass_outside(low, high, *p), _log_mass_outside(low, high, *q)
        else:
            log_p, log_q = _log_mass_between(low, high, *p), _log_mass_between(low, high, *q)
    if log_p == -math.inf:
        return -math.inf
    # On the region p > e^ε q, so the difference is >= 0 up to rounding.
    return log_p + _log1mexp(epsilon + log_q - log_p)


def _check_gaussian(fit: GaussianFit, name: str) -> GaussianFit:
    mean, std = float(fit[0]), float(fit[1])
    if not (math.isfinite(mean) and math.isfinite(std) and std > 0):
        raise PrivacyError(f"{name}: need a finite mean and a positive finite std, got {mean}, {std}")
    return GaussianFit(mean, std)


def epsilon_two_gaussians(first: GaussianFit, second: GaussianFit, delta: float) -> float:
    """ε at δ of the pair N(first.mean, first.std²), N(second.mean, second.std²).

    The smallest ε >= 0 with H_ε(P||Q) <= δ and H_ε(Q||P) <= δ (so the largest over both orders),
    where H_ε is the hockey-stick divergence, computed exactly (closed-form masses of the quadratic
    privacy-loss region, in log space) and inverted by bisection, as H_ε falls with ε. With equal
    stds this is the ε of the Gaussian mechanism with sensitivity / sigma = |mean gap| / std.
    Unequal stds leak even at equal means. Returns inf when ε would exceed 1e6.
    """
    if not 0 < delta < 1:
        raise PrivacyError(f"delta must lie in (0, 1), got {delta}")
    p, q = _check_gaussian(first, "first Gaussian"), _check_gaussian(second, "second Gaussian")
    log_delta = math.log(delta)

    def log_divergence(epsilon: float) -> float:
        return max(_log_hockey_stick(epsilon, p, q), _log_hockey_stick(epsilon, q, p))

    if log_divergence(0.0) <= log_delta:
        return 0.0
    low, high = 0.0, 1.0
    while log_divergence(high) > log_delta:
        low, high = high, 2.0 * high
        if high > _EPSILON_CEILING:
            return math.inf
    while high - low > _EPSILON_RTOL * high:
        middle = 0.5 * (low + high)
        if log_divergence(middle) > log_delta:
            low = middle
        else:
            high = middle
    return high


# ----------------------------------------------------------------------------------- fitting and bootstrap


def _as_statistics(values, name: str) -> np.ndarray:
    sample = np.asarray(values, dtype=np.float64).ravel()
    if sample.size < 2:
        raise PrivacyError(f"{name}: need at least 2 canary statistics to fit a Gaussian, got {sample.size}")
    if not np.all(np.isfinite(sample)):
        raise PrivacyError(f"{name}: canary statistics contain NaN or infinite values")
    return sample


def fit_gaussian(sample) -> GaussianFit:
    """Mean and unbiased (ddof = 1) standard deviation of a 1-D sample of at least 2 values."""
    values = _as_statistics(sample, "sample")
    return GaussianFit(float(values.mean()), float(values.std(ddof=1)))


def _epsilon_from_fits(inserted: GaussianFit, held_out: GaussianFit, delta: float) -> float:
    if inserted.std == 0 or held_out.std == 0:
        # A point mass against anything else is perfectly distinguishable.
        return 0.0 if inserted == held_out else math.inf
    return epsilon_two_gaussians(inserted, held_out, delta)


def epsilon_from_statistics(inserted_statistics, held_out_statistics, delta: float) -> float:
    """ε at δ of the Gaussians fitted to the statistics of inserted and of held-out canaries."""
    inserted = fit_gaussian(_as_statistics(inserted_statistics, "inserted canaries"))
    held_out = fit_gaussian(_as_statistics(held_out_statistics, "held-out canaries"))
    return _epsilon_from_fits(inserted, held_out, delta)


def bootstrap_epsilon(
    inserted_statistics,
    held_out_statistics,
    delta: float,
    rng: np.random.Generator,
    samples: int = 1000,
    confidence: float = 0.95,
) -> EpsilonInterval:
    """ε estimate with a basic (reverse-percentile) bootstrap confidence interval.

    Each bootstrap draw resamples the inserted and the held-out canaries separately, with replacement
    and at their own sizes, refits both Gaussians and recomputes ε. The estimate is from the full
    sample. The ε of fitted Gaussians is biased upwards at finite size (any sampling mismatch of the
    fitted stds adds ε), and the draws are shifted upwards from the estimate by about as much again;
    so the interval reflects their quantiles q about the estimate, [2 est - q_hi, 2 est - q_lo] with
    q at (1 -+ confidence) / 2, and clips it at 0. On exact Gaussian statistics (250 canaries each,
    gap / std = 2, 1, 1/2, 40 runs each) the 95 % interval covered the true ε in 97.5 % of runs, the
    plain percentile interval in 87.5 to 92.5 %. The interval may therefore lie partly or wholly below
    the estimate. An end is inf where draws are.
    """
    inserted = _as_statistics(inserted_statistics, "inserted canaries")
    held_out = _as_statistics(held_out_statistics, "held-out canaries")
    if samples < 1:
        raise PrivacyError(f"bootstrap samples must be >= 1, got {samples}")
    if not 0 < confidence < 1:
        raise PrivacyError(f"confidence must lie in (0, 1), got {confidence}")
    estimate = _epsilon_from_fits(fit_gaussian(inserted), fit_gaussian(held_out), delta)

    def resampled_fits(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        draws = values[rng.integers(0, values.size, size=(samples, values.size))]
        return draws.mean(axis=1), draws.std(axis=1, ddof=1)

    inserted_means, inserted_stds = resampled_fits(inserted)
    held_out_means, held_out_stds = resampled_fits(held_out)
    epsilons = np.array(
        [
            _epsilon_from_fits(GaussianFit(m1, s1), GaussianFit(m0, s0), delta)
            for m1, s1, m0, s0 in zip(inserted_means, inserted_stds, held_out_means, held_out_stds)
        ]
    )
    tail = 0.5 * (1.0 - confidence)
    # "lower"/"higher" keep inf draws from turning a quantile into NaN by interpolation.
    draw_low = float(np.quantile(epsilons, tail, method="lower"))
    draw_high = float(np.quantile(epsilons, 1.0 - tail, method="higher"))
    if math.isinf(estimate) or math.isinf(draw_low):
        return EpsilonInterval(estimate, draw_low, math.inf)
    low = max(0.0, 2.0 * estimate - draw_high)
    high = max(0.0, 2.0 * estimate - draw_low)
    return EpsilonInterval(estimate, low, high)


# ------------------------------------------------------------------------------------------ the audit


def _threat_model_audit(statistics, inserted, delta, rng, samples, confidence) -> ThreatModelAudit:
    interval = bootstrap_epsilon(statistics[inserted], statistics[~inserted], delta, rng, samples, confidence)
    return ThreatModelAudit(
        epsilon=interval,
        inserted=fit_gaussian(statistics[inserted]),
        held_out=fit_gaussian(statistics[~inserted]),
    )


def audit_canaries(
    directions,
    inserted,
    *,
    delta: float,
    rng: np.random.Generator,
    final_model_delta=None,
    round_updates: np.ndarray | Sequence[np.ndarray] | None = None,
    bootstrap_samples: int = 1000,
    confidence: float = 0.95,
) -> CanaryAudit:
    """Estimate ε for the final-model and the all-iterates threat models from one training run.

    directions: (count, dimension) canary directions; inserted: (count,) bool, True for the canaries
    whose clients took part, False for the held-out ones (the paper uses as many of each).
    round_updates: (rounds, dimension) released model deltas theta_t - theta_{t-1}, or None.
    final_model_delta: theta_T - theta_0 (dimension,); when None it is the sum of `round_updates`.
    The all-iterates estimate needs `round_updates`; with only `final_model_delta` it is None.
    `rng` drives the bootstrap only.
    """
    values = _as_directions(directions)
    mask = np.asarray(inserted)
    if mask.dtype != np.bool_ or mask.shape != (values.shape[0],):
        raise PrivacyError(
            f"inserted must be a bool mask of shape ({values.shape[0]},), got {mask.dtype} {mask.shape}"
        )
    inserted_count = int(mask.sum())
    held_out_count = int(mask.size - inserted_count)
    if inserted_count < 2 or held_out_count < 2:
        raise PrivacyError(
            f"need at least 2 inserted and 2 held-out canaries, got {inserted_count} and {held_out_count}"
        )
    if round_updates is not None and not isinstance(round_updates, np.ndarray):
        round_updates = np.stack([np.asarray(u).ravel() for u in round_updates])
    if final_model_delta is None:
        if round_updates is None:
            raise PrivacyError("audit_canaries needs final_model_delta, round_updates or both")
        final_model_delta = np.asarray(round_updates).sum(axis=0)

    arguments = (mask, delta, rng, bootstrap_samples, confidence)
    final_model = _threat_model_audit(canary_cosines(values, final_model_delta), *arguments)
    all_iterates = None
    if round_updates is not None:
        all_iterates = _threat_model_audit(max_round_cosines(values, round_updates), *arguments)
    return CanaryAudit(
        delta=delta,
        confidence=confidence,
        inserted_count=inserted_count,
        held_out_count=held_out_count,
        final_model=final_model,
        all_iterates=all_iterates,
    )
