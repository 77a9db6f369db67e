"""Time secure_weighted_sum at the demo adapter size (m = 10) and at 1 M coordinates for m up to 100.

Example: .venv/bin/python experiments/bench_secagg.py --quick --out secagg_bench.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics

import numpy as np

from privfedtalk.privacy.fixed_point import plan_fixed_point
from privfedtalk.privacy.secagg import secure_weighted_sum, shamir_threshold

PHASES = ("advertise_keys", "share_keys", "masked_input", "unmasking")


def bench_one(num_clients: int, dim: int, num_dropped: int, repeats: int, seed: int) -> dict:
    """Median timings of `repeats` runs on one fixed set of float32 vectors in [-1, 1]."""
    rng = np.random.default_rng(seed)
    vectors = {i: rng.uniform(-1.0, 1.0, size=dim).astype(np.float32) for i in range(num_clients)}
    # Drop every k-th client so both mask signs of the dropped pairs are exercised.
    dropped = list(range(0, num_clients, max(1, num_clients // max(1, num_dropped))))[:num_dropped]
    fixed_point = plan_fixed_point(1.0, num_clients)
    threshold = shamir_threshold(0.67, num_clients)
    expected = np.zeros(dim)
    for client_id, vector in vectors.items():
        if client_id not in dropped:
            expected += vector
    runs = []
    for repeat in range(repeats):
        result = secure_weighted_sum(
            vectors, round_id=repeat, threshold=threshold, fixed_point=fixed_point, dropped=dropped
        )
        runs.append(
            {
                "seconds": result.seconds,
                "client_mask_seconds": result.client_mask_seconds_median,
                "max_abs_error": float(np.max(np.abs(result.total - expected))),
                **{phase: result.phase_seconds[phase] for phase in PHASES},
            }
        )
    survivors = num_clients - len(dropped)
    return {
        "clients": num_clients,
        "dim": dim,
        "dropped": len(dropped),
        "threshold": threshold,
        "repeats": repeats,
        # Each survivor expands its self mask and m-1 pairwise masks; the server re-expands every
        # survivor's self mask and each (dropped, survivor) pairwise mask.
        "prg_expansions": survivors * num_clients + survivors + len(dropped) * survivors,
        "max_rounding_error_bound": fixed_point.max_rounding_error(survivors),
        **{key: statistics.median(run[key] for run in runs) for key in runs[0]},
    }


def markdown_table(rows: list[dict]) -> str:
    header = (
        "| clients | dim | dropped | total s | keys s | shares s | masking s (all) | masking s (per client) "
        "| unmask s | PRG expansions | max abs err |"
    )
    lines = [header, "|" + "---|" * 11]
    for row in rows:
        lines.append(
            f"| {row['clients']} | {row['dim']:,} | {row['dropped']} | {row['seconds']:.3f} "
            f"| {row['advertise_keys']:.4f} | {row['share_keys']:.3f} | {row['masked_input']:.3f} "
            f"| {row['client_mask_seconds']:.4f} | {row['unmasking']:.3f} | {row['prg_expansions']:,} "
            f"| {row['max_abs_error']:.1e} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=22_000, help="vector length for the m = 10 demo-size run")
    parser.add_argument("--big-dim", type=int, default=1_000_000, help="vector length for the scaling runs")
    parser.add_argument("--quick", action="store_true", help="scaling runs only for m in {10, 25}")
    parser.add_argument("--dropped", type=float, default=0.0, help="fraction of clients that drop out")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0, help="seed for the test vectors (keys use os.urandom)")
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args(argv)

    configs = [(10, args.dim)] + [(m, args.big_dim) for m in ((10, 25) if args.quick else (10, 25, 50, 100))]
    rows = []
    for num_clients, dim in configs:
        num_dropped = int(args.dropped * num_clients)
        rows.append(bench_one(num_clients, dim, num_dropped, args.repeats, args.seed))
        print(f"done m={num_clients} dim={dim}: {rows[-1]['seconds']:.3f} s", flush=True)
    print()
    print(markdown_table(rows))
    if args.out:
        report = {
            "machine": {
                "platform": platform.platform(),
                "processor": platform.processor(),
                "cpus": os.cpu_count(),
            },
            "args": vars(args),
            "results": rows,
        }
        with open(args.out, "w") as handle:
            json.dump(report, handle, indent=2)


if __name__ == "__main__":
    main()
