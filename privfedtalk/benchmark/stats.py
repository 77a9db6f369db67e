"""The benchmark's one verdict rule: Welch's t-test on per-seed values, Holm–Bonferroni over the family of
comparisons a reading states, and the verdict words that follow from them."""

from __future__ import annotations

import math
import warnings

import numpy as np
from scipy import stats

ALPHA = 0.05
TEST_NAME = "Welch's two-sided t-test (unequal variances) on the per-seed values"
CORRECTION_NAME = "Holm–Bonferroni"
MIN_SEEDS = 2  # a sample std, and so a t statistic, needs two values per row

BETTER, WORSE, NO_DIFFERENCE, NOT_JUDGED = "better", "worse", "no difference shown", "not judged"


def welch_test(values: list[float], reference: list[float]) -> tuple[float, float] | None:
    """(t, two-sided p) of Welch's t-test, values against reference; None with fewer than 2 of either.

    Zero spread on both sides is decided here, since scipy answers nan: equal means are no difference
    (t = 0, p = 1); different means are every seed on one side of every other (t = ±inf, p = 0).
    """
    if len(values) < MIN_SEEDS or len(reference) < MIN_SEEDS:
        return None
    if np.std(values) == 0 and np.std(reference) == 0:
        gap = float(np.mean(values) - np.mean(reference))
        return (0.0, 1.0) if gap == 0 else (math.copysign(math.inf, gap), 0.0)
    with warnings.catch_warnings():  # one zero-variance side is fine; scipy may still warn about it
        warnings.simplefilter("ignore", RuntimeWarning)
        result = stats.ttest_ind(values, reference, equal_var=False)
    return float(result.statistic), float(result.pvalue)


def holm_adjust(p_values: list[float]) -> list[float]:
    """Holm–Bonferroni adjusted p-values, in the input's order.

    The i-th smallest of k p-values is multiplied by k − i + 1 (i from 1), made non-decreasing along the
    sorted order and capped at 1; a hypothesis is rejected at α exactly when its adjusted p ≤ α, which
    keeps the chance of any false "better"/"worse" in the family at most α.
    """
    k = len(p_values)
    order = sorted(range(k), key=lambda i: p_values[i])
    adjusted = [0.0] * k
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (k - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted


def decide(gain: float, p_adjusted: float | None, alpha: float = ALPHA) -> str:
    """The verdict word: gain is the mean difference in the metric's better direction (positive: better)."""
    if p_adjusted is None:
        return NOT_JUDGED
    if p_adjusted <= alpha and gain != 0:
        return BETTER if gain > 0 else WORSE
    return NO_DIFFERENCE
