"""Whole-round client throughput: `privfedtalk train` rounds of this tree against another source tree.

Local steps per second across a round = clients x local_steps / round_seconds (from the run's
metrics.jsonl): every round timed whole (client data, local training, privacy, aggregation, the run
folder). "before" is another checkout of the project run with clients one at a time (K = 1); "after"
is this tree with `federated.client_batch` = K for each K asked. Runs go one at a time (on a 2-core
machine two concurrent runs slowed each other up to 4x) and the trees alternate within each repeat,
so a machine that drifts slows both alike; ratios are taken within a repeat (median round rate after
÷ before), then listed per repeat.

    git worktree add /tmp/before cbdc369        # the code before batched clients
    .venv/bin/python experiments/bench_round_throughput.py --before /tmp/before \
        --config results/dp-scale/runs/fedavg-m128/seed0/config.yaml \
        --cohorts 64 32 --batches 16 8 --threads 2 1 --repeats 2 --out /tmp/rounds

The config is a finished run's config.yaml (its data root and backbone must exist: run the preset
first); DP and signals are as in that config. Each tree is imported through PYTHONPATH, and the script
checks which source each run imported before timing it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

THIS_TREE = Path(__file__).resolve().parents[1]


def imported_from(tree: Path) -> Path:
    """The privfedtalk package a run with PYTHONPATH=tree imports (it must be the tree's own)."""
    probe = "import privfedtalk, pathlib; print(pathlib.Path(privfedtalk.__file__).resolve().parent)"
    out = subprocess.run(
        [sys.executable, "-c", probe], env=_env(tree), cwd="/", capture_output=True, text=True, check=True
    )
    return Path(out.stdout.strip())


def _env(tree: Path) -> dict:
    return {**os.environ, "PYTHONPATH": str(tree)}


def round_rates(run_dir: Path) -> list[float]:
    """Local steps per second of each round of a finished run folder."""
    from omegaconf import OmegaConf

    local_steps = OmegaConf.load(run_dir / "config.yaml").federated.local_steps
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
    return [row["clients"] * local_steps / row["round_seconds"] for row in rows]


def train(tree: Path, config: Path, run_dir: Path, rounds: int, cohort: int, batch: int, threads: int):
    shutil.rmtree(run_dir, ignore_errors=True)
    overrides = [
        f"out_dir={run_dir}",
        f"federated.rounds={rounds}",
        f"federated.clients_per_round={cohort}",
        f"federated.client_batch={batch}",
        f"threads={threads}",
    ]
    command = [sys.executable, "-m", "privfedtalk.cli", "train", str(config), *overrides]
    log = run_dir.with_suffix(".log")
    with open(log, "w") as stream:
        done = subprocess.run(command, env=_env(tree), cwd="/", stdout=stream, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed (exit {done.returncode}); see {log}")
    return round_rates(run_dir)


def ratios(before: list[float], after: list[float]) -> list[float]:
    """Per repeat: the median round rate after ÷ the median round rate before."""
    return [a / b for a, b in zip(after, before)]


def check_trees(trees: dict[str, Path]) -> None:
    for name, tree in trees.items():
        source = imported_from(tree)
        if not source.is_relative_to(tree):
            raise SystemExit(f"--{name}: PYTHONPATH={tree} imports privfedtalk from {source}, not the tree's")


def measure(args, trees: dict[str, Path]) -> dict[str, list[float]]:
    """Median round rate of every run, by tag (tree-threads-cohort-batch), one entry per repeat."""
    medians: dict[str, list[float]] = {}
    for repeat in range(1, args.repeats + 1):
        for threads in args.threads:
            for cohort in args.cohorts:
                for name, batch in [("before", 1)] + [("after", batch) for batch in args.batches]:
                    tag = f"{name}-t{threads}-m{cohort}-k{batch}"
                    run_dir = args.out / f"{tag}-r{repeat}"
                    rates = train(trees[name], args.config, run_dir, args.rounds, cohort, batch, threads)
                    medians.setdefault(tag, []).append(statistics.median(rates))
                    shown = " / ".join(f"{rate:.2f}" for rate in rates)
                    print(f"repeat {repeat} {tag}: {shown} local steps/s per round", flush=True)
    return medians


def summarize(medians: dict[str, list[float]]) -> dict:
    summary = {}
    for tag, values in medians.items():
        name, threads, cohort, batch = tag.split("-")
        entry = {"median_rates": [round(v, 3) for v in values]}
        if name == "after":
            before = medians[f"before-{threads}-{cohort}-k1"]
            entry["ratios"] = [round(r, 3) for r in ratios(before, values)]
            shown = ", ".join(f"{r:.2f}" for r in entry["ratios"])
            print(f"{threads} {cohort} {batch}: after / before per repeat {shown}")
        summary[tag] = entry
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, required=True, help="source tree of the code before")
    parser.add_argument("--config", type=Path, required=True, help="a finished run's config.yaml")
    parser.add_argument("--cohorts", type=int, nargs="+", default=[64, 32])
    parser.add_argument("--batches", type=int, nargs="+", default=[16])
    parser.add_argument("--threads", type=int, nargs="+", default=[2])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    trees = {"before": args.before.resolve(), "after": THIS_TREE}
    check_trees(trees)
    args.out.mkdir(parents=True, exist_ok=True)
    summary = summarize(measure(args, trees))
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
