"""The Flower backend runs the in-process round: same global state as SequentialBackend for the same seed
(plainly, and with secure aggregation within the fixed-point bound), and with secure aggregation the
server's messages never carry a client's unmasked vector.

One test drives Flower's simulation engine (Ray: slow to start); the others call the ClientApp in this
process through a small Grid, the same messages without the engine.
"""

from __future__ import annotations

import uuid

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

flwr = pytest.importorskip(
    "flwr", reason='the Flower backend is an optional extra: pip install -e ".[flower]"'
)

from flwr.app import Context, Error, Message, RecordDict  # noqa: E402
from flwr.serverapp import Grid  # noqa: E402
from flwr.supercore.task_identity import TaskIdentity  # noqa: E402

from privfedtalk.config import load_config  # noqa: E402
from privfedtalk.demo import QUICK  # noqa: E402
from privfedtalk.federated import simulation  # noqa: E402
from privfedtalk.federated.flower import wire  # noqa: E402
from privfedtalk.federated.flower.client_app import build_client_app  # noqa: E402
from privfedtalk.federated.flower.server_app import run_federation, run_flower_simulation  # noqa: E402
from privfedtalk.federated.store import RunFolder  # noqa: E402
from privfedtalk.privacy.mechanism import PrivacyMechanism  # noqa: E402

CLIENTS = 4
CLIP = 1000.0  # secure aggregation clips to C: one far above every update's norm


class InProcessGrid(Grid):
    """A Grid whose nodes' ClientApp runs in this process, one message after another (no engine).

    Every reply's content is kept in `received` as (message type, client node, content).
    """

    def __init__(self, client_app, num_nodes: int):
        TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 1
        self.client_app = client_app
        self.contexts = {
            1000 + i: Context(1, 1000 + i, {"partition-id": i, "num-partitions": num_nodes}, RecordDict(), {})
            for i in range(num_nodes)
        }
        self.replies: dict[str, Message] = {}
        self.received: list[tuple[str, int, RecordDict]] = []

    def set_run(self, run) -> None:
        pass

    @property
    def run(self):
        return None

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None) -> Message:
        return Message(content, dst_node_id, message_type, group_id=group_id, ttl=ttl)

    def get_node_ids(self):
        return list(self.contexts)

    def push_messages(self, messages):
        ids = []
        for message in messages:
            message.metadata.__dict__["_message_id"] = str(uuid.uuid4())
            node = message.metadata.dst_node_id
            try:
                answer = self.client_app(message, self.contexts[node])
                self.received.append((message.metadata.message_type, node, answer.content))
            except Exception as err:  # a ClientApp failure comes back as an error reply, as in Flower
                answer = Message(Error(code=0, reason=repr(err)), reply_to=message)
            self.replies[message.metadata.message_id] = answer
            ids.append(message.metadata.message_id)
        return ids

    def pull_messages(self, message_ids):
        return [self.replies.pop(i) for i in message_ids if i in self.replies]

    def send_and_receive(self, messages, *, timeout=None):
        return self.pull_messages(self.push_messages(messages))


@pytest.fixture(scope="module")
def four_client_corpus(tmp_path_factory):
    """8 identities (4 private: 4 clients) x 2 clips x 1 s at 32x32."""
    from privfedtalk.data.synthetic import synthesize_corpus

    root = tmp_path_factory.mktemp("flower_corpus")
    synthesize_corpus(root, identities=8, clips=2, seconds=1.0, size=32, seed=3)
    return root


@pytest.fixture(scope="module")
def four_client_config(four_client_corpus, tiny_checkpoint, tiny_base_overrides, tmp_path_factory):
    """A tiny 4-client config (one run folder per name); every run shares one cache of encoded clips."""
    folder = tmp_path_factory.mktemp("flower_runs")

    def make(name, *extra):
        return load_config(
            None,
            tiny_base_overrides(four_client_corpus, folder / name)
            + QUICK["federated"]
            + [
                f"federated.checkpoint={tiny_checkpoint}",
                f"data.latent_cache={folder / 'latents'}",
                "federated.rounds=2",
                f"federated.clients_per_round={CLIENTS}",
                "federated.local_steps=1",
                "federated.batch_windows=1",
            ]
            + list(extra),
        )

    return make


def global_state(run_dir) -> torch.Tensor:
    return load_file(str(run_dir / "global_shared.safetensors"))["global_shared"]


@pytest.fixture(scope="module")
def reference_run(four_client_config):
    """The in-process run (SequentialBackend), with each client's privatized vector per round recorded:
    the Flower clients compute the same ones, on their side."""
    vectors: dict[tuple[int, str], np.ndarray] = {}
    privatize = PrivacyMechanism.privatize

    def recording(self, update, weight, roster_size, round_index):
        vector = privatize(self, update, weight, roster_size, round_index)
        vectors[(round_index, update.client_id)] = vector.copy()
        return vector

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(PrivacyMechanism, "privatize", recording)
        run_dir = simulation.train(four_client_config("sequential"))
    return run_dir, vectors


def test_flower_simulation_ends_where_the_in_process_run_does(four_client_config, reference_run):
    """FedAvg, no DP, no secure aggregation: 4 clients x 2 rounds in Flower's simulation engine (Ray)."""
    reference, _ = reference_run
    flower = run_flower_simulation(four_client_config("flower"))
    assert RunFolder(flower).completed_rounds() == 2
    torch.testing.assert_close(global_state(flower), global_state(reference), rtol=0, atol=1e-6)
    ours, theirs = RunFolder(flower).records(), RunFolder(reference).records()
    assert [r["roster"] for r in ours] == [r["roster"] for r in theirs] and len(ours[0]["roster"]) == CLIENTS
    assert ours[-1]["weights"] == pytest.approx(theirs[-1]["weights"])
    assert ours[-1]["update_norm"] == pytest.approx(theirs[-1]["update_norm"], rel=1e-4)
    slots = sorted(p.parent.name for p in (flower / "clients").glob("*/identity_adapter.safetensors"))
    assert slots == sorted(ours[-1]["survivor_ids"])


@pytest.fixture(scope="module")
def secure_flower_run(four_client_config):
    """A Flower run with secure aggregation, the ClientApp called in this process; (config, grid).

    Its clip norm is one no update reaches, so it must end where the plain in-process run does, up to
    the fixed-point rounding of the secure sums."""
    cfg = four_client_config("flower_secure", "privacy.secure_aggregation=true", f"privacy.clip_norm={CLIP}")
    RunFolder(cfg.out_dir).path.mkdir(parents=True, exist_ok=True)
    grid = InProcessGrid(build_client_app(str(RunFolder(cfg.out_dir).config_file)), CLIENTS)
    run_federation(grid, cfg)
    return cfg, grid


def secure_sum_plan(cfg):
    return PrivacyMechanism(cfg, [f"client{i:04d}" for i in range(CLIENTS)], 1).sum_plan(CLIENTS)[0]


def test_secure_aggregation_over_flower_matches_within_the_fixed_point_bound(
    secure_flower_run, reference_run
):
    cfg, grid = secure_flower_run
    reference, _ = reference_run
    assert max(r["update_norm"] for r in RunFolder(reference).records()) < CLIP  # clipping changes nothing
    # Each round's decoded sum is off by at most n/(2·scale) per coordinate.
    bound = cfg.federated.rounds * secure_sum_plan(cfg).max_rounding_error(CLIENTS)
    flower = RunFolder(cfg.out_dir).path
    torch.testing.assert_close(global_state(flower), global_state(reference), rtol=0, atol=1e-6 + bound)
    assert [r["survivors"] for r in RunFolder(flower).records()] == [CLIENTS, CLIENTS]
    assert {t for t, _, _ in grid.received} >= {wire.ADVERTISE_KEYS, wire.MASKED_INPUT, wire.UNMASKING_SHARES}


def test_with_secure_aggregation_the_server_never_receives_an_unmasked_vector(
    secure_flower_run, reference_run
):
    cfg, grid = secure_flower_run
    _, vectors = reference_run
    fixed_point = secure_sum_plan(cfg)
    assert wire.PLAIN_VECTOR not in {t for t, _, _ in grid.received}
    arrays = [
        (t, record[name].numpy())
        for t, _, content in grid.received
        for record in content.array_records.values()
        for name in record
    ]
    masked = [a for t, a in arrays if t == wire.MASKED_INPUT]
    assert len(masked) == cfg.federated.rounds * CLIENTS
    assert all(t == wire.MASKED_INPUT and a.dtype == np.uint64 for t, a in arrays)
    assert len(vectors) == cfg.federated.rounds * CLIENTS
    for vector in vectors.values():
        assert carries(fixed_point.encode(vector), vector, fixed_point)  # the check catches an unmasked one,
        assert not any(carries(array, vector, fixed_point) for array in masked)  # and none was received


def carries(words: np.ndarray, vector: np.ndarray, fixed_point) -> bool:
    """Whether fixed-point words reveal `vector`: many equal words, or a decoding close to it."""
    encoded = fixed_point.encode(vector)
    return bool(np.mean(words == encoded) > 0.01 or np.allclose(fixed_point.decode(words), vector, atol=1e-3))


def test_sealed_shares_open_only_for_their_recipient_and_round():
    """The server relays peer shares it cannot read, redirect or replay into another round."""
    from privfedtalk.errors import PrivacyError
    from privfedtalk.privacy.secagg import PeerShares
    from privfedtalk.privacy.shamir import split_secret

    (a_key, a_public), (b_key, b_public), (c_key, _) = (wire.new_channel_key() for _ in range(3))
    first, second = split_secret(b"s" * 32, threshold=2, num_shares=2)
    shares = PeerShares("client0000", "client0001", first, second)
    sealed = wire.seal(shares, a_key, b_public, round_id=3)
    assert wire.share_bytes(first) not in sealed
    assert wire.open_sealed(sealed, "client0000", "client0001", b_key, a_public, 3) == shares
    with pytest.raises(PrivacyError):
        wire.open_sealed(sealed, "client0000", "client0002", c_key, a_public, 3)  # another client
    with pytest.raises(PrivacyError):
        wire.open_sealed(sealed, "client0000", "client0001", b_key, a_public, 4)  # another round


def test_a_dp_round_over_flower_keeps_counts_on_the_clients_and_matches(four_client_config):
    """DP with distributed noise and secure aggregation, noise seeded (test-only) so that both runs draw
    the same: each Flower client weighs itself and adds its noise share on its side, and the server is
    never told a sample count, signal, loss or norm; the released state is the in-process run's."""
    dp = [
        "federated.rounds=1",
        "privacy.dp=true",
        "privacy.secure_aggregation=true",
        "privacy.noise_multiplier=1.0",
        "privacy.noise_source=insecure_seeded",
    ]
    reference = simulation.train(four_client_config("sequential_dp", *dp))
    cfg = four_client_config("flower_dp", *dp)
    RunFolder(cfg.out_dir).path.mkdir(parents=True, exist_ok=True)
    grid = InProcessGrid(build_client_app(str(RunFolder(cfg.out_dir).config_file)), CLIENTS)
    run_federation(grid, cfg)
    bound = secure_sum_plan(cfg).max_rounding_error(CLIENTS)
    flower = RunFolder(cfg.out_dir).path
    torch.testing.assert_close(global_state(flower), global_state(reference), rtol=0, atol=1e-6 + bound)
    assert RunFolder(flower).records()[0]["epsilon_observer"] > 0
    trained = [content for t, _, content in grid.received if t == wire.TRAIN]
    assert len(trained) == CLIENTS
    for content in trained:
        assert set(content["outcome"]) == {"refusal"}
        assert set(content["diagnostics"]) == {"train_seconds", "swap_seconds"}


class SilentNodeGrid(InProcessGrid):
    """From the first `after` message on, one node stops answering: Flower's grid then returns at the
    timeout without its reply."""

    def __init__(self, client_app, num_nodes: int, silent_node: int, after: str):
        super().__init__(client_app, num_nodes)
        self.silent_node, self.after = silent_node, after
        self.gone = False
        self.timeouts: list = []

    def send_and_receive(self, messages, *, timeout=None):
        self.timeouts.append(timeout)
        self.gone |= any(m.metadata.message_type == self.after for m in messages)
        kept = [m for m in messages if not (self.gone and m.metadata.dst_node_id == self.silent_node)]
        return self.pull_messages(self.push_messages(kept))


def test_a_node_that_stops_answering_is_a_dropout_not_a_stall(four_client_config):
    """federated.reply_timeout_s reaches Flower's grid; a client gone silent after sharing its keys is
    recovered like any dropout (its masks from the others' shares) and the round completes."""
    cfg = four_client_config(
        "flower_silent",
        "privacy.secure_aggregation=true",
        f"privacy.clip_norm={CLIP}",
        "federated.reply_timeout_s=30",
        "federated.rounds=1",
    )
    RunFolder(cfg.out_dir).path.mkdir(parents=True, exist_ok=True)
    app = build_client_app(str(RunFolder(cfg.out_dir).config_file))
    grid = SilentNodeGrid(app, CLIENTS, silent_node=1000, after=wire.MASKED_INPUT)
    run_federation(grid, cfg)
    (record,) = RunFolder(cfg.out_dir).records()
    assert record["survivors"] == CLIENTS - 1 and "skipped" not in record
    assert torch.isfinite(global_state(RunFolder(cfg.out_dir).path)).all()
    assert set(grid.timeouts) == {30.0}
