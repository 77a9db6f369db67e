"""The server side of a round: weights from (count, signals), the secure sum, the global update, ε.

The server holds the global shared state, the accountant, and per round only what a real server
would: sample counts, quantized scalars, and the (securely) summed vector.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from privfedtalk.federated.aggregation import capped_weights, normalized_weights, reliability_score
from privfedtalk.privacy.dp import PrivacyAccountant, calibrate_noise_multiplier
from privfedtalk.privacy.fixed_point import FixedPoint, plan_fixed_point
from privfedtalk.privacy.secagg import secure_weighted_sum


@dataclass
class ClientReport:
    """What the server learns of one client before the sum: its count and quantized signals."""

    client_id: str
    num_samples: int
    signals: dict[str, float]


class Server:
    def __init__(self, global_shared: torch.Tensor, fed_cfg, privacy_cfg, num_clients: int, rounds: int):
        self.global_shared = global_shared.clone()
        self.fed = fed_cfg
        self.privacy = privacy_cfg
        self.num_clients = num_clients
        self.expected_clients = min(fed_cfg.clients_per_round, num_clients)
        self.noise_multiplier = 0.0
        self.accountant = None
        if privacy_cfg.dp:
            sampling = self._accountant_sampling()
            if privacy_cfg.target_epsilon > 0:
                self.noise_multiplier = calibrate_noise_multiplier(
                    privacy_cfg.target_epsilon,
                    rounds,
                    privacy_cfg.delta,
                    accountant=privacy_cfg.accountant,
                    **sampling,
                )
            else:
                self.noise_multiplier = privacy_cfg.noise_multiplier
            self.accountant = PrivacyAccountant(
                privacy_cfg.delta, accountant=privacy_cfg.accountant, **sampling
            )

    def _accountant_sampling(self) -> dict:
        if self.fed.sampling == "poisson":
            return {"sampling": "poisson", "sampling_rate": self.expected_clients / self.num_clients}
        return {
            "sampling": "fixed_size",
            "num_clients": self.num_clients,
            "clients_per_round": self.expected_clients,
        }

    # -- weights --------------------------------------------------------------------------------
    def weights(self, reports: list[ClientReport]) -> dict[str, float]:
        counts = [r.num_samples for r in reports]
        scores = None
        if self.fed.method == "isfa":
            scores = [
                reliability_score(
                    r.signals["identity_consistency"], r.signals["temporal_stability"], self.fed.isfa_alpha
                )
                for r in reports
            ]
        gamma = self.fed.isfa_gamma if scores is not None else 0.0
        if self.privacy.dp:
            w = capped_weights(counts, scores, gamma, self.expected_clients, self.privacy.reference_samples)
        else:
            w = normalized_weights(counts, scores, gamma)
        return {r.client_id: float(x) for r, x in zip(reports, w)}

    @property
    def weight_cap(self) -> float:
        """w_max: the largest weight one client can get (DP sensitivity is w_max·C)."""
        return 1.0 / self.expected_clients

    def noise_std_total(self) -> float:
        """Std of the Gaussian noise on the weighted sum: z·w_max·C."""
        if not self.privacy.dp:
            return 0.0
        return self.noise_multiplier * self.weight_cap * self.privacy.clip_norm

    # -- the sum --------------------------------------------------------------------------------
    def secure_sum_plan(self, num_clients: int) -> tuple[FixedPoint, int]:
        """Fixed-point plan and Shamir threshold for a round of `num_clients`, from public quantities only.

        The server never sees a vector: with secure aggregation every update is clipped to C and
        weights are ≤ 1 (≤ w_max under DP), so each coordinate is ≤ w·C, plus an 8σ margin for a
        client's noise share (an input beyond it is rejected at run time).
        """
        weight_bound = self.weight_cap if self.privacy.dp else 1.0
        per_client = weight_bound * self.privacy.clip_norm + 8 * self.noise_std_total()
        fixed_point = plan_fixed_point(per_client, num_clients, bits=self.privacy.fixed_point_bits)
        threshold = max(2, math.ceil(self.privacy.threshold_fraction * num_clients))
        return fixed_point, threshold

    def secure_sum(self, vectors: dict[str, np.ndarray], round_index: int, dropped=()):
        """Masked sum of the clients' prepared vectors; only the total is ever decoded here."""
        fixed_point, threshold = self.secure_sum_plan(len(vectors))
        return secure_weighted_sum(
            vectors, round_id=round_index, threshold=threshold, fixed_point=fixed_point, dropped=dropped
        )

    def apply(self, total: np.ndarray) -> None:
        step = torch.as_tensor(total, dtype=torch.float32)
        self.global_shared = self.global_shared + self.fed.server_lr * step

    def account(self, expected: int, actual: int) -> float | None:
        """Record the round with the noise actually added (dropouts lower it in distributed mode)."""
        if self.accountant is None:
            return None
        z = self.noise_multiplier
        if self.privacy.noise == "distributed" and expected > 0:
            z = z * math.sqrt(actual / expected)
        self.accountant.step(z)
        return z

    def epsilon(self) -> float | None:
        return None if self.accountant is None else float(self.accountant.epsilon())
