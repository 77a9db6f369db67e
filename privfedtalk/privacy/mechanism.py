"""The run's privacy mechanism: one object between a client's raw update and the released sum.

Like Opacus's `make_private`, it wraps any strategy instead of being threaded through the loop. It
owns the refusal of bad updates, the weights under DP, clipping, the noise (shares or trusted), the
secure-sum plan, the randomness that protects privacy, and the ledger of what each release costs:
ε against an observer of the released models (sampling amplification allowed) and ε against the
aggregation server (it knows the roster: no amplification). The math lives in dp.py, fixed_point.py
and secagg.py; nothing here re-derives it.
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import torch

from privfedtalk.config import ClipMode, Config, NoisePlacement, NoiseSource, Sampling
from privfedtalk.errors import PrivacyError
from privfedtalk.privacy import dp
from privfedtalk.privacy.adaptive_clipping import (
    AdaptiveClipState,
    centred_unclipped_bit,
    recommended_bit_noise_std,
    update_noise_multiplier,
)
from privfedtalk.privacy.fixed_point import FixedPoint, per_coordinate_bound, plan_fixed_point
from privfedtalk.privacy.noise import RandomSource, insecure_seeded_source
from privfedtalk.privacy.secagg import MIN_CLIENTS, shamir_threshold

log = logging.getLogger("privfedtalk")

NOT_PRIVATE = (
    "NOT PRIVATE: privacy.noise_source=insecure_seeded (anyone with the config can rebuild the noise)"
)


@dataclass
class Release:
    """What the server decodes in one round and what it cost.

    total: the released weighted sum (None: nothing released, the round is skipped); survivors: the
    clients whose update is in it; noise_multiplier: z of the noise it carries (None without DP).
    """

    total: np.ndarray | None
    survivors: list[str] = field(default_factory=list)
    noise_multiplier: float | None = None
    noise_only: bool = False  # DP round with no decodable update: the server released noise alone
    skipped: str | None = None
    secure_sum_seconds: float = 0.0
    clip_norm: float | None = None  # the C this round's updates were clipped to
    signal_norm: float | None = None  # privacy.log_signal_norm only: ‖Σ w·clip(Δ)‖, noise-free
    noise_norm: float | None = None  # privacy.log_signal_norm only: ‖released − Σ w·clip(Δ)‖


def accountant_sampling(cfg: Config, num_clients: int) -> dict:
    """The sampling arguments of PrivacyAccountant for the run's scheme."""
    m = min(cfg.federated.clients_per_round, num_clients)
    if cfg.federated.sampling == Sampling.poisson:
        return {"sampling": "poisson", "sampling_rate": m / num_clients}
    return {"sampling": "fixed_size", "num_clients": num_clients, "clients_per_round": m}


class PrivacyMechanism:
    def __init__(self, cfg: Config, client_ids: list[str], dims: int):
        privacy = cfg.privacy
        self.cfg = cfg
        self.privacy = privacy
        self.client_ids = list(client_ids)
        self.dims = dims
        self.expected_clients = min(cfg.federated.clients_per_round, len(client_ids))
        self.noise_multiplier = 0.0
        self.observer: dp.PrivacyAccountant | None = None
        # Server-side ledger: per client, Σ 1/z² over the releases that carried its update.
        self.server_exposure: dict[str, float] = {}
        self.participation: Counter = Counter()
        # Adaptive clipping: each vector carries one more value, the client's centred unclipped bit.
        self.adaptive = privacy.clip == ClipMode.adaptive
        self.clip_state = AdaptiveClipState(privacy.clip_norm) if self.adaptive else None
        self.bit_noise_std = (
            privacy.bit_noise_std or recommended_bit_noise_std(self.expected_clients)
        ) * self.adaptive
        self.vector_size = dims + int(self.adaptive)
        self._noise_free: dict[str, np.ndarray] = {}  # privacy.log_signal_norm only
        if privacy.dp:
            sampling = accountant_sampling(cfg, len(client_ids))
            self.observer = dp.PrivacyAccountant(
                privacy.delta, accountant=str(privacy.accountant), **sampling
            )
            if privacy.target_epsilon > 0:
                self.noise_multiplier = dp.calibrate_noise_multiplier(
                    privacy.target_epsilon,
                    cfg.federated.rounds,
                    privacy.delta,
                    accountant=str(privacy.accountant),
                    **sampling,
                )
            else:
                self.noise_multiplier = privacy.noise_multiplier
            if self.seeded:
                log.warning("%s: this run's ε is reported but does not hold", NOT_PRIVATE)

    # -- what kind of run this is -----------------------------------------------------------------
    @property
    def seeded(self) -> bool:
        return self.privacy.noise_source == NoiseSource.insecure_seeded

    @property
    def guarantee(self) -> str:
        if not self.privacy.dp:
            return "none (DP off)"
        against_server = "none (trusted aggregator)" if self.trusted else "ε_server"
        text = (
            f"client-level DP at δ={self.privacy.delta:g}: ε_observer; against the server: {against_server}"
        )
        if self.seeded:
            text = NOT_PRIVATE
        if self.privacy.log_signal_norm:
            text += "; SIMULATION DIAGNOSTICS: the noise-free sum's norm is logged (not private)"
        return text

    @property
    def trusted(self) -> bool:
        return self.privacy.dp and self.privacy.noise == NoisePlacement.trusted

    @property
    def clip_norm(self) -> float | None:
        """This round's C when updates are clipped (DP, or fixed point under secure aggregation)."""
        if not (self.privacy.dp or self.privacy.secure_aggregation):
            return None
        return self.clip_state.clip_norm if self.adaptive else self.privacy.clip_norm

    @property
    def update_noise_multiplier(self) -> float:
        """z_Δ of the update's noise: z itself, or the larger share left after the adaptive-clipping
        count takes its part of the budget (z⁻² = z_Δ⁻² + (2σ_b)⁻², see adaptive_clipping.py)."""
        if self.adaptive:
            return update_noise_multiplier(self.noise_multiplier, self.bit_noise_std)
        return self.noise_multiplier

    @property
    def weight_cap(self) -> float:
        """w_max = 1/m: the largest weight a client can give itself under DP (sensitivity w_max·C)."""
        return 1.0 / self.expected_clients

    def noise_std(self) -> float:
        """σ = z·w_max·C: the noise on the released sum (0 without DP)."""
        if not self.privacy.dp:
            return 0.0
        return dp.gaussian_noise_std(self.update_noise_multiplier, self.clip_norm, self.weight_cap)

    def _draw_noise(self, source: RandomSource, shares: int) -> np.ndarray:
        """One of `shares` equal shares of the noise on the whole vector (update, then the bit)."""
        noise = source.normal(self.dims, dp.distributed_noise_std(self.noise_std(), shares))
        if self.adaptive:
            noise = np.append(noise, source.normal(1, dp.distributed_noise_std(self.bit_noise_std, shares)))
        return noise

    # -- randomness --------------------------------------------------------------------------------
    def random_source(self, purpose: str, round_index: int, party: str) -> RandomSource:
        """A fresh OS-entropy source; only the loudly named test setting derives it from the seed."""
        if self.seeded:
            return insecure_seeded_source(self.cfg.seed, purpose, round_index, party)
        return RandomSource.from_os_entropy(purpose)

    def sampling_source(self, round_index: int) -> RandomSource:
        """Who takes part: secret (OS entropy) in a DP run, so an observer cannot know the sample and
        amplification by sampling holds against it; seeded without DP, for reproducible runs."""
        if self.privacy.dp:
            return self.random_source("sampling", round_index, "server")
        return insecure_seeded_source(self.cfg.seed, "sampling", round_index)

    # -- client side ---------------------------------------------------------------------------------
    def refusal(self, update) -> str | None:
        """Why a client refuses to send its update (checked on the client, before any key is drawn)."""
        if not bool(torch.isfinite(update.delta).all()):
            return "update has NaN or infinite values"
        if not all(math.isfinite(v) for v in update.signals.values()):
            return "signals have NaN or infinite values"
        return None

    def weights(self, strategy, reports: list, backend) -> dict[str, float]:
        """Each client's weight. Under DP a client weighs itself (capped, fixed denominator: it depends on
        its own data only), so its count and signals never leave it; otherwise the server normalises."""
        if self.privacy.dp:
            m, reference = self.expected_clients, self.privacy.reference_samples
            return {r.client_id: dp.capped_weight(strategy.relative_weight(r), m, reference) for r in reports}
        return strategy.weights(backend.gather_reports(reports))

    def privatize(self, update, weight: float, roster_size: int, round_index: int) -> np.ndarray:
        """Clip to C, multiply by the weight, add this client's noise share: the vector to be masked.

        Weighting before masking is what lets the masks cancel in a plain sum. Shares are sized by the
        roster (public once sampling is done), so the sum of all shares carries the full σ.
        """
        vector = update.delta.numpy().astype(np.float64)
        if self.clip_norm is not None:
            vector, norm = dp.clip_to_norm(vector, self.clip_norm)
        vector = vector * weight
        if self.adaptive:
            vector = np.append(vector, centred_unclipped_bit(norm, self.clip_norm))
        if self.privacy.log_signal_norm:
            self._noise_free[update.client_id] = vector.copy()
        if self.privacy.dp and not self.trusted:
            source = self.random_source("client-noise", round_index, update.client_id)
            vector = vector + self._draw_noise(source, roster_size)
        return vector

    # -- server side ---------------------------------------------------------------------------------
    def sum_plan(self, roster_size: int) -> tuple[FixedPoint, int]:
        """Fixed-point plan and Shamir threshold for a roster, from public quantities only."""
        weight_bound = self.weight_cap if self.privacy.dp else 1.0
        shares = 0 if self.trusted else 1
        share = dp.distributed_noise_std(self.noise_std(), roster_size) * shares
        bound = per_coordinate_bound(weight_bound, self.clip_norm, share)
        if self.adaptive:  # the centred bit is ±1/2
            bit_share = dp.distributed_noise_std(self.bit_noise_std, roster_size) * shares
            bound = max(bound, per_coordinate_bound(1.0, 0.5, bit_share))
        fixed_point = plan_fixed_point(bound, roster_size, bits=self.privacy.fixed_point_bits)
        return fixed_point, shamir_threshold(self.privacy.threshold_fraction, roster_size)

    def release(self, backend, vectors: dict, roster: list[str], dropped: list[str], round_index: int):
        """Sum the roster's vectors (securely where configured), add trusted noise, record the cost.

        Under DP every round releases something, so whether a round is skipped never depends on who is
        in the data: a round with no decodable update (an empty Poisson sample, too many dropouts)
        releases noise alone, and a one-client round goes unmasked with its full noise share. Without
        DP a round that secure aggregation cannot protect is skipped and nothing is released.
        """
        started = time.perf_counter()
        survivors = [c for c in roster if c not in dropped]
        total, skipped = None, None
        try:
            if not roster:
                raise PrivacyError("no client sent an update")
            if self.privacy.secure_aggregation and len(roster) >= MIN_CLIENTS:
                fixed_point, threshold = self.sum_plan(len(roster))
                result = backend.secure_sum(
                    vectors, roster, fixed_point, threshold, round_index, dropped, self.vector_size
                )
                total, survivors = result.total, list(result.survivors)
            elif self.privacy.secure_aggregation and not self.privacy.dp:
                raise PrivacyError(
                    f"secure aggregation needs at least {MIN_CLIENTS} clients, round has {len(roster)}"
                )
            elif not survivors:
                raise PrivacyError("every client of the round dropped out")
            else:
                total = backend.plain_sum(vectors, survivors, self.vector_size)
        except PrivacyError as err:
            skipped, survivors = str(err), []
        release = Release(total, survivors, None, skipped=skipped, clip_norm=self.clip_norm)
        release.secure_sum_seconds = time.perf_counter() - started
        if self.privacy.dp:
            server_noise = self.random_source("server-noise", round_index, "server")
            if release.total is None:
                release.total, release.noise_only = self._draw_noise(server_noise, 1), True
                release.noise_multiplier = self.noise_multiplier
            elif self.trusted:
                release.total = release.total + self._draw_noise(server_noise, 1)
                release.noise_multiplier = self.noise_multiplier
            else:
                release.noise_multiplier = dp.effective_noise_multiplier(
                    self.noise_multiplier, len(roster), len(survivors)
                )
            self.charge(release.noise_multiplier, survivors)
        if release.total is not None:
            self._measure_signal(backend, release)
            if self.adaptive:  # the released count of unclipped clients sets the next round's C
                release.total, bit_sum = release.total[:-1], float(release.total[-1])
                self.clip_state.update(
                    bit_sum,
                    self.expected_clients,
                    self.privacy.target_quantile,
                    self.privacy.clip_learning_rate,
                )
        self._noise_free = {}
        return release

    def _measure_signal(self, backend, release: Release) -> None:
        """privacy.log_signal_norm (simulation only): the noise-free sum's norm and the noise's."""
        if not self.privacy.log_signal_norm:
            return
        clean = backend.plain_sum(self._noise_free, release.survivors, self.vector_size)[: self.dims]
        release.signal_norm = float(np.linalg.norm(clean))
        release.noise_norm = float(np.linalg.norm(release.total[: self.dims] - clean))

    # -- the ledger ----------------------------------------------------------------------------------
    def charge(self, noise_multiplier: float, survivors: list[str]) -> None:
        """Record one release: for the observer (sampled Gaussian) and per client for the server."""
        self.observer.step(noise_multiplier)
        # The trusted aggregator sees the sum before it adds the noise: no protection against it.
        # Same neighbouring relation as the observer's accountant: replace-one under fixed-size
        # sampling doubles the sensitivity (dp.REPLACE_ONE_SENSITIVITY_FACTOR).
        factor = (
            dp.REPLACE_ONE_SENSITIVITY_FACTOR if self.cfg.federated.sampling == Sampling.fixed_size else 1.0
        )
        exposure = math.inf if (self.trusted or noise_multiplier == 0) else (factor / noise_multiplier) ** 2
        for client_id in survivors:
            self.server_exposure[client_id] = self.server_exposure.get(client_id, 0.0) + exposure
            self.participation[client_id] += 1

    def charge_interrupted(self, pending: dict) -> None:
        """A round that may have been decoded before a crash: charge it as if its worst case happened
        (every roster client's update released with the least noise the threshold allows)."""
        roster = pending["roster"]
        if self.trusted or not roster:
            z = self.noise_multiplier
        else:
            least = shamir_threshold(self.privacy.threshold_fraction, len(roster))
            z = dp.effective_noise_multiplier(self.noise_multiplier, len(roster), min(least, len(roster)))
        log.warning(
            "round %d was interrupted after its sum was planned: charged as released", pending["round"]
        )
        self.charge(z, roster)

    def epsilons(self) -> dict:
        """ε after every release so far, per adversary (empty without DP)."""
        if self.observer is None:
            return {}
        delta = self.privacy.delta
        cache: dict[float, float] = {}
        per_client = []
        for client_id in self.client_ids:
            exposure = self.server_exposure.get(client_id, 0.0)
            if exposure not in cache:
                cache[exposure] = dp.known_participation_epsilon(exposure, delta)
            per_client.append(cache[exposure])
        rounds_taken = Counter(self.participation.get(c, 0) for c in self.client_ids)
        return {
            "epsilon_observer": float(self.observer.epsilon()),
            "epsilon_server_worst": max(per_client),
            "epsilon_server_median": float(statistics.median(per_client)),
            "participation": {str(k): v for k, v in sorted(rounds_taken.items())},
        }

    def state_dict(self) -> dict:
        if self.observer is None:
            return {}
        return {
            "noise_multiplier": self.noise_multiplier,
            "observer": self.observer.state_dict(),
            "server_exposure": dict(self.server_exposure),
            "participation": dict(self.participation),
            "clip": self.clip_state.state_dict() if self.adaptive else None,
        }

    def load_state_dict(self, state: dict) -> None:
        if self.observer is None or not state:
            return
        self.observer.load_state_dict(state["observer"])
        self.server_exposure = {k: float(v) for k, v in state["server_exposure"].items()}
        self.participation = Counter(state["participation"])
        if self.adaptive:
            self.clip_state.load_state_dict(state["clip"])
