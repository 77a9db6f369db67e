"""Peak memory and time per round of a run with N registered clients and the same m sampled per round.

Example: .venv/bin/python experiments/bench_memory.py --sizes 8,256 10,1000 --out memory_bench.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from privfedtalk.benchmark.systems import (
    backbone,
    machine,
    read_records,
    run_overrides,
    steady_median,
    write_config,
)

REPO = Path(__file__).resolve().parents[1]


def registered_corpus(root: Path, pool_root: Path, pool: list[str], count: int) -> Path:
    """A corpus whose split.json lists `count` private identities, each a symlink into the pool.

    Registering a client costs one directory entry: clients share the pool's media on disk but
    are distinct clients (own id, own slot, own latent cache once sampled).
    """
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    names = [f"reg{i:06d}" for i in range(count)]
    for i, name in enumerate(names):
        (root / name).symlink_to(pool_root / pool[i % len(pool)], target_is_directory=True)
    (root / "split.json").write_text(json.dumps({"public": [], "private": names}))
    return root


def child(config: str) -> None:
    """One setting in this fresh process: train, then print its peak memory as the last stdout line."""
    from privfedtalk.config import load_config
    from privfedtalk.federated.simulation import train
    from privfedtalk.runtime import peak_memory_mb, resolve_device

    cfg = load_config(config)
    started = time.perf_counter()
    train(cfg)
    peak = peak_memory_mb(resolve_device(cfg.device))
    print(json.dumps({"peak_memory_mb": peak, "seconds": time.perf_counter() - started}))


def run_setting(work: Path, count: int, pool_root: Path, pool: list[str], common: list[str], args) -> dict:
    data = registered_corpus(work / f"corpus_{count}", pool_root, pool, count)
    run_dir = work / f"run_{count}"
    shutil.rmtree(run_dir, ignore_errors=True)
    config = write_config(
        work / f"n{count}.yaml", args.config, common + [f"data.root={data}", f"out_dir={run_dir}"]
    )
    done = subprocess.run(
        [sys.executable, __file__, "--child", str(config)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=args.timeout,
    )
    if done.returncode:
        raise SystemExit(f"N={count} failed:\n{done.stderr[-3000:]}")
    measured = json.loads(done.stdout.strip().splitlines()[-1])
    records = read_records(run_dir)
    return {
        "registered": count,
        "clients_per_round": args.clients_per_round,
        "peak_memory_mb": measured["peak_memory_mb"],
        "run_seconds": measured["seconds"],
        "median_round_seconds": steady_median(records),
        "median_train_seconds": statistics.median(
            r["train_seconds"] for r in records if "train_seconds" in r
        ),
        "round_seconds": [r.get("round_seconds") for r in records],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["8,256", "10,1000"], help="groups of N to compare")
    parser.add_argument("--checkpoint", help="pretrained checkpoint (default: build a tiny 32x32 one)")
    parser.add_argument("--data", help="corpus whose private identities form the pool (with --checkpoint)")
    parser.add_argument("--config", default=None, help="base YAML (default: the schema defaults)")
    parser.add_argument("--work", default="runs/bench_memory", help="scratch folder for data and runs")
    parser.add_argument("--pool", type=int, default=4, help="identities to reuse (tiny corpus only)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--clients-per-round", type=int, default=4)
    parser.add_argument("--local-steps", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per setting")
    parser.add_argument("--out", help="write the results as JSON here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", help="extra key=value config overrides")
    args = parser.parse_args(argv)
    if args.child:
        return child(args.child)

    from privfedtalk.data.corpus import read_split

    work, pool_root, checkpoint = backbone(parser, args, args.pool)
    pool = read_split(pool_root)["private"]
    common = run_overrides(args, checkpoint) + [f"threads={args.threads}"] + args.overrides

    groups = []
    for group in args.sizes:
        rows = []
        for count in [int(n) for n in group.split(",")]:
            rows.append(run_setting(work, count, pool_root, pool, common, args))
            row = rows[-1]
            print(
                f"N={count:5d} m={args.clients_per_round}: peak {row['peak_memory_mb']:.0f} MiB, "
                f"round {row['median_round_seconds']:.2f} s (median of rounds 2..{args.rounds}), "
                f"train {row['median_train_seconds']:.2f} s/client",
                flush=True,
            )
        first, last = rows[0], rows[-1]
        print(
            f"  N {first['registered']} -> {last['registered']}: memory x"
            f"{last['peak_memory_mb'] / first['peak_memory_mb']:.3f}, round time x"
            f"{last['median_round_seconds'] / first['median_round_seconds']:.3f}"
        )
        groups.append(rows)
    if args.out:
        report = {"machine": machine(), "args": vars(args), "results": groups}
        Path(args.out).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
