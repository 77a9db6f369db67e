"""Secure aggregation after Bonawitz et al. (CCS 2017), simulated in one process with real cryptography.

X25519 + HKDF-SHA256 pairwise seeds, AES-256-CTR masks, Shamir-shared keys for dropout recovery.
"""

from __future__ import annotations

import hashlib
import math
import os
import statistics
import time
from collections.abc import Callable, Collection, Hashable, Mapping
from dataclasses import dataclass, field

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from privfedtalk.errors import PrivacyError
from privfedtalk.privacy.fixed_point import FixedPoint, check_no_overflow
from privfedtalk.privacy.shamir import RandomBytes, ShamirShare, combine_shares, split_secret

ClientId = Hashable  # str or int in practice; ids of one round must be mutually orderable

_PAIRWISE_INFO = b"privfedtalk/secagg/v1/pairwise-mask"
_SELF_MASK_INFO = b"privfedtalk/secagg/v1/self-mask"
_SEED_BYTES = 32


# --------------------------------------------------------------------------------------------- primitives


def _hkdf_sha256(key_material: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(key_material)


def pairwise_mask_key(shared_secret: bytes, round_id: int, index_a: int, index_b: int) -> bytes:
    """AES-256 key for the mask shared by two clients: HKDF-SHA256 over their X25519 shared secret.

    The info string binds the round and the (low, high) roster positions, so a key never repeats
    across rounds or pairs even if a key pair were reused.
    """
    low, high = sorted((index_a, index_b))
    return _hkdf_sha256(shared_secret, _PAIRWISE_INFO + f"|round={round_id}|pair={low},{high}".encode())


def self_mask_key(seed: bytes, round_id: int, index: int) -> bytes:
    """AES-256 key for a client's self mask, derived from its secret seed b_i."""
    return _hkdf_sha256(seed, _SELF_MASK_INFO + f"|round={round_id}|client={index}".encode())


def pairwise_sign(own_index: int, peer_index: int) -> int:
    """+1 for the lower roster position, -1 for the higher: the pair's two masks cancel in the sum."""
    return 1 if own_index < peer_index else -1


class MaskExpander:
    """PRG: AES-256-CTR keystream read as uint64 words; a zero counter block is safe because every key
    is fresh per round and pair (or per round and client) and expands exactly one mask.

    Holds reusable buffers for one vector length so the O(m^2) expansions allocate nothing.
    """

    def __init__(self, size: int):
        self.size = size
        self._zeros = np.zeros(8 * size, dtype=np.uint8)
        # update_into may need up to one block of slack past the input length.
        self._out = bytearray(8 * size + 16)

    def words(self, key: bytes) -> np.ndarray:
        """The first `size` keystream words for `key`; the view is overwritten by the next call."""
        encryptor = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor()
        encryptor.update_into(self._zeros, self._out)
        return np.frombuffer(self._out, dtype=np.uint64, count=self.size)

    def add(self, accumulator: np.ndarray, key: bytes, sign: int) -> None:
        """accumulator += sign * PRG(key) mod 2^64, in place."""
        words = self.words(key)
        if sign > 0:
            np.add(accumulator, words, out=accumulator)
        else:
            np.subtract(accumulator, words, out=accumulator)


def seeded_random_bytes(seed: int, label: str) -> RandomBytes:
    """Deterministic byte source for reproducible tests: AES-CTR keyed by SHA-256(seed, label).

    Never use in deployment: anyone who knows the seed knows every key.
    """
    key = hashlib.sha256(f"privfedtalk/secagg/test-seed|{seed}|{label}".encode()).digest()
    encryptor = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor()
    return lambda n: encryptor.update(bytes(n))


MIN_CLIENTS = 2  # a one-client "sum" is that client's vector: secure aggregation never runs below this


def shamir_threshold(fraction: float, num_clients: int) -> int:
    """t = ceil(fraction·n), at least 2 (t = 1 would let any one peer unmask anyone)."""
    return max(MIN_CLIENTS, math.ceil(fraction * num_clients))


def check_round(client_ids: Collection[ClientId], threshold: int, fixed_point: FixedPoint) -> list[ClientId]:
    """The checks every secure-sum round passes before any key is drawn; returns the canonical order."""
    order = _canonical_order(client_ids)
    count = len(order)
    if count < MIN_CLIENTS:
        raise PrivacyError(
            f"secure aggregation needs at least {MIN_CLIENTS} clients, got {count}: round skipped"
        )
    if not MIN_CLIENTS <= threshold <= count:
        raise PrivacyError(
            f"secure aggregation threshold must be in [{MIN_CLIENTS}, {count}], got {threshold}"
        )
    if fixed_point.max_clients is not None and count > fixed_point.max_clients:
        raise PrivacyError(
            f"fixed point was planned for {fixed_point.max_clients} clients, round has {count}: re-plan it"
        )
    return order


def _canonical_order(client_ids: Collection[ClientId]) -> list[ClientId]:
    try:
        ordered = sorted(client_ids)
    except TypeError as exc:
        raise PrivacyError(f"secure aggregation client ids must be mutually orderable: {exc}") from exc
    if len(set(ordered)) != len(ordered):
        raise PrivacyError("secure aggregation client ids must be unique")
    return ordered


# --------------------------------------------------------------------------------------------- messages


@dataclass(frozen=True)
class KeyAdvertisement:
    """Phase 0, client -> server: the client's X25519 public key for pairwise masks."""

    client_id: ClientId
    public_key: bytes


@dataclass(frozen=True)
class Roster:
    """Phase 0, server -> clients: every advertised key, in canonical id order.

    A client's 1-based position is its Shamir evaluation point and decides its pairwise mask signs.
    """

    round_id: int
    threshold: int
    entries: tuple[KeyAdvertisement, ...]
    _positions: dict = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "_positions", {e.client_id: i + 1 for i, e in enumerate(self.entries)})

    def position(self, client_id: ClientId) -> int:
        try:
            return self._positions[client_id]
        except KeyError:
            raise PrivacyError(f"client {client_id!r} is not in the round {self.round_id} roster") from None

    @property
    def client_ids(self) -> tuple[ClientId, ...]:
        return tuple(e.client_id for e in self.entries)


@dataclass(frozen=True)
class PeerShares:
    """Phase 1, client -> client (a private channel; not seen by the server in this simulation)."""

    sender: ClientId
    recipient: ClientId
    pairwise_key_share: ShamirShare
    self_mask_share: ShamirShare


@dataclass(frozen=True)
class UnmaskingShares:
    """Phase 3, surviving client -> server: key shares of dropped clients, self-mask shares of survivors."""

    sender: ClientId
    pairwise_key_shares: Mapping[ClientId, ShamirShare]
    self_mask_shares: Mapping[ClientId, ShamirShare]


@dataclass(frozen=True)
class ClientSecrets:
    """What a SecAggClient keeps between two protocol messages: its seeds, the roster it accepted, the
    shares it holds and what it has revealed about each peer.

    For a client process that does not live through the round (a Flower ClientApp keeps it in its
    node's local state). Client-side storage only: with the two seeds anyone strips this client's masks.
    """

    pairwise_key_seed: bytes
    self_mask_seed: bytes
    roster: Roster | None = None
    held_shares: tuple[PeerShares, ...] = ()
    revealed: Mapping[ClientId, str] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------- parties


class SecAggClient:
    """One client for one round: holds its own (already weighted) vector and its secrets."""

    def __init__(
        self,
        client_id: ClientId,
        vector: np.ndarray,
        *,
        round_id: int,
        threshold: int,
        fixed_point: FixedPoint,
        random_bytes: RandomBytes = os.urandom,
        secrets: ClientSecrets | None = None,
    ):
        """`secrets`: continue a client saved with `secrets()` (same round) instead of drawing new seeds."""
        self.client_id = client_id
        self._vector = np.asarray(vector)
        self._round_id = round_id
        self._threshold = threshold
        self._fixed_point = fixed_point
        self._random_bytes = random_bytes
        if secrets is None:
            secrets = ClientSecrets(random_bytes(_SEED_BYTES), random_bytes(_SEED_BYTES))
        # The 32 random bytes are the key's seed; sharing them lets the server rebuild the key on dropout.
        self._pairwise_key_seed = secrets.pairwise_key_seed
        self._pairwise_key = X25519PrivateKey.from_private_bytes(self._pairwise_key_seed)
        self._self_mask_seed = secrets.self_mask_seed
        self._roster: Roster | None = secrets.roster
        self._held_shares: dict[ClientId, PeerShares] = {s.sender: s for s in secrets.held_shares}
        # What this client has revealed about each peer ("pairwise" or "self"): never both.
        self._revealed: dict[ClientId, str] = dict(secrets.revealed)

    def secrets(self) -> ClientSecrets:
        """This client's state between two messages (see ClientSecrets: it never leaves the client)."""
        return ClientSecrets(
            self._pairwise_key_seed,
            self._self_mask_seed,
            self._roster,
            tuple(self._held_shares.values()),
            dict(self._revealed),
        )

    @property
    def size(self) -> int:
        return int(self._vector.size)

    def advertise_keys(self) -> KeyAdvertisement:
        return KeyAdvertisement(self.client_id, self._pairwise_key.public_key().public_bytes_raw())

    def share_keys(self, roster: Roster) -> list[PeerShares]:
        """Shamir-share the pairwise key seed and the self-mask seed, one share per roster member."""
        if roster.round_id != self._round_id or roster.threshold != self._threshold:
            raise PrivacyError("roster is for a different round or threshold")
        own = roster.entries[roster.position(self.client_id) - 1]
        if own.public_key != self.advertise_keys().public_key:
            raise PrivacyError(f"client {self.client_id!r}: roster carries a key that is not ours")
        if len(roster.entries) < self._threshold:
            raise PrivacyError(
                f"secure aggregation round {self._round_id}: only {len(roster.entries)} clients advertised "
                f"keys, threshold {self._threshold}: round skipped"
            )
        self._roster = roster
        count = len(roster.entries)
        key_shares = split_secret(
            self._pairwise_key_seed,
            threshold=self._threshold,
            num_shares=count,
            random_bytes=self._random_bytes,
        )
        seed_shares = split_secret(
            self._self_mask_seed, threshold=self._threshold, num_shares=count, random_bytes=self._random_bytes
        )
        return [
            PeerShares(self.client_id, entry.client_id, key_share, seed_share)
            for entry, key_share, seed_share in zip(roster.entries, key_shares, seed_shares)
        ]

    def receive_shares(self, shares: PeerShares) -> None:
        if shares.recipient != self.client_id:
            raise PrivacyError(f"client {self.client_id!r} received shares addressed to {shares.recipient!r}")
        self._held_shares[shares.sender] = shares

    def masked_input(self, expander: MaskExpander | None = None) -> np.ndarray:
        """y_i = encode(x_i) + PRG(b_i) + sum_j sign(i, j) * PRG(s_ij) mod 2^k, over every roster peer."""
        if self._roster is None:
            raise PrivacyError("masked_input called before share_keys")
        check_no_overflow(self._vector, self._fixed_point, client_id=self.client_id)
        expander = expander if expander is not None else MaskExpander(self.size)
        if expander.size != self.size:
            raise PrivacyError("mask expander size does not match the client's vector")
        masked = self._fixed_point.encode(self._vector)
        own_position = self._roster.position(self.client_id)
        expander.add(masked, self_mask_key(self._self_mask_seed, self._round_id, own_position), +1)
        for position, entry in enumerate(self._roster.entries, start=1):
            if position == own_position:
                continue
            shared = self._pairwise_key.exchange(X25519PublicKey.from_public_bytes(entry.public_key))
            key = pairwise_mask_key(shared, self._round_id, own_position, position)
            expander.add(masked, key, pairwise_sign(own_position, position))
        return self._fixed_point.reduce(masked)

    def unmasking_shares(
        self, survivors: Collection[ClientId], dropped: Collection[ClientId]
    ) -> UnmaskingShares:
        """Reveal pairwise-key shares of dropped peers and self-mask shares of survivors.

        Refuses to reveal both kinds for one peer: with b_j and s_j the server could strip every mask
        from y_j and read that client's update (e.g. a "dropped" client whose input arrived late).
        """
        if self._roster is None:
            raise PrivacyError("unmasking requested before share_keys")
        survivors, dropped = set(survivors), set(dropped)
        if survivors & dropped:
            raise PrivacyError(f"client {self.client_id!r}: a peer cannot be both a survivor and dropped")
        if self.client_id not in survivors:
            raise PrivacyError(f"client {self.client_id!r}: asked to unmask a round it is not a survivor of")
        if len(survivors) < self._threshold:
            raise PrivacyError(
                f"secure aggregation round {self._round_id}: only {len(survivors)} of "
                f"{len(self._roster.entries)} clients survived, threshold {self._threshold}: round skipped"
            )
        requested = {peer: "self" for peer in survivors} | {peer: "pairwise" for peer in dropped}
        for peer, kind in requested.items():
            if self._revealed.get(peer, kind) != kind:
                raise PrivacyError(
                    f"client {self.client_id!r}: refusing to reveal both the pairwise key and the self-mask "
                    f"seed of {peer!r}"
                )
            if peer not in self._held_shares:
                raise PrivacyError(f"client {self.client_id!r} holds no shares from {peer!r}")
        self._revealed.update(requested)
        return UnmaskingShares(
            sender=self.client_id,
            pairwise_key_shares={peer: self._held_shares[peer].pairwise_key_share for peer in dropped},
            self_mask_shares={peer: self._held_shares[peer].self_mask_share for peer in survivors},
        )


class SecAggServer:
    """The aggregator for one round.

    It only ever holds public keys, the running sum of masked uint64 inputs, the shares sent to it for
    unmasking, and the final sum; it never receives a single client's unmasked vector.
    """

    def __init__(self, *, round_id: int, threshold: int, fixed_point: FixedPoint):
        self.round_id = round_id
        self.threshold = threshold
        self.fixed_point = fixed_point
        self._advertisements: dict[ClientId, KeyAdvertisement] = {}
        self._roster: Roster | None = None
        # Sum of the masked inputs received so far: still hidden by every sender's self mask.
        self._masked_sum: np.ndarray | None = None
        self._received: list[ClientId] = []
        self._survivors: tuple[ClientId, ...] | None = None
        self._dropped: tuple[ClientId, ...] | None = None
        self._unmasking: dict[ClientId, UnmaskingShares] = {}
        self.total: np.ndarray | None = None

    def receive_key(self, advertisement: KeyAdvertisement) -> None:
        if self._roster is not None:
            raise PrivacyError("keys arrived after the roster was broadcast")
        self._advertisements[advertisement.client_id] = advertisement

    def broadcast_roster(self) -> Roster:
        order = _canonical_order(self._advertisements)
        if len(order) < self.threshold:
            raise PrivacyError(
                f"secure aggregation round {self.round_id}: only {len(order)} clients advertised keys, "
                f"threshold {self.threshold}: round skipped"
            )
        self._roster = Roster(self.round_id, self.threshold, tuple(self._advertisements[c] for c in order))
        return self._roster

    def receive_masked_input(self, client_id: ClientId, masked: np.ndarray) -> None:
        self.receive_masked_sum([client_id], masked)

    def receive_masked_sum(self, senders: Collection[ClientId], masked: np.ndarray) -> None:
        """The masked inputs of `senders`, already added mod 2^64 (one client, or a process's clients).

        A pre-summed input is still hidden by every sender's self mask; the server learns only who sent.
        """
        if self._roster is None or self._survivors is not None:
            raise PrivacyError("masked input outside the masked-input phase")
        senders = list(senders)
        for client_id in senders:
            self._roster.position(client_id)
        if len(set(senders)) != len(senders) or set(senders) & set(self._received):
            raise PrivacyError(f"duplicate masked input from {sorted(map(repr, senders))}")
        if not senders:
            return
        masked = np.asarray(masked)
        if masked.dtype != np.uint64 or masked.ndim != 1:
            raise PrivacyError("masked inputs must be flat uint64 vectors")
        if self._masked_sum is None:
            self._masked_sum = masked.copy()
        elif masked.shape != self._masked_sum.shape:
            raise PrivacyError(f"masked input from {senders[0]!r} has the wrong length")
        else:
            np.add(self._masked_sum, masked, out=self._masked_sum)
        self._received.extend(senders)

    def request_unmasking(self) -> tuple[tuple[ClientId, ...], tuple[ClientId, ...]]:
        """Close the input phase: survivors are exactly the senders; inputs arriving later are refused."""
        if self._roster is None:
            raise PrivacyError("unmasking requested before the roster")
        received = set(self._received)
        self._survivors = tuple(c for c in self._roster.client_ids if c in received)
        self._dropped = tuple(c for c in self._roster.client_ids if c not in received)
        if len(self._survivors) < self.threshold:
            raise PrivacyError(
                f"secure aggregation round {self.round_id}: only {len(self._survivors)} of "
                f"{len(self._roster.entries)} clients survived, threshold {self.threshold}: round skipped"
            )
        return self._survivors, self._dropped

    def receive_unmasking_shares(self, message: UnmaskingShares) -> None:
        if self._survivors is None:
            raise PrivacyError("unmasking shares before the unmasking phase")
        if message.sender not in self._survivors:
            raise PrivacyError(f"unmasking shares from non-survivor {message.sender!r}")
        if set(message.self_mask_shares) != set(self._survivors) or set(message.pairwise_key_shares) != set(
            self._dropped
        ):
            raise PrivacyError(f"unmasking shares from {message.sender!r} do not match the request")
        self._unmasking[message.sender] = message

    def finalize(self, expander: MaskExpander | None = None) -> np.ndarray:
        """Strip survivors' self masks and dropped clients' pairwise masks; decode the flat float64 sum."""
        if self._survivors is None or self._masked_sum is None:
            raise PrivacyError("finalize called before the unmasking phase")
        if len(self._unmasking) < self.threshold:
            raise PrivacyError(
                f"secure aggregation round {self.round_id}: only {len(self._unmasking)} of "
                f"{len(self._roster.entries)} clients sent unmasking shares, threshold {self.threshold}: "
                "round skipped"
            )
        expander = expander if expander is not None else MaskExpander(self._masked_sum.size)
        responses = list(self._unmasking.values())
        total = self._masked_sum
        for survivor in self._survivors:
            seed = combine_shares([r.self_mask_shares[survivor] for r in responses], threshold=self.threshold)
            expander.add(total, self_mask_key(seed, self.round_id, self._roster.position(survivor)), -1)
        for gone in self._dropped:
            key_seed = combine_shares(
                [r.pairwise_key_shares[gone] for r in responses], threshold=self.threshold
            )
            gone_key = X25519PrivateKey.from_private_bytes(key_seed)
            gone_position = self._roster.position(gone)
            for survivor in self._survivors:
                position = self._roster.position(survivor)
                public = X25519PublicKey.from_public_bytes(self._roster.entries[position - 1].public_key)
                key = pairwise_mask_key(gone_key.exchange(public), self.round_id, position, gone_position)
                # The survivor added sign(survivor, gone) * PRG; subtract exactly that.
                expander.add(total, key, -pairwise_sign(position, gone_position))
        self._masked_sum = None
        self.total = self.fixed_point.decode(self.fixed_point.reduce(total))
        return self.total


# --------------------------------------------------------------------------------------------- orchestration


@dataclass
class SecureSumResult:
    """Decoded sum of the survivors' vectors plus who took part and how long each phase took."""

    total: np.ndarray
    survivors: tuple[ClientId, ...]
    dropped: tuple[ClientId, ...]
    seconds: float
    phase_seconds: dict[str, float]
    client_mask_seconds_median: float
    max_rounding_error: float


def prepare_round(
    client_vectors: Mapping[ClientId, np.ndarray],
    *,
    round_id: int,
    threshold: int,
    fixed_point: FixedPoint,
    rng_seed: int | None = None,
) -> tuple[SecAggServer, dict[ClientId, SecAggClient]]:
    """Validate the inputs and create the server and one client per vector (keys drawn here)."""
    order = check_round(client_vectors, threshold, fixed_point)
    shapes = {np.shape(client_vectors[c]) for c in order}
    if len(shapes) != 1:
        raise PrivacyError(f"client vectors must all have the same shape, got {sorted(shapes)}")
    if int(np.prod(next(iter(shapes)))) == 0:
        raise PrivacyError("client vectors are empty")

    def random_source(client_id: ClientId) -> RandomBytes:
        if rng_seed is None:
            return os.urandom
        return seeded_random_bytes(rng_seed, f"round={round_id}|client={client_id!r}")

    server = SecAggServer(round_id=round_id, threshold=threshold, fixed_point=fixed_point)
    clients = {
        c: SecAggClient(
            c,
            client_vectors[c],
            round_id=round_id,
            threshold=threshold,
            fixed_point=fixed_point,
            random_bytes=random_source(c),
        )
        for c in order
    }
    return server, clients


def run_secure_aggregation(
    server: SecAggServer,
    clients: Mapping[ClientId, SecAggClient],
    *,
    dropped: Collection[ClientId] = (),
    on_phase: Callable[[str, SecAggServer], None] | None = None,
) -> SecureSumResult:
    """Run the four phases; `dropped` clients share their keys, then never send a masked input.

    Messages between clients go client-to-client here; in a deployment they are encrypted to the
    recipient and relayed by the server (Bonawitz et al. use a second key pair for that).
    `on_phase(name, server)` is called after each phase (tests use it to inspect the server's state).
    """
    unknown = set(dropped) - set(clients)
    if unknown:
        raise PrivacyError(f"dropped clients {sorted(map(repr, unknown))} are not in this round")
    started = time.perf_counter()
    phase_seconds: dict[str, float] = {}

    def finish(name: str, since: float) -> float:
        now = time.perf_counter()
        phase_seconds[name] = now - since
        if on_phase is not None:
            on_phase(name, server)
        return time.perf_counter()

    mark = started
    for client in clients.values():
        server.receive_key(client.advertise_keys())
    roster = server.broadcast_roster()
    mark = finish("advertise_keys", mark)

    for client in clients.values():
        for message in client.share_keys(roster):
            clients[message.recipient].receive_shares(message)
    mark = finish("share_keys", mark)

    expander = MaskExpander(next(iter(clients.values())).size)
    per_client = []
    for client_id, client in clients.items():
        if client_id in dropped:
            continue
        client_started = time.perf_counter()
        masked = client.masked_input(expander)
        per_client.append(time.perf_counter() - client_started)
        server.receive_masked_input(client_id, masked)
    mark = finish("masked_input", mark)

    survivors, gone = server.request_unmasking()
    for client_id in survivors:
        server.receive_unmasking_shares(clients[client_id].unmasking_shares(survivors, gone))
    total = server.finalize(expander)
    finish("unmasking", mark)

    return SecureSumResult(
        total=total,
        survivors=survivors,
        dropped=gone,
        seconds=time.perf_counter() - started,
        phase_seconds=phase_seconds,
        client_mask_seconds_median=statistics.median(per_client),
        max_rounding_error=server.fixed_point.max_rounding_error(len(survivors)),
    )


def secure_weighted_sum(
    client_vectors: Mapping[ClientId, np.ndarray],
    *,
    round_id: int,
    threshold: int,
    fixed_point: FixedPoint,
    dropped: Collection[ClientId] = (),
    rng_seed: int | None = None,
) -> SecureSumResult:
    """Securely sum already clipped, weighted (and optionally noised) float vectors of one round.

    Each client multiplies its own update by its weight before masking: masks cancel only in a plain
    sum, so weighting must happen before encoding, never on the server. `dropped` clients take part in
    key sharing but send no input; the result is the exact sum of the survivors' vectors (within
    `max_rounding_error`). Raises PrivacyError if fewer than `threshold` clients survive; the caller
    should then skip the round without touching global state. Keys come from os.urandom unless
    `rng_seed` is given (reproducible tests only).
    """
    server, clients = prepare_round(
        client_vectors, round_id=round_id, threshold=threshold, fixed_point=fixed_point, rng_seed=rng_seed
    )
    shape = np.shape(next(iter(client_vectors.values())))
    result = run_secure_aggregation(server, clients, dropped=dropped)
    result.total = result.total.reshape(shape)
    return result
