"""Size the dp-scale benchmark preset: time one local client step and one secure-aggregation round.

For each candidate backbone (32x32 frames; VAE depth sets the latent size) it builds a throwaway corpus
(2 public, 4 private identities) and a barely trained backbone (step time does not depend on training),
runs one federated round of PrivFedTalk (SecAgg + DP, 4 clients) and reads the round's metrics: the
median local training time per client, the round time and the shared adapter's size d (upload bytes /
8-byte fixed-point words). It then times secure_weighted_sum on d-long vectors for the candidate
cohorts m (pairwise masks: the cost grows with m²).

    .venv/bin/python experiments/probe_dp_scale.py --out /tmp/probe --cohorts 16 64 128 256
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

CANDIDATES = {
    # name: (pretrain overrides, federated overrides)
    "vae2-latent16-rank4": (["model.vae.block_out_channels=[16,32]"], []),
    "vae3-latent8-rank4": (["model.vae.block_out_channels=[16,32,32]"], []),
    "vae3-latent8-rank1-qv": (
        ["model.vae.block_out_channels=[16,32,32]"],
        [
            "federated.shared.rank=1",
            "federated.shared.alpha=1.0",
            "federated.shared.target_modules=[to_q,to_v]",
        ],
    ),
}
BACKBONE = [
    "model.vae.steps=2",
    "model.vae.batch_size=4",
    "model.unet.steps=2",
    "model.unet.block_out_channels=[32,64]",
    "model.unet.batch_windows=2",
    "model.identity_steps=2",
    "data.size=32",
]


def probe_candidate(out: Path, data: Path, name: str, pretrain_keys, fed_keys, local_steps: int) -> dict:
    from privfedtalk.config import load_config
    from privfedtalk.federated.simulation import train
    from privfedtalk.federated.store import RunFolder
    from privfedtalk.pretrain import pretrain

    base = [f"data.root={data}", "data.size=32", "threads=1"]
    t0 = time.perf_counter()
    pretrain(load_config("pretrain.yaml", base + BACKBONE + pretrain_keys + [f"out_dir={out / name}"]))
    pretrain_s = time.perf_counter() - t0
    keys = (
        base
        + fed_keys
        + [
            f"federated.checkpoint={out / name / 'checkpoint'}",
            f"out_dir={out / name / 'fed'}",
            "federated.rounds=1",
            "federated.clients_per_round=4",
            "federated.sampling=fixed_size",
            f"federated.local_steps={local_steps}",
            "federated.batch_windows=4",
            "federated.eval_every=0",
            "privacy.log_signal_norm=true",
        ]
    )
    t0 = time.perf_counter()
    train(load_config("privfedtalk.yaml", keys))
    run_s = time.perf_counter() - t0
    record = RunFolder(out / name / "fed").records()[-1]
    return {
        "candidate": name,
        "pretrain_s_2_steps": pretrain_s,
        "run_s": run_s,
        "round_s": record["round_seconds"],
        "client_train_s": record["train_seconds"],
        "step_s": record["train_seconds"] / local_steps,
        "secagg_s_m4": record["secagg_seconds"],
        "d": record["upload_bytes"] // 8,
    }


def probe_secagg(dim: int, cohorts: list[int]) -> list[dict]:
    from privfedtalk.privacy.fixed_point import plan_fixed_point
    from privfedtalk.privacy.secagg import secure_weighted_sum, shamir_threshold

    rng = np.random.default_rng(0)
    rows = []
    for m in cohorts:
        vectors = {i: rng.uniform(-0.05, 0.05, dim).astype(np.float32) for i in range(m)}
        result = secure_weighted_sum(
            vectors, round_id=0, threshold=shamir_threshold(0.67, m), fixed_point=plan_fixed_point(0.05, m)
        )
        rows.append({"m": m, "dim": dim, "secagg_s": result.seconds})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--cohorts", type=int, nargs="+", default=[16, 64, 128, 256])
    parser.add_argument("--local-steps", type=int, default=5)
    parser.add_argument("--candidates", nargs="+", default=sorted(CANDIDATES))
    args = parser.parse_args(argv)
    import torch

    from privfedtalk.data.synthetic import synthesize_corpus

    torch.set_num_threads(1)
    data = args.out / "data"
    t0 = time.perf_counter()
    synthesize_corpus(data, identities=6, clips=2, seconds=2.0, size=32, public_fraction=2 / 6)
    report = {"synth_s_6_identities_2x2s": time.perf_counter() - t0, "candidates": [], "secagg": []}
    for name in args.candidates:
        pretrain_keys, fed_keys = CANDIDATES[name]
        report["candidates"].append(
            probe_candidate(args.out, data, name, pretrain_keys, fed_keys, args.local_steps)
        )
        print(json.dumps(report["candidates"][-1]), flush=True)
    for dim in sorted({c["d"] for c in report["candidates"]}):
        report["secagg"] += probe_secagg(dim, args.cohorts)
    (args.out / "probe.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
