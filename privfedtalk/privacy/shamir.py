"""Shamir t-of-n secret sharing of short byte strings over the prime field GF(2^127 - 1).

Used by secure aggregation to share each client's pairwise key and self-mask seed among its peers.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from privfedtalk.errors import PrivacyError

# A Mersenne prime: large enough that a 15-byte chunk is a field element, small enough for fast Python ints.
FIELD_PRIME = (1 << 127) - 1
# 15 bytes = 120 bits < 127 bits, so every chunk maps to a distinct field element without reduction.
CHUNK_BYTES = 15

RandomBytes = Callable[[int], bytes]


@dataclass(frozen=True)
class ShamirShare:
    """One party's share: the evaluation point x and one field element per 15-byte chunk of the secret."""

    x: int
    values: tuple[int, ...]
    secret_length: int


def _secret_to_chunks(secret: bytes) -> list[int]:
    return [
        int.from_bytes(secret[start : start + CHUNK_BYTES], "big")
        for start in range(0, len(secret), CHUNK_BYTES)
    ]


def _chunks_to_secret(chunks: Sequence[int], secret_length: int) -> bytes:
    pieces = []
    for index, value in enumerate(chunks):
        length = min(CHUNK_BYTES, secret_length - index * CHUNK_BYTES)
        if not 0 <= value < (1 << (8 * length)):
            # An inconsistent share set interpolates to a field element that is not a valid chunk.
            raise PrivacyError("Shamir reconstruction produced an invalid chunk: shares are inconsistent")
        pieces.append(value.to_bytes(length, "big"))
    return b"".join(pieces)


def random_field_element(random_bytes: RandomBytes = os.urandom) -> int:
    """Uniform element of GF(p) by rejection sampling 127-bit integers (rejects only the value p itself)."""
    while True:
        value = int.from_bytes(random_bytes(16), "big") & FIELD_PRIME
        if value < FIELD_PRIME:
            return value


def split_secret(
    secret: bytes, *, threshold: int, num_shares: int, random_bytes: RandomBytes = os.urandom
) -> list[ShamirShare]:
    """Split `secret` into `num_shares` shares at x = 1..num_shares; any `threshold` of them reconstruct it.

    Each 15-byte chunk gets its own random polynomial of degree threshold-1 whose constant term is the
    chunk, so any threshold-1 shares are uniformly distributed whatever the secret is.
    """
    if not 1 <= threshold <= num_shares:
        raise PrivacyError(
            f"Shamir sharing needs 1 <= threshold <= num_shares, got {threshold} of {num_shares}"
        )
    if num_shares >= FIELD_PRIME:
        raise PrivacyError("too many Shamir shares for the field")
    if not secret:
        raise PrivacyError("cannot share an empty secret")
    polynomials = [
        [chunk] + [random_field_element(random_bytes) for _ in range(threshold - 1)]
        for chunk in _secret_to_chunks(secret)
    ]
    shares = []
    for x in range(1, num_shares + 1):
        values = []
        for coefficients in polynomials:
            # Horner evaluation from the highest coefficient down.
            value = 0
            for coefficient in reversed(coefficients):
                value = (value * x + coefficient) % FIELD_PRIME
            values.append(value)
        shares.append(ShamirShare(x=x, values=tuple(values), secret_length=len(secret)))
    return shares


def lagrange_coefficients_at_zero(xs: Sequence[int]) -> list[int]:
    """Coefficients l_i(0) such that f(0) = sum_i l_i(0) * f(x_i) for any polynomial of degree < len(xs)."""
    if len(set(xs)) != len(xs):
        raise PrivacyError("Shamir shares must have distinct evaluation points")
    coefficients = []
    for i, x_i in enumerate(xs):
        numerator, denominator = 1, 1
        for j, x_j in enumerate(xs):
            if i != j:
                numerator = numerator * x_j % FIELD_PRIME
                denominator = denominator * (x_j - x_i) % FIELD_PRIME
        coefficients.append(numerator * pow(denominator, -1, FIELD_PRIME) % FIELD_PRIME)
    return coefficients


def interpolate_at_zero(shares: Sequence[ShamirShare]) -> list[int]:
    """Evaluate at x = 0 the lowest-degree polynomial through `shares` (one value per chunk).

    This is the raw interpolation step: with fewer than threshold shares it returns a value that is
    unrelated to the secret. `combine_shares` is the checked entry point.
    """
    coefficients = lagrange_coefficients_at_zero([share.x for share in shares])
    num_chunks = len(shares[0].values)
    return [
        sum(c * share.values[chunk] for c, share in zip(coefficients, shares)) % FIELD_PRIME
        for chunk in range(num_chunks)
    ]


def combine_shares(shares: Sequence[ShamirShare], *, threshold: int) -> bytes:
    """Reconstruct the secret from at least `threshold` shares (uses the first `threshold` distinct ones)."""
    distinct: dict[int, ShamirShare] = {}
    for share in shares:
        distinct.setdefault(share.x, share)
    if len(distinct) < threshold:
        raise PrivacyError(f"Shamir reconstruction needs {threshold} distinct shares, got {len(distinct)}")
    chosen = list(distinct.values())[:threshold]
    lengths = {share.secret_length for share in chosen}
    chunk_counts = {len(share.values) for share in chosen}
    if len(lengths) != 1 or len(chunk_counts) != 1:
        raise PrivacyError("Shamir shares belong to different secrets")
    return _chunks_to_secret(interpolate_at_zero(chosen), chosen[0].secret_length)
