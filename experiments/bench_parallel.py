"""Wall time per federated round: one process vs P client-parallel processes (gloo on CPU), same cores.

Example: .venv/bin/python experiments/bench_parallel.py --out parallel_bench.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(config: Path, processes: int, timeout: float) -> float:
    """Run `privfedtalk train` in `processes` processes (env as torchrun sets it); returns wall seconds."""
    command = [sys.executable, "-m", "privfedtalk.federated.parallel", str(config)]
    envs = [dict(os.environ)]
    if processes > 1:
        port = free_port()
        envs = [
            dict(
                os.environ,
                RANK=str(r),
                WORLD_SIZE=str(processes),
                LOCAL_RANK=str(r),
                LOCAL_WORLD_SIZE=str(processes),
                MASTER_ADDR="127.0.0.1",
                MASTER_PORT=str(port),
                **({"GLOO_SOCKET_IFNAME": "lo"} if sys.platform.startswith("linux") else {}),
            )
            for r in range(processes)
        ]
    started = time.perf_counter()
    procs = [
        subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for env in envs
    ]
    try:
        errors = [p.communicate(timeout=timeout)[1].decode(errors="replace") for p in procs]
    finally:
        for p in procs:
            p.kill()
    if any(p.returncode for p in procs):
        raise SystemExit(f"run failed ({config}):\n" + "\n".join(e[-3000:] for e in errors))
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="pretrained checkpoint (default: build a tiny 32x32 one)")
    parser.add_argument("--data", help="corpus with split.json (required with --checkpoint)")
    parser.add_argument("--config", default=None, help="base YAML (default: the schema defaults)")
    parser.add_argument("--work", default="runs/bench_parallel", help="scratch folder for data and runs")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2, help="CPU threads in all (split over processes)")
    parser.add_argument("--sequential-threads", type=int, help="threads of the one-process run (--threads)")
    parser.add_argument("--clients-per-round", type=int, default=4)
    parser.add_argument("--local-steps", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--secure-aggregation", action="store_true")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per run")
    parser.add_argument("--out", help="write the results as JSON here")
    parser.add_argument("overrides", nargs="*", help="extra key=value config overrides")
    args = parser.parse_args(argv)

    work, data, checkpoint = backbone(parser, args, args.clients_per_round)
    common = (
        [f"data.root={data}"]
        + run_overrides(args, checkpoint)
        + [f"privacy.secure_aggregation={str(args.secure_aggregation).lower()}"]
        + args.overrides
    )
    sequential_threads = args.sequential_threads or args.threads

    results = {}
    for name, processes in (("sequential", 1), ("parallel", args.processes)):
        run_dir = work / f"run_{name}"
        shutil.rmtree(run_dir, ignore_errors=True)  # train() refuses a folder that holds a run
        threads = sequential_threads if processes == 1 else args.threads  # split over the processes
        overrides = common + [f"threads={threads}", f"out_dir={run_dir}"]
        config = write_config(work / f"{name}.yaml", args.config, overrides)
        wall = launch(config, processes, args.timeout)
        records = read_records(run_dir)
        results[name] = {
            "processes": processes,
            "threads_per_process": threads if processes == 1 else max(1, threads // processes),
            "wall_seconds": wall,
            "round_seconds": [r["round_seconds"] for r in records],
            "median_round_seconds": steady_median(records),
            "rank_seconds": [r.get("rank_seconds") for r in records],
        }
        print(
            f"{name:10s} x{processes}: median round {results[name]['median_round_seconds']:.2f} s "
            f"(rounds 2..{args.rounds}), wall {wall:.1f} s",
            flush=True,
        )
    ratio = results["sequential"]["median_round_seconds"] / results["parallel"]["median_round_seconds"]
    print(f"speed-up per round (sequential / parallel): {ratio:.2f}x")
    if args.out:
        report = {"machine": machine(), "args": vars(args), "results": results, "speedup": ratio}
        Path(args.out).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
