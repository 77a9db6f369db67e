"""Adaptive clipping: the bit, the geometric update, convergence to a quantile, and the joint ε."""

import json
import math

import dp_accounting
import numpy as np
import pytest
from dp_accounting import pld

from privfedtalk.errors import PrivacyError
from privfedtalk.privacy.adaptive_clipping import (
    AdaptiveClipState,
    centred_unclipped_bit,
    geometric_clip_update,
    joint_noise_multiplier,
    noised_unclipped_fraction,
    recommended_bit_noise_std,
    unclipped_bit,
    update_noise_multiplier,
)
from privfedtalk.privacy.dp import PrivacyAccountant

DELTA = 1e-5


# --------------------------------------------------------------------------------------------- bit and step


def test_bit_is_one_when_the_norm_is_within_the_clip_norm():
    assert [unclipped_bit(n, 1.0) for n in (0.0, 0.5, 1.0, 1.5)] == [1, 1, 1, 0]
    assert [centred_unclipped_bit(n, 1.0) for n in (0.5, 1.5)] == [0.5, -0.5]
    with pytest.raises(PrivacyError):
        unclipped_bit(math.nan, 1.0)


def test_one_geometric_step_matches_hand_computation():
    # 10 expected clients, centred bits sum to 3 (8 of 10 unclipped: 8·½ − 2·½): b̃ = ½ + 3/10 = 0.8
    assert noised_unclipped_fraction(3.0, 10) == pytest.approx(0.8)
    # C = 2·exp(−0.2·(0.8 − 0.5)) = 2·exp(−0.06)
    assert geometric_clip_update(2.0, 0.8, 0.5, 0.2) == pytest.approx(1.8835290671684974, rel=1e-12)
    # Too few unclipped clients grow C: 2·exp(−0.2·(0.1 − 0.5)) = 2·exp(0.08)
    assert geometric_clip_update(2.0, 0.1, 0.5, 0.2) == pytest.approx(2.1665741353499173, rel=1e-12)

    state = AdaptiveClipState(clip_norm=2.0)
    assert state.update(3.0, 10, target_quantile=0.5, learning_rate=0.2) == pytest.approx(1.8835290671684974)
    assert state.round == 1


def test_state_dict_round_trips_through_json():
    state = AdaptiveClipState(clip_norm=0.1)
    for bit_sum in (4.0, -1.5, 2.25):
        state.update(bit_sum, 20)
    resumed = AdaptiveClipState(clip_norm=1.0)
    resumed.load_state_dict(json.loads(json.dumps(state.state_dict())))
    assert (resumed.clip_norm, resumed.round) == (state.clip_norm, 3)
    assert resumed.update(1.0, 20) == state.update(1.0, 20)


# --------------------------------------------------------------------------------------------- convergence


def norm_population(rng, size):
    # Lognormal update norms around 0.3 (an adapter-delta scale); the clip norm starts 30x too small.
    return np.exp(rng.normal(math.log(0.3), 0.5, size))


@pytest.mark.parametrize("quantile", [0.5, 0.8])
def test_noiseless_bits_drive_the_clip_norm_to_the_target_quantile(quantile):
    norms = norm_population(np.random.default_rng(0), 1001)
    state = AdaptiveClipState(clip_norm=0.01)
    for _ in range(200):
        bit_sum = sum(centred_unclipped_bit(n, state.clip_norm) for n in norms)
        state.update(bit_sum, len(norms), target_quantile=quantile, learning_rate=0.2)
    target = float(np.quantile(norms, quantile))
    assert state.clip_norm == pytest.approx(target, rel=0.02)
    # The median and the 0.8 quantile differ by far more than the tolerance, so the target matters.
    assert abs(float(np.quantile(norms, 0.8)) / float(np.median(norms)) - 1) > 0.3


@pytest.mark.parametrize("quantile", [0.5, 0.8])
def test_noised_bits_with_poisson_sampling_still_track_the_quantile(quantile):
    rng = np.random.default_rng(1)
    population = norm_population(rng, 10_000)
    expected_clients = 100
    bit_noise_std = recommended_bit_noise_std(expected_clients)
    state = AdaptiveClipState(clip_norm=0.01)
    history = []
    for _ in range(600):
        sampled = population[rng.random(population.size) < expected_clients / population.size]
        bit_sum = float(np.sum(np.where(sampled <= state.clip_norm, 0.5, -0.5)))
        noised = bit_sum + rng.normal(0.0, bit_noise_std)
        history.append(state.update(noised, expected_clients, target_quantile=quantile, learning_rate=0.2))
    target = float(np.quantile(population, quantile))
    late = np.array(history[300:])
    assert math.exp(np.mean(np.log(late))) == pytest.approx(target, rel=0.05)
    assert np.all(np.abs(late / target - 1) < 0.25)


# --------------------------------------------------------------------------------------------- accounting


def test_noise_split_matches_hand_computation_and_inverts():
    # z = 1, σ_b = 1: z_Δ = (1 − 1/4)^(−1/2) = 2/√3
    assert update_noise_multiplier(1.0, 1.0) == pytest.approx(2 / math.sqrt(3), rel=1e-12)
    assert joint_noise_multiplier(2 / math.sqrt(3), 1.0) == pytest.approx(1.0, rel=1e-12)
    assert update_noise_multiplier(0.8, math.inf) == 0.8
    assert update_noise_multiplier(0.0, 1.0) == 0.0


@pytest.mark.parametrize("bit_noise_std", [0.5, 0.3, 0.0])
def test_too_little_bit_noise_is_refused(bit_noise_std):
    # z = 1 needs σ_b > 1/2: the bits alone would otherwise spend the whole budget.
    with pytest.raises(PrivacyError, match="too small"):
        update_noise_multiplier(1.0, bit_noise_std)


def test_joint_release_costs_what_two_composed_gaussian_mechanisms_cost():
    """The accountant's ε for the total z equals, computed independently, the ε of the update release
    (multiplier z_Δ) composed with the bit release (its noise std over the bit's own sensitivity).

    The reference composes the two Gaussian events with dp_accounting's PLD accountant, which knows
    nothing of the z⁻² = z_Δ⁻² + (2σ_b)⁻² formula; the bit's sensitivity is read off the client-side
    bit itself. Without sampling (q = 1): dp_accounting has no sampled event for a two-part Gaussian,
    and the formula is the same whatever the sampling (both parts use the same clients). One round:
    composing rounds is the accountant's own business, tested in test_dp.
    """
    rounds, total_multiplier, bit_noise_std = 1, 1.0, 1.5
    update_multiplier = update_noise_multiplier(total_multiplier, bit_noise_std)
    bit_sensitivity = max(abs(centred_unclipped_bit(0.5, 1.0)), abs(centred_unclipped_bit(2.0, 1.0)))

    reference = pld.PLDAccountant()
    both = dp_accounting.ComposedDpEvent(
        [
            dp_accounting.GaussianDpEvent(update_multiplier),
            dp_accounting.GaussianDpEvent(bit_noise_std / bit_sensitivity),
        ]
    )
    reference.compose(both, rounds)
    expected_epsilon = reference.get_epsilon(DELTA)

    def accountant_epsilon(noise_multiplier):
        accountant = PrivacyAccountant(DELTA, sampling_rate=1.0, accountant="pld")
        accountant.step(noise_multiplier, rounds)
        return accountant.epsilon()

    with_bits = accountant_epsilon(total_multiplier)
    assert with_bits == pytest.approx(expected_epsilon, rel=1e-3)
    # The same noise on the update without a bit release costs clearly less: the bits are not free.
    update_only = accountant_epsilon(update_multiplier)
    assert with_bits - update_only > 0.05 * with_bits
