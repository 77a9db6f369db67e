"""Every benchmark preset is runnable as written: its keys load and its backbone builds and trains a step."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch

from privfedtalk.benchmark.presets import PRESETS
from privfedtalk.config import load_config
from privfedtalk.data.audio import feature_tokens
from privfedtalk.data.synthetic import synthesize_corpus
from privfedtalk.model.generator import TalkingHeadGenerator


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_keys_load_and_its_backbone_takes_a_training_step(name):
    preset = PRESETS[name]
    inspect.signature(synthesize_corpus).bind("out", **preset["synth"])  # no unknown corpus keys
    size = preset["synth"]["size"]
    on_cpu = ["device=cpu", "mixed_precision=fp32"]  # the GPU presets' keys, checked here on a CPU
    load_config("fedavg", list(preset["federated"]) + on_cpu)
    cfg = load_config("pretrain", [f"data.size={size}"] + list(preset["pretrain"]) + on_cpu)
    torch.manual_seed(0)
    model = TalkingHeadGenerator.from_config(cfg)
    frames = np.random.default_rng(0).integers(0, 256, (2, size, size, 3), dtype=np.uint8)
    latents = model.encode_frames(frames)
    assert latents.shape[-1] == size // 2 ** (len(cfg.model.vae.block_out_channels) - 1)
    audio = cfg.data.audio
    features = torch.zeros(1, 2, feature_tokens(audio.hop_ms, audio.window_ms), audio.n_mels)
    out = model.loss(latents[None], latents[0][None], features, torch.Generator().manual_seed(0))
    out["total"].backward()
    grads = [p.grad for p in model.unet.parameters() if p.grad is not None]
    assert torch.isfinite(out["total"]) and grads and all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_run_of_a_preset_has_its_fixed_thread_count(name, tmp_path):
    """The thread count changes floating-point results, so it is the preset's, not --jobs' (workers used
    to get threads // jobs, so the same row gave other numbers with another --jobs)."""
    import json

    from privfedtalk.benchmark import execute, plan

    (tmp_path / "generator.json").write_text(json.dumps({"size": 32}))
    preset = PRESETS[name]
    common = plan.common_overrides(preset, tmp_path, tmp_path)
    assert load_config("fedavg.yaml", common).threads == preset.get("run_threads", 1)
    assert load_config("fedavg.yaml", common + ["threads=3"]).threads == 3  # the command line wins
    assert "// jobs" not in inspect.getsource(execute.write_plan)
