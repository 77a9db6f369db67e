"""The round loop on a tiny federation: updates carry no identity tensors, resume equals uninterrupted."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file

from privfedtalk.federated import simulation
from privfedtalk.federated.client import LocalTrainer, get_flat
from privfedtalk.model import adapters


class Killed(Exception):
    pass


def global_state(run_dir):
    return load_file(str(run_dir / "global_shared.safetensors"))["global_shared"]


def test_resume_after_kill_equals_uninterrupted(tiny_federated_config, tmp_path):
    full_cfg = tiny_federated_config(f"out_dir={tmp_path / 'full'}")
    simulation.train(full_cfg)
    reference = global_state(tmp_path / "full")

    killed_cfg = tiny_federated_config(f"out_dir={tmp_path / 'killed'}")
    calls = []

    def kill_in_round_3(round_index, client_id):
        calls.append((round_index, client_id))
        if round_index == 2:  # third round: one client finished, the round never completes
            raise Killed()

    with pytest.raises(Killed):
        simulation.train(killed_cfg, on_client_done=kill_in_round_3)
    state = json.loads((tmp_path / "killed" / "state.json").read_text())
    assert state["completed_rounds"] == 2
    # The killed round staged an identity adapter that must not be used on resume.
    assert list((tmp_path / "killed" / "clients").glob("*/identity_adapter.pending.safetensors"))
    simulation.train(resume=str(tmp_path / "killed"))
    torch.testing.assert_close(global_state(tmp_path / "killed"), reference, rtol=0, atol=0)
    lines = (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["round"] for line in lines] == [1, 2, 3]


def test_client_update_holds_no_identity_adapter_tensor(tiny_federated_config, monkeypatch):
    cfg = tiny_federated_config("federated.rounds=1")
    checked = []
    original = LocalTrainer.run

    def spy(self, client, global_shared, round_index, seed):
        update, report = original(self, client, global_shared, round_index, seed)
        identity = torch.cat([p.detach().reshape(-1) for p in self.identity])
        assert float(identity.abs().sum()) > 0  # the identity adapter trained: a leak would show
        assert {f.name for f in dataclasses.fields(update)} == {
            "client_id",
            "num_samples",
            "delta",
            "signals",
        }
        tensors = [v for v in vars(update).values() if isinstance(v, torch.Tensor)]
        assert len(tensors) == 1 and tensors[0].numel() == sum(p.numel() for p in self.shared)
        assert not {id(p) for p in self.shared} & {id(p) for p in self.identity}
        # The delta is exactly the shared parameters' change: nothing else enters it.
        torch.testing.assert_close(update.delta, get_flat(self.shared) - global_shared, rtol=0, atol=0)
        assert set(update.signals) == {"identity_consistency", "temporal_stability"}
        assert all(0.0 <= v <= 1.0 for v in update.signals.values())
        checked.append(update.client_id)
        return update, report

    monkeypatch.setattr(LocalTrainer, "run", spy)
    simulation.train(cfg)
    assert len(checked) == 2


def test_identity_adapters_stay_in_client_slots(tiny_federated_config):
    cfg = tiny_federated_config("federated.rounds=1")
    run_dir = simulation.train(cfg)
    slots = sorted(p.parent.name for p in (run_dir / "clients").glob("*/identity_adapter.safetensors"))
    record = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[0])
    assert slots == sorted(record["survivors"])
    # The global state is exactly the shared adapter's size: nothing of the identity adapter.
    model, _ = simulation.build_federated_model(cfg, torch.device("cpu"))
    shared = adapters.adapter_parameters(model.unet, adapters.SHARED)
    assert global_state(run_dir).numel() == sum(p.numel() for p in shared)


def test_personalized_model_differs_from_global(tiny_federated_config):
    cfg = tiny_federated_config("federated.rounds=1", "federated.clients_per_round=1")
    run_dir = simulation.train(cfg)
    client = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[0])["survivors"][0]
    personal, _ = simulation.load_personalized_model(run_dir, client)
    plain, _ = simulation.load_personalized_model(run_dir, None)
    x = torch.randn(1, 8, 8, 8)
    audio = torch.randn(1, personal.spec.audio_tokens, personal.spec.n_mels)
    t = torch.tensor([500])
    with torch.no_grad():
        a = personal.denoise(x[:, :4], t, x[:, 4:], audio)
        b = plain.denoise(x[:, :4], t, x[:, 4:], audio)
    assert not torch.allclose(a, b)


@pytest.mark.parametrize("method", ["fedavg", "isfa"])
def test_private_round_runs_with_secagg_and_dp(tiny_federated_config, method):
    cfg = tiny_federated_config(
        "federated.rounds=2",
        f"federated.method={method}",
        "federated.lambda_tdc=0.1",
        "privacy.secure_aggregation=true",
        "privacy.dp=true",
        "privacy.noise_multiplier=1.0",
        "federated.sampling=poisson",
    )
    run_dir = simulation.train(cfg)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 2
    eps = [r["epsilon"] for r in records]
    assert eps[0] is not None and eps[1] > eps[0] > 0
    assert torch.isfinite(global_state(run_dir)).all()


def test_reported_epsilon_meets_target(tiny_federated_config, tmp_path):
    private = [
        "privacy.secure_aggregation=true",
        "privacy.dp=true",
        "privacy.target_epsilon=8",
        "federated.sampling=poisson",
        "federated.rounds=3",
        "federated.local_steps=1",
    ]
    run = simulation.train(tiny_federated_config(*private, f"out_dir={tmp_path / 'a'}"))
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["epsilon"] == pytest.approx(8.0, rel=0.01)


def first_secagg_round(tiny_federated_config, out_dir, *overrides):
    """Train one secure-aggregation round; return (config, run folder, its metrics record)."""
    cfg = tiny_federated_config(
        "privacy.secure_aggregation=true", *overrides, "federated.rounds=1", f"out_dir={out_dir}"
    )
    run = simulation.train(cfg)
    return cfg, run, json.loads((run / "metrics.jsonl").read_text().splitlines()[0])


def test_too_many_dropouts_skip_the_round_without_touching_state(tiny_federated_config, tmp_path):
    drop = "privacy.dropout_rate=0.99"
    cfg, run, record = first_secagg_round(tiny_federated_config, tmp_path / "drop", drop)
    assert "only" in record["skipped"] and "threshold" in record["skipped"]
    torch.manual_seed(cfg.seed)  # as train() does before attaching the adapters
    model, _ = simulation.build_federated_model(cfg, torch.device("cpu"))
    initial = torch.cat(
        [p.detach().reshape(-1) for p in adapters.adapter_parameters(model.unet, adapters.SHARED)]
    )
    torch.testing.assert_close(global_state(run), initial, rtol=0, atol=0)


def test_dropouts_lower_the_accounted_noise():
    from privfedtalk.config import load_config
    from privfedtalk.federated.server import Server

    cfg = load_config(
        None,
        [
            "privacy.dp=true",
            "privacy.noise_multiplier=1.0",
            "federated.sampling=poisson",
            "federated.clients_per_round=4",
        ],
    )
    full, partial = (
        Server(torch.zeros(3), cfg.federated, cfg.privacy, num_clients=40, rounds=5) for _ in "ab"
    )
    assert full.account(4, 4) == pytest.approx(1.0)
    assert partial.account(4, 3) == pytest.approx((3 / 4) ** 0.5)
    assert partial.epsilon() > full.epsilon()


def test_single_client_round_is_never_summed_in_the_clear(tiny_federated_config, tmp_path):
    one_client = "federated.clients_per_round=1"
    _, _, record = first_secagg_round(tiny_federated_config, tmp_path / "one", one_client)
    assert "at least 2 clients" in record["skipped"]
