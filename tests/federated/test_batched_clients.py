"""Batched clients (federated.client_batch > 1) equal sequential clients within float tolerance.

Tolerance: kernels of the grouped pass sum in another order than the per-client pass, so results
differ by float32 rounding only, which AdamW amplifies where an element's gradient is a near-cancelling
sum (it normalises the step by the gradient's own size). Compared are the changes a client makes:
the update delta must satisfy ‖batched − sequential‖ ≤ 1e-4 · ‖sequential‖, and the identity
adapter's change from its starting slot ≤ 1e-3 · ‖sequential change‖ (+1e-7 absolute for both).
Measured after 3 local steps: deltas 4e-6 (plain) and 2e-5 (TDC + FedProx), identity changes 2e-4.
A wrong pairing
of client, adapter or randomness differs by O(1) relative (asserted below: clients differ by > 1e-2).
"""

from __future__ import annotations

import copy

import pytest
import torch

from privfedtalk.config import load_config
from privfedtalk.errors import ConfigError
from privfedtalk.federated import simulation
from privfedtalk.federated.client import LocalTrainer, get_flat
from privfedtalk.federated.clients import ClientLoader, register_clients
from privfedtalk.federated.models import build_federated_model
from privfedtalk.federated.store import ClientStore, RunFolder
from privfedtalk.federated.strategy import Instructions
from privfedtalk.model import adapters

DELTA_TOLERANCE = 1e-4
IDENTITY_TOLERANCE = 1e-3
ABSOLUTE = 1e-7


def assert_close(batched: torch.Tensor, sequential: torch.Tensor, relative: float) -> float:
    """Assert the tolerance above; return the relative difference (for the failure message)."""
    gap = float((batched - sequential).norm())
    scale = float(sequential.norm())
    assert gap <= relative * scale + ABSOLUTE, f"differ by {gap:.3g} at norm {scale:.3g}"
    return gap / max(scale, 1e-30)


class MemoryStore:
    """Identity slots in memory: what each client starts from and what it staged."""

    def __init__(self, slots: dict):
        self.slots = {k: {n: v.clone() for n, v in state.items()} for k, state in slots.items()}
        self.staged = {}

    def has_identity(self, client_id):
        return client_id in self.slots

    def load_identity(self, client_id):
        return {n: v.clone() for n, v in self.slots[client_id].items()}

    def stage_identity(self, client_id, state, round_index):
        self.staged[client_id] = {n: v.clone() for n, v in state.items()}


def three_clients(cfg, model, tmp_path):
    """The fixture's two private clients and a third on the first one's clips (its own seed)."""
    loader = ClientLoader(cfg, model, ClientStore(tmp_path / "slots"))
    clients = [loader.load(spec) for spec in register_clients(cfg)]
    third = copy.copy(clients[0])
    third.client_id = "client99"
    return clients + [third]


def train_both_ways(cfg, tmp_path, instructions):
    """Updates and staged identity adapters of 3 clients: one by one, and in groups of 2 (2 + 1)."""
    torch.manual_seed(0)
    model, encoder = build_federated_model(cfg, torch.device("cpu"))
    clients = three_clients(cfg, model, tmp_path)
    fresh = adapters.adapter_state(model.unet, adapters.IDENTITY)
    # One client starts from a trained-looking slot, so loading slots is part of what is compared.
    slots = {clients[1].client_id: {k: v + 0.05 * torch.randn_like(v) for k, v in fresh.items()}}
    global_shared = 0.05 * torch.randn(
        get_flat(adapters.adapter_parameters(model.unet, adapters.SHARED)).numel()
    )
    seeds = [11, 22, 33]
    # One trainer: it keeps the fresh identity adapter it found at construction.
    trainer = LocalTrainer(cfg, model, encoder, None)
    outcomes = {}
    for batch in (1, 2):
        store = trainer.store = MemoryStore(slots)
        if batch == 1:
            results = [trainer.run(c, global_shared, 0, s, instructions) for c, s in zip(clients, seeds)]
        else:
            results = trainer.run_many(clients[:2], global_shared, 0, seeds[:2], instructions)
            results += trainer.run_many(clients[2:], global_shared, 0, seeds[2:], instructions)
        outcomes[batch] = (results, store.staged)
    starts = {c.client_id: adapters.flatten_state(slots.get(c.client_id, fresh)) for c in clients}
    return clients, outcomes, starts


@pytest.mark.parametrize(
    "extra, mu",
    [([], 0.0), (["federated.lambda_tdc=0.5", "federated.tdc_space=x0"], 0.05)],
    ids=["plain", "tdc-fedprox"],
)
def test_batched_clients_equal_sequential_clients(tiny_federated_config, tmp_path, extra, mu):
    cfg = tiny_federated_config(*extra)
    instructions = Instructions(local_steps=3, mu=mu, compute_signals=True)
    clients, outcomes, starts = train_both_ways(cfg, tmp_path, instructions)
    (sequential, seq_staged), (batched, bat_staged) = outcomes[1], outcomes[2]
    gaps, identity_gaps = [], []
    for client, (seq_update, seq_report), (bat_update, bat_report) in zip(clients, sequential, batched):
        assert bat_update.client_id == seq_update.client_id == client.client_id
        assert float(seq_update.delta.norm()) > 1e-3  # the clients did train
        gaps.append(assert_close(bat_update.delta, seq_update.delta, DELTA_TOLERANCE))
        assert bat_update.signals == seq_update.signals
        assert bat_report.loss == pytest.approx(seq_report.loss, rel=1e-5)
        assert bat_report.tdc == pytest.approx(seq_report.tdc, rel=1e-4, abs=1e-7)
        start = starts[client.client_id]
        seq_change = adapters.flatten_state(seq_staged[client.client_id]) - start
        bat_change = adapters.flatten_state(bat_staged[client.client_id]) - start
        assert float(seq_change.norm()) > 1e-3
        identity_gaps.append(assert_close(bat_change, seq_change, IDENTITY_TOLERANCE))
    # Clients differ from each other by far more than the tolerance: the comparison can fail.
    assert float((sequential[0][0].delta - sequential[2][0].delta).norm()) > 1e-2 * float(
        sequential[0][0].delta.norm()
    )
    print(f"largest relative gap: deltas {max(gaps):.2g}, identity changes {max(identity_gaps):.2g}")


def test_a_batched_run_equals_a_sequential_run(tiny_federated_config, tmp_path):
    states = {}
    for batch in (1, 2):
        cfg = tiny_federated_config(
            "federated.rounds=2", f"federated.client_batch={batch}", f"out_dir={tmp_path / str(batch)}"
        )
        states[batch] = RunFolder(simulation.train(cfg)).load()[0]
    assert float((states[1] - states[1].mean()).norm()) > 0
    assert_close(states[2], states[1], DELTA_TOLERANCE)


def test_client_batch_must_be_positive_and_needs_the_shared_adapter():
    assert load_config(None, ["federated.client_batch=4"]).federated.client_batch == 4
    with pytest.raises(ConfigError, match="federated.client_batch"):
        load_config(None, ["federated.client_batch=0"])
    with pytest.raises(ConfigError, match="federate=shared_adapter"):
        load_config(None, ["federated.client_batch=2", "federated.federate=unet"])


def test_the_grouped_pass_uses_matmul_attention_on_cpu_and_restores_the_processors(tiny_federated_config):
    from diffusers.models.attention_processor import AttnProcessor

    from privfedtalk.federated.batched import matmul_attention

    model, _ = build_federated_model(tiny_federated_config(), torch.device("cpu"))
    before = {name: type(p) for name, p in model.unet.attn_processors.items()}
    assert before and AttnProcessor not in before.values()
    with pytest.raises(RuntimeError, match="inside"):
        with matmul_attention(model.unet):
            assert {type(p) for p in model.unet.attn_processors.values()} == {AttnProcessor}
            raise RuntimeError("inside")
    assert {name: type(p) for name, p in model.unet.attn_processors.items()} == before
