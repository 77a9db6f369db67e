"""The method benchmark: every row (baselines, PrivFedTalk, ablations, privacy-utility sweep) on the same
corpus, backbone, budget and held-out clips.

presets (machine sizes) -> plan (rows and the runs they share) -> execute (train and evaluate each run
unless its folder holds the result) -> report (tables, figures, samples, README). The command line is
`experiments/run_benchmark.py` (= `python -m privfedtalk.benchmark`), see cli.py.
"""
