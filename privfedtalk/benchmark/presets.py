"""Presets of the method benchmark (experiments/run_benchmark.py): plain dicts, one per machine size.

Every preset holds
  synth      keyword arguments of privfedtalk.data.synthetic.synthesize_corpus (the cached corpus);
  pretrain   config overrides of the backbone pretraining (public identities only);
  federated  config overrides shared by EVERY row (budget: rounds, clients_per_round, local_steps,
             batch_windows, lr, server_lr); rows differ only in method keys (see plan.row_definitions);
  seeds      federated seeds of every row (main, ablation, privacy-utility); --seeds overrides;
  backbone_seeds  backbones pretrained under different seeds (default 1); every row runs its seeds on
             each, so its ± includes the backbone's variance too; --backbone-seeds overrides;
  jobs       runs trained at once by a pool of worker processes (default 1); --jobs overrides;
  run_threads torch threads of every run (default 1), whatever --jobs is: the thread count changes
             floating-point results, so it is part of what a row measures;
  eval_clients       held-out evaluation of the first K private identities' clients (None: all);
  eval_sample_steps  DDIM steps at evaluation (None: the checkpoint's model.diffusion.sample_steps);
  target_epsilon     the privfedtalk row's ε (δ = privacy.delta);
  epsilons           the privacy-utility sweep (math.inf: DP off, secure aggregation on);
  ablations          names of the ablation rows to run (default: all of plan.ablation_rows);
  audit_canaries     K > 0: each privacy-utility row's seed-0 config is also run once with K canary
                     clients (plan.plan_audits; privfedtalk.federated.canaries) for its empirical ε;
                     0 or absent: no audits;
  qualitative_frames time steps of the held-out clip shown in qualitative.png;
  description        one line for the README.

A preset with `cohorts` (dp-scale, dp-scale-gpu) plans the cohort sweep instead of the three tables
(plan.cohort_rows):
  cohorts        clients per round m of the utility-vs-cohort curve: at each m the rows privfedtalk-m{m}
                 (DP at target_epsilon, noise-to-signal logged), fedavg-m{m} and local-only-m{m}; at the
                 largest m also privfedtalk-adaptive/-momentum/-adam (plan.COHORT_VARIANTS);
  seeds          seeds at the largest m (the goal figure's m); --seeds overrides;
  cohort_seeds   seeds at the smaller m (default: seeds);
  variant_seeds  seeds of the variants (default: seeds);
  dp_overrides   keys of the DP rows alone (privfedtalk-m{m} and the variants; a variant's own keys
                 win): the clip norm and server lr the DP runs are tuned with (default: none);
  epsilons       not used.

A preset with `scenarios` (robust) plans the robustness table instead (plan.scenario_rows): every method
of plan.SCENARIO_METHODS (FedAvg, FedProx, ISFA, ISFA + TDC, the ISFA threshold baseline) on the clean
corpus and on each corrupted one:
  scenarios      {"kinds": [Corruption values], "fractions": [shares of private clients]}: a corpus per
                 (kind, fraction) besides the clean one, synthesized from `synth` with
                 synthesize_corpus(corruption=kind, corrupt_fraction=fraction) into
                 OUT/cache/PRESET/data-KIND-PCT/ (execute.scenario_corpora). Only training clips of the
                 chosen clients differ, so one backbone (pretrained on the clean corpus's public
                 identities) serves every scenario, and every run is evaluated on the clean corpus's
                 held-out clips;
  flicker_rows   true: also ISFA and ISFA + TDC on the clean corpus evaluated with independent initial
                 noise per frame (TalkingHeadGenerator.sample frame_noise), the flicker table;
  flicker_seeds  seeds of the flicker rows (default and at least: seeds);
  target_epsilon, epsilons, ablations, audit_canaries  not used.
"""

from __future__ import annotations

import math

from privfedtalk.demo import QUICK

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
    # Corpus as `make demo`'s was until 2026-12-03: 56 identities, 48 public (2 clips x 3 s: the backbone
    # generalizes from many faces) and 8 private clients (4 clips x 3 s: 3 to train, 1 held out).
    # Backbone as privfedtalk/demo.py FULL's was until 2026-12-03. Every row at 3 seeds: 27 federated
    # runs (12 main, 3 centralized, 6 ablation, 6 privacy-utility; adapters-only, full and eps-8 reuse
    # fedavg's and privfedtalk's runs) + 3 canary audits (one per privacy-utility row, seed 0, not evaluated).
    # Domain shift: the private speakers' mouths trail their audio by 2 frames, which the public
    # backbone never saw. Without it the backbone already fits the clients and every row ties (all
    # methods within 0.1 dB, docs/results.md): there is nothing for federation to learn. lr 1e-2: at
    # 1e-3 no method learns the shift in 6 rounds (sync 0.03 -> 0.04).
    # What fits 3 seeds on every row into the budget. Measured on the 2-core machine (2026-12-02, a first
    # fresh run at 10 local steps, stopped): pretraining ~12 min, and a pair of runs (2 jobs) 164 s: 128
    # s of training (6 rounds x 4 clients x 10 steps, the first rounds also encode the clients' clips),
    # 27 s of evaluation at 5 DDIM steps, the rest worker start-up. 30 runs + 3 audits came to ~59 min.
    # So, against the table before (19 runs, 1-3 seeds, 10 local steps, 37 min):
    # - 6 local steps per client-round instead of 10 (same 6 rounds, lr, batch);
    # - evaluation at 5 DDIM steps instead of 10 (experiments/eval_steps.py on a FedAvg and a DP run:
    #   vs 20 steps sync moves <= 0.003, mouth PSNR <= 0.13 dB, PSNR <= 0.22 dB, the same way for every
    #   row; the rows' seed spreads were 0.03-0.10 and 0.04-0.41 dB);
    # - ablations without "+ SecAgg + DP" (FedAvg + DP alone): at m = 4 the privacy-utility rows show
    #   what DP does (ε = ∞ vs 8 vs 2 on the full method), and ε = 32 left the sweep (every noised row
    #   sat at the local-only level before);
    # - clients trained 4 at a time in one grouped pass (federated.client_batch=4; same updates to float
    #   rounding, tests/federated/test_batched_clients.py; about neutral at this size: a round of 4
    #   clients took 16-19 s either way).
    # 27 runs + 3 audits. Measured from fresh clones (2026-12-02, docs/results.md): 47 min 43 s and
    # 49 min 18 s, over the target (pretraining 13.5-14.5 min, the runs ~33.6 min); then, with each
    # client's clips encoded once per backbone (data.latent_cache) and the runs taken by 2 persistent
    # workers (torch imported once each): 41 min 39 s and 42 min 38 s (pretraining 14-14.6 min, the
    # runs 26-28 min).
    "small": {
        "description": "2-core CPU: 64x64, 8 private clients whose mouths lag their audio by 2 frames, "
        "6 rounds x 4 clients x 6 local steps",
        # The corpus the committed table was made with; the demo has moved to 96 public faces x 1 clip
        # around the same 8 clients (adopting it here means a new backbone and a regenerated table).
        "synth": {
            "identities": 56,
            "clips": 2,
            "seconds": 3.0,
            "size": 64,
            "public_fraction": 48 / 56,
            "private_clips": 4,
            "seed": 0,
            "private_mouth_lag": 2,
        },
        # The backbone recipe the committed table was made with (the demo's until 2026-12-03).
        "pretrain": [
            "model.vae.steps=800",
            "model.vae.batch_size=8",
            "model.unet.steps=1500",
            "model.diffusion.sample_steps=10",
        ],
        "federated": [
            "federated.rounds=6",
            "federated.clients_per_round=4",
            "federated.local_steps=6",
            "federated.batch_windows=4",
            "federated.lr=1e-2",
            "federated.server_lr=1.0",
            "federated.client_batch=4",
        ],
        "seeds": 3,
        # One backbone: a second would double the federated runs and add a pretraining, past the CPU
        # budget; --backbone-seeds 2 measures the backbone's share of the spread when time allows.
        "backbone_seeds": 1,
        "jobs": 2,  # two 1-thread runs at a time: more throughput than one 2-thread run on 2 cores
        "eval_clients": 4,
        "eval_sample_steps": 5,
        "target_epsilon": 8.0,
        "epsilons": [math.inf, 8.0, 2.0],
        "ablations": ["adapters-only", "+isfa", "+tdc", "full"],
        # 200 canaries next to 8 clients: clients_per_round 4 -> 104 keeps q = 1/2; the 95 % interval of
        # the DP row's estimate was ~[1.7, 7.5] at this size (docs/results.md).
        "audit_canaries": 200,
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

# Client-level DP needs many clients per round: the released sum's noise-to-signal ratio is about
# z·√d/m (d: shared-adapter size), 35 at `small`'s m = 4 (below) and more when the clients' updates
# disagree or weigh less than the cap. The dp-scale presets measure utility against
# the cohort m at fixed ε = 8 on a corpus with many private identities (each one client), with the
# same 2-frame mouth-lag shift as `small`, and a smaller shared adapter (rank 1 on the four attention
# projections: d = 4096 instead of 16384, so √d halves).
# Shared by both: privacy.reference_samples is the n at which a client's DP weight min(r/n, 1)/m reaches
# the cap 1/m; with one or two training clips per client the default 300 would shrink every client's
# signal well below the cap while the noise stays z·C/m (the privacy guarantee is the same either way).
# A client's r is its training frames x exp(γ(s − 1)) (ISFA, γ = 4): dp-scale's 50 frames reach the cap
# n = 20 from a reliability score s of 0.77 on, dp-scale-gpu's 150 frames n = 50 from s = 0.73.
# Calibrated z at ε = 8, δ = 1e-5 (dp.calibrate_noise_multiplier, Poisson) and z·√d/m, the noise-to-signal
# ratio when every clipped update has norm C and all point the same way (a floor; the logged ratio is
# higher when they do not): dp-scale (N = 512, 5 rounds): m = 4 z 0.40 -> 6.4, 16 0.49 -> 1.9,
# 64 0.64 -> 0.64, 128 0.78 -> 0.39; dp-scale-gpu (N = 1024, 20 rounds): 4 0.40 -> 6.4, 16 0.48 -> 1.9,
# 64 0.64 -> 0.64, 256 1.08 -> 0.27; `small` (N = 8, m = 4, 6 rounds, d = 16384): z 1.08 -> 35.
_DP_SCALE_ADAPTER = [
    "federated.shared.rank=1",
    "federated.shared.alpha=1.0",
    "federated.shared.target_modules=[to_q,to_k,to_v,to_out.0]",
]

# `make run-benchmark PRESET=dp-scale` on the 2-core CPU, target <= 60 min in all.
# The first version (5 rounds x 5 local steps, 256 private clients, m up to 64) left the lag unlearnt:
# FedAvg's sync gain over local-only was 0.00-0.03, inside the seeds' spread, so the goal ratio meant
# nothing. Probed on 2026-12-02 (experiments/run_benchmark.py --preset dp-scale --only ..., m = 64, seed 0,
# 2 jobs x 1 thread): with 10 local steps, server lr 2 and clients trained 8 at a time
# (federated.client_batch=8) FedAvg reached sync corr 0.284 against local-only's 0.079 and PrivFedTalk
# (ε = 8) 0.134, at ~30 s per round of 64 clients (0.47 s per client-round incl. fixed costs) and
# ~20 s of evaluation a run. The clip norm did not move PrivFedTalk at m = 64 (C 0.05 / 0.3 / 1.0:
# sync 0.134 / 0.061 / 0.134; noise-to-signal ~2 each time, as z·√d/m predicts it does not depend on C).
# So the first lever is m at fixed q = m/N: 512 private clients let m = 128 keep q = 1/4
# (calibrated z at ε = 8, δ = 1e-5, 5 rounds: m = 4 0.40, 16 0.49, 64 0.64, 128 0.78;
# floor z·√d/m: 6.4, 1.9, 0.64, 0.39). The second is the step: m = 128, seed 0, with privfedtalk.yaml's
# C = 0.05 and the server lr 2 of FedAvg, the noise-to-signal fell to ~1.2 but sync corr stayed at 0.097
# (FedAvg 0.348): the clipped mean (norm <= C) moves the adapter ~20x less per round than FedAvg's
# unclipped mean (norm ~1), so 5 rounds get nowhere. C = 1.0 alone: 0.071 (signal norm ~0.4 per round);
# C = 1.0 with server lr 5: 0.323, mouth PSNR 19.54 (FedAvg 18.56); DP FedAvg without ISFA and TDC at C 1,
# lr 2: 0.105, so ISFA / TDC were not the cause. Hence dp_overrides: the DP rows take C = 1 (about half
# the clients' mean update norm ~2, so most updates are clipped) and server lr 5 (the clipped, noised
# mean is ~0.4 long against FedAvg's ~1). ε does not depend on C or the server lr.
# Cost, measured (2 jobs x 1 thread; train + eval per run): m = 128 ~255 s (FedAvg) / ~280 s (local-only) /
# ~315 s (DP), 64 ~152 s, 16 ~45 s, 4 ~16 s; m = 128 x 3 rows x 3 seeds + 3 variants x 1 seed = 12 runs,
# the smaller m 3 rows x 2 seeds: ~4760 core-s = ~40 min at 2 jobs, + the corpus (1088 clips, 70 s) and
# the backbone (130 s): ~43 min (summed from the logs, not one invocation).
# What was cut against `small`: 32x32 frames with 8x8 latents (the mouth spans about one latent cell),
# 5 rounds (small: 6), 1 training + 1 held-out clip of 2 s per client (small: 3 + 1 of 3 s), 32 public
# identities for the backbone (small: 48) with a smaller VAE, 2 ISFA signal windows (default 4), 8
# evaluated clients at 8 DDIM steps (small: 4 at 10), 2 seeds below the largest m and 1 seed for the
# variants.
# Poisson sampling (as the privfedtalk row): m is the expected count, q = m/512 <= 1/4 (at m = 4 some
# rounds sample fewer than the 2 clients secure aggregation needs and are skipped).
PRESETS["dp-scale"] = {
    "description": "2-core CPU, DP vs cohort size: 32x32, 512 private clients whose mouths lag by 2 frames, "
    "5 rounds x m in {4, 16, 64, 128} clients x 10 local steps, server lr 2, ε = 8",
    "synth": {
        "identities": 544,
        "clips": 2,
        "seconds": 2.0,
        "size": 32,
        "seed": 0,
        "public_fraction": 32 / 544,
        "private_clips": 2,
        "private_mouth_lag": 2,
    },
    "pretrain": [
        "model.vae.block_out_channels=[16,32,32]",
        "model.vae.steps=800",
        "model.vae.batch_size=8",
        "model.unet.block_out_channels=[32,64]",
        "model.unet.steps=1500",
        "model.unet.batch_windows=4",
        "model.identity_steps=300",
    ],
    "federated": [
        "federated.rounds=5",
        "federated.clients_per_round=128",
        "federated.local_steps=10",
        "federated.batch_windows=4",
        "federated.signal_windows=2",
        "federated.lr=1e-2",
        "federated.server_lr=2.0",
        "federated.client_batch=8",
        "privacy.reference_samples=20",
        *_DP_SCALE_ADAPTER,
    ],
    "cohorts": [4, 16, 64, 128],
    "seeds": 3,
    "cohort_seeds": 2,
    "variant_seeds": 1,
    "dp_overrides": ["privacy.clip_norm=1.0", "federated.server_lr=5.0"],
    "jobs": 2,
    "eval_clients": 8,
    "eval_sample_steps": 8,
    "target_epsilon": 8.0,
    "qualitative_frames": 4,
}

# The same question on one CUDA GPU (hours; not timed on a GPU yet): 64x64 frames, 16x16 latents as
# `small`, 1024 private clients (q = m/1024 <= 1/4), 20 rounds x 10 local steps, 3 seeds everywhere.
# The largest m is 256, not more: secure aggregation runs on the CPU and grows with m^2 (~19 s per round
# at m = 256 on the 2-core probe, ~4x that at 512), while the variants repeat the largest m 3 more times.
PRESETS["dp-scale-gpu"] = {
    "description": "one CUDA GPU, DP vs cohort size: 64x64, 1024 private clients whose mouths lag by 2 "
    "frames, "
    "20 rounds x m in {4, 16, 64, 256} clients x 10 local steps, ε = 8",
    "synth": {
        "identities": 1280,
        "clips": 2,
        "seconds": 3.0,
        "size": 64,
        "seed": 0,
        "public_fraction": 256 / 1280,
        "private_clips": 3,
        "private_mouth_lag": 2,
    },
    "pretrain": [
        "device=cuda",
        "mixed_precision=fp16",
        "model.vae.block_out_channels=[32,64,64]",
        "model.vae.steps=3000",
        "model.vae.batch_size=16",
        "model.unet.block_out_channels=[64,128]",
        "model.unet.steps=6000",
        "model.unet.batch_windows=8",
        "model.identity_steps=1000",
    ],
    "federated": [
        "device=cuda",
        "mixed_precision=fp16",
        "federated.rounds=20",
        "federated.clients_per_round=256",
        "federated.local_steps=10",
        "federated.batch_windows=4",
        "federated.lr=1e-2",
        "federated.server_lr=1.0",
        "privacy.reference_samples=50",
        *_DP_SCALE_ADAPTER,
    ],
    "cohorts": [4, 16, 64, 256],
    "seeds": 3,
    "cohort_seeds": 3,
    "variant_seeds": 3,
    "eval_clients": 32,
    "eval_sample_steps": 20,
    "target_epsilon": 8.0,
    "qualitative_frames": 6,
}

# `make run-benchmark PRESET=robust` on the 2-core CPU, target <= 45 min in all: do ISFA's data signals
# and TDC help where they should? Every method of plan.SCENARIO_METHODS (FedAvg, FedProx mu 0.01, ISFA,
# ISFA + TDC λ 1, ISFA threshold s >= 0.95) on 7 corpora: clean, and audio_shift / identity / temporal
# corruption of 25 % (2) and 50 % (4) of the 8 private clients' training clips; plus ISFA vs ISFA + TDC
# on the clean corpus sampled with independent noise per frame (the flicker table). 3 seeds everywhere.
# federated.signal_source=data for every row (FedAvg and FedProx ignore it): the data signals are the
# ones calibrated to separate corrupted clients (config.py's signal ranges, from
# experiments/signal_distributions.py at 32x32: identity and temporal damage; an audio shift leaves the
# frames clean, so no signal sees it and ISFA weighs like FedAvg there: the table shows that too).
# The private speakers' mouths trail their audio by 2 frames, as in `small`: without that shift the
# backbone already fits the clients and every row ties, so a corruption would have nothing to spoil;
# with it the shared adapter must learn the lag from the clients, and an audio-shifted client (3-6 frames
# either way) teaches a conflicting one, which attacks exactly what federation is there to learn.
# Model and corpus as dp-scale's (32x32 frames, VAE [16,32,32] -> 8x8 latents, U-Net [32,64], 32 public
# identities of 2 clips x 2 s for the backbone; each private client 1 training + 1 held-out clip of 2 s).
# Budget: 10 rounds x 4 clients x 10 local steps at lr 1e-2. A first full run at 5 rounds x 4 steps
# (2026-12-02, 12 min 07 s in all) left the 2-frame lag unlearnt (sync corr 0.03-0.09 in every row: the
# shared adapter had barely moved, so no corruption could spoil it either); at 10 x 10 the clean
# clients' sync corr is ~0.4 (identity and temporal 25 %, 3 seeds each).
# Cost, measured (2 cores, 2 jobs x 1 thread): the corpus and the 7 scenario corpora ~50 s, the backbone
# ~2 min 7 s; a run ~25 s of training + ~5 s of evaluation (8 held-out 2 s clips at 4 DDIM steps):
# 5 methods x 7 scenarios x 3 seeds = 105 runs + 6 flicker runs (the clean ISFA and ISFA + TDC trainings
# again, in folders of their own, since a run folder holds one evaluation) = 111 runs x ~32 s / 2 jobs
# = ~30 min (measured: 29 min 02 s); + 6 flicker runs at seeds 3-5 (~2 min); ~35 min in all.
PRESETS["robust"] = {
    "description": "2-core CPU, robustness: 32x32, 8 private clients whose mouths lag by 2 frames, "
    "clean and 25 % / 50 % of clients with shifted audio, another identity or temporal jitter; "
    "10 rounds x 4 clients x 10 local steps",
    "synth": {
        "identities": 40,
        "clips": 2,
        "seconds": 2.0,
        "size": 32,
        "seed": 0,
        "public_fraction": 32 / 40,
        "private_clips": 2,
        "private_mouth_lag": 2,
    },
    "pretrain": PRESETS["dp-scale"]["pretrain"],
    "federated": [
        "federated.rounds=10",
        "federated.clients_per_round=4",
        "federated.local_steps=10",
        "federated.batch_windows=4",
        "federated.lr=1e-2",
        "federated.server_lr=1.0",
        "federated.signal_source=data",
    ],
    "scenarios": {"kinds": ["audio_shift", "identity", "temporal"], "fractions": [0.25, 0.5]},
    "flicker_rows": True,
    # 6 seeds on the flicker rows: at 3, TDC's drop in flicker and jitter was lower at every seed but
    # Welch p 0.014 / 0.030 did not survive Holm's family; 6 more runs cost ~2 min.
    "flicker_seeds": 6,
    "seeds": 3,
    "jobs": 2,
    "eval_clients": None,
    "eval_sample_steps": 4,
    "qualitative_frames": 4,
}
