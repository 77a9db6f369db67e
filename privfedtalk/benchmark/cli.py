"""The method tables: every row on the same corpus, backbone, budget and held-out clips.

    .venv/bin/python experiments/run_benchmark.py --preset small                 # = make run-benchmark
    .venv/bin/python experiments/run_benchmark.py --preset robust    # = make run-benchmark PRESET=robust
    .venv/bin/python experiments/run_benchmark.py --preset tiny --out /tmp/bench --only fedavg threads=1
    .venv/bin/python experiments/run_benchmark.py --preset small \\
        --checkpoint demo_out/pretrain/checkpoint --data demo_out/data          # reuse the demo's backbone

1. corpus + backbone, cached under OUT/cache/PRESET/ (or --checkpoint DIR --data DIR); with
   --backbone-seeds K (or the preset's backbone_seeds) K backbones pretrained under K seeds, backbone
   b >= 1 in OUT/cache/PRESET/pretrain-bB/; a scenario preset (robust) also synthesizes each corrupted
   scenario's corpus into OUT/cache/PRESET/data-SCENARIO/ (one backbone, pretrained on the clean one);
2. one federated run per row, seed and backbone under OUT/PRESET/runs/ROW/seedS (backbone 0) or
   ROW/bB-seedS (backbone B >= 1); a run whose folder already holds the same config, all its rounds
   and an eval.json is reused (--fresh reruns the selected rows);
3. each run's personalized models (global shared adapter + the client's own identity adapter) on the
   held-out clips of the first `eval_clients` private identities -> eval.json;
4. systems columns from metrics.jsonl (upload per client-round, median round time, peak memory, ε);
5. OUT/PRESET/: table.{md,csv,json,tex}, convergence.png, privacy_utility.png, qualitative.png,
   samples/ROW.mp4 and README.md (a scenario preset: the robust and flicker tables in table.md,
   table.json and README.md).
Trailing key=value arguments override every run's config (e.g. threads=1 device=cpu); a row's own
method keys and the seed take precedence over them.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from privfedtalk.benchmark.execute import (
    ClipCache,
    corpus_and_backbone,
    execute,
    scenario_corpora,
    setup_logging,
)
from privfedtalk.benchmark.plan import backbone_count, plan_benchmark, row_names
from privfedtalk.benchmark.presets import PRESETS
from privfedtalk.benchmark.report import write_report

log = logging.getLogger("privfedtalk.benchmark")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", choices=sorted(PRESETS), default="small")
    parser.add_argument("--out", type=Path, default=Path("results"), help="results folder (default results/)")
    parser.add_argument("--seeds", type=int, help="federated seeds of every row (default: the preset's)")
    parser.add_argument(
        "--backbone-seeds",
        type=int,
        metavar="K",
        help="pretrain K backbones under K seeds and run every row's seeds on each, so the ± includes "
        "the backbone's variance (default: the preset's backbone_seeds, 1)",
    )
    parser.add_argument("--fresh", action="store_true", help="rerun the selected rows' runs (not the cache)")
    parser.add_argument("--only", nargs="+", metavar="ROW", help="only these rows (names: see --list)")
    parser.add_argument("--list", action="store_true", help="print the row names and exit")
    parser.add_argument("--checkpoint", type=Path, help="use this pretrained backbone instead of the cache")
    parser.add_argument("--data", type=Path, help="use this corpus (with split.json) instead of the cache")
    parser.add_argument(
        "--jobs",
        type=int,
        help="runs trained and evaluated at once, by a pool of that many worker processes, each run with "
        "the preset's run_threads torch threads (default: the preset's jobs)",
    )
    parser.add_argument(
        "--inception",
        type=Path,
        help="local TorchScript Inception-v3 feature file: adds true FID (otherwise the FID column is n/a)",
    )
    parser.add_argument("overrides", nargs="*", help="key=value applied to every run (e.g. threads=1)")
    return parser


def parse_args(argv):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.only:  # `--only a b threads=1`: argparse hands the override to --only
        args.overrides = [o for o in args.only if "=" in o] + args.overrides
        args.only = [o for o in args.only if "=" not in o]
    bad = [o for o in args.overrides if "=" not in o]
    if bad:
        parser.error(f"unknown arguments {bad} (overrides are key=value)")
    if (args.checkpoint is None) != (args.data is None):
        parser.error("give --checkpoint and --data together")
    if args.seeds is not None and args.seeds < 1:
        parser.error("--seeds must be >= 1")
    if args.jobs is not None and args.jobs < 1:
        parser.error("--jobs must be >= 1")
    if args.backbone_seeds is not None and args.backbone_seeds < 1:
        parser.error("--backbone-seeds must be >= 1")
    return args


def check_rows(args, preset: dict) -> None:
    names = row_names(preset)
    unknown = [n for n in args.only or [] if n not in names]
    if unknown:
        raise SystemExit(f"unknown rows {unknown}; rows of preset {args.preset}: {', '.join(names)}")


def main(argv=None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    args.argv = ["experiments/run_benchmark.py"] + argv
    preset = PRESETS[args.preset]
    if args.list:
        print("\n".join(row_names(preset)))
        return {}
    check_rows(args, preset)
    setup_logging()
    started = time.perf_counter()
    times = {}
    out_dir = args.out / args.preset
    out_dir.mkdir(parents=True, exist_ok=True)
    data, checkpoints = corpus_and_backbone(args, preset, times, backbone_count(preset, args))
    roots = scenario_corpora(args, preset, data, times) if preset.get("scenarios") else None
    bench = plan_benchmark(args.preset, preset, data, checkpoints, args, out_dir / "runs", roots)
    cache = ClipCache()
    execute(bench, args.fresh, args.jobs or int(preset.get("jobs", 1)), cache, times)
    table = write_report(out_dir, bench, args, cache, times, started)
    log.info("benchmark %s done in %.0f s -> %s", args.preset, times["total_s"], out_dir)
    return table
