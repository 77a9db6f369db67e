"""ISFA's data signals: corrupted clients score lower than clean ones, ISFA weighs them down in a real
round, and the threshold baseline zeroes exactly the clients under its threshold while the secure sum
still decodes."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from privfedtalk.config import load_config
from privfedtalk.data.synthetic import synthesize_corpus
from privfedtalk.federated import signals, simulation
from privfedtalk.federated.aggregation import reliability_score
from privfedtalk.federated.client import LocalTrainer
from privfedtalk.federated.clients import register_clients, training_clips
from privfedtalk.federated.store import RunFolder
from privfedtalk.federated.strategy import ClientReport, build_strategy
from privfedtalk.privacy.dp import clip_to_norm

KINDS = ["identity", "occlusion", "temporal", "audio_shift"]
# The signal each kind is meant to lower (audio_shift is a lip-sync fault: neither signal sees it).
DETECTED_BY = {"identity": signals.IDENTITY, "occlusion": signals.IDENTITY, "temporal": signals.TEMPORAL}


@pytest.fixture(scope="module")
def corrupted_corpus(tmp_path_factory):
    """5 private identities at 32x32, 1 s clips: one per corruption kind and one clean."""
    root = tmp_path_factory.mktemp("corrupted")
    manifest = synthesize_corpus(
        root, identities=10, clips=2, seconds=1.0, size=32, seed=3, corruption=KINDS, corrupt_fraction=0.8
    )
    return root, manifest


def client_kinds(cfg, manifest) -> dict[str, str]:
    """{client id: corruption kind or "clean"} (one private identity per client)."""
    corrupted = manifest["corruption"]["identities"]
    return {
        s.client_id: corrupted.get(s.identities[0], {}).get("kind", "clean") for s in register_clients(cfg)
    }


def sent_signals(cfg) -> dict[str, dict[str, float]]:
    """Every client's quantized signals, computed as the client computes them."""
    out = {}
    for spec in register_clients(cfg):
        clips, _ = training_clips(cfg, spec)
        out[spec.client_id] = signals.quantized_signals(
            signals.raw_data_signals([c.frames for c in clips]), cfg.federated
        )
    return out


# ------------------------------------------------------------------------------------------- the signals


def test_calibration_maps_the_range_to_unit_interval_and_clips():
    assert signals.calibrate(0.8, [0.8, 0.95]) == 0.0
    assert signals.calibrate(0.95, [0.8, 0.95]) == 1.0
    assert signals.calibrate(0.875, [0.8, 0.95]) == pytest.approx(0.5)
    assert signals.calibrate(0.2, [0.8, 0.95]) == 0.0
    assert signals.calibrate(0.99, [0.8, 0.95]) == 1.0


def test_still_video_is_reliable_and_flicker_is_not():
    still = np.full((12, 32, 32, 3), 120, dtype=np.uint8)
    flicker = still.copy()
    flicker[::2] = 200  # every other frame brighter: appearance grid unchanged, large jerk
    assert signals.raw_data_signals([still]) == {signals.IDENTITY: 1.0, signals.TEMPORAL: 1.0}
    raw = signals.raw_data_signals([flicker])
    assert raw[signals.IDENTITY] == pytest.approx(1.0)
    assert raw[signals.TEMPORAL] < 0.8


@pytest.mark.parametrize("kind", sorted(DETECTED_BY))
def test_a_corrupted_client_sends_a_lower_signal_than_a_clean_one(corrupted_corpus, kind):
    root, manifest = corrupted_corpus
    cfg = load_config(None, [f"data.root={root}", "data.size=32"])
    kinds = client_kinds(cfg, manifest)
    sent = sent_signals(cfg)
    (clean,) = [c for c, k in kinds.items() if k == "clean"]
    (corrupted,) = [c for c, k in kinds.items() if k == kind]
    name = DETECTED_BY[kind]
    assert sent[corrupted][name] < sent[clean][name]
    score = {c: reliability_score(s[signals.IDENTITY], s[signals.TEMPORAL], 0.5) for c, s in sent.items()}
    assert score[corrupted] < score[clean]


def test_the_signals_are_not_saturated_under_fewer_bits(corrupted_corpus):
    root, manifest = corrupted_corpus
    cfg = load_config(None, [f"data.root={root}", "data.size=32", "federated.signal_bits=2"])
    kinds = client_kinds(cfg, manifest)
    sent = sent_signals(cfg)
    scores = {
        kinds[c]: reliability_score(s[signals.IDENTITY], s[signals.TEMPORAL], 0.5) for c, s in sent.items()
    }
    # 2 bits: clean, the identity swap and the flicker still land in different bins of the score.
    assert scores["clean"] > scores["identity"] and scores["clean"] > scores["temporal"]


# ------------------------------------------------------------------------------------------ real rounds


def federated_overrides(root, *extra) -> list[str]:
    return [
        f"data.root={root}",
        "federated.signal_source=data",
        "federated.rounds=1",
        "federated.clients_per_round=5",
        *extra,
    ]


def test_isfa_weighs_corrupted_clients_down_in_a_real_round(corrupted_corpus, tiny_federated_config):
    root, manifest = corrupted_corpus
    cfg = tiny_federated_config(*federated_overrides(root, "federated.method=isfa"))
    run_dir = simulation.train(cfg)
    (record,) = RunFolder(run_dir).records()
    kinds = client_kinds(cfg, manifest)
    weights, sent = record["weights"], record["signals"]
    (clean,) = [c for c, k in kinds.items() if k == "clean"]
    for client, kind in kinds.items():
        if kind in DETECTED_BY:
            assert weights[client] < weights[clean], (kind, weights)
        # Same sample counts: the weight ratio is ISFA's factor exp(γ(s − 1)) of the sent signals.
        score = reliability_score(sent[client][signals.IDENTITY], sent[client][signals.TEMPORAL], 0.5)
        assert weights[client] / weights[clean] == pytest.approx(
            math.exp(cfg.federated.isfa_gamma * (score - 1))
        )


class Recorded:
    """The test's view (not the server's): each client's raw delta, and what each round released."""

    def __init__(self):
        self.deltas: dict[str, np.ndarray] = {}
        self.release = None

    def trainer_factory(self, *args):
        recorded = self

        class Recording(LocalTrainer):
            def run(self, client, global_shared, round_index, seed, instructions):
                update, report = super().run(client, global_shared, round_index, seed, instructions)
                recorded.deltas[update.client_id] = update.delta.numpy().astype(np.float64)
                return update, report

        return Recording(*args)

    def on_release(self, round_index, release, roster):
        self.release = (release.total.copy(), list(release.survivors), list(roster))


def test_threshold_zeroes_exactly_the_clients_under_it_and_the_secure_sum_decodes(
    corrupted_corpus, tiny_federated_config
):
    root, _ = corrupted_corpus
    extra = [
        "federated.method=isfa_threshold",
        "federated.signal_threshold=0.9",
        "privacy.secure_aggregation=true",
    ]
    cfg = tiny_federated_config(*federated_overrides(root, *extra))
    recorded = Recorded()
    run_dir = simulation.train(cfg, trainer_factory=recorded.trainer_factory, on_release=recorded.on_release)
    (record,) = RunFolder(run_dir).records()
    weights, sent = record["weights"], record["signals"]
    under = {
        c for c, s in sent.items() if reliability_score(s[signals.IDENTITY], s[signals.TEMPORAL], 0.5) < 0.9
    }
    assert under and under != set(sent)  # the corpus has clients on both sides
    assert {c for c, w in weights.items() if w == 0.0} == under
    passing = [c for c in sent if c not in under]
    assert sum(weights[c] for c in passing) == pytest.approx(1.0)
    total, survivors, roster = recorded.release
    assert sorted(survivors) == sorted(roster) == sorted(sent)  # zero-weight clients still sent
    expected = sum(weights[c] * clip_to_norm(recorded.deltas[c], cfg.privacy.clip_norm)[0] for c in survivors)
    assert np.abs(expected).max() > 0
    np.testing.assert_allclose(total, expected, atol=1e-7)


# ---------------------------------------------------------------------------------------- the strategy


def test_threshold_strategy_weights_and_the_all_rejected_round():
    cfg = load_config(None, ["federated.method=isfa_threshold", "federated.signal_threshold=0.6"])
    strategy = build_strategy(cfg)

    def report(client, n, s):
        return ClientReport(client, n, {signals.IDENTITY: s, signals.TEMPORAL: s})

    weights = strategy.weights([report("a", 100, 1.0), report("b", 300, 0.6), report("c", 500, 0.5)])
    assert weights == pytest.approx({"a": 0.25, "b": 0.75, "c": 0.0})
    assert strategy.weights([report("a", 100, 0.2), report("b", 300, 0.1)]) == {"a": 0.0, "b": 0.0}


def test_config_refuses_bad_signal_ranges_and_thresholds():
    from privfedtalk.errors import ConfigError

    for bad in (
        "federated.signal_identity_range=[0.95,0.8]",
        "federated.signal_temporal_range=[0.9]",
        "federated.signal_threshold=1.2",
    ):
        with pytest.raises(ConfigError, match=bad.split("=")[0]):
            load_config(None, [bad])


def test_the_slot_caches_the_raw_signals(corrupted_corpus, tiny_federated_config):
    root, _ = corrupted_corpus
    cfg = tiny_federated_config(
        *federated_overrides(root, "federated.method=isfa", "federated.clients_per_round=2")
    )
    run_dir = simulation.train(cfg)
    cached = [json.loads(p.read_text()) for p in sorted(run_dir.glob("**/latents.json"))]
    assert cached and all(set(c["data_signals"]) == {signals.IDENTITY, signals.TEMPORAL} for c in cached)
