"""Wall time per federated round: Flower's simulation engine (`privfedtalk flower-sim`) vs the in-process
backend (`privfedtalk train`), same config, same clients, same local work.

Each client count N gets a corpus with N private identities (N registered clients, all sampled every
round) and both backends run the same written config; the tiny QUICK 32x32 backbone is built once
unless --checkpoint is given. Round times are run_round's own (metrics.jsonl `round_seconds`), median
over rounds 2.. (round 1 also encodes each client's clips); wall time includes start-up (Ray, models).

Example: .venv/bin/python experiments/bench_flower.py --clients 4 16 --out flower_bench.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from privfedtalk.benchmark.systems import machine, read_records, steady_median, tiny_fixture, write_config

REPO = Path(__file__).resolve().parents[1]
COMMANDS = {"in_process": "train", "flower": "flower-sim"}


def corpus(work: Path, clients: int) -> Path:
    """A synthetic corpus whose `clients` private identities are the clients (as many public ones)."""
    from privfedtalk.data.synthetic import synthesize_corpus

    data = work / f"data_{clients}"
    if not (data / "split.json").is_file():
        synthesize_corpus(data, identities=2 * clients, clips=2, seconds=1.0, size=32, seed=0)
    return data


def launch(command: str, config: Path, timeout: float) -> float:
    """`privfedtalk COMMAND CONFIG` in a fresh process; returns wall seconds."""
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "privfedtalk.cli", command, str(config)],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        timeout=timeout,
    )
    if done.returncode:
        raise SystemExit(f"{command} {config} failed:\n{done.stderr.decode(errors='replace')[-3000:]}")
    return time.perf_counter() - started


def overrides(args, data: Path, checkpoint: Path, clients: int, run_dir: Path) -> list[str]:
    return [
        f"data.root={data}",
        "data.size=32",
        f"federated.checkpoint={checkpoint}",
        f"federated.rounds={args.rounds}",
        f"federated.clients_per_round={clients}",
        f"federated.local_steps={args.local_steps}",
        f"federated.batch_windows={args.batch_windows}",
        "federated.eval_every=0",
        f"threads={args.threads}",
        f"privacy.secure_aggregation={str(args.secure_aggregation).lower()}",
        f"out_dir={run_dir}",
    ] + args.overrides


def measure(args, work: Path, checkpoint: Path, clients: int, backend: str) -> dict:
    run_dir = work / f"run_{backend}_{clients}"
    shutil.rmtree(run_dir, ignore_errors=True)  # a run folder that holds a run is refused
    keys = overrides(args, corpus(work, clients), checkpoint, clients, run_dir)
    config = write_config(work / f"{backend}_{clients}.yaml", args.config, keys)
    wall = launch(COMMANDS[backend], config, args.timeout)
    records = read_records(run_dir)
    return {
        "clients": clients,
        "backend": backend,
        "wall_seconds": wall,
        "round_seconds": [r["round_seconds"] for r in records],
        "median_round_seconds": steady_median(records),
        "train_seconds_median": [r["train_seconds"] for r in records],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[4, 16])
    parser.add_argument("--checkpoint", help="pretrained checkpoint (default: a tiny QUICK 32x32 one)")
    parser.add_argument("--config", default=None, help="base YAML (default: the schema defaults)")
    parser.add_argument("--work", default="runs/bench_flower", help="scratch folder for data and runs")
    parser.add_argument(
        "--threads", type=int, default=2, help="CPU threads of the run (each Flower client too)"
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--local-steps", type=int, default=1)
    parser.add_argument("--batch-windows", type=int, default=1)
    parser.add_argument("--secure-aggregation", action="store_true")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per run")
    parser.add_argument("--out", help="write the results as JSON here")
    parser.add_argument("overrides", nargs="*", help="extra key=value config overrides")
    args = parser.parse_args(argv)

    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    checkpoint = (
        Path(args.checkpoint).resolve() if args.checkpoint else tiny_fixture(work, 2, args.threads)[1]
    )
    results = []
    for clients in args.clients:
        for backend in COMMANDS:
            result = measure(args, work, checkpoint, clients, backend)
            results.append(result)
            print(
                f"{clients:3d} clients  {backend:10s}: median round {result['median_round_seconds']:.2f} s "
                f"(rounds 2..{args.rounds}), wall {result['wall_seconds']:.1f} s",
                flush=True,
            )
    if args.out:
        report = {"machine": machine(), "args": vars(args), "results": results}
        Path(args.out).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
