"""Does the benchmark's evaluation need its DDIM steps? Held-out metrics of trained runs at several
sampler step counts, with the evaluation's wall time.

The benchmark evaluates every run (privfedtalk.evaluate.evaluate_personalized, one generation per
held-out clip); its cost is about linear in the DDIM steps. This script re-evaluates finished run
folders at each step count on the same identities and seed and prints, per run and step count, the
metrics the tables read and the seconds taken, then the largest change against the most steps. A
step count is safe for the tables when that change is small next to the rows' seed spread.

    .venv/bin/python experiments/eval_steps.py RUN [RUN ...] --steps 20 10 5 --clients 4
"""

from __future__ import annotations

import argparse
import json
import time

import torch

METRICS = ("sync_corr", "mouth_psnr", "psnr", "ssim", "id_sim", "jitter")


def evaluate_at(run: str, identities: list[str], steps: int, heldout: dict) -> dict:
    from privfedtalk.evaluate import evaluate_personalized

    t0 = time.perf_counter()
    result = evaluate_personalized(run, identities, heldout=heldout, steps=steps)
    metrics = {key: float(result["metrics"][key]) for key in METRICS}
    return {"steps": steps, "seconds": time.perf_counter() - t0, **metrics}


def private_identities(run: str, clients: int) -> list[str]:
    from privfedtalk.data.corpus import read_split
    from privfedtalk.federated.store import RunFolder

    split = read_split(RunFolder(run).load_config().data.root)
    return list(split["private"][:clients])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="finished run folders")
    parser.add_argument("--steps", type=int, nargs="+", default=[20, 10, 5])
    parser.add_argument("--clients", type=int, default=4, help="first K private identities (benchmark's)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    report = {}
    for run in args.runs:
        identities = private_identities(run, args.clients)
        heldout: dict = {}  # clips loaded once, reused at every step count
        rows = [evaluate_at(run, identities, steps, heldout) for steps in args.steps]
        reference = max(rows, key=lambda r: r["steps"])
        for row in rows:
            row["max_change"] = {key: abs(row[key] - reference[key]) for key in METRICS}
        report[run] = rows
        for row in rows:
            print(json.dumps({"run": run, **row}), flush=True)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
