"""The method tables: every row on the same corpus, backbone, budget and held-out clips.

    .venv/bin/python experiments/run_benchmark.py --preset small                 # = make run-benchmark
    .venv/bin/python experiments/run_benchmark.py --preset tiny --out /tmp/bench --only fedavg threads=1
    .venv/bin/python experiments/run_benchmark.py --list                         # the row names

The benchmark itself is the package privfedtalk.benchmark (presets, plan, execute, report); its
command line, with every flag, is privfedtalk/benchmark/cli.py (`--help`).
"""

from privfedtalk.benchmark.cli import main

if __name__ == "__main__":
    main()
