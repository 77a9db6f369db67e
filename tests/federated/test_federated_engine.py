"""The round loop on a tiny federation: what a client hands back, resume, strategies that differ where
they should, every configuration branch (noise placement, federate=unet, several identities per
client, tdc_space, precision) exercised in a real round."""

from __future__ import annotations

import dataclasses
import json
import logging

import pytest
import torch
from safetensors.torch import load_file

from privfedtalk.federated import simulation
from privfedtalk.federated.client import LocalTrainer, get_flat
from privfedtalk.federated.models import build_federated_model, load_personalized_model
from privfedtalk.federated.store import ClientStore, RunFolder
from privfedtalk.model import adapters


class Killed(Exception):
    pass


def global_state(run_dir):
    return load_file(str(run_dir / "global_shared.safetensors"))["global_shared"]


def records(run_dir):
    return RunFolder(run_dir).records()


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_resume_after_kill_equals_uninterrupted(tiny_federated_config, tmp_path, optimizer):
    """Also the server optimizer's state (Adam's moments) survives the kill."""
    server = (
        [f"federated.server_optimizer={optimizer}", "federated.server_lr=0.01"] if optimizer != "sgd" else []
    )
    full_cfg = tiny_federated_config(f"out_dir={tmp_path / 'full'}", *server)
    simulation.train(full_cfg)
    reference = global_state(tmp_path / "full")

    killed_cfg = tiny_federated_config(f"out_dir={tmp_path / 'killed'}", *server)
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
    assert [r["round"] for r in records(tmp_path / "killed")] == [1, 2, 3]


def test_client_update_holds_no_identity_adapter_tensor(tiny_federated_config, monkeypatch):
    cfg = tiny_federated_config("federated.rounds=1", "federated.method=isfa")
    checked = []
    original = LocalTrainer.run

    def spy(self, client, global_shared, round_index, seed, instructions):
        update, report = original(self, client, global_shared, round_index, seed, instructions)
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
    assert slots == sorted(records(run_dir)[0]["survivor_ids"])
    # The global state is exactly the shared adapter's size: nothing of the identity adapter.
    model, _ = build_federated_model(cfg, torch.device("cpu"))
    shared = adapters.adapter_parameters(model.unet, adapters.SHARED)
    assert global_state(run_dir).numel() == sum(p.numel() for p in shared)


def test_personalized_model_differs_from_global(tiny_federated_config):
    cfg = tiny_federated_config("federated.rounds=1", "federated.clients_per_round=1")
    run_dir = simulation.train(cfg)
    client = records(run_dir)[0]["survivor_ids"][0]
    personal, _ = load_personalized_model(run_dir, client)
    plain, _ = load_personalized_model(run_dir, None)
    x = torch.randn(1, 8, 8, 8)
    audio = torch.randn(1, personal.spec.audio_tokens, personal.spec.n_mels)
    t = torch.tensor([500])
    with torch.no_grad():
        a = personal.denoise(x[:, :4], t, x[:, 4:], audio)
        b = plain.denoise(x[:, :4], t, x[:, 4:], audio)
    assert not torch.allclose(a, b)


def with_signals(low_client: str, low: float):
    """A trainer factory whose clients train normally, but `low_client` reports low reliability."""

    class LowSignalTrainer(LocalTrainer):
        def run(self, client, global_shared, round_index, seed, instructions):
            update, report = super().run(client, global_shared, round_index, seed, instructions)
            if update.signals and update.client_id == low_client:
                update.signals = {"identity_consistency": low, "temporal_stability": low}
            return update, report

    return LowSignalTrainer


def test_isfa_weights_differ_from_fedavg_for_unequal_signals(tiny_federated_config, tmp_path):
    runs = {}
    for method in ("fedavg", "isfa"):
        cfg = tiny_federated_config(
            "federated.rounds=1", f"federated.method={method}", f"out_dir={tmp_path / method}"
        )
        runs[method] = records(simulation.train(cfg, trainer_factory=with_signals("client0000", 0.2)))[0]
    fedavg, isfa = runs["fedavg"]["weights"], runs["isfa"]["weights"]
    assert fedavg["client0000"] == pytest.approx(fedavg["client0001"], rel=0.5)  # ∝ sample count
    assert runs["fedavg"]["signals"] == {}  # FedAvg clients are not asked for signals
    assert isfa["client0000"] < 0.5 * fedavg["client0000"] and isfa["client0001"] > fedavg["client0001"]


def test_fedprox_local_update_differs_from_fedavg(tiny_federated_config, tmp_path):
    norms = {}
    for name, keys in {"fedavg": [], "fedprox": ["federated.method=fedprox", "federated.mu=50"]}.items():
        cfg = tiny_federated_config(
            "federated.rounds=1", "federated.local_steps=4", f"out_dir={tmp_path / name}", *keys
        )
        norms[name] = records(simulation.train(cfg))[0]["update_norm"]
    # The proximal pull toward the global state shortens every client's update.
    assert norms["fedprox"] < 0.9 * norms["fedavg"]


def test_federating_the_whole_unet_moves_the_backbone(tiny_federated_config):
    cfg = tiny_federated_config("federated.rounds=1", "federated.federate=unet")
    run_dir = simulation.train(cfg)
    torch.manual_seed(cfg.seed)
    model, _ = build_federated_model(cfg, torch.device("cpu"))
    backbone = [p for n, p in model.unet.named_parameters() if "lora_" not in n]
    initial = torch.cat([p.detach().reshape(-1) for p in backbone])
    assert global_state(run_dir).shape == initial.shape
    assert not torch.equal(global_state(run_dir), initial)


def test_a_client_can_own_several_identities(tiny_federated_config):
    cfg = tiny_federated_config("federated.rounds=1", "federated.partition.identities_per_client=2")
    run_dir = simulation.train(cfg)
    assert records(run_dir)[0]["roster"] == ["client0000"]
    _, index = ClientStore(run_dir).load_latents("client0000")
    assert len({clip["identity"] for clip in index["train"]}) == 2
    assert len({name.split("/")[0] for name in index["heldout"]}) == 2


def test_tdc_space_changes_the_local_objective(tiny_federated_config, tmp_path):
    tdc = {}
    for space in ("noise", "x0"):
        keys = ["federated.lambda_tdc=1.0", f"federated.tdc_space={space}", f"out_dir={tmp_path / space}"]
        tdc[space] = records(simulation.train(tiny_federated_config("federated.rounds=1", *keys)))[0]["tdc"]
    assert tdc["noise"] > 0 and tdc["x0"] > 0 and tdc["noise"] != pytest.approx(tdc["x0"], rel=1e-3)


def test_precision_reaches_local_training_and_the_run_says_when_it_falls_back(
    tiny_federated_config, monkeypatch, caplog
):
    from privfedtalk.model.generator import TalkingHeadGenerator

    cfg = tiny_federated_config("federated.rounds=1", "mixed_precision=fp16")
    seen = []
    loss = TalkingHeadGenerator.loss

    def spy(self, *args, **kwargs):
        seen.append(
            torch.is_autocast_enabled(self.device.type) and torch.get_autocast_dtype(self.device.type)
        )
        return loss(self, *args, **kwargs)

    monkeypatch.setattr(TalkingHeadGenerator, "loss", spy)
    with caplog.at_level(logging.WARNING, logger="privfedtalk"):
        run_dir = simulation.train(cfg)
    assert seen
    if torch.cuda.is_available():
        assert set(seen) == {torch.float16}
        assert records(run_dir)[0]["precision"] == "fp16"
    else:
        assert set(seen) == {False}  # fp32 on a CPU ...
        assert "mixed_precision=fp16 is for CUDA; running fp32 on cpu" in caplog.text  # ... and it says so
        assert records(run_dir)[0]["precision"] == "fp32"


def first_secagg_round(tiny_federated_config, out_dir, *overrides):
    """Train one secure-aggregation round; return (config, run folder, its metrics record)."""
    cfg = tiny_federated_config(
        "privacy.secure_aggregation=true", *overrides, "federated.rounds=1", f"out_dir={out_dir}"
    )
    run = simulation.train(cfg)
    return cfg, run, records(run)[0]


def test_too_many_dropouts_skip_the_round_without_touching_state(tiny_federated_config, tmp_path):
    drop = "privacy.dropout_rate=0.99"
    cfg, run, record = first_secagg_round(tiny_federated_config, tmp_path / "drop", drop)
    assert "only" in record["skipped"] and "threshold" in record["skipped"]
    torch.manual_seed(cfg.seed)  # as train() does before attaching the adapters
    model, _ = build_federated_model(cfg, torch.device("cpu"))
    initial = torch.cat(
        [p.detach().reshape(-1) for p in adapters.adapter_parameters(model.unet, adapters.SHARED)]
    )
    torch.testing.assert_close(global_state(run), initial, rtol=0, atol=0)


def test_adaptive_clipping_and_the_signal_diagnostic_in_a_real_round(tiny_federated_config):
    cfg = tiny_federated_config(
        "federated.rounds=2",
        "privacy.dp=true",
        "privacy.secure_aggregation=true",
        "privacy.noise_multiplier=1.0",
        "privacy.clip=adaptive",
        "privacy.bit_noise_std=1.0",
        "privacy.clip_norm=0.001",  # far below the update norms: every client is clipped, C must grow
        "privacy.log_signal_norm=true",
        # Two clients and σ_b = 1: with OS noise the noised count misleads C about 1 run in 6. The
        # plumbing is under test here (C's convergence is tested on many draws in test_mechanism.py),
        # so the test-only seeded noise makes the draw repeatable.
        "privacy.noise_source=insecure_seeded",
    )
    first, second = records(simulation.train(cfg))
    assert first["clip_norm"] == pytest.approx(0.001) and first["next_clip_norm"] > 0.001
    assert second["clip_norm"] == pytest.approx(first["next_clip_norm"])
    assert first["noise_to_signal"] > 1 and "SIMULATION DIAGNOSTICS" in first["guarantee"]


def test_shared_latent_cache_encodes_once_and_changes_nothing(tiny_federated_config, tmp_path, monkeypatch):
    """data.latent_cache: a second run reads the first run's encoded clips (no VAE encode) and ends in
    exactly the state of a run without the cache; a change the latents depend on gets another file."""
    from privfedtalk.federated import clients

    plain = tiny_federated_config(f"out_dir={tmp_path / 'plain'}")
    simulation.train(plain)
    shared = tmp_path / "latents"
    first = tiny_federated_config(f"out_dir={tmp_path / 'first'}", f"data.latent_cache={shared}")
    simulation.train(first)
    files = sorted(shared.glob("*.safetensors"))
    assert files and len(files) == len(list(shared.glob("*.json")))

    def no_encoding(self, spec):
        raise AssertionError(f"{spec.client_id} encoded again")

    monkeypatch.setattr(clients.ClientLoader, "_encode", no_encoding)
    second = tiny_federated_config(f"out_dir={tmp_path / 'second'}", f"data.latent_cache={shared}")
    simulation.train(second)
    for run in ("first", "second"):
        torch.testing.assert_close(
            global_state(tmp_path / run), global_state(tmp_path / "plain"), rtol=0, atol=0
        )
    spec = clients.register_clients(first)[0]
    other_size = tiny_federated_config(f"data.latent_cache={shared}", "data.fps=12.5")
    assert clients.latent_cache_file(first, spec) in files
    assert clients.latent_cache_file(other_size, spec) not in files
    assert clients.latent_cache_file(plain, spec) is None
