"""Client-level DP: clipping, noise scaling, accounting against known values, calibration, ISFA scalars."""

import json
import math

import dp_accounting
import numpy as np
import pytest
from dp_accounting import rdp

from privfedtalk.errors import PrivacyError
from privfedtalk.privacy.dp import (
    PrivacyAccountant,
    calibrate_noise_multiplier,
    clip_to_norm,
    distributed_noise_std,
    effective_noise_multiplier,
    gaussian_noise_std,
    known_participation_epsilon,
    quantize_unit_scalar,
)
from privfedtalk.privacy.noise import RandomSource

DELTA = 1e-5


# --------------------------------------------------------------------------------------------- clipping


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_clip_scales_long_vectors_down_and_keeps_short_ones(dtype):
    rng = np.random.default_rng(0)
    for scale in (0.01, 3.0, 1e4):
        vector = (rng.normal(size=5000) * scale).astype(dtype)
        clipped, norm = clip_to_norm(vector, 1.5)
        assert norm == pytest.approx(np.linalg.norm(vector.astype(np.float64)), rel=1e-9)
        assert clipped.dtype == dtype and clipped is not vector
        clipped_norm = np.linalg.norm(clipped.astype(np.float64))
        assert clipped_norm <= 1.5
        if norm > 1.5:
            assert clipped_norm == pytest.approx(1.5, rel=1e-5)
            cosine = np.dot(clipped.astype(np.float64), vector.astype(np.float64)) / (clipped_norm * norm)
            assert cosine == pytest.approx(1.0, abs=1e-6)
        else:
            assert np.array_equal(clipped, vector)


def test_clip_rejects_bad_inputs():
    with pytest.raises(PrivacyError):
        clip_to_norm(np.array([np.inf, 1.0]), 1.0)
    with pytest.raises(PrivacyError):
        clip_to_norm(np.ones(3), 0.0)


# --------------------------------------------------------------------------------------------- noise


def test_noise_std_is_z_times_weight_cap_times_clip():
    # Three distinct factors, so a formula that drops or swaps one of them gives another number.
    assert gaussian_noise_std(1.1, clip_norm=0.5, max_weight=0.25) == pytest.approx(0.1375)
    assert gaussian_noise_std(2.0, clip_norm=0.05) == pytest.approx(0.1)


def test_distributed_noise_sums_to_the_central_std_and_drops_with_dropouts():
    total_std, expected = 2.0, 16
    per_client = distributed_noise_std(total_std, expected)
    source = RandomSource.from_os_entropy()
    shares = [source.normal((100_000,), per_client) for _ in range(expected)]
    assert np.std(np.sum(shares, axis=0)) == pytest.approx(total_std, rel=0.02)
    # Only 9 of 16 clients report: the sum carries std * sqrt(9/16).
    assert np.std(np.sum(shares[:9], axis=0)) == pytest.approx(total_std * 0.75, rel=0.02)
    assert effective_noise_multiplier(1.2, expected, expected) == pytest.approx(1.2)
    assert effective_noise_multiplier(1.2, expected, 9) == pytest.approx(0.9)
    assert effective_noise_multiplier(1.2, expected, 8) < effective_noise_multiplier(1.2, expected, 12) < 1.2


# --------------------------------------------------------------------------------------------- accounting


def test_poisson_epsilon_matches_known_values():
    accountant = PrivacyAccountant(DELTA, sampling="poisson", sampling_rate=0.1)
    accountant.step(1.0, count=100)
    both = accountant.epsilon_both()
    assert both["rdp"] == pytest.approx(7.90, rel=0.01)
    assert both["pld"] == pytest.approx(7.05, rel=0.01)
    assert accountant.epsilon() == both["rdp"]


def test_every_client_every_round_is_the_composed_gaussian():
    rounds, z = 50, 2.0
    accountant = PrivacyAccountant(DELTA, sampling="poisson", sampling_rate=1.0)
    accountant.step(z, count=rounds)
    reference = rdp.RdpAccountant().compose(
        dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(z), rounds)
    )
    assert accountant.epsilon() == pytest.approx(reference.get_epsilon(DELTA), rel=1e-9)
    # T Gaussian releases with multiplier z are exactly one Gaussian with z / sqrt(T).
    exact = dp_accounting.get_epsilon_gaussian(z / math.sqrt(rounds), DELTA)
    assert accountant.epsilon_both()["pld"] == pytest.approx(exact, rel=0.01)


def test_fixed_size_sampling_is_finite_and_rdp_only():
    accountant = PrivacyAccountant(DELTA, sampling="fixed_size", num_clients=100, clients_per_round=10)
    accountant.step(2.0, count=50)
    epsilon = accountant.epsilon()
    assert 0 < epsilon < math.inf
    assert accountant.epsilon_both() == {"rdp": epsilon, "pld": None}
    with pytest.raises(PrivacyError, match="does not support fixed-size"):
        PrivacyAccountant(
            DELTA, sampling="fixed_size", num_clients=100, clients_per_round=10, accountant="pld"
        )
    # Replace-one adjacency doubles the sensitivity: the same noise gives a larger ε than Poisson.
    poisson = PrivacyAccountant(DELTA, sampling_rate=0.1)
    poisson.step(2.0, count=50)
    assert epsilon > poisson.epsilon()


def test_epsilon_grows_with_rounds_and_incremental_equals_fresh():
    incremental = PrivacyAccountant(DELTA, sampling_rate=0.05)
    assert incremental.epsilon() == 0.0
    incremental.step(1.1, count=20)
    early = incremental.epsilon()
    incremental.step(0.9, count=10)
    incremental.step(1.1, count=20)
    fresh = PrivacyAccountant(DELTA, sampling_rate=0.05)
    fresh.step(1.1, count=40)
    fresh.step(0.9, count=10)
    assert incremental.epsilon() > early
    assert incremental.epsilon() == pytest.approx(fresh.epsilon(), rel=1e-9)
    assert incremental.rounds == 50


def test_zero_noise_is_not_private():
    accountant = PrivacyAccountant(DELTA, sampling_rate=0.1)
    accountant.step(1.0, count=5)
    accountant.step(0.0)
    assert accountant.epsilon_both() == {"rdp": math.inf, "pld": math.inf}


def test_state_dict_round_trips_through_json():
    accountant = PrivacyAccountant(DELTA, sampling_rate=0.1)
    accountant.step(1.0, count=30)
    accountant.step(0.8)
    accountant.step(0.8)
    state = json.loads(json.dumps(accountant.state_dict()))
    assert state["events"] == [[1.0, 30], [0.8, 2]]
    restored = PrivacyAccountant(DELTA, sampling_rate=0.1)
    restored.load_state_dict(state)
    assert restored.epsilon() == pytest.approx(accountant.epsilon(), rel=1e-12)
    with pytest.raises(PrivacyError, match="sampling_rate"):
        PrivacyAccountant(DELTA, sampling_rate=0.2).load_state_dict(state)


@pytest.mark.parametrize("target", [2.0, 8.0])
def test_calibrated_noise_gives_back_the_target(target):
    z = calibrate_noise_multiplier(target, rounds=100, delta=DELTA, sampling="poisson", sampling_rate=0.1)
    accountant = PrivacyAccountant(DELTA, sampling_rate=0.1)
    accountant.step(z, count=100)
    assert accountant.epsilon() <= target
    assert accountant.epsilon() == pytest.approx(target, rel=0.01)


def test_calibration_for_fixed_size_sampling_and_edge_cases():
    z = calibrate_noise_multiplier(
        8.0, rounds=50, delta=DELTA, sampling="fixed_size", num_clients=50, clients_per_round=10
    )
    accountant = PrivacyAccountant(DELTA, sampling="fixed_size", num_clients=50, clients_per_round=10)
    accountant.step(z, count=50)
    assert accountant.epsilon() == pytest.approx(8.0, rel=0.01)
    assert calibrate_noise_multiplier(math.inf, rounds=100, delta=DELTA, sampling_rate=0.1) == 0.0
    with pytest.raises(PrivacyError):
        calibrate_noise_multiplier(0.0, rounds=100, delta=DELTA, sampling_rate=0.1)


def test_accountant_configuration_errors():
    with pytest.raises(PrivacyError):
        PrivacyAccountant(0.0, sampling_rate=0.1)
    with pytest.raises(PrivacyError):
        PrivacyAccountant(DELTA, sampling="poisson")
    with pytest.raises(PrivacyError):
        PrivacyAccountant(DELTA, sampling="fixed_size", num_clients=5, clients_per_round=6)
    assert PrivacyAccountant(DELTA, num_clients=40, clients_per_round=4).sampling_rate == pytest.approx(0.1)
    with pytest.raises(PrivacyError):
        PrivacyAccountant(DELTA, sampling_rate=0.1).step(-1.0)


# --------------------------------------------------------------------------------------------- ISFA scalars


def test_quantize_unit_scalar():
    assert quantize_unit_scalar(-0.3) == 0.0 and quantize_unit_scalar(1.7) == 1.0
    assert quantize_unit_scalar(0.5, bits=1) in (0.0, 1.0)
    levels = {quantize_unit_scalar(x, bits=4) for x in np.linspace(0, 1, 1001)}
    assert len(levels) == 16
    assert abs(quantize_unit_scalar(0.4, bits=4) - 0.4) <= 0.5 / 15


# --------------------------------------------------------------------------------------------- the server's ε


@pytest.mark.parametrize("rounds", [1, 2, 6])
def test_known_participation_epsilon_is_the_composed_gaussian(rounds):
    """Against the server (no amplification): k rounds at z equal dp_accounting's composition of k
    Gaussian mechanisms (PLD, independent of the μ-GDP shortcut)."""
    z = 1.083
    ours = known_participation_epsilon(rounds / z**2, DELTA)
    reference = dp_accounting.pld.PLDAccountant(value_discretization_interval=1e-4)
    reference.compose(dp_accounting.GaussianDpEvent(z), rounds)
    assert ours == pytest.approx(reference.get_epsilon(DELTA), rel=2e-3)
    assert known_participation_epsilon(0.0, DELTA) == 0.0
    assert known_participation_epsilon(math.inf, DELTA) == math.inf
