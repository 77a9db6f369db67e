"""Privacy randomness: Gaussian noise and sampling bits nobody else can reproduce.

Every draw that protects privacy (a client's noise share, the aggregator's noise in trusted mode, the
client sample of a DP round) comes from an AES-256-CTR keystream keyed with 32 fresh bytes of OS
entropy per source, so neither the config seed nor anything in the run folder or the server's state
determines it. The uniform words become Gaussians by the Box-Muller transform in float64.

`insecure_seeded_source` derives the key from public values instead. It exists only so tests can
reproduce a DP run bit for bit (and prove that a noise-stripping attack works when the noise is
predictable); runs that use it are marked as carrying no privacy guarantee.
"""

from __future__ import annotations

import hashlib
import math
import os

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from privfedtalk.errors import PrivacyError

_KEY_BYTES = 32
_TWO_POW_53 = float(2**53)


class RandomSource:
    """A keyed stream of uniform and Gaussian draws (AES-256-CTR, counter from zero).

    Keep one source per party and purpose: a key expands exactly one stream, so two sources never
    share draws. `from_os_entropy()` is the only constructor meant for private runs.
    """

    def __init__(self, key: bytes, label: str):
        if len(key) != _KEY_BYTES:
            raise PrivacyError(f"random source key must be {_KEY_BYTES} bytes, got {len(key)}")
        self.label = label
        self._stream = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor()

    @classmethod
    def from_os_entropy(cls, label: str = "os-entropy") -> RandomSource:
        return cls(os.urandom(_KEY_BYTES), label)

    def words(self, count: int) -> np.ndarray:
        """`count` uniform 64-bit words."""
        return np.frombuffer(self._stream.update(bytes(8 * count)), dtype=np.uint64)

    def uniform(self, count: int) -> np.ndarray:
        """`count` floats uniform on (0, 1): 53 random bits each, never exactly 0 or 1."""
        top = (self.words(count) >> np.uint64(11)).astype(np.float64)
        return (top + 0.5) / _TWO_POW_53

    def normal(self, shape, std: float = 1.0) -> np.ndarray:
        """float64 N(0, std²) draws of the given shape (Box-Muller: both outputs of each pair are used)."""
        if not (math.isfinite(std) and std >= 0):
            raise PrivacyError(f"noise std must be finite and >= 0, got {std}")
        size = int(np.prod(shape, dtype=np.int64))
        if std == 0 or size == 0:
            return np.zeros(shape, dtype=np.float64)
        pairs = (size + 1) // 2
        u = self.uniform(2 * pairs)
        radius = np.sqrt(-2.0 * np.log(u[:pairs]))
        angle = 2.0 * np.pi * u[pairs:]
        values = np.concatenate([radius * np.cos(angle), radius * np.sin(angle)])[:size]
        return (values * std).reshape(shape)

    def choice(self, population: int, size: int) -> np.ndarray:
        """`size` distinct indices of range(population), uniformly (a partial Fisher-Yates shuffle)."""
        if not 0 <= size <= population:
            raise PrivacyError(f"cannot choose {size} of {population}")
        order = np.arange(population)
        draws = self.uniform(size)
        for i in range(size):
            j = i + int(draws[i] * (population - i))
            order[i], order[j] = order[j], order[i]
        return np.sort(order[:size])


def insecure_seeded_source(seed: int, *labels) -> RandomSource:
    """TESTS ONLY: a source whose key anyone who knows (seed, labels) can rebuild. No privacy."""
    text = "privfedtalk/insecure-seeded|" + "|".join(str(x) for x in (seed, *labels))
    return RandomSource(hashlib.sha256(text.encode()).digest(), f"INSECURE seeded {labels}")
