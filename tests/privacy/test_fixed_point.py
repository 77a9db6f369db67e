"""Fixed-point encoding: round trip, two's complement wrap, overflow planning and run-time checks."""

import numpy as np
import pytest

from privfedtalk.errors import PrivacyError
from privfedtalk.privacy.fixed_point import (
    FixedPoint,
    check_no_overflow,
    per_coordinate_bound,
    plan_fixed_point,
)


@pytest.mark.parametrize("bits", [16, 32, 63, 64])
def test_round_trip_within_half_a_step(bits):
    rng = np.random.default_rng(0)
    fixed_point = plan_fixed_point(3.0, num_clients=4, bits=bits)
    values = rng.uniform(-3.0, 3.0, size=2000)
    decoded = fixed_point.decode(fixed_point.encode(values))
    assert np.max(np.abs(decoded - values)) <= 0.5 / fixed_point.scale


def test_negative_values_are_twos_complement_mod_2_to_the_k():
    fixed_point = FixedPoint(bits=16, scale=4.0)
    words = fixed_point.encode(np.array([-0.25, 0.25, -1.0]))
    assert words.tolist() == [2**16 - 1, 1, 2**16 - 4]
    assert fixed_point.decode(words).tolist() == [-0.25, 0.25, -1.0]


@pytest.mark.parametrize("bits", [12, 32, 64])
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_planned_scale_survives_the_worst_case_sum(bits, sign):
    num_clients, bound = 7, 2.5
    fixed_point = plan_fixed_point(bound, num_clients, bits=bits)
    # The documented inequality, and the worst case itself: every client at the bound, same sign.
    assert num_clients * (bound * fixed_point.scale + 0.5) < 2.0 ** (bits - 1)
    words = [fixed_point.encode(np.full(3, sign * bound)) for _ in range(num_clients)]
    total = fixed_point.reduce(np.sum(words, axis=0, dtype=np.uint64))
    decoded = fixed_point.decode(total)
    assert np.all(np.abs(decoded - sign * bound * num_clients) <= fixed_point.max_rounding_error(num_clients))


def test_scale_is_the_largest_power_of_two_that_fits():
    fixed_point = plan_fixed_point(1.0, num_clients=8, bits=32)
    assert np.log2(fixed_point.scale).is_integer()
    doubled = fixed_point.scale * 2
    assert 8 * (1.0 * doubled + 0.5) >= 2.0**31


def test_overflow_check_rejects_inputs_beyond_the_plan():
    fixed_point = plan_fixed_point(1.0, num_clients=4, bits=32)
    check_no_overflow(np.array([0.5, -1.0, 1.0]), fixed_point)
    with pytest.raises(PrivacyError, match="exceeds the planned fixed-point bound"):
        check_no_overflow(np.array([0.5, -1.0001]), fixed_point, client_id="alice")
    with pytest.raises(PrivacyError, match="NaN or infinite"):
        check_no_overflow(np.array([np.nan]), fixed_point)


def test_planning_refuses_impossible_configurations():
    with pytest.raises(PrivacyError):
        plan_fixed_point(1.0, num_clients=300, bits=8)
    with pytest.raises(PrivacyError):
        plan_fixed_point(1.0, num_clients=4, bits=16, scale=2.0**14)
    with pytest.raises(PrivacyError):
        plan_fixed_point(0.0, num_clients=4)


def test_per_coordinate_bound_adds_a_noise_tail():
    assert per_coordinate_bound(2.0, 0.5) == 1.0
    assert per_coordinate_bound(2.0, 0.5, local_noise_std=0.1, tail_sigmas=10) == pytest.approx(2.0)
