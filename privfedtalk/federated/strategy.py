"""Strategies: what each sampled client is asked to compute, how reports become weights, and how the
server applies the released sum. FedAvg, FedProx and ISFA differ only here; the math is in aggregation.py.

Local-only and centralized training are configurations of the same loop, not strategies: local-only
is `server_lr=0` (the global state never moves; each client keeps its identity adapter), centralized
is one client owning every private identity (`partition.identities_per_client`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from privfedtalk.config import Config, Method
from privfedtalk.federated import aggregation
from privfedtalk.federated.server_optimizer import build_server_optimizer


@dataclass(frozen=True)
class Instructions:
    """What every sampled client computes this round (broadcast with the global state)."""

    local_steps: int
    mu: float  # FedProx proximal weight (0: none)
    compute_signals: bool  # the reliability signals ISFA weighs by (computed and kept on the client)


@dataclass(frozen=True)
class ClientReport:
    """A client's weighing inputs: sample count and quantized signals.

    Without DP the server receives these and normalises the weights; under DP each client computes
    its own capped weight from them, and they never leave the client (see privacy/mechanism.py).
    """

    client_id: str
    num_samples: int
    signals: dict[str, float]


class Strategy:
    """FedAvg: weights ∝ sample count; the server optimizer applies the released sum."""

    method = Method.fedavg

    def __init__(self, cfg: Config):
        self.fed = cfg.federated
        self.optimizer = build_server_optimizer(cfg.federated)

    def configure_round(self, round_index: int) -> Instructions:
        return Instructions(local_steps=self.fed.local_steps, mu=0.0, compute_signals=False)

    def relative_weight(self, report: ClientReport) -> float:
        return aggregation.relative_weight(report.num_samples)

    def weights(self, reports: list[ClientReport]) -> dict[str, float]:
        """Normalised weights (sum 1) from every client's report: the server-side rule without DP."""
        values = aggregation.normalized_weights([self.relative_weight(r) for r in reports])
        return {r.client_id: float(w) for r, w in zip(reports, values)}

    def apply(self, global_state: torch.Tensor, released: torch.Tensor) -> torch.Tensor:
        """The next global state from the released (secure, possibly noised) weighted sum of deltas."""
        return self.optimizer.step(global_state, released)

    def state_dict(self) -> dict:
        return self.optimizer.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state)


class FedProx(Strategy):
    """FedAvg's weights; each client adds (μ/2)·‖w − w_global‖² to its local objective."""

    method = Method.fedprox

    def configure_round(self, round_index: int) -> Instructions:
        return Instructions(local_steps=self.fed.local_steps, mu=self.fed.mu, compute_signals=False)


class ISFA(Strategy):
    """Weights ∝ n·exp(γ·s), s = α·identity consistency + (1 − α)·temporal stability (on-device)."""

    method = Method.isfa

    def configure_round(self, round_index: int) -> Instructions:
        return Instructions(local_steps=self.fed.local_steps, mu=self.fed.mu, compute_signals=True)

    def score(self, report: ClientReport) -> float:
        signals = report.signals
        return aggregation.reliability_score(
            signals["identity_consistency"], signals["temporal_stability"], self.fed.isfa_alpha
        )

    def relative_weight(self, report: ClientReport) -> float:
        return aggregation.relative_weight(report.num_samples, self.score(report), self.fed.isfa_gamma)


class ISFAThreshold(ISFA):
    """Robust baseline: weight n when ISFA's score s >= signal_threshold, else 0.

    Like ISFA's, the weight depends on the client's own data only, so under DP each client computes it
    itself. A client under the threshold still sends (its zero vector plus its noise share), so the
    secure sum's roster, and everything planned from it, does not depend on anyone's signals.
    """

    method = Method.isfa_threshold

    def relative_weight(self, report: ClientReport) -> float:
        return aggregation.thresholded_weight(
            report.num_samples, self.score(report), self.fed.signal_threshold
        )

    def weights(self, reports: list[ClientReport]) -> dict[str, float]:
        """As FedAvg's among the clients that pass; all zero (the global state stays) when none does."""
        relative = [self.relative_weight(r) for r in reports]
        if sum(relative) <= 0:
            return {r.client_id: 0.0 for r in reports}
        values = aggregation.normalized_weights(relative)
        return {r.client_id: float(w) for r, w in zip(reports, values)}


STRATEGIES = {cls.method: cls for cls in (Strategy, FedProx, ISFA, ISFAThreshold)}


def build_strategy(cfg: Config) -> Strategy:
    return STRATEGIES[cfg.federated.method](cfg)
