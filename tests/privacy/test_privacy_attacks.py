"""Attacks on the privacy claims of a real (tiny) federated run, each shown to fail on the real code and
to succeed on a deliberately weakened setting.

- Noise stripping: an adversary holding the run folder, the config, every release and the roster
  rebuilds the DP noise from public values and subtracts it.
- Misconfiguration: settings that would switch privacy off while ε is still reported.
- Logs: per-client values in metrics.jsonl or TensorBoard of a DP run.
- A client whose update is NaN must not stop the run.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from privfedtalk.config import load_config
from privfedtalk.errors import ConfigError
from privfedtalk.federated import simulation
from privfedtalk.federated.aggregation import relative_weight
from privfedtalk.federated.client import LocalTrainer
from privfedtalk.federated.clients import client_seed
from privfedtalk.federated.store import RunFolder
from privfedtalk.privacy.dp import capped_weight, clip_to_norm, distributed_noise_std
from privfedtalk.privacy.noise import insecure_seeded_source

DP_RUN = [
    "privacy.dp=true",
    "privacy.secure_aggregation=true",
    "privacy.noise_multiplier=1.0",
    "privacy.clip_norm=0.05",
    "federated.rounds=1",
    "federated.clients_per_round=2",
]


class Observed:
    """What the test (not the attacker) sees: each client's raw delta and count, and each release."""

    def __init__(self):
        self.updates: dict[tuple[int, str], tuple[torch.Tensor, int]] = {}
        self.releases: dict[int, tuple[np.ndarray, list[str], list[str]]] = {}

    def trainer_factory(self, *args):
        observed = self

        class Recording(LocalTrainer):
            def run(self, client, global_shared, round_index, seed, instructions):
                update, report = super().run(client, global_shared, round_index, seed, instructions)
                observed.updates[(round_index, update.client_id)] = (update.delta.clone(), update.num_samples)
                return update, report

        return Recording(*args)

    def on_release(self, round_index, release, roster):
        self.releases[round_index] = (release.total.copy(), list(release.survivors), list(roster))

    def signal(self, cfg, round_index) -> np.ndarray:
        """Σ w·clip(Δ) over the round's survivors: the noise-free sum the DP noise must hide."""
        _, survivors, _ = self.releases[round_index]
        total = 0.0
        for client_id in survivors:
            delta, count = self.updates[(round_index, client_id)]
            weight = capped_weight(relative_weight(count), 2, cfg.privacy.reference_samples)
            total = total + weight * clip_to_norm(delta.numpy().astype(np.float64), cfg.privacy.clip_norm)[0]
        return total


def run_observed(tiny_federated_config, out_dir, *overrides):
    cfg = tiny_federated_config(*DP_RUN, *overrides, f"out_dir={out_dir}")
    observed = Observed()
    run_dir = simulation.train(cfg, trainer_factory=observed.trainer_factory, on_release=observed.on_release)
    return cfg, run_dir, observed


def attacker_guesses(cfg, record, round_index, roster, dims):
    """Every noise the attacker can rebuild from public values (config seed, round, client ids):
    the project's old derivation, the seeded test derivation, and plain seedings."""
    z, sigma = record["noise_multiplier"], None
    sigma = z * cfg.privacy.clip_norm / cfg.federated.clients_per_round
    share = distributed_noise_std(sigma, len(roster))
    seed = cfg.seed
    guesses = {
        "old derivation (client_seed + 1)": sum(
            np.random.default_rng(client_seed(seed, round_index, c) + 1).normal(0.0, share, dims)
            for c in roster
        ),
        "old trusted derivation": np.random.default_rng([seed, round_index, 99]).normal(0.0, sigma, dims),
        "seeded client shares": sum(
            insecure_seeded_source(seed, "client-noise", round_index, c).normal(dims, share) for c in roster
        ),
        "seeded server noise": insecure_seeded_source(seed, "server-noise", round_index, "server").normal(
            dims, sigma
        ),
        "numpy(seed)": np.random.default_rng(seed).normal(0.0, sigma, dims),
        "numpy([seed, round])": np.random.default_rng([seed, round_index]).normal(0.0, sigma, dims),
    }
    return guesses


def best_stripping_residual(released, signal, guesses) -> tuple[float, str]:
    """The attacker subtracts each rebuilt noise at its least-squares scale (0 if it does not fit);
    returns the smallest remaining error against the true noise-free sum, and the guess that did it."""
    results = []
    for name, guess in guesses.items():
        scale = float(np.dot(released, guess) / np.dot(guess, guess))
        results.append((float(np.linalg.norm(released - scale * guess - signal)), name))
    return min(results)


@pytest.mark.parametrize("placement", ["distributed", "trusted"])
def test_noise_stripping_fails_on_os_noise_and_succeeds_on_the_seeded_setting(
    tiny_federated_config, tmp_path, placement
):
    outcomes = {}
    for source in ("os_entropy", "insecure_seeded"):
        cfg, run_dir, observed = run_observed(
            tiny_federated_config,
            tmp_path / source,
            f"privacy.noise={placement}",
            f"privacy.noise_source={source}",
        )
        record = RunFolder(run_dir).records()[0]
        released, survivors, roster = observed.releases[0]
        signal = observed.signal(cfg, 0)
        noise_norm = float(np.linalg.norm(released - signal))
        sigma = cfg.privacy.noise_multiplier * cfg.privacy.clip_norm / 2
        assert noise_norm == pytest.approx(
            sigma * math.sqrt(released.size), rel=0.05
        )  # noise of the stated size
        residual, how = best_stripping_residual(
            released, signal, attacker_guesses(cfg, record, 0, roster, released.size)
        )
        outcomes[source] = (residual / noise_norm, how)
        print(f"{placement} {source}: noise norm {noise_norm:.4g}, residual {residual:.3g} ({how})")
    ratio, _ = outcomes["os_entropy"]
    assert 0.9 <= ratio <= 1.1, outcomes  # nothing rebuilt: the error stays the noise's size
    ratio, how = outcomes["insecure_seeded"]
    assert ratio < 1e-3 and "seeded" in how, outcomes  # the same attack strips predictable noise


@pytest.mark.parametrize(
    "overrides, key",
    [
        (["privacy.noise=central"], "privacy.noise"),
        (["privacy.noise=Distributed"], "privacy.noise"),
        (["federated.method=isfa_"], "federated.method"),
        (["federated.sampling=uniform"], "federated.sampling"),
        (["federated.federate=lora"], "federated.federate"),
        (["privacy.accountant=gdp"], "privacy.accountant"),
        (["mixed_precision=fp8"], "mixed_precision"),
        (["privacy.noise_source=seed"], "privacy.noise_source"),
        (["privacy.dp=true", "privacy.secure_aggregation=true", "privacy.clip_norm=0"], "privacy.clip_norm"),
        (["privacy.dp=true", "privacy.secure_aggregation=true", "privacy.clip_norm=-1"], "privacy.clip_norm"),
        (
            ["privacy.dp=true", "privacy.secure_aggregation=true", "privacy.noise_multiplier=0"],
            "privacy.noise_multiplier",
        ),
        (
            ["privacy.dp=true", "privacy.secure_aggregation=true", "privacy.noise_multiplier=-2"],
            "privacy.noise_multiplier",
        ),
        (["privacy.dp=true", "privacy.noise=distributed"], "privacy.secure_aggregation"),
        (
            ["privacy.dp=true", "privacy.secure_aggregation=true", "privacy.accountant=pld"],
            "privacy.accountant",
        ),
        (["privacy.secure_aggregation=true", "federated.clients_per_round=1"], "federated.clients_per_round"),
        (["federated.mu=0.1"], "federated.mu"),
        (["federated.method=fedprox"], "federated.mu"),
    ],
)
def test_settings_that_would_weaken_privacy_are_refused_at_load_time(overrides, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, overrides)


def test_a_refused_setting_stops_the_cli_before_anything_trains(tmp_path):
    out = tmp_path / "never"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "privfedtalk.cli",
            "train",
            "privfedtalk",
            "privacy.noise=central",
            f"out_dir={out}",
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2
    assert (
        done.stderr.strip().count("\n") == 0
        and "privacy.noise" in done.stderr
        and "Traceback" not in done.stderr
    )
    assert not out.exists()


def test_a_dp_run_logs_no_per_client_value(tiny_federated_config, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = tiny_federated_config(
        *DP_RUN, "federated.rounds=2", "federated.method=isfa", f"out_dir={tmp_path / 'run'}"
    )
    run_dir = simulation.train(cfg)
    text = (run_dir / "metrics.jsonl").read_text()
    assert "client0" not in text  # no roster, weight, signal or per-client anything
    for record in RunFolder(run_dir).records():
        assert not {"loss", "tdc", "update_norm", "weights", "signals", "sampled", "roster"} & set(record)
        # (Here every client is in every round, so the server's exact bound and the observer's RDP
        # bound are close; test_mechanism compares them where sampling amplifies.)
        assert record["epsilon_observer"] > 0 and record["epsilon_server_worst"] > 0
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert tags and not [
        t for t in tags if "client0" in t or "loss" in t or "weights/" in t or "signals/" in t
    ]


def test_isfa_under_dp_keeps_count_and_signals_on_the_client(tiny_federated_config, tmp_path, monkeypatch):
    """Under DP each client computes its own capped ISFA weight: the server never gathers a report,
    yet the weighting happens (the released sum minus the rebuildable test noise is Σ w_isfa·clip(Δ))."""
    from privfedtalk.federated.backend import SequentialBackend

    def no_reports(self, reports):
        raise AssertionError("a DP round sent client reports to the server")

    monkeypatch.setattr(SequentialBackend, "gather_reports", no_reports)
    cfg = tiny_federated_config(
        *DP_RUN,
        "federated.method=isfa",
        "privacy.noise_source=insecure_seeded",  # so the test can remove the noise exactly
        f"out_dir={tmp_path / 'isfa'}",
    )
    signals = {}
    observed = Observed()

    class Recording(LocalTrainer):
        def run(self, client, global_shared, round_index, seed, instructions):
            update, report = super().run(client, global_shared, round_index, seed, instructions)
            if update.client_id == "client0000":
                update.signals = {"identity_consistency": 0.2, "temporal_stability": 0.2}
            signals[update.client_id] = dict(update.signals)
            observed.updates[(round_index, update.client_id)] = (update.delta.clone(), update.num_samples)
            return update, report

    simulation.train(cfg, trainer_factory=Recording, on_release=observed.on_release)
    released, survivors, roster = observed.releases[0]
    sigma = cfg.privacy.noise_multiplier * cfg.privacy.clip_norm / 2
    noise = sum(
        insecure_seeded_source(cfg.seed, "client-noise", 0, c).normal(released.size, sigma / math.sqrt(2))
        for c in roster
    )
    from privfedtalk.federated.strategy import ISFA, ClientReport

    isfa = ISFA(cfg)
    expected = 0.0
    for client_id in survivors:
        delta, count = observed.updates[(0, client_id)]
        weight = capped_weight(
            isfa.relative_weight(ClientReport(client_id, count, signals[client_id])), 2, 300
        )
        expected = expected + weight * clip_to_norm(delta.numpy().astype(np.float64), 0.05)[0]
    np.testing.assert_allclose(released - noise, expected, atol=1e-9)
    fedavg_weighted = observed.signal(cfg, 0)
    assert np.linalg.norm(expected - fedavg_weighted) > 0.1 * np.linalg.norm(fedavg_weighted)


def test_a_nan_update_is_refused_on_the_client_and_the_run_goes_on(tiny_federated_config, tmp_path):
    class Broken(LocalTrainer):
        def run(self, client, global_shared, round_index, seed, instructions):
            update, report = super().run(client, global_shared, round_index, seed, instructions)
            if round_index == 0 and update.client_id == "client0001":
                update.delta[3] = float("nan")
            return update, report

    cfg = tiny_federated_config(*DP_RUN, "federated.rounds=2", f"out_dir={tmp_path / 'nan'}")
    run_dir = simulation.train(cfg, trainer_factory=Broken)
    records = RunFolder(run_dir).records()
    assert [r["refused"] for r in records] == [1, 0]
    assert [r["clients"] for r in records] == [1, 2]
    state, _, _ = RunFolder(run_dir).load()
    assert torch.isfinite(state).all()
    assert json.loads((run_dir / "state.json").read_text())["completed_rounds"] == 2
