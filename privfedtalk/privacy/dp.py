"""Client-level differential privacy as pure functions: clipping, noise sizes, ε accounting with
dp_accounting (RDP and PLD) against an observer of the released models, ε against the aggregation
server (no sampling amplification), and noise calibration. privacy/mechanism.py calls these at run time.
"""

from __future__ import annotations

import contextlib
import logging
import math

import dp_accounting
import numpy as np
from dp_accounting import pld, rdp

from privfedtalk.errors import PrivacyError

# Sensitivity. Each client clips its update to L2 norm C and multiplies it by a weight w <= w_max, so
# adding or removing one client changes the weighted sum by at most w_max * C; the Gaussian noise on
# the sum therefore has std = z * w_max * C for noise multiplier z. Under the replace-one relation
# (needed for fixed-size sampling) one client's update can flip direction, so the sensitivity is
# 2 * w_max * C and the same noise only buys a multiplier of z / 2 (see PrivacyAccountant).
REPLACE_ONE_SENSITIVITY_FACTOR = 2.0

SAMPLING_SCHEMES = ("poisson", "fixed_size")
ACCOUNTANTS = ("rdp", "pld")

# ISFA scalars. The reliability signals are quantized on the client (quantize_unit_scalar). Under DP
# they never leave it: each client computes its own capped weight (capped_weight below), so the
# server needs neither the signals nor the sample count, and no budget is spent on them.


# --------------------------------------------------------------------------------------------- weights


def capped_weight(relative: float, expected_clients: float, reference_count: float) -> float:
    """A client's private-round weight, min(r / n_ref, 1) / m: at most w_max = 1/m, fixed denominator.

    The fixed-denominator estimator (McMahan et al. 2018) divides by the *expected* number of clients
    instead of the realised total, so a client's weight depends on its own data alone: it can be
    computed on the client, no client's presence changes another's weight, and with the cap one
    client moves the sum by at most w_max·C (the DP sensitivity). A client with n_ref samples and the
    best score gets exactly w_max. The weights sum to about 1 when clients are typical.
    """
    return min(float(relative) / reference_count, 1.0) / expected_clients


# --------------------------------------------------------------------------------------------- clipping


def _clip_factor(norm: float, max_norm: float, dtype_eps: float) -> float:
    if not math.isfinite(norm):
        raise PrivacyError("update norm is NaN or infinite; the update cannot be clipped")
    if norm <= max_norm:
        return 1.0
    # Rounding the scaled values to the storage dtype can grow the norm by up to eps/2 relative;
    # shrinking by 2 eps keeps the clipped norm <= max_norm, which the DP guarantee relies on.
    return max_norm / norm * (1.0 - 2.0 * dtype_eps)


def _check_max_norm(max_norm: float) -> None:
    if not (math.isfinite(max_norm) and max_norm > 0):
        raise PrivacyError(f"clip norm must be positive and finite, got {max_norm}")


def clip_to_norm(vector: np.ndarray, max_norm: float) -> tuple[np.ndarray, float]:
    """Return (a copy of `vector` scaled to L2 norm <= max_norm, its original L2 norm).

    Floating dtypes are kept; other dtypes become float64. The norm is computed in float64.
    """
    _check_max_norm(max_norm)
    values = np.asarray(vector)
    if not np.issubdtype(values.dtype, np.floating):
        values = values.astype(np.float64)
    norm = float(np.linalg.norm(values.ravel().astype(np.float64, copy=False)))
    factor = _clip_factor(norm, max_norm, float(np.finfo(values.dtype).eps))
    return (values * values.dtype.type(factor)).astype(values.dtype, copy=False), norm


# --------------------------------------------------------------------------------------------- noise


def gaussian_noise_std(noise_multiplier: float, clip_norm: float, max_weight: float = 1.0) -> float:
    """Std of the noise on the weighted sum: z * w_max * C (the add/remove-one sensitivity times z)."""
    return noise_multiplier * max_weight * clip_norm


def distributed_noise_std(total_std: float, expected_clients: int) -> float:
    """Per-client std so that `expected_clients` independent shares sum to std `total_std`.

    Used when no one is trusted to add noise: each client noises its own update before masking, and
    only the sum (seen by the server through secure aggregation) carries the full noise.
    """
    if expected_clients < 1:
        raise PrivacyError(f"expected_clients must be >= 1, got {expected_clients}")
    return total_std / math.sqrt(expected_clients)


def effective_noise_multiplier(noise_multiplier: float, expected_clients: int, actual_clients: int) -> float:
    """Multiplier actually achieved with distributed noise when `actual_clients` of the expected ones report.

    The sum of actual_clients shares of std z*s/sqrt(expected) has std z*s*sqrt(actual/expected):
    dropouts lower the noise, and the accountant must be told this value, not the planned one.
    """
    if expected_clients < 1 or actual_clients < 0:
        raise PrivacyError(
            f"need expected_clients >= 1 and actual_clients >= 0, got {expected_clients}, {actual_clients}"
        )
    return noise_multiplier * math.sqrt(actual_clients / expected_clients)


# --------------------------------------------------------------------------------------------- accounting


@contextlib.contextmanager
def _quiet_dp_accounting():
    # dp_accounting logs a warning for every low fractional RDP order that fails to converge; those
    # orders are simply skipped and never decide ε, so the warnings are noise in training logs.
    logger = logging.getLogger("absl")
    previous = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(previous)


class PrivacyAccountant:
    """Tracks client-level (ε, δ) over rounds of a Gaussian mechanism on sampled clients.

    sampling="poisson": each client joins a round independently with probability `sampling_rate`
    (or clients_per_round / num_clients); add/remove-one adjacency; q = 1 is the plain Gaussian
    mechanism composed once per round. sampling="fixed_size": exactly `clients_per_round` of
    `num_clients` per round without replacement; this needs replace-one adjacency, which only the RDP
    accountant supports for this event in dp_accounting 0.6 (PLD raises), and the multiplier given to
    `step` (std / (w_max * C)) is halved for the accountant because replace-one sensitivity is 2 w_max C.
    `step(z)` records one round with noise multiplier z (pass the effective one after dropouts).
    """

    def __init__(
        self,
        delta: float,
        sampling: str = "poisson",
        sampling_rate: float | None = None,
        num_clients: int | None = None,
        clients_per_round: int | None = None,
        accountant: str = "rdp",
    ):
        if not 0 < delta < 1:
            raise PrivacyError(f"delta must be in (0, 1), got {delta}")
        if sampling not in SAMPLING_SCHEMES:
            raise PrivacyError(f"sampling must be one of {SAMPLING_SCHEMES}, got {sampling!r}")
        if accountant not in ACCOUNTANTS:
            raise PrivacyError(f"accountant must be one of {ACCOUNTANTS}, got {accountant!r}")
        if sampling == "poisson":
            if sampling_rate is None:
                if not (num_clients and clients_per_round):
                    raise PrivacyError(
                        "poisson sampling needs sampling_rate or num_clients and clients_per_round"
                    )
                sampling_rate = clients_per_round / num_clients
            if not 0 < sampling_rate <= 1:
                raise PrivacyError(f"sampling_rate must be in (0, 1], got {sampling_rate}")
        else:
            if not (num_clients and clients_per_round and 1 <= clients_per_round <= num_clients):
                raise PrivacyError(
                    "fixed_size sampling needs 1 <= clients_per_round <= num_clients, got "
                    f"{clients_per_round} of {num_clients}"
                )
            if sampling_rate is not None and not math.isclose(sampling_rate, clients_per_round / num_clients):
                raise PrivacyError("sampling_rate disagrees with clients_per_round / num_clients")
            sampling_rate = clients_per_round / num_clients
            if accountant == "pld":
                raise PrivacyError(
                    "the PLD accountant of dp_accounting does not support fixed-size sampling without "
                    "replacement; use accountant='rdp' or sampling='poisson'"
                )
        self.delta = float(delta)
        self.sampling = sampling
        self.sampling_rate = float(sampling_rate)
        self.num_clients = num_clients
        self.clients_per_round = clients_per_round
        self.accountant = accountant
        self._log: list[tuple[float, int]] = []
        # kind -> (live dp_accounting accountant, number of _log entries composed into it)
        self._live: dict[str, tuple[dp_accounting.PrivacyAccountant, int]] = {}

    @property
    def rounds(self) -> int:
        return sum(count for _, count in self._log)

    def supported_accountants(self) -> tuple[str, ...]:
        return ("rdp",) if self.sampling == "fixed_size" else ACCOUNTANTS

    def step(self, noise_multiplier: float, count: int = 1) -> None:
        """Record `count` rounds at noise multiplier z = noise std / (w_max * C)."""
        if not (noise_multiplier >= 0 and math.isfinite(noise_multiplier)):
            raise PrivacyError(f"noise multiplier must be finite and >= 0, got {noise_multiplier}")
        if count < 0 or int(count) != count:
            raise PrivacyError(f"count must be a non-negative integer, got {count}")
        if count:
            self._log.append((float(noise_multiplier), int(count)))

    def _event(self, noise_multiplier: float) -> dp_accounting.DpEvent:
        if noise_multiplier == 0:
            return dp_accounting.NonPrivateDpEvent()
        if self.sampling == "fixed_size":
            gaussian = dp_accounting.GaussianDpEvent(noise_multiplier / REPLACE_ONE_SENSITIVITY_FACTOR)
            return dp_accounting.SampledWithoutReplacementDpEvent(
                self.num_clients, self.clients_per_round, gaussian
            )
        gaussian = dp_accounting.GaussianDpEvent(noise_multiplier)
        if self.sampling_rate == 1.0:
            return gaussian
        return dp_accounting.PoissonSampledDpEvent(self.sampling_rate, gaussian)

    def _new_accountant(self, kind: str) -> dp_accounting.PrivacyAccountant:
        if kind == "pld":
            return pld.PLDAccountant()
        if self.sampling == "fixed_size":
            return rdp.RdpAccountant(neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE)
        return rdp.RdpAccountant()

    def _epsilon(self, kind: str) -> float:
        if kind not in self.supported_accountants():
            raise PrivacyError(f"accountant {kind!r} does not support {self.sampling} sampling")
        if not self._log:
            return 0.0
        live, done = self._live.get(kind, (None, 0))
        if live is None:
            live, done = self._new_accountant(kind), 0
            # A fresh accountant can compose equal multipliers in one go (composition commutes).
            totals: dict[float, int] = {}
            for z, count in self._log:
                totals[z] = totals.get(z, 0) + count
            pending = list(totals.items())
        else:
            pending = self._log[done:]
        with _quiet_dp_accounting():
            for z, count in pending:
                live.compose(self._event(z), count)
            self._live[kind] = (live, len(self._log))
            return float(live.get_epsilon(self.delta))

    def epsilon(self) -> float:
        """ε at the configured δ after every recorded round, with the configured accountant."""
        return self._epsilon(self.accountant)

    def epsilon_both(self) -> dict[str, float | None]:
        """{"rdp": ε, "pld": ε}; "pld" is None where dp_accounting cannot account the sampling scheme."""
        return {
            kind: (self._epsilon(kind) if kind in self.supported_accountants() else None)
            for kind in ACCOUNTANTS
        }

    def state_dict(self) -> dict:
        """Plain JSON-able state: the configuration and the (noise_multiplier, count) events."""
        merged: list[list] = []
        for z, count in self._log:
            if merged and merged[-1][0] == z:
                merged[-1][1] += count
            else:
                merged.append([z, count])
        return {
            "delta": self.delta,
            "sampling": self.sampling,
            "sampling_rate": self.sampling_rate,
            "num_clients": self.num_clients,
            "clients_per_round": self.clients_per_round,
            "accountant": self.accountant,
            "events": merged,
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore events saved by `state_dict`; the sampling configuration must match this accountant."""
        for key in ("delta", "sampling", "sampling_rate", "num_clients", "clients_per_round"):
            if key in state and state[key] != getattr(self, key):
                raise PrivacyError(
                    f"privacy accountant state has {key}={state[key]!r}, "
                    f"but this run uses {getattr(self, key)!r}"
                )
        events = []
        for z, count in state.get("events", []):
            events.append((float(z), int(count)))
        self._log = []
        for z, count in events:
            self.step(z, count)
        self._live = {}


def known_participation_epsilon(inverse_square_multipliers: float, delta: float) -> float:
    """ε against a party that knows in which rounds a client took part (the aggregation server).

    That party draws (or sees) the sample, so sampling buys no amplification against it. Each round the
    client took part in is a Gaussian mechanism on the sum with multiplier z_r = σ_r / sensitivity
    (sensitivity w_max·C when the client's update is compared with none, as under Poisson sampling;
    2·w_max·C for replace-one, as under fixed-size sampling: pass z_r / 2), and Gaussian mechanisms
    compose exactly into one with multiplier (Σ_r z_r^-2)^(-1/2) (μ-GDP with μ² = Σ z_r^-2), whose
    (ε, δ) is the analytic Gaussian one. `inverse_square_multipliers` is Σ_r z_r^-2 (0: never took
    part, ε = 0; inf: a round without noise, ε = inf).
    """
    if not inverse_square_multipliers >= 0:
        raise PrivacyError(f"sum of 1/z^2 must be >= 0, got {inverse_square_multipliers}")
    if inverse_square_multipliers == 0:
        return 0.0
    if math.isinf(inverse_square_multipliers):
        return math.inf
    return float(dp_accounting.get_epsilon_gaussian(1.0 / math.sqrt(inverse_square_multipliers), delta))


def calibrate_noise_multiplier(
    target_epsilon: float,
    rounds: int,
    delta: float,
    *,
    sampling: str = "poisson",
    sampling_rate: float | None = None,
    num_clients: int | None = None,
    clients_per_round: int | None = None,
    accountant: str = "rdp",
    relative_tolerance: float = 1e-3,
) -> float:
    """Smallest noise multiplier (up to `relative_tolerance`) with ε <= target after `rounds` rounds.

    Bisection on z (ε decreases in z); the returned z is the upper end of the final bracket, so its ε
    never exceeds the target. target = inf (no privacy) or rounds = 0 returns 0.
    """
    if math.isnan(target_epsilon) or target_epsilon <= 0:
        raise PrivacyError(f"target epsilon must be > 0, got {target_epsilon}")
    if math.isinf(target_epsilon) or rounds == 0:
        return 0.0

    def epsilon_at(z: float) -> float:
        ledger = PrivacyAccountant(
            delta,
            sampling=sampling,
            sampling_rate=sampling_rate,
            num_clients=num_clients,
            clients_per_round=clients_per_round,
            accountant=accountant,
        )
        ledger.step(z, rounds)
        return ledger.epsilon()

    high = 1.0
    while epsilon_at(high) > target_epsilon:
        high *= 2.0
        if high > 1e6:
            raise PrivacyError(f"no noise multiplier below 1e6 reaches epsilon {target_epsilon}")
    low = high / 2.0
    while epsilon_at(low) <= target_epsilon:
        high, low = low, low / 2.0
        if low < 1e-6:
            return high
    while (high - low) > relative_tolerance * high:
        middle = 0.5 * (low + high)
        if epsilon_at(middle) <= target_epsilon:
            high = middle
        else:
            low = middle
    return high


# --------------------------------------------------------------------------------------------- ISFA scalars


def quantize_unit_scalar(value: float, bits: int = 4) -> float:
    """Clip to [0, 1] and round to the nearest of the 2^bits evenly spaced levels k / (2^bits - 1)."""
    if not 1 <= bits <= 16:
        raise PrivacyError(f"scalar quantization bits must be in [1, 16], got {bits}")
    if math.isnan(value):
        raise PrivacyError("cannot quantize a NaN scalar")
    levels = (1 << bits) - 1
    return round(min(max(value, 0.0), 1.0) * levels) / levels
