"""Fixed-point encoding of float vectors into Z_(2^k) (two's complement) for masked secure summation."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from privfedtalk.errors import PrivacyError


@dataclass(frozen=True)
class FixedPoint:
    """Encode x as round(x * scale) mod 2^bits; decode a sum back to signed floats.

    `bits` <= 64 so numpy uint64 arithmetic wraps mod 2^64 and, for bits < 64, an explicit mask reduces
    mod 2^bits (2^bits divides 2^64, so reducing at the end is the same as reducing every step).
    `max_abs_value` and `max_clients` are the planning bounds from `plan_fixed_point`; when they are
    set, `check_no_overflow` enforces them.
    """

    bits: int
    scale: float
    max_abs_value: float | None = None
    max_clients: int | None = None

    def __post_init__(self):
        if not 2 <= self.bits <= 64:
            raise PrivacyError(f"fixed-point bits must be in [2, 64], got {self.bits}")
        if not (math.isfinite(self.scale) and self.scale > 0):
            raise PrivacyError(f"fixed-point scale must be positive and finite, got {self.scale}")

    @property
    def mask(self) -> np.uint64:
        """All-ones in the low `bits` bits."""
        return np.uint64((1 << self.bits) - 1)

    def reduce(self, words: np.ndarray) -> np.ndarray:
        """Reduce uint64 words mod 2^bits in place (no-op for 64 bits) and return them."""
        if self.bits < 64:
            np.bitwise_and(words, self.mask, out=words)
        return words

    def encode(self, vector: np.ndarray) -> np.ndarray:
        """Round-to-nearest fixed point, two's complement mod 2^bits, as a flat uint64 array."""
        scaled = np.rint(np.asarray(vector, dtype=np.float64).ravel() * self.scale)
        limit = 2.0**63
        if scaled.size and not (np.all(np.isfinite(scaled)) and np.max(np.abs(scaled)) < limit):
            raise PrivacyError("value does not fit in 64-bit fixed point: check the fixed-point plan")
        # int64 -> uint64 reinterprets the bits, which is exactly two's complement mod 2^64.
        return self.reduce(scaled.astype(np.int64).view(np.uint64))

    def decode(self, words: np.ndarray) -> np.ndarray:
        """Interpret uint64 words mod 2^bits as signed integers and divide by the scale (float64)."""
        words = np.asarray(words, dtype=np.uint64)
        # Shift the k-bit value to the top of the word, reinterpret as int64, and shift back: the
        # arithmetic right shift sign-extends, which is two's complement decoding for any k <= 64.
        shift = np.uint64(64 - self.bits)
        signed = np.left_shift(words, shift).view(np.int64) >> np.int64(64 - self.bits)
        return signed.astype(np.float64) / self.scale

    def max_rounding_error(self, num_clients: int) -> float:
        """Worst-case per-coordinate error of a decoded sum of `num_clients` encodings: n / (2 * scale)."""
        return num_clients / (2.0 * self.scale)


def plan_fixed_point(
    max_abs_value_per_client: float, num_clients: int, bits: int = 64, scale: float | None = None
) -> FixedPoint:
    """Choose the largest power-of-two scale such that a sum of `num_clients` encodings never overflows.

    Guarantee: with every coordinate |x| <= B = `max_abs_value_per_client`, each encoding has
    |round(x * scale)| <= B * scale + 1/2, so choosing

        num_clients * (B * scale + 1/2) < 2^(bits - 1)

    keeps every partial and final sum inside the signed range; the decoded sum is then off by at most
    num_clients / (2 * scale) per coordinate. For bits > 54 the same inequality is also enforced
    against 2^53 instead of 2^(bits-1), so every sum is an integer float64 represents exactly; with a
    power-of-two scale, x * scale and the final division are exact too, so rounding to an integer is
    the only error.
    B must cover whatever the client adds: weight * clip norm bounds the update, and with local noise
    add a tail margin (see `per_coordinate_bound`); `check_no_overflow` catches the rare excess.
    Pass `scale` to use a fixed scale instead; it is still checked against the same inequality.
    """
    if not (math.isfinite(max_abs_value_per_client) and max_abs_value_per_client > 0):
        raise PrivacyError(
            f"max_abs_value_per_client must be positive and finite, got {max_abs_value_per_client}"
        )
    if num_clients < 1:
        raise PrivacyError(f"num_clients must be >= 1, got {num_clients}")
    if not 2 <= bits <= 64:
        raise PrivacyError(f"fixed-point bits must be in [2, 64], got {bits}")
    half_range = 2.0 ** min(bits - 1, 53)
    per_client_budget = half_range / num_clients - 0.5
    if per_client_budget <= 0:
        raise PrivacyError(f"{num_clients} clients cannot be summed in {bits}-bit fixed point: use more bits")
    if scale is None:
        # Largest power of two strictly below the budget; step down once if float rounding lands on it.
        exponent = math.floor(math.log2(per_client_budget / max_abs_value_per_client))
        scale = 2.0**exponent
        while num_clients * (max_abs_value_per_client * scale + 0.5) >= half_range:
            scale /= 2.0
    elif num_clients * (max_abs_value_per_client * scale + 0.5) >= half_range:
        raise PrivacyError(
            f"scale {scale} lets a sum of {num_clients} clients with |x| <= {max_abs_value_per_client} reach "
            f"2^{min(bits - 1, 53)} ({bits}-bit fixed point): use a smaller scale"
        )
    return FixedPoint(bits=bits, scale=scale, max_abs_value=max_abs_value_per_client, max_clients=num_clients)


def per_coordinate_bound(
    max_weight: float, clip_norm: float, local_noise_std: float = 0.0, tail_sigmas: float = 10.0
) -> float:
    """A per-coordinate bound for a weighted, clipped, locally noised update.

    A vector clipped to L2 norm C has every coordinate within C, so weighting by w <= w_max gives
    w_max * C; Gaussian noise is unbounded, so we add `tail_sigmas` standard deviations (a coordinate
    exceeds 10 sigma with probability ~1.5e-23) and let `check_no_overflow` reject the remainder.
    """
    return max_weight * clip_norm + tail_sigmas * local_noise_std


def check_no_overflow(vector: np.ndarray, fixed_point: FixedPoint, *, client_id=None) -> None:
    """Raise PrivacyError if `vector` is non-finite or exceeds the bound `fixed_point` was planned for.

    Without a planned bound, only representability of a single value is checked.
    """
    who = f"client {client_id!r}: " if client_id is not None else ""
    values = np.asarray(vector)
    if values.size == 0:
        return
    largest = float(np.max(np.abs(values)))
    if not math.isfinite(largest):
        raise PrivacyError(f"{who}update contains NaN or infinite values; it cannot be securely aggregated")
    if fixed_point.max_abs_value is not None:
        if largest > fixed_point.max_abs_value:
            raise PrivacyError(
                f"{who}update coordinate {largest:.6g} exceeds the planned fixed-point bound "
                f"{fixed_point.max_abs_value:.6g}; clip harder or re-plan with plan_fixed_point"
            )
    elif largest * fixed_point.scale + 0.5 >= 2.0 ** (fixed_point.bits - 1):
        raise PrivacyError(f"{who}update coordinate {largest:.6g} does not fit the fixed-point range")
