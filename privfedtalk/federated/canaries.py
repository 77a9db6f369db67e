"""Canary clients for the one-shot empirical privacy audit (privacy/audit.py holds the math).

An audit run is an ordinary run extended through `train`'s public extension points: the canaries are
extra registered clients (`clients=`), they answer through a trainer that wraps the real one
(`trainer_factory=`), and every release is recorded (`on_release=`). A canary holds no data and no
identity adapter; when sampled it sends a fixed random unit direction scaled to the clip norm, and
goes through the same weighting, clipping, noise and secure sum as a real client. Half of the drawn
directions are never inserted and are the null sample the inserted ones are compared with.

The directions come from an explicit audit seed (the audit is a measurement and must be
repeatable); the DP noise they are measured against comes from OS entropy and never sees them.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from privfedtalk.config import Config
from privfedtalk.federated.client import ClientUpdate, LocalReport, LocalTrainer, get_flat
from privfedtalk.federated.clients import ClientSpec
from privfedtalk.federated.store import RunFolder, atomic_write_text
from privfedtalk.privacy.audit import CanaryAudit, audit_canaries, canary_directions

CANARY_PREFIX = "canary"
# What an audited canary reports as its ISFA signals: the best score, so it weighs as much as allowed.
CANARY_SIGNALS = {"identity_consistency": 1.0, "temporal_stability": 1.0}


def is_canary(client_id: str) -> bool:
    return client_id.startswith(CANARY_PREFIX)


@dataclass
class CanaryAuditor:
    """Draws the canaries, plugs them into a run and turns what the run released into an ε estimate.

    directions: (2k, d) unit rows, the first k inserted as clients, the last k held out; drawn when
    the run's trainer is built, since d is the number of shared values.
    """

    inserted_count: int
    audit_seed: int
    norm: float
    num_samples: int
    directions: np.ndarray | None = None
    initial_state: np.ndarray | None = None
    round_updates: list[np.ndarray] = field(default_factory=list)
    rosters: list[list[str]] = field(default_factory=list)

    @classmethod
    def for_run(cls, cfg: Config, inserted: int, audit_seed: int) -> CanaryAuditor:
        """`inserted` canary clients (and as many held-out directions); each canary's update has norm
        privacy.clip_norm, the reference sample count and the best signals, so under DP it weighs
        w_max and clipping leaves it at C."""
        samples = max(1, math.ceil(cfg.privacy.reference_samples))
        return cls(inserted, audit_seed, float(cfg.privacy.clip_norm), samples)

    @property
    def inserted_mask(self) -> np.ndarray:
        return np.arange(2 * self.inserted_count) < self.inserted_count

    def client_ids(self) -> list[str]:
        return [f"{CANARY_PREFIX}{i:05d}" for i in range(self.inserted_count)]

    def client_specs(self) -> list[ClientSpec]:
        """The inserted canaries as registered clients: no identities, so no data is ever loaded."""
        return [ClientSpec(client_id, []) for client_id in self.client_ids()]

    def canary_update(self, client_id: str) -> torch.Tensor:
        index = int(client_id[len(CANARY_PREFIX) :])
        return torch.as_tensor(self.norm * self.directions[index], dtype=torch.float32)

    def trainer_factory(self, base_factory=LocalTrainer):
        """A `train(trainer_factory=...)` value: the run's real trainer, answering for canaries itself."""
        auditor = self

        def build(cfg, model, encoder, store):
            inner = base_factory(cfg, model, encoder, store)
            auditor.initial_state = get_flat(inner.shared).numpy().astype(np.float64)
            if auditor.inserted_count:
                rng = np.random.default_rng(auditor.audit_seed)
                dims = auditor.initial_state.size
                auditor.directions = canary_directions(2 * auditor.inserted_count, dims, rng)
            return CanaryTrainer(inner, auditor)

        return build

    def on_release(self, round_index: int, release, roster: list[str]) -> None:
        """Record what the round released (the noised weighted sum) and who was in it."""
        if release.total is not None:
            self.round_updates.append(np.asarray(release.total[: self.initial_state.size], dtype=np.float64))
            self.rosters.append(list(roster))

    def participations(self) -> int:
        """Canary updates that went into a release (sampled, in the roster)."""
        return sum(is_canary(c) for roster in self.rosters for c in roster)

    def estimate(
        self, final_state, delta: float, bootstrap_samples: int = 1000, round_updates=None
    ) -> CanaryAudit:
        """ε for the final-model and the all-iterates threat models. `round_updates` replaces the
        recorded releases (an attacker's view after removing what it can of the noise)."""
        final_delta = np.asarray(final_state, dtype=np.float64) - self.initial_state
        updates = self.round_updates if round_updates is None else round_updates
        return audit_canaries(
            self.directions,
            self.inserted_mask,
            delta=delta,
            rng=np.random.default_rng(0),
            final_model_delta=final_delta,
            round_updates=np.stack(updates) if updates else None,
            bootstrap_samples=bootstrap_samples,
        )


class CanaryTrainer:
    """The run's trainer for real clients; for a canary, its fixed update without touching the model."""

    def __init__(self, inner, auditor: CanaryAuditor):
        self.inner = inner
        self.auditor = auditor

    def __getattr__(self, name):  # shared, precision, model ... of the real trainer
        return getattr(self.inner, name)

    def run(self, client, global_shared, round_index, seed, instructions):
        if not is_canary(client.client_id):
            return self.inner.run(client, global_shared, round_index, seed, instructions)
        delta = self.auditor.canary_update(client.client_id)
        signals = dict(CANARY_SIGNALS) if instructions.compute_signals else {}
        update = ClientUpdate(client.client_id, self.auditor.num_samples, delta, signals)
        return update, LocalReport(math.nan, math.nan, float(delta.norm()), 0.0, 0.0)

    def run_many(self, clients, global_shared, round_index, seeds, instructions) -> list:
        """A group of clients (federated.client_batch): canaries answer here, the real clients train
        together in the real trainer (a canary has no clips to batch)."""
        results = [None] * len(clients)
        real = [i for i, client in enumerate(clients) if not is_canary(client.client_id)]
        for i, client in enumerate(clients):
            if is_canary(client.client_id):
                results[i] = self.run(client, global_shared, round_index, seeds[i], instructions)
        if real:
            group = [clients[i] for i in real]
            trained = self.inner.run_many(
                group, global_shared, round_index, [seeds[i] for i in real], instructions
            )
            for i, result in zip(real, trained):
                results[i] = result
        return results


# ------------------------------------------------------------------------------------------ an audit run

ACCOUNTANT_KEYS = ("epsilon_observer", "epsilon_server_worst", "epsilon_server_median")


def audit_run(cfg: Config, inserted: int, audit_seed: int = 0, bootstrap_samples: int = 1000) -> dict:
    """Train `cfg` with `inserted` canary clients added to its population; write RUN/audit.json with
    the accountant's ε next to the empirical ε of both threat models, and return it."""
    from privfedtalk.federated.clients import register_clients
    from privfedtalk.federated.simulation import train

    auditor = CanaryAuditor.for_run(cfg, inserted, audit_seed)
    run_dir = train(
        cfg,
        clients=register_clients(cfg) + auditor.client_specs(),
        trainer_factory=auditor.trainer_factory(),
        on_release=auditor.on_release,
    )
    folder = RunFolder(run_dir)
    final_state, _, _ = folder.load()
    records = folder.records()
    audit = auditor.estimate(final_state.numpy(), cfg.privacy.delta, bootstrap_samples)
    summary = {
        "run": str(run_dir),
        "dp": bool(cfg.privacy.dp),
        "delta": cfg.privacy.delta,
        "rounds": len(records),
        "canaries_inserted": auditor.inserted_count,
        "canaries_held_out": auditor.inserted_count,
        "canary_participations": auditor.participations(),
        "audit_seed": audit_seed,
        "accountant": {k: records[-1].get(k) for k in ACCOUNTANT_KEYS} if records else {},
        "empirical": {
            "final_model": _interval(audit.final_model),
            "all_iterates": _interval(audit.all_iterates) if audit.all_iterates else None,
            "confidence": audit.confidence,
        },
    }
    atomic_write_text(json.dumps(summary, indent=2), Path(run_dir) / "audit.json")
    return summary


def _interval(result) -> dict:
    estimate = result.epsilon
    return {"epsilon": estimate.estimate, "low": estimate.low, "high": estimate.high}
