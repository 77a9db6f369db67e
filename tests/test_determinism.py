"""Same seed, same numbers: backbone pretraining and non-DP federated runs repeat bit for bit, and the
thread count they ran at is the explicit part of what they compute (the benchmark's re-run check)."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from safetensors.torch import load_file

from privfedtalk.config import load_config
from privfedtalk.demo import QUICK
from privfedtalk.errors import ConfigError
from privfedtalk.federated import simulation
from privfedtalk.pretrain import pretrain
from privfedtalk.runtime import setup_torch


@pytest.fixture(autouse=True)
def restore_torch_settings():
    """setup_torch changes process-wide torch state; give the other tests back what they had."""
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)


def tensors_of(folder, pattern: str) -> dict[str, torch.Tensor]:
    """Every tensor of the safetensors files under folder matching pattern, keyed by file/tensor."""
    found = {}
    for path in sorted(folder.rglob(pattern)):
        for name, tensor in load_file(str(path)).items():
            found[f"{path.relative_to(folder)}/{name}"] = tensor
    assert found, f"no {pattern} under {folder}"
    return found


def assert_bit_identical(first: dict, second: dict) -> None:
    assert first.keys() == second.keys()
    for key in first:
        assert torch.equal(first[key], second[key]), f"{key} differs between two runs with the same seed"


def differs_somewhere(first: dict, second: dict) -> bool:
    return any(not torch.equal(first[key], second[key]) for key in first)


def pretrained_weights(corpus, out, *extra) -> dict[str, torch.Tensor]:
    overrides = [f"data.root={corpus}", "data.size=32", f"out_dir={out}", *QUICK["pretrain"], "threads=1"]
    checkpoint = pretrain(load_config(None, overrides + list(extra)))
    return tensors_of(checkpoint, "*.safetensors")


def test_pretraining_twice_with_one_seed_gives_identical_weights_and_another_seed_does_not(
    tiny_corpus, tmp_path
):
    first = pretrained_weights(tiny_corpus, tmp_path / "a")
    assert_bit_identical(first, pretrained_weights(tiny_corpus, tmp_path / "b"))
    # The comparison can fail: another seed moves the weights.
    assert differs_somewhere(first, pretrained_weights(tiny_corpus, tmp_path / "c", "seed=1"))


def test_ema_pretraining_saves_averaged_denoiser_weights_and_nothing_else_changes(tiny_corpus, tmp_path):
    last = pretrained_weights(tiny_corpus, tmp_path / "last")
    averaged = pretrained_weights(tiny_corpus, tmp_path / "ema", "model.unet.ema_decay=0.9")
    denoiser = {key for key in last if key.startswith(("unet/", "audio_encoder"))}
    assert denoiser, sorted(last)
    # Same seed, same trajectory: only the saved U-Net and audio-encoder weights are the average.
    assert all(not torch.equal(last[key], averaged[key]) for key in denoiser if last[key].numel() > 1)
    assert_bit_identical(
        {k: last[k] for k in last if k not in denoiser}, {k: averaged[k] for k in last if k not in denoiser}
    )


@pytest.mark.parametrize("value", ["1.0", "-0.1", "nan"])
def test_ema_decay_outside_zero_to_one_is_a_config_error_naming_the_key(value):
    with pytest.raises(ConfigError, match=r"model\.unet\.ema_decay=.*\[0, 1\)"):
        load_config(None, [f"model.unet.ema_decay={value}"])


def federated_state(make_config, out_dir, *extra) -> dict[str, torch.Tensor]:
    """Global shared adapter and every client's identity adapter after a short non-DP FedAvg run."""
    simulation.train(make_config(f"out_dir={out_dir}", "federated.rounds=2", "threads=1", *extra))
    state = tensors_of(out_dir, "global_shared.safetensors")
    state.update(tensors_of(out_dir / "clients", "identity_adapter.safetensors"))
    return state


def test_non_dp_federated_run_twice_with_one_seed_is_bit_identical(tiny_federated_config, tmp_path):
    first = federated_state(tiny_federated_config, tmp_path / "a")
    assert_bit_identical(first, federated_state(tiny_federated_config, tmp_path / "b"))
    assert differs_somewhere(first, federated_state(tiny_federated_config, tmp_path / "c", "seed=1"))


def test_federated_run_uses_the_configured_thread_count(tiny_federated_config, tmp_path):
    """The thread count is part of the computation, so a run must not inherit the caller's."""
    torch.set_num_threads(2)
    simulation.train(tiny_federated_config(f"out_dir={tmp_path / 'run'}", "federated.rounds=1", "threads=1"))
    assert torch.get_num_threads() == 1


def test_setup_torch_asks_for_deterministic_kernels_without_failing_on_ops_that_have_none():
    torch.use_deterministic_algorithms(False)
    setup_torch(1)
    assert torch.are_deterministic_algorithms_enabled()
    assert torch.is_deterministic_algorithms_warn_only_enabled()
    assert not torch.backends.cudnn.benchmark
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # An op with no deterministic CUDA kernel still runs (on CPU it simply computes).
        torch.zeros(3).index_add_(0, torch.tensor([0, 0]), torch.ones(2))


def tiny_benchmark(out) -> dict:
    """One fresh invocation of the tiny preset (corpus and backbone built anew under `out`)."""
    from privfedtalk.benchmark.cli import main

    rows = ["local-only", "fedavg", "privfedtalk"]
    return main(["--preset", "tiny", "--seeds", "1", "--out", str(out), "--only", *rows, "threads=1"])


def test_two_fresh_tiny_benchmarks_give_the_same_table(tmp_path):
    """The issue's re-run check at CI size: noise-free rows repeat exactly (tolerance 0), the DP row's
    noise-free numbers (ε, upload) too; the comparison itself fails on a changed number."""
    from privfedtalk.benchmark.compare import compare_tables

    first, second = tiny_benchmark(tmp_path / "a"), tiny_benchmark(tmp_path / "b")
    assert first["timings"]["pretrain_s"] > 0 and second["timings"]["pretrain_s"] > 0  # both fresh
    result = compare_tables(first, second)
    rows = {r["row"]: r for r in result["rows"]}
    assert set(rows) == {"local-only", "fedavg", "privfedtalk"} and result["reproduced"], result
    for name in ("local-only", "fedavg"):
        assert not rows[name]["noised"] and rows[name]["largest"]["sync_corr"] == 0.0
        assert all(value == 0.0 for value in rows[name]["largest"].values()), rows[name]
    assert rows["privfedtalk"]["noised"] and rows["privfedtalk"]["largest"]["epsilon"] == 0.0
    changed = json.loads(json.dumps(second))
    changed["main"][1]["per_seed"]["0"]["psnr"] += 1e-9
    assert not compare_tables(first, changed)["reproduced"]


@pytest.mark.parametrize(("setting", "expected"), [("0", 4), ("1", 1)])
def test_pretraining_samples_windows_of_the_configured_length(
    tiny_corpus, tmp_path, monkeypatch, setting, expected
):
    """model.unet.window sets the frames per pretraining window (0: data.window), with the frames a
    step (batch_windows x window) in the caller's hands: the demo trains on 16 one-frame windows."""
    import privfedtalk.pretrain as pretraining

    seen = []
    original = pretraining.sample_windows

    def recording(clips, batch, window, generator):
        seen.append((batch, window))
        return original(clips, batch, window, generator)

    monkeypatch.setattr(pretraining, "sample_windows", recording)
    pretrained_weights(tiny_corpus, tmp_path / "w", "data.window=4", f"model.unet.window={setting}")
    assert seen and set(seen) == {(2, expected)}  # QUICK's batch_windows=2


def test_a_negative_pretraining_window_is_a_config_error_naming_the_key():
    with pytest.raises(ConfigError, match=r"model\.unet\.window=-1 .*>= 0"):
        load_config(None, ["model.unet.window=-1"])
