"""Secure aggregation: exact weighted sums, dropout recovery, mask uniformity, and what the server holds."""

import dataclasses

import numpy as np
import pytest
from scipy import stats

from privfedtalk.errors import PrivacyError
from privfedtalk.privacy.fixed_point import plan_fixed_point
from privfedtalk.privacy.secagg import (
    MaskExpander,
    SecAggClient,
    SecAggServer,
    prepare_round,
    run_secure_aggregation,
    secure_weighted_sum,
    seeded_random_bytes,
    shamir_threshold,
)

DIM = 1000


def weighted_updates(num_clients, seed, dim=DIM, ids=None):
    """Random updates clipped to norm 1 and scaled by random weights in [0.1, 2] (what clients send)."""
    rng = np.random.default_rng(seed)
    ids = ids if ids is not None else [f"client-{i:02d}" for i in range(num_clients)]
    vectors = {}
    for client_id in ids:
        update = rng.normal(size=dim).astype(np.float32)
        update /= max(1.0, float(np.linalg.norm(update)))
        vectors[client_id] = rng.uniform(0.1, 2.0) * update
    return vectors


def tolerance(result, vectors):
    # Fixed-point rounding bound plus float64 error of the reference sum itself.
    return result.max_rounding_error + 1e-12 * max(1.0, max(float(np.abs(v).max()) for v in vectors.values()))


@pytest.mark.parametrize("num_clients", [2, 5, 16])
def test_unmasked_sum_equals_plain_weighted_sum(num_clients):
    vectors = weighted_updates(num_clients, seed=num_clients)
    fixed_point = plan_fixed_point(2.0, num_clients)
    result = secure_weighted_sum(
        vectors,
        round_id=7,
        threshold=shamir_threshold(0.67, num_clients),
        fixed_point=fixed_point,
        rng_seed=11,
    )
    expected = np.sum([v.astype(np.float64) for v in vectors.values()], axis=0)
    assert result.total.shape == (DIM,) and result.total.dtype == np.float64
    assert np.max(np.abs(result.total - expected)) <= tolerance(result, vectors)
    assert result.dropped == () and len(result.survivors) == num_clients
    assert set(result.phase_seconds) == {"advertise_keys", "share_keys", "masked_input", "unmasking"}


@pytest.mark.parametrize("bits", [32, 64])
@pytest.mark.parametrize("num_dropped", [1, 2, 4])
def test_dropped_clients_are_recovered_up_to_n_minus_t(bits, num_dropped):
    num_clients, threshold = 10, 6
    vectors = weighted_updates(num_clients, seed=100 + num_dropped, ids=list(range(num_clients)))
    dropped = list(range(1, 1 + 2 * num_dropped, 2))  # spread over the id order: both mask signs occur
    fixed_point = plan_fixed_point(2.0, num_clients, bits=bits)
    result = secure_weighted_sum(
        vectors, round_id=3, threshold=threshold, fixed_point=fixed_point, dropped=dropped, rng_seed=bits
    )
    expected = np.sum([v.astype(np.float64) for c, v in vectors.items() if c not in dropped], axis=0)
    assert np.max(np.abs(result.total - expected)) <= tolerance(result, vectors)
    assert result.dropped == tuple(dropped)
    assert set(result.survivors) == set(vectors) - set(dropped)


def test_too_many_dropouts_skip_the_round():
    vectors = weighted_updates(10, seed=4, ids=list(range(10)))
    with pytest.raises(PrivacyError, match="only 5 of 10 clients survived, threshold 6: round skipped"):
        secure_weighted_sum(
            vectors, round_id=1, threshold=6, fixed_point=plan_fixed_point(2.0, 10), dropped=[0, 2, 4, 6, 8]
        )


def masked_input_of_first_client(vectors, fixed_point, random_sources, round_id=1):
    """Run the key phases for a round and return the first client's masked input."""
    server = SecAggServer(round_id=round_id, threshold=2, fixed_point=fixed_point)
    clients = {
        c: SecAggClient(
            c, v, round_id=round_id, threshold=2, fixed_point=fixed_point, random_bytes=random_sources[c]
        )
        for c, v in vectors.items()
    }
    for client in clients.values():
        server.receive_key(client.advertise_keys())
    roster = server.broadcast_roster()
    for client in clients.values():
        for message in client.share_keys(roster):
            clients[message.recipient].receive_shares(message)
    return clients[0].masked_input()


def test_masked_input_looks_uniform_and_changes_completely_with_the_self_mask_seed():
    dim = 4096
    # A maximally structured input: every coordinate the same.
    vectors = {c: np.full(dim, 0.5) for c in range(3)}
    fixed_point = plan_fixed_point(1.0, 3)
    sources = {c: seeded_random_bytes(1, f"client={c}") for c in vectors}
    masked = masked_input_of_first_client(vectors, fixed_point, sources)
    as_bytes = masked.view(np.uint8).reshape(dim, 8)
    for column in (0, 7):  # lowest byte (residue mod 256) and top byte of each word
        counts = np.bincount(as_bytes[:, column], minlength=256)
        assert stats.chisquare(counts).pvalue > 0.001
    assert len(np.unique(masked)) == dim

    # Same pairwise key seed (the first 32 bytes a client draws) and same peers; only b_0 differs.
    def only_self_mask_seed_differs(seed):
        draws = [seeded_random_bytes(1, "client=0")(32)]
        rest = seeded_random_bytes(seed, "rest")
        return lambda n: draws.pop() if draws else rest(n)

    peers = {c: seeded_random_bytes(1, f"client={c}") for c in (1, 2)}
    first = masked_input_of_first_client(vectors, fixed_point, {0: only_self_mask_seed_differs(10)} | peers)
    peers = {c: seeded_random_bytes(1, f"client={c}") for c in (1, 2)}
    second = masked_input_of_first_client(vectors, fixed_point, {0: only_self_mask_seed_differs(20)} | peers)
    assert np.mean(first != second) > 0.999


def test_same_seed_gives_the_same_masked_input_and_different_rounds_differ():
    vectors = {c: np.full(64, 0.25) for c in range(3)}
    fixed_point = plan_fixed_point(1.0, 3)

    def sources():
        return {c: seeded_random_bytes(3, f"client={c}") for c in vectors}

    first = masked_input_of_first_client(vectors, fixed_point, sources())
    assert np.array_equal(first, masked_input_of_first_client(vectors, fixed_point, sources()))
    later_round = masked_input_of_first_client(vectors, fixed_point, sources(), round_id=2)
    assert np.mean(first != later_round) > 0.99


def test_input_beyond_the_planned_bound_is_rejected():
    vectors = weighted_updates(4, seed=9)
    vectors["client-02"] = vectors["client-02"].copy()
    vectors["client-02"][5] = 2.5
    with pytest.raises(PrivacyError, match="client 'client-02'.*exceeds the planned fixed-point bound"):
        secure_weighted_sum(vectors, round_id=1, threshold=3, fixed_point=plan_fixed_point(2.0, 4))


def test_invalid_rounds_are_refused():
    vectors = weighted_updates(4, seed=1)
    fixed_point = plan_fixed_point(2.0, 4)
    for threshold in (1, 5):
        with pytest.raises(PrivacyError, match="threshold must be in"):
            secure_weighted_sum(vectors, round_id=1, threshold=threshold, fixed_point=fixed_point)
    with pytest.raises(PrivacyError, match="not in this round"):
        secure_weighted_sum(vectors, round_id=1, threshold=3, fixed_point=fixed_point, dropped=["nobody"])
    with pytest.raises(PrivacyError, match="planned for 3 clients"):
        secure_weighted_sum(vectors, round_id=1, threshold=3, fixed_point=plan_fixed_point(2.0, 3))
    with pytest.raises(PrivacyError, match="at least 2 clients"):
        secure_weighted_sum({"solo": np.ones(3)}, round_id=1, threshold=2, fixed_point=fixed_point)


def test_client_never_reveals_both_shares_of_one_peer():
    vectors = weighted_updates(4, seed=2, ids=list(range(4)))
    server, clients = prepare_round(vectors, round_id=1, threshold=3, fixed_point=plan_fixed_point(2.0, 4))
    for client in clients.values():
        server.receive_key(client.advertise_keys())
    roster = server.broadcast_roster()
    for client in clients.values():
        for message in client.share_keys(roster):
            clients[message.recipient].receive_shares(message)
    clients[0].unmasking_shares(survivors=[0, 1, 2], dropped=[3])
    # A server claiming client 3 survived after all (its input "arrived late") gets nothing.
    with pytest.raises(PrivacyError, match="refusing to reveal both"):
        clients[0].unmasking_shares(survivors=[0, 1, 2, 3], dropped=[])
    with pytest.raises(PrivacyError, match="both a survivor and dropped"):
        clients[1].unmasking_shares(survivors=[0, 1, 2], dropped=[2])


# --------------------------------------------------------------------------------------------- structure


def reachable_objects(root):
    """Every object reachable from `root` through attributes, slots, dataclass fields and containers."""
    seen, stack, found = set(), [root], []
    while stack:
        item = stack.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        found.append(item)
        if isinstance(item, np.ndarray | bytes | str | int | float | bool | type(None)):
            continue
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list | tuple | set | frozenset):
            stack.extend(item)
        else:
            if dataclasses.is_dataclass(item):
                stack.extend(getattr(item, f.name) for f in dataclasses.fields(item))
            stack.extend(getattr(item, "__dict__", {}).values())
            for slot in getattr(type(item), "__slots__", ()):
                if hasattr(item, slot):
                    stack.append(getattr(item, slot))
    return found


def test_server_never_holds_a_single_clients_update():
    num_clients, dim = 6, 512
    vectors = weighted_updates(num_clients, seed=21, dim=dim, ids=list(range(num_clients)))
    fixed_point = plan_fixed_point(2.0, num_clients)
    server, clients = prepare_round(vectors, round_id=5, threshold=4, fixed_point=fixed_point, rng_seed=8)
    encodings = {c: fixed_point.encode(v) for c, v in vectors.items()}
    client_secrets = {c._self_mask_seed for c in clients.values()} | {
        c._pairwise_key_seed for c in clients.values()
    }
    received = []
    original_receive = server.receive_masked_input

    def spy(client_id, masked):
        received.append((client_id, masked.copy()))
        original_receive(client_id, masked)

    server.receive_masked_input = spy
    phases_checked = []

    def inspect(phase, observed_server):
        objects = reachable_objects(observed_server)
        for item in objects:
            assert not isinstance(item, SecAggClient | MaskExpander), (
                f"{phase}: server references {type(item)}"
            )
            assert not (isinstance(item, bytes) and item in client_secrets), (
                f"{phase}: server holds a secret seed"
            )
            if isinstance(item, np.ndarray) and item.size == dim:
                for client_id, vector in vectors.items():
                    assert item is not vector
                    assert not np.array_equal(item.ravel(), encodings[client_id]), (
                        f"{phase}: encoding of {client_id}"
                    )
                    if item.dtype.kind == "f":
                        close = np.abs(item.ravel() - vector) <= 1e-6
                        assert not close.all(), f"{phase}: server holds client {client_id}'s update"
        phases_checked.append(phase)

    result = run_secure_aggregation(server, clients, dropped=[2], on_phase=inspect)
    assert phases_checked == ["advertise_keys", "share_keys", "masked_input", "unmasking"]
    # Everything the server received looks nothing like the sender's encoding.
    assert [c for c, _ in received] == [0, 1, 3, 4, 5]
    for client_id, masked in received:
        assert np.mean(masked == encodings[client_id]) < 0.01
    expected = np.sum([v.astype(np.float64) for c, v in vectors.items() if c != 2], axis=0)
    assert np.max(np.abs(server.total - expected)) <= tolerance(result, vectors)
    assert np.max(np.abs(result.total - expected)) <= tolerance(result, vectors)
