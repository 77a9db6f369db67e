"""Canary clients of the empirical privacy audit, plugged into real (tiny) runs through train()'s
extension points: they never touch real data, a run without them is unchanged, and the audit sees
through noise an attacker can rebuild but not through OS-entropy noise."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from privfedtalk.federated import simulation
from privfedtalk.federated.canaries import CanaryAuditor, audit_run, is_canary
from privfedtalk.federated.client import LocalTrainer
from privfedtalk.federated.clients import register_clients
from privfedtalk.federated.store import RunFolder
from privfedtalk.privacy.dp import distributed_noise_std
from privfedtalk.privacy.noise import insecure_seeded_source

CANARIES = 48
AUDIT_RUN = [
    "privacy.dp=true",
    "privacy.secure_aggregation=true",
    "privacy.noise_multiplier=1.0",
    "privacy.clip_norm=0.05",
    "federated.rounds=2",
    "federated.clients_per_round=12",
]


@pytest.mark.parametrize("client_batch", [1, 4])
def test_canaries_take_part_without_reaching_real_clients(tiny_federated_config, tmp_path, client_batch):
    # Every client in every round (q = 1), so the real clients surely train (sampling is OS entropy).
    # client_batch=4: groups mix canaries and real clients; the canaries still answer for themselves.
    everyone = f"federated.clients_per_round={CANARIES + 2}"
    batch = f"federated.client_batch={client_batch}"
    cfg = tiny_federated_config(*AUDIT_RUN, everyone, batch, f"out_dir={tmp_path / 'audit'}")
    summary = audit_run(cfg, CANARIES, bootstrap_samples=50)
    run = RunFolder(summary["run"])
    assert json.loads((run.path / "audit.json").read_text()) == summary
    assert summary["canary_participations"] > 0
    assert summary["accountant"]["epsilon_observer"] > 0
    for threat_model in ("final_model", "all_iterates"):
        assert summary["empirical"][threat_model]["epsilon"] >= 0
    # No canary has a client slot (no latents, no identity adapter); the real clients do.
    slots = [p.name for p in (run.path / "clients").iterdir()]
    assert slots and not any(is_canary(name) for name in slots)
    # The round losses are the real clients' (canaries train nothing and report none).
    assert all(math.isfinite(r["loss"]) for r in run.records() if r.get("loss") is not None)


def test_a_run_with_no_canaries_is_unchanged(tiny_federated_config, tmp_path):
    plain = simulation.train(tiny_federated_config(f"out_dir={tmp_path / 'plain'}"))
    cfg = tiny_federated_config(f"out_dir={tmp_path / 'wrapped'}")
    auditor = CanaryAuditor.for_run(cfg, 0, audit_seed=0)
    wrapped = simulation.train(
        cfg,
        clients=register_clients(cfg) + auditor.client_specs(),
        trainer_factory=auditor.trainer_factory(LocalTrainer),
        on_release=auditor.on_release,
    )
    assert torch.equal(RunFolder(plain).load()[0], RunFolder(wrapped).load()[0])


def seeded_noise(cfg, round_index, roster, dims) -> np.ndarray:
    """The attacker's rebuild of the distributed noise from the config seed, the round and the roster."""
    sigma = cfg.privacy.noise_multiplier * cfg.privacy.clip_norm / cfg.federated.clients_per_round
    share = distributed_noise_std(sigma, len(roster))
    return sum(
        insecure_seeded_source(cfg.seed, "client-noise", round_index, c).normal(dims, share) for c in roster
    )


@pytest.mark.parametrize("source", ["os_entropy", "insecure_seeded"])
def test_the_audit_sees_through_rebuildable_noise_only(tiny_federated_config, tmp_path, source):
    cfg = tiny_federated_config(*AUDIT_RUN, f"privacy.noise_source={source}", f"out_dir={tmp_path / source}")
    auditor = CanaryAuditor.for_run(cfg, CANARIES, audit_seed=1)
    run_dir = simulation.train(
        cfg,
        clients=register_clients(cfg) + auditor.client_specs(),
        trainer_factory=auditor.trainer_factory(),
        on_release=auditor.on_release,
    )
    final = RunFolder(run_dir).load()[0].numpy()
    dims = final.size
    # The server knows each round's roster; it subtracts every noise it can rebuild from public values.
    stripped = [
        update - seeded_noise(cfg, r, roster, dims)
        for r, (update, roster) in enumerate(zip(auditor.round_updates, auditor.rosters))
    ]
    honest = auditor.estimate(final, cfg.privacy.delta, bootstrap_samples=50)
    attacked = auditor.estimate(final, cfg.privacy.delta, bootstrap_samples=50, round_updates=stripped)
    print(f"{source}: audit ε {honest.all_iterates.epsilon}, after stripping {attacked.all_iterates.epsilon}")
    if source == "insecure_seeded":  # the noise is gone: canaries stand out almost perfectly
        assert attacked.all_iterates.epsilon.estimate > 1000
    else:  # nothing could be rebuilt: subtracting a wrong guess only adds noise
        assert attacked.all_iterates.epsilon.estimate < 100
