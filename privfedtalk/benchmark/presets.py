"""Presets of the method benchmark (experiments/run_benchmark.py): plain dicts, one per machine size.

Every preset holds
  synth      keyword arguments of privfedtalk.data.synthetic.synthesize_corpus (the cached corpus);
  pretrain   config overrides of the backbone pretraining (public identities only);
  federated  config overrides shared by EVERY row (budget: rounds, clients_per_round, local_steps,
             batch_windows, lr, server_lr); rows differ only in method keys (see plan.row_definitions);
  seeds      seeds of the main table (rows local-only, fedavg, fedprox, privfedtalk); --seeds overrides;
  jobs       runs trained at once, each in its own process (default 1); --jobs overrides;
  run_threads torch threads of every run (default 1), whatever --jobs is: the thread count changes
             floating-point results, so it is part of what a row measures;
  eval_clients       held-out evaluation of the first K private identities' clients (None: all);
  eval_sample_steps  DDIM steps at evaluation (None: the checkpoint's model.diffusion.sample_steps);
  target_epsilon     the privfedtalk row's ε (δ = privacy.delta);
  epsilons           the privacy-utility sweep (math.inf: DP off, secure aggregation on);
  qualitative_frames time steps of the held-out clip shown in qualitative.png;
  description        one line for the README.
"""

from __future__ import annotations

import math

from privfedtalk.demo import FULL, QUICK

# The demo's corpus and backbone settings are the single source for `tiny` and `small`, so the
# benchmark can reuse `make demo`'s backbone (--checkpoint demo_out/pretrain/checkpoint --data demo_out/data).
_QUICK_PRETRAIN = QUICK["pretrain"]

PRESETS: dict[str, dict] = {
    # Smoke test (CI, tests/experiments): 4 identities (2 public, 2 private clients) x 2 clips x 1 s at
    # 32x32, 3-step backbone, 2 rounds. Checks the plumbing in well under a minute; says nothing about
    # the methods.
    "tiny": {
        "description": "smoke test: 32x32, 2 private clients, 2 rounds (numbers meaningless)",
        "synth": {**QUICK["synth"], "seed": 0},
        "pretrain": _QUICK_PRETRAIN,
        "federated": [
            "federated.rounds=2",
            "federated.clients_per_round=2",
            "federated.local_steps=2",
            "federated.batch_windows=2",
            "federated.signal_windows=1",
            "federated.lr=1e-3",
            "federated.server_lr=1.0",
        ],
        "seeds": 1,
        "eval_clients": 2,
        "eval_sample_steps": 2,
        "target_epsilon": 8.0,
        "epsilons": [math.inf, 32.0, 8.0, 2.0],
        "qualitative_frames": 3,
    },
    # `make run-benchmark` on a 2-core CPU (target: <= 45 min in all, backbone pretraining included).
    # Corpus like `make demo`'s: 56 identities, 48 public (2 clips x 3 s: the backbone generalizes
    # from many faces) and 8 private clients (4 clips x 3 s: 3 to train, 1 held out). Backbone as
    # privfedtalk/demo.py FULL. 19 federated runs at 3 seeds (12 main, 1 centralized, 3 ablation,
    # 3 privacy-utility; adapters-only, full and eps-8 reuse fedavg/privfedtalk seed 0).
    # Domain shift: the private speakers' mouths trail their audio by 2 frames, which the public
    # backbone never saw. Without it the backbone already fits the clients and every row ties (all
    # methods within 0.1 dB, docs/results.md): there is nothing for federation to learn. lr 1e-2: at
    # 1e-3 no method learns the shift in 6 rounds (sync 0.03 -> 0.04).
    "small": {
        "description": "2-core CPU: 64x64, 8 private clients whose mouths lag their audio by 2 frames, "
        "6 rounds x 4 clients x 10 local steps",
        "synth": {**FULL["synth"], "seed": 0, "private_mouth_lag": 2},
        "pretrain": FULL["pretrain"],
        "federated": [
            "federated.rounds=6",
            "federated.clients_per_round=4",
            "federated.local_steps=10",
            "federated.batch_windows=4",
            "federated.lr=1e-2",
            "federated.server_lr=1.0",
        ],
        "seeds": 3,
        "jobs": 2,  # two 1-thread runs at a time: more throughput than one 2-thread run on 2 cores
        "eval_clients": 4,
        "eval_sample_steps": 10,
        "target_epsilon": 8.0,
        "epsilons": [math.inf, 32.0, 8.0, 2.0],
        "qualitative_frames": 4,
    },
    # A laptop with one CUDA GPU (~8 GB): 128x128, 20 private clients, 30 rounds. The VAE downsamples
    # 8x (16x16 latents) so the U-Net cost stays close to the 64x64 CPU setting per latent.
    # mixed_precision=fp16 is recorded in each run's config.
    "laptop-gpu": {
        "description": "one CUDA GPU: 128x128, 20 private clients, 30 rounds x 5 clients x 20 local steps",
        "synth": {
            "identities": 120,
            "clips": 3,
            "seconds": 4.0,
            "size": 128,
            "seed": 0,
            "public_fraction": 100 / 120,
            "private_clips": 6,
        },
        "pretrain": [
            "device=cuda",
            "mixed_precision=fp16",
            "model.vae.block_out_channels=[32,64,128,128]",
            "model.vae.steps=3000",
            "model.vae.batch_size=16",
            "model.unet.block_out_channels=[128,256]",
            "model.unet.steps=8000",
            "model.unet.batch_windows=8",
            "model.identity_steps=1000",
        ],
        "federated": [
            "device=cuda",
            "mixed_precision=fp16",
            "federated.rounds=30",
            "federated.clients_per_round=5",
            "federated.local_steps=20",
            "federated.batch_windows=8",
            "federated.lr=1e-3",
            "federated.server_lr=1.0",
        ],
        "seeds": 3,
        "eval_clients": 20,
        "eval_sample_steps": 20,
        "target_epsilon": 8.0,
        "epsilons": [math.inf, 32.0, 8.0, 2.0],
        "qualitative_frames": 6,
    },
    # Paper scale (a GPU workstation; hours): 128x128, 50 private clients, 100 rounds. Taken from the
    # PrivFedTalk paper where it says: ~100 communication rounds (it reports its best checkpoint near
    # round 97), FedAvg / FedProx / ISFA+TDC with secure aggregation and client-level DP on LoRA
    # adapters, FedProx mu = 0.01 and TDC weight 0.1 (set per row in plan.row_definitions). Values the
    # paper does not pin down for this setting (corpus, LoRA ranks 4 (shared, attention) + 4 (identity,
    # resnet convs), 10 clients per round, 50 local steps, lr 1e-3, clip C = 0.5, delta = 1e-5,
    # target epsilon 8) are this repository's choices; its numbers are not comparable to the paper's,
    # which uses real talking-head video.
    "paper": {
        "description": "paper scale: 128x128, 50 private clients, 100 rounds x 10 clients x 50 local steps",
        "synth": {
            "identities": 250,
            "clips": 3,
            "seconds": 4.0,
            "size": 128,
            "seed": 0,
            "public_fraction": 200 / 250,
            "private_clips": 8,
        },
        "pretrain": [
            "device=cuda",
            "mixed_precision=fp16",
            "model.vae.block_out_channels=[32,64,128,128]",
            "model.vae.steps=6000",
            "model.vae.batch_size=16",
            "model.unet.block_out_channels=[128,256,256]",
            "model.unet.layers_per_block=2",
            "model.unet.steps=30000",
            "model.unet.batch_windows=8",
            "model.identity_steps=2000",
        ],
        "federated": [
            "device=cuda",
            "mixed_precision=fp16",
            "federated.rounds=100",
            "federated.clients_per_round=10",
            "federated.local_steps=50",
            "federated.batch_windows=8",
            "federated.lr=1e-3",
            "federated.server_lr=1.0",
        ],
        "seeds": 3,
        "eval_clients": None,
        "eval_sample_steps": 50,
        "target_epsilon": 8.0,
        "epsilons": [math.inf, 32.0, 8.0, 2.0],
        "qualitative_frames": 6,
    },
}
