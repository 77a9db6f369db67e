"""Shamir sharing: any t shares reconstruct, t - 1 shares are consistent with every secret."""

import itertools

import pytest

from privfedtalk.errors import PrivacyError
from privfedtalk.privacy.secagg import seeded_random_bytes
from privfedtalk.privacy.shamir import (
    FIELD_PRIME,
    ShamirShare,
    combine_shares,
    interpolate_at_zero,
    lagrange_coefficients_at_zero,
    split_secret,
)

SECRET = bytes(range(1, 33))


def test_any_threshold_subset_reconstructs():
    shares = split_secret(SECRET, threshold=3, num_shares=6, random_bytes=seeded_random_bytes(1, "shamir"))
    for subset in itertools.combinations(shares, 3):
        assert combine_shares(list(subset), threshold=3) == SECRET
    assert combine_shares(shares, threshold=3) == SECRET


@pytest.mark.parametrize("length", [1, 15, 16, 32, 45])
def test_secret_lengths(length):
    secret = bytes((7 * i + 3) % 256 for i in range(length))
    shares = split_secret(secret, threshold=4, num_shares=5)
    assert combine_shares(shares[1:], threshold=4) == secret


def test_fewer_than_threshold_shares_do_not_reconstruct():
    shares = split_secret(SECRET, threshold=4, num_shares=7, random_bytes=seeded_random_bytes(2, "shamir"))
    with pytest.raises(PrivacyError, match="needs 4 distinct shares"):
        combine_shares(shares[:3], threshold=4)
    # Duplicates do not count as extra shares.
    with pytest.raises(PrivacyError):
        combine_shares(shares[:3] + shares[:1], threshold=4)
    # Raw interpolation through t-1 points lands somewhere unrelated to the secret.
    chunks = [int.from_bytes(SECRET[i : i + 15], "big") for i in range(0, 32, 15)]
    assert interpolate_at_zero(shares[:3]) != chunks


def test_threshold_minus_one_shares_are_consistent_with_any_secret():
    threshold = 4
    shares = split_secret(SECRET, threshold=threshold, num_shares=7)
    known = shares[: threshold - 1]
    other_secret = b"\xff" * 32
    other_chunks = [int.from_bytes(other_secret[i : i + 15], "big") for i in range(0, 32, 15)]
    # Put the candidate secret at x = 0 next to the known shares and evaluate that degree t-1 polynomial
    # at x = 7: the result is a share that, with the known ones, reconstructs the candidate. So the t-1
    # shares rule out no secret at all.
    xs = [0] + [share.x for share in known]
    target_x = 7
    forged_values = []
    for chunk, candidate in enumerate(other_chunks):
        ys = [candidate] + [share.values[chunk] for share in known]
        # Lagrange evaluation at target_x, via the at-zero helper on shifted points.
        coefficients = lagrange_coefficients_at_zero([x - target_x for x in xs])
        forged_values.append(sum(c * y for c, y in zip(coefficients, ys)) % FIELD_PRIME)
    forged = ShamirShare(x=target_x, values=tuple(forged_values), secret_length=32)
    assert combine_shares(known + [forged], threshold=threshold) == other_secret
    assert combine_shares(known + [shares[6]], threshold=threshold) == SECRET


def test_seeded_sharing_is_reproducible_and_unseeded_is_not():
    first = split_secret(SECRET, threshold=2, num_shares=3, random_bytes=seeded_random_bytes(5, "a"))
    again = split_secret(SECRET, threshold=2, num_shares=3, random_bytes=seeded_random_bytes(5, "a"))
    assert first == again
    assert split_secret(SECRET, threshold=2, num_shares=3) != split_secret(SECRET, threshold=2, num_shares=3)


def test_invalid_parameters():
    with pytest.raises(PrivacyError):
        split_secret(SECRET, threshold=4, num_shares=3)
    with pytest.raises(PrivacyError):
        split_secret(b"", threshold=1, num_shares=3)
