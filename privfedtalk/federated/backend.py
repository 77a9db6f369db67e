"""Backends: where a round's clients train and how their vectors are summed.

`run_round` asks a backend to train the sampled clients, to have each client check and privatize its
update (`refusals`, `privatize`: client-side steps, so a backend whose clients live elsewhere keeps the
raw update there), to agree on the roster, to gather reports, and to sum vectors (securely or
plainly); it never asks which backend it has. `SequentialBackend` runs every client in this process;
`parallel.DistributedBackend` shards them over torch.distributed processes; `flower.backend.FlowerBackend`
implements the same methods over Flower messages.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from privfedtalk.errors import MediaError
from privfedtalk.federated.client import ClientUpdate, LocalReport
from privfedtalk.federated.clients import client_seed
from privfedtalk.privacy.fixed_point import FixedPoint
from privfedtalk.privacy.secagg import SecureSumResult, secure_weighted_sum

log = logging.getLogger("privfedtalk")


@dataclass
class LocalResult:
    """A client's outcome of local training: its update (for the privacy step) and its diagnostics."""

    update: ClientUpdate
    report: LocalReport


class SequentialBackend:
    """Every client in this process, one after another; sums are computed here."""

    is_server = True

    def __init__(self, loader, trainer, seed: int, on_client_done=None):
        self.loader = loader
        self.trainer = trainer
        self.seed = seed
        self.on_client_done = on_client_done
        self._order: dict[str, int] = {}

    # -- local training ---------------------------------------------------------------------------
    def clients_here(self, sampled: list) -> list:
        """Of the sampled clients, those this process trains."""
        return sampled

    def train(self, sampled: list, instructions, global_state, round_index: int) -> dict[str, LocalResult]:
        """Train this process's share of the sampled clients from the global state; results by id."""
        self._order = {spec.client_id: i for i, spec in enumerate(sampled)}
        results = {}
        here = self.clients_here(sampled)
        size = max(1, int(getattr(self.trainer, "client_batch", 1)))
        progress = tqdm(
            total=len(here), desc=f"round {round_index + 1} clients", leave=False, disable=not self.is_server
        )
        for start in range(0, len(here), size):
            group = self._load_group(here[start : start + size], round_index)
            for (spec, _), (update, report) in zip(
                group, self._train_group(group, instructions, global_state, round_index)
            ):
                results[spec.client_id] = LocalResult(update, report)
                if self.on_client_done is not None:
                    self.on_client_done(round_index, spec.client_id)
            progress.update(min(size, len(here) - start))
        progress.close()
        return results

    def _load_group(self, specs: list, round_index: int) -> list:
        """(spec, data) of the clients, in order; a client whose media fail to load is skipped."""
        group = []
        for spec in specs:
            try:
                group.append((spec, self.loader.load(spec)))
            except MediaError as err:
                log.warning("round %d: %s skipped: %s", round_index + 1, spec.client_id, err)
        return group

    def _train_group(self, group: list, instructions, global_state, round_index: int) -> list:
        """The group's clients trained together (federated.client_batch; a group of one is `run`)."""
        seeds = [client_seed(self.seed, round_index, spec.client_id) for spec, _ in group]
        data = [d for _, d in group]
        return self.trainer.run_many(data, global_state, round_index, seeds, instructions)

    # -- the client side of the privacy step -------------------------------------------------------
    def refusals(self, local: dict[str, LocalResult], privacy) -> dict[str, str]:
        """Why a client withholds its update, by id (each client checks its own, before any key is drawn)."""
        return {c: why for c, r in local.items() if (why := privacy.refusal(r.update))}

    def privatize(
        self, privacy, strategy, updates: dict[str, ClientUpdate], roster_size: int, round_index: int
    ) -> tuple[dict[str, float], dict[str, np.ndarray]]:
        """(weights, vectors): each client's weight and its clipped, weighted, noised vector.

        Here the clients' updates are in this process, so both are computed here; a backend whose clients
        live elsewhere (Flower) has each client compute its own vector and keep it until the sum.
        """
        weights = privacy.weights(strategy, [u.report for u in updates.values()], self)
        vectors = {c: privacy.privatize(u, weights[c], roster_size, round_index) for c, u in updates.items()}
        return weights, vectors

    # -- agreeing on the round ----------------------------------------------------------------------
    def _in_sampled_order(self, client_ids) -> list:
        return sorted(client_ids, key=lambda c: self._order[c])

    def roster(self, accepted: list[str]) -> list[str]:
        """Every process's clients that will send an update, in sampled order (identical everywhere)."""
        return self._in_sampled_order(accepted)

    def gather_reports(self, reports: list) -> list:
        """Every client's report, in sampled order (the server normalises weights from them)."""
        return sorted(reports, key=lambda r: self._order[r.client_id])

    def merge(self, mapping: dict) -> dict:
        """Per-client diagnostics of every process (for the record of a run without DP)."""
        return dict(mapping)

    # -- sums -------------------------------------------------------------------------------------
    def secure_sum(
        self,
        vectors: dict,
        roster: list[str],
        fixed_point: FixedPoint,
        threshold: int,
        round_index: int,
        dropped: list[str],
        size: int,
    ) -> SecureSumResult:
        """Masked sum of the roster's vectors; `dropped` share keys, then send nothing."""
        return secure_weighted_sum(
            {c: vectors[c] for c in roster},
            round_id=round_index,
            threshold=threshold,
            fixed_point=fixed_point,
            dropped=dropped,
        )

    def plain_sum(self, vectors: dict, survivors: list[str], size: int) -> np.ndarray:
        """Unmasked sum: no secure aggregation, or a DP round of one client (its vector is fully noised)."""
        total = np.zeros(size, dtype=np.float64)
        for client_id in survivors:
            total += vectors[client_id]
        return total

    def rank_stats(self, seconds: float, peak_mb: float) -> dict:
        """Per-process wall time and peak memory of the round (empty for one process)."""
        return {}

    # -- after the round ----------------------------------------------------------------------------
    def commit(self, client_ids: list[str], store) -> None:
        """Promote the identity adapters this process staged for `client_ids` (it owns their slots)."""
        for client_id in client_ids:
            store.commit_identity(client_id)

    def barrier(self) -> None:
        pass
