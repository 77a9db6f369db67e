"""The privacy mechanism on its own (no U-Net): what every kind of round releases, the noise it carries,
and the ε it reports per adversary, checked against independent computations."""

from __future__ import annotations

import math

import dp_accounting
import numpy as np
import pytest
import torch

from privfedtalk.config import load_config
from privfedtalk.federated.backend import SequentialBackend
from privfedtalk.federated.client import ClientUpdate
from privfedtalk.privacy.dp import PrivacyAccountant, known_participation_epsilon
from privfedtalk.privacy.mechanism import PrivacyMechanism

DIMS = 20_000
IDS = [f"client{i:04d}" for i in range(8)]
DP = ["privacy.dp=true", "privacy.secure_aggregation=true", "privacy.noise_multiplier=1.5"]


def mechanism(*overrides, ids=IDS):
    cfg = load_config(None, ["federated.clients_per_round=4", "privacy.clip_norm=0.5", *overrides])
    return PrivacyMechanism(cfg, ids, DIMS)


def zero_vectors(mech, roster, round_index=0):
    """Each roster client's privatized vector for a zero update: exactly its noise share."""
    updates = [ClientUpdate(c, 100, torch.zeros(DIMS), {}) for c in roster]
    return {u.client_id: mech.privatize(u, 0.25, len(roster), round_index) for u in updates}


BACKEND = SequentialBackend(loader=None, trainer=None, seed=0)


@pytest.mark.parametrize("placement", ["distributed", "trusted"])
def test_released_noise_has_the_stated_std(placement):
    mech = mechanism(*DP, f"privacy.noise={placement}")
    roster = IDS[:4]
    release = mech.release(BACKEND, zero_vectors(mech, roster), roster, [], 0)
    sigma = 1.5 * 0.25 * 0.5  # z · w_max · C
    assert mech.noise_std() == pytest.approx(sigma)
    assert release.total.std() == pytest.approx(sigma, rel=0.03)
    assert release.noise_multiplier == pytest.approx(1.5) and release.survivors == roster
    if placement == "distributed":  # each client's vector carries only its share
        share = zero_vectors(mech, roster)[roster[0]]
        assert share.std() == pytest.approx(sigma / 2, rel=0.03)


def test_dropouts_lower_the_noise_and_the_accountant_is_told():
    mech = mechanism(*DP)
    roster = IDS[:4]
    release = mech.release(BACKEND, zero_vectors(mech, roster), roster, [roster[1]], 0)
    assert release.survivors == [roster[0], roster[2], roster[3]]
    assert release.noise_multiplier == pytest.approx(1.5 * math.sqrt(3 / 4))
    assert release.total.std() == pytest.approx(0.1875 * math.sqrt(3 / 4), rel=0.03)
    full = PrivacyAccountant(1e-5, sampling="fixed_size", num_clients=8, clients_per_round=4)
    full.step(1.5)
    assert mech.epsilons()["epsilon_observer"] > full.epsilon()


def test_a_dp_round_is_never_skipped_for_its_sample_size():
    """Under DP an empty or one-client roster still releases σ of noise (what is released never depends
    on whether a client is in the data); without DP a one-client secure round is skipped."""
    mech = mechanism(*DP, "federated.sampling=poisson")
    empty = mech.release(BACKEND, {}, [], [], 0)
    assert empty.noise_only and empty.total.std() == pytest.approx(0.1875, rel=0.03)
    one = mech.release(BACKEND, zero_vectors(mech, IDS[:1]), IDS[:1], [], 1)
    assert one.survivors == IDS[:1] and one.total.std() == pytest.approx(0.1875, rel=0.03)
    assert mech.observer.rounds == 2
    no_dp = mechanism("privacy.secure_aggregation=true", "federated.sampling=poisson")
    skipped = no_dp.release(BACKEND, zero_vectors(no_dp, IDS[:1]), IDS[:1], [], 0)
    assert skipped.total is None and "at least 2 clients" in skipped.skipped


@pytest.mark.parametrize("sampling", ["fixed_size", "poisson"])
def test_epsilon_against_the_server_follows_each_clients_participation(sampling):
    """Same neighbouring relation as the observer's accountant: replace-one (sensitivity 2·w_max·C,
    multiplier z/2 per round) under fixed-size sampling, add/remove (z) under Poisson sampling."""
    mech = mechanism(*DP, f"federated.sampling={sampling}")
    z = 1.5 / 2 if sampling == "fixed_size" else 1.5
    pattern = [IDS[:4], IDS[:2] + IDS[4:6], IDS[:1] + IDS[5:8]]  # client0000 takes part 3 times
    for round_index, roster in enumerate(pattern):
        mech.release(BACKEND, zero_vectors(mech, roster, round_index), roster, [], round_index)
    eps = mech.epsilons()
    times = [sum(c in r for r in pattern) for c in IDS]
    reference = []
    for k in times:
        accountant = dp_accounting.pld.PLDAccountant(value_discretization_interval=1e-4)
        accountant.compose(dp_accounting.GaussianDpEvent(z), k)
        reference.append(accountant.get_epsilon(1e-5) if k else 0.0)
    assert eps["epsilon_server_worst"] == pytest.approx(max(reference), rel=2e-3)
    assert eps["epsilon_server_median"] == pytest.approx(float(np.median(reference)), rel=2e-3)
    assert eps["participation"] == {"1": 5, "2": 2, "3": 1}
    assert eps["epsilon_server_worst"] > eps["epsilon_observer"]  # the server gets no amplification


def test_trusted_noise_gives_no_protection_against_the_aggregator():
    mech = mechanism(*DP, "privacy.noise=trusted")
    mech.release(BACKEND, zero_vectors(mech, IDS[:4]), IDS[:4], [], 0)
    eps = mech.epsilons()
    assert eps["epsilon_server_worst"] == math.inf and math.isfinite(eps["epsilon_observer"])
    assert "trusted aggregator" in mech.guarantee


def test_a_round_interrupted_after_release_is_charged_on_resume():
    mech = mechanism(*DP)
    mech.charge_interrupted({"round": 0, "roster": IDS[:4]})
    assert mech.observer.rounds == 1
    assert mech.epsilons()["participation"]["1"] == 4
    restored = mechanism(*DP)
    restored.load_state_dict(mech.state_dict())
    assert restored.epsilons() == mech.epsilons()
    assert known_participation_epsilon(0.0, 1e-5) == 0.0


def test_seeded_test_setting_is_marked_not_private():
    assert "NOT PRIVATE" in mechanism(*DP, "privacy.noise_source=insecure_seeded").guarantee
    assert "NOT PRIVATE" not in mechanism(*DP).guarantee


ADAPTIVE = [*DP, "privacy.clip=adaptive", "privacy.bit_noise_std=2.0", "privacy.target_quantile=0.5"]


def updates_with_norms(norms):
    rng = np.random.default_rng(0)
    out = []
    for i, norm in enumerate(norms):
        direction = rng.normal(size=DIMS)
        delta = torch.as_tensor(direction / np.linalg.norm(direction) * norm, dtype=torch.float32)
        out.append(ClientUpdate(IDS[i], 100, delta, {}))
    return out


# The direction of C's step is checked on one noised count per case: with OS noise a count this
# noisy points the wrong way now and then, so these plumbing checks use the test-only seeded noise
# (convergence over many draws is test_adaptive_clipping.py's).
SEEDED = "privacy.noise_source=insecure_seeded"


def test_adaptive_clipping_carries_the_unclipped_bit_and_moves_c_toward_the_quantile():
    mech = mechanism(*ADAPTIVE, SEEDED, "privacy.clip_norm=1.0")
    assert mech.vector_size == DIMS + 1
    # Every update is far longer than C: nobody is unclipped, so C must grow (and shrink in the
    # opposite case); the bit is the last coordinate and the update part is clipped to the current C.
    updates = updates_with_norms([10.0] * 4)
    vectors = {u.client_id: mech.privatize(u, 0.25, 4, 0) for u in updates}
    release = mech.release(BACKEND, vectors, IDS[:4], [], 0)
    assert release.total.shape == (DIMS,) and release.clip_norm == 1.0
    assert mech.clip_norm > 1.0
    small = mechanism(*ADAPTIVE, SEEDED, "privacy.clip_norm=1.0")
    vectors = {u.client_id: small.privatize(u, 0.25, 4, 0) for u in updates_with_norms([0.01] * 4)}
    small.release(BACKEND, vectors, IDS[:4], [], 0)
    assert small.clip_norm < 1.0
    restored = mechanism(*ADAPTIVE, SEEDED, "privacy.clip_norm=1.0")
    restored.load_state_dict(small.state_dict())
    assert restored.clip_norm == small.clip_norm


def test_adaptive_clipping_pays_for_its_count_in_epsilon():
    """For the same noise on the update (z_Δ), releasing the count as well costs exactly the ε of the
    joint mechanism with z⁻² = z_Δ⁻² + (2σ_b)⁻², which the accountant is given."""
    adaptive = mechanism(*ADAPTIVE)
    z, z_update = adaptive.noise_multiplier, adaptive.update_noise_multiplier
    assert z_update == pytest.approx((z**-2 - (2 * 2.0) ** -2) ** -0.5)
    fixed = mechanism(*DP[:2], f"privacy.noise_multiplier={z_update}")
    assert fixed.noise_std() == pytest.approx(adaptive.noise_std())  # same noise on the update
    for mech in (adaptive, fixed):
        for r in range(5):
            mech.release(BACKEND, zero_vectors(mech, IDS[:4], r), IDS[:4], [], r)
    joint = PrivacyAccountant(1e-5, sampling="fixed_size", num_clients=8, clients_per_round=4)
    joint.step(z, count=5)
    alone = PrivacyAccountant(1e-5, sampling="fixed_size", num_clients=8, clients_per_round=4)
    alone.step(z_update, count=5)
    assert adaptive.epsilons()["epsilon_observer"] == pytest.approx(joint.epsilon())
    assert fixed.epsilons()["epsilon_observer"] == pytest.approx(alone.epsilon())
    assert adaptive.epsilons()["epsilon_observer"] > fixed.epsilons()["epsilon_observer"]


def test_signal_norm_diagnostic_measures_the_noise_to_signal_ratio():
    mech = mechanism(*DP, "privacy.log_signal_norm=true")
    updates = updates_with_norms([1.0] * 4)
    vectors = {u.client_id: mech.privatize(u, 0.25, 4, 0) for u in updates}
    release = mech.release(BACKEND, vectors, IDS[:4], [], 0)
    clean = sum(0.25 * clip_norm_of(u, 0.5) for u in updates)
    assert release.signal_norm == pytest.approx(float(np.linalg.norm(clean)), rel=1e-9)
    assert release.noise_norm == pytest.approx(mech.noise_std() * math.sqrt(DIMS), rel=0.03)
    assert "SIMULATION DIAGNOSTICS" in mech.guarantee


def clip_norm_of(update, clip):
    vector = update.delta.numpy().astype(np.float64)
    return vector * min(1.0, clip / np.linalg.norm(vector))
