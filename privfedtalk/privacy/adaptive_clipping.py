"""Adaptive clipping (Andrew et al. 2021): the clip norm C follows a target quantile γ of the clients'
update norms, learned from a privately released count of unclipped clients.

One round t, with clip norm C_t and m the *expected* number of clients (the fixed denominator):

1. Client k reports, inside secure aggregation, its weighted clipped update w_k·clip(Δ_k, C_t) with
   w_k ≤ w_max = 1/m, and the centred bit c_k = b_k − 1/2, where b_k = 1[‖Δ_k‖ ≤ C_t] uses the norm
   before clipping.
2. The server receives the noised sums S_Δ = Σ w_k·clip(Δ_k) + N(0, σ_Δ²·I), σ_Δ = z_Δ·w_max·C_t, and
   S_b = Σ c_k + N(0, σ_b²), and estimates the unclipped fraction b̃ = 1/2 + S_b / m.
3. Geometric update: C_{t+1} = C_t·exp(−η_C·(b̃ − γ)). Too many unclipped clients (b̃ > γ) shrink C.
   The paper recommends γ = 0.5 (the median), η_C = 0.2 and σ_b = m/20.

Weighting. The bits are not weighted by w_k: they are summed and divided by the same fixed denominator
m as the update, so in fraction units each client moves b̃ by at most 1/(2m) = w_max/2 and no client's
presence changes another's contribution. b̃ is unbiased under Poisson sampling even though the number
of clients n varies: E[b̃] = 1/2 + (E[Σ b_k] − E[n]/2)/m = F(C_t), the population fraction with
‖Δ‖ ≤ C_t, since E[Σ b_k] = m·F(C_t) and E[n] = m. b̃ is not clipped to [0, 1]; noise can push it out.

Privacy of the joint release (the formula of Andrew et al. 2021 for their σ_Δ, derived here). Under
add/remove-one adjacency one client changes the pair (S_Δ, S_b) by (u, c) with ‖u‖ ≤ w_max·C_t and
|c| = 1/2: centring the bit to ±1/2 halves the sensitivity of a 0/1 count (the paper's choice). Dividing
S_Δ by σ_Δ and S_b by σ_b is an invertible map, so it changes no privacy; afterwards both parts carry
unit isotropic Gaussian noise, i.e. together they are ONE Gaussian mechanism whose L2 sensitivity is

    s = sqrt((w_max·C_t / σ_Δ)² + ((1/2) / σ_b)²) = sqrt(z_Δ⁻² + (2σ_b)⁻²).

A unit-noise Gaussian mechanism with sensitivity s has noise multiplier z = 1/s, hence

    z⁻² = z_Δ⁻² + (2σ_b)⁻²,   i.e.   z_Δ = (z⁻² − (2σ_b)⁻²)^(−1/2).

Both parts use the same sampled clients, so sampling amplifies the joint mechanism exactly as it does a
plain Gaussian with multiplier z: the accountant (privacy.dp.PrivacyAccountant) is told z, and the
update noise must use the larger z_Δ. This needs 2σ_b > z; the bit release then spends a share
(z/(2σ_b))² of the per-round budget 1/z². Under replace-one adjacency (fixed-size sampling) both
sensitivities double (‖u − u'‖ ≤ 2·w_max·C_t, |c − c'| ≤ 1), so z is halved exactly as the accountant
already does; note that an uncentred 0/1 bit would also have replace-one sensitivity 1, so centring
only helps under add/remove. With distributed noise, if clients add shares of both noises, dropouts
shrink both stds by the same sqrt(actual/expected), so privacy.dp.effective_noise_multiplier still
applies to z. The new C_{t+1} is post-processing of b̃ and public constants and costs nothing more.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from privfedtalk.errors import PrivacyError

# Add/remove-one sensitivity of the centred bit b_k − 1/2 ∈ {−1/2, +1/2}.
BIT_SENSITIVITY = 0.5


# --------------------------------------------------------------------------------------------- client side


def unclipped_bit(update_norm: float, clip_norm: float) -> int:
    """b_k = 1[‖Δ_k‖ ≤ C]: 1 when the client's (unclipped) update norm is within the clip norm."""
    if not (math.isfinite(update_norm) and update_norm >= 0):
        raise PrivacyError(f"update norm must be finite and >= 0, got {update_norm}")
    if not (math.isfinite(clip_norm) and clip_norm > 0):
        raise PrivacyError(f"clip norm must be positive and finite, got {clip_norm}")
    return int(update_norm <= clip_norm)


def centred_unclipped_bit(update_norm: float, clip_norm: float) -> float:
    """b_k − 1/2 ∈ {−1/2, +1/2}: what a client adds to the secure sum of bits (sensitivity 1/2)."""
    return unclipped_bit(update_norm, clip_norm) - 0.5


# --------------------------------------------------------------------------------------------- server side


def noised_unclipped_fraction(noised_centred_bit_sum: float, expected_clients: int) -> float:
    """b̃ = 1/2 + S_b / m from the noised sum S_b of centred bits and the expected client count m."""
    if expected_clients < 1:
        raise PrivacyError(f"expected_clients must be >= 1, got {expected_clients}")
    if not math.isfinite(noised_centred_bit_sum):
        raise PrivacyError(f"noised bit sum must be finite, got {noised_centred_bit_sum}")
    return 0.5 + noised_centred_bit_sum / expected_clients


def geometric_clip_update(
    clip_norm: float, unclipped_fraction: float, target_quantile: float, learning_rate: float
) -> float:
    """C_{t+1} = C_t·exp(−η_C·(b̃ − γ)): the next clip norm after a round with unclipped fraction b̃."""
    if not (math.isfinite(clip_norm) and clip_norm > 0):
        raise PrivacyError(f"clip norm must be positive and finite, got {clip_norm}")
    if not 0.0 <= target_quantile <= 1.0:
        raise PrivacyError(f"target quantile must be in [0, 1], got {target_quantile}")
    if not (math.isfinite(learning_rate) and learning_rate >= 0):
        raise PrivacyError(f"clip learning rate must be finite and >= 0, got {learning_rate}")
    if not math.isfinite(unclipped_fraction):
        raise PrivacyError(f"unclipped fraction must be finite, got {unclipped_fraction}")
    return clip_norm * math.exp(-learning_rate * (unclipped_fraction - target_quantile))


def recommended_bit_noise_std(expected_clients: int) -> float:
    """σ_b = m/20, the paper's suggestion (noise std 0.05 on the fraction b̃)."""
    if expected_clients < 1:
        raise PrivacyError(f"expected_clients must be >= 1, got {expected_clients}")
    return expected_clients / 20.0


@dataclass
class AdaptiveClipState:
    """The clip norm C_t of the next round and how many rounds have updated it."""

    clip_norm: float
    round: int = 0

    def update(
        self,
        noised_centred_bit_sum: float,
        expected_clients: int,
        target_quantile: float = 0.5,
        learning_rate: float = 0.2,
    ) -> float:
        """Apply one round's released bit sum; returns the new clip norm."""
        fraction = noised_unclipped_fraction(noised_centred_bit_sum, expected_clients)
        self.clip_norm = geometric_clip_update(self.clip_norm, fraction, target_quantile, learning_rate)
        self.round += 1
        return self.clip_norm

    def state_dict(self) -> dict:
        """JSON-able state; a float survives json.dumps/loads exactly, so a resumed run is identical."""
        return {"clip_norm": float(self.clip_norm), "round": int(self.round)}

    def load_state_dict(self, state: dict) -> None:
        clip_norm = float(state["clip_norm"])
        if not (math.isfinite(clip_norm) and clip_norm > 0):
            raise PrivacyError(
                f"adaptive clip state has clip_norm={state['clip_norm']!r}; it must be positive"
            )
        self.clip_norm = clip_norm
        self.round = int(state["round"])


# --------------------------------------------------------------------------------------------- accounting


def update_noise_multiplier(noise_multiplier: float, bit_noise_std: float) -> float:
    """z_Δ = (z⁻² − (2σ_b)⁻²)^(−1/2): the update's multiplier when the joint release has multiplier z.

    z is what the accountant is told (e.g. from calibrate_noise_multiplier); the update noise std is
    then z_Δ·w_max·C_t. z = 0 (no DP) gives 0; σ_b = inf (no bit release) gives z. Raises PrivacyError
    when σ_b ≤ z/2, where the bit sum alone would spend the whole budget.
    """
    if not (math.isfinite(noise_multiplier) and noise_multiplier >= 0):
        raise PrivacyError(f"noise multiplier must be finite and >= 0, got {noise_multiplier}")
    if math.isnan(bit_noise_std) or bit_noise_std < 0:
        raise PrivacyError(f"bit noise std must be >= 0, got {bit_noise_std}")
    if noise_multiplier == 0:
        return 0.0
    bit_multiplier = bit_noise_std / BIT_SENSITIVITY
    if bit_multiplier <= noise_multiplier:
        raise PrivacyError(
            f"bit noise std {bit_noise_std} is too small for total noise multiplier {noise_multiplier}: "
            f"the bit sum alone would spend the whole privacy budget; use a bit noise std above "
            f"{noise_multiplier * BIT_SENSITIVITY} (the paper suggests expected_clients / 20) or a larger "
            "noise multiplier"
        )
    return (noise_multiplier**-2 - bit_multiplier**-2) ** -0.5


def joint_noise_multiplier(update_multiplier: float, bit_noise_std: float) -> float:
    """z = (z_Δ⁻² + (2σ_b)⁻²)^(−1/2): the multiplier to give the accountant for a round with both releases.

    The inverse of update_noise_multiplier. z_Δ = 0 or σ_b = 0 is a release without noise: returns 0
    (the accountant then reports ε = inf).
    """
    if math.isnan(update_multiplier) or update_multiplier < 0:
        raise PrivacyError(f"update noise multiplier must be >= 0, got {update_multiplier}")
    if math.isnan(bit_noise_std) or bit_noise_std < 0:
        raise PrivacyError(f"bit noise std must be >= 0, got {bit_noise_std}")
    if update_multiplier == 0 or bit_noise_std == 0:
        return 0.0
    if math.isinf(update_multiplier) and math.isinf(bit_noise_std):
        return math.inf
    return (update_multiplier**-2 + (bit_noise_std / BIT_SENSITIVITY) ** -2) ** -0.5
