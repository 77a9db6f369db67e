"""Privacy randomness: OS-keyed AES-CTR streams give standard Gaussians and fair samples; only the
loudly named seeded source is reproducible."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import stats

from privfedtalk.privacy.noise import RandomSource, insecure_seeded_source


def test_normal_draws_are_standard_gaussian():
    draws = RandomSource.from_os_entropy().normal((400_001,))
    assert draws.shape == (400_001,)
    assert abs(draws.mean()) < 0.01 and draws.std() == pytest.approx(1.0, rel=0.005)
    assert stats.kstest(draws, "norm").pvalue > 1e-4
    assert stats.kurtosis(draws) == pytest.approx(0.0, abs=0.05)  # Gaussian tails, not uniform-ish
    scaled = RandomSource.from_os_entropy().normal((3, 50_000), std=0.25)
    assert scaled.shape == (3, 50_000) and scaled.std() == pytest.approx(0.25, rel=0.01)


def test_os_sources_never_repeat_and_seeded_ones_always_do():
    a, b = RandomSource.from_os_entropy().normal(1000), RandomSource.from_os_entropy().normal(1000)
    assert abs(np.corrcoef(a, b)[0, 1]) < 0.15 and not np.array_equal(a, b)
    one = insecure_seeded_source(0, "client-noise", 3, "client0001").normal(1000)
    again = insecure_seeded_source(0, "client-noise", 3, "client0001").normal(1000)
    other = insecure_seeded_source(0, "client-noise", 3, "client0002").normal(1000)
    assert np.array_equal(one, again) and not np.array_equal(one, other)


def test_uniform_is_open_interval_and_choice_is_fair():
    source = RandomSource.from_os_entropy()
    u = source.uniform(200_000)
    assert u.min() > 0 and u.max() < 1 and u.mean() == pytest.approx(0.5, abs=0.005)
    counts = {pair: 0 for pair in itertools.combinations(range(4), 2)}
    for _ in range(6000):
        counts[tuple(source.choice(4, 2))] += 1
    expected = 1000
    assert all(abs(c - expected) < 5 * np.sqrt(expected) for c in counts.values()), counts
