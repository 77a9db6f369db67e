"""The method tables: every row on the same corpus, backbone, budget and held-out clips.

    .venv/bin/python experiments/run_benchmark.py --preset small                 # = make run-benchmark
    .venv/bin/python experiments/run_benchmark.py --preset tiny --out /tmp/bench --only fedavg threads=1
    .venv/bin/python experiments/run_benchmark.py --preset small \\
        --checkpoint demo_out/pretrain/checkpoint --data demo_out/data          # reuse the demo's backbone

1. corpus + backbone, cached under OUT/cache/PRESET/ (or --checkpoint DIR --data DIR);
2. one federated run per row and seed under OUT/PRESET/runs/ROW/seedK; a run whose folder already
   holds the same config, all its rounds and an eval.json is reused (--fresh reruns the selected rows);
3. each run's personalized models (global shared adapter + the client's own identity adapter) on the
   held-out clips of the first `eval_clients` private identities -> eval.json;
4. systems columns from metrics.jsonl (upload per client-round, median round time, peak memory, ε);
5. OUT/PRESET/: table.{md,csv,json,tex}, convergence.png, privacy_utility.png, qualitative.png,
   samples/ROW.mp4 and README.md.
Trailing key=value arguments override every run's config (e.g. threads=1 device=cpu); a row's own
method keys and the seed take precedence over them.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import io
import json
import logging
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
log = logging.getLogger("privfedtalk.benchmark")

FD_LABEL = "FD (identity-encoder features; not FID)"
FID_LABEL = "FID (Inception, --inception FILE)"
# (key, label, direction: +1 higher is better / -1 lower is better / 0 not a quality score, decimals)
QUALITY = [
    ("psnr", "PSNR (dB)", 1, 2),
    ("ssim", "SSIM", 1, 3),
    ("mouth_psnr", "mouth PSNR (dB)", 1, 2),
    ("sync_corr", "sync corr", 1, 3),
    ("id_sim", "ID sim", 1, 3),
    ("jitter", "jitter", -1, 4),
    ("fd_identity_features", FD_LABEL, -1, 3),
    ("fid", FID_LABEL, -1, 2),
]
SYSTEMS = [
    ("upload_kb", "upload KB/client-round", 0, 1),
    ("round_s", "round s (median)", 0, 2),
    ("peak_mib", "peak MiB", 0, 0),
    ("epsilon", "ε", 0, 2),
]
COLUMNS = QUALITY + SYSTEMS
TABLES = {
    "main": "Main table",
    "ablation": "Ablation (seed 0; each component added alone to adapters-only FedAvg)",
    "privacy": "Privacy-utility (privfedtalk, seed 0)",
}
EVAL_VERSION = 1


def _sibling(name: str):
    """Import experiments/<name>.py whether this file runs as a script or is imported by path."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


PRESETS = _sibling("benchmark_presets").PRESETS


# ------------------------------------------------------------------------------------------- the plan


@dataclass
class Run:
    """One federated training (a row at a seed); several logical rows may share it."""

    key: str  # "fedavg/seed0": its folder under OUT/PRESET/runs/
    cfg: object
    status: str = "pending"
    train_s: float = 0.0
    eval_s: float = 0.0
    eval: dict | None = None
    records: list = field(default_factory=list)


@dataclass
class Row:
    name: str  # what --only takes
    table: str  # main | ablation | privacy
    label: str
    config_file: str
    overrides: list[str]
    seeds: list[int]
    target_epsilon: float | None = None
    note: str = ""
    runs: dict = field(default_factory=dict)  # seed -> Run


@dataclass
class EvalSpec:
    """What every run is evaluated on: the same identities' held-out clips, DDIM steps, FID network."""

    identities: list
    steps: int | None = None
    inception: str | None = None  # local TorchScript Inception file; None: FID is "n/a"

    def settings(self, seed: int) -> dict:
        out = {
            "identities": self.identities,
            "sample_steps": self.steps,
            "seed": seed,
            "version": EVAL_VERSION,
        }
        if self.inception:
            out["inception"] = self.inception
        return out


def _eps(value: float) -> str:
    return "inf" if math.isinf(value) else f"{value:g}"


def privacy_overrides(target_epsilon: float) -> list[str]:
    """Secure aggregation always; client-level DP calibrated to target ε (inf: DP off); Poisson sampling."""
    keys = ["privacy.secure_aggregation=true", "federated.sampling=poisson"]
    if math.isinf(target_epsilon):
        return keys + ["privacy.dp=false"]
    return keys + ["privacy.dp=true", f"privacy.target_epsilon={float(target_epsilon)}"]


def row_definitions(preset: dict, seeds: int, budget: dict, private_identities: int) -> list[Row]:
    """Every row of the three tables; budget = the resolved clients_per_round and local_steps."""
    main_seeds = list(range(seeds))
    target = float(preset["target_epsilon"])
    method = ["federated.method=isfa", "federated.lambda_tdc=0.1"]
    rows = [
        Row(
            "local-only",
            "main",
            "local-only",
            "fedavg.yaml",
            ["federated.server_lr=0.0"],
            main_seeds,
            note="no federation: server_lr=0, so the global shared adapter never changes (clients still "
            "train it locally each round, and that part is thrown away); what each client keeps is its "
            "identity adapter. Nothing needs uploading, so upload is reported as 0",
        ),
        Row("fedavg", "main", "FedAvg", "fedavg.yaml", [], main_seeds),
        Row("fedprox", "main", "FedProx (mu=0.01)", "fedprox.yaml", ["federated.mu=0.01"], main_seeds),
        Row(
            "privfedtalk",
            "main",
            f"PrivFedTalk (ε={_eps(target)})",
            "privfedtalk.yaml",
            method + privacy_overrides(target),
            main_seeds,
            target_epsilon=target,
        ),
        Row(
            "centralized",
            "main",
            "centralized (non-private upper bound)",
            "fedavg.yaml",
            [
                f"federated.partition.identities_per_client={private_identities}",
                "federated.clients_per_round=1",
                f"federated.local_steps={budget['clients_per_round'] * budget['local_steps']}",
            ],
            [0],
            note="one client owning every private identity, clients_per_round x local_steps local steps "
            "per round (same optimizer steps as the others), seed 0 only; upload not applicable",
        ),
        Row("adapters-only", "ablation", "adapters only (FedAvg)", "fedavg.yaml", [], [0]),
        Row("+isfa", "ablation", "+ ISFA", "fedavg.yaml", ["federated.method=isfa"], [0]),
        Row("+tdc", "ablation", "+ TDC (λ=0.1)", "fedavg.yaml", ["federated.lambda_tdc=0.1"], [0]),
        Row(
            "+dp",
            "ablation",
            f"+ SecAgg + DP (ε={_eps(target)})",
            "fedavg.yaml",
            privacy_overrides(target),
            [0],
            target_epsilon=target,
        ),
        Row(
            "full",
            "ablation",
            "full PrivFedTalk",
            "privfedtalk.yaml",
            method + privacy_overrides(target),
            [0],
            target_epsilon=target,
        ),
    ]
    for eps in preset["epsilons"]:
        rows.append(
            Row(
                f"eps-{_eps(eps)}",
                "privacy",
                f"target ε={_eps(eps)}" + (" (DP off, SecAgg on)" if math.isinf(eps) else ""),
                "privfedtalk.yaml",
                method + privacy_overrides(eps),
                [0],
                target_epsilon=float(eps),
            )
        )
    return rows


def row_names(preset: dict) -> list[str]:
    return [r.name for r in row_definitions(preset, 1, {"clients_per_round": 1, "local_steps": 1}, 1)]


def signature(cfg) -> str:
    from privfedtalk.federated.store import run_signature

    return run_signature(cfg)


def folder_name(row_name: str) -> str:
    return row_name.replace("+", "plus-")


def plan_runs(rows: list[Row], common: list[str], cli_overrides: list[str], runs_dir: Path) -> dict:
    """Build each row's configs; rows with identical configs share one run (the first row names it)."""
    from privfedtalk.config import load_config

    runs: dict[str, Run] = {}
    by_signature: dict[str, Run] = {}
    for row in rows:
        for seed in row.seeds:
            # Command-line overrides (threads=1, device=...) apply to every row; the row's method keys
            # and the seed come last, so that rows keep differing only in those.
            cfg = load_config(row.config_file, common + cli_overrides + row.overrides + [f"seed={seed}"])
            sig = signature(cfg)
            if sig not in by_signature:
                key = f"{folder_name(row.name)}/seed{seed}"
                cfg.out_dir = str(runs_dir / key)
                by_signature[sig] = runs[key] = Run(key, cfg)
            row.runs[seed] = by_signature[sig]
    return runs


# ------------------------------------------------------------------------------ data and backbone


def prepare_backbone(preset_name: str, preset: dict, out: Path, cli_overrides: list[str], times: dict):
    """Corpus + backbone of the preset, built once under OUT/cache/PRESET/."""
    from privfedtalk.config import load_config

    cache = out / "cache" / preset_name
    data, pretrain_dir = cache / "data", cache / "pretrain"
    checkpoint = pretrain_dir / "checkpoint"
    meta_file = cache / "meta.json"
    wanted = {"synth": preset["synth"], "pretrain": preset["pretrain"]}
    meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
    if meta and {"synth": meta.get("synth"), "pretrain": meta.get("pretrain")} != json.loads(
        json.dumps(wanted)
    ):
        raise SystemExit(
            f"{cache} was built with other corpus/backbone settings than preset {preset_name!r} now has; "
            f"delete {cache} to rebuild it (or pass --checkpoint/--data)"
        )
    t0 = time.perf_counter()
    if (data / "split.json").is_file():
        log.info("corpus: reused %s", data)
        times["synth_s"] = 0.0
    else:
        from privfedtalk.data.synthetic import synthesize_corpus

        log.info("corpus: synthesizing %s", preset["synth"])
        synthesize_corpus(data, **preset["synth"])
        times["synth_s"] = meta["synth_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    if (checkpoint / "identity_encoder.json").is_file():
        log.info("backbone: reused %s", checkpoint)
        times["pretrain_s"] = 0.0
    else:
        from privfedtalk.pretrain import pretrain

        log.info("backbone: pretraining on the public identities")
        overrides = [f"data.root={data}", f"data.size={preset['synth']['size']}"] + preset["pretrain"]
        pretrain(load_config("pretrain.yaml", overrides + [f"out_dir={pretrain_dir}"] + cli_overrides))
        times["pretrain_s"] = meta["pretrain_s"] = time.perf_counter() - t0
    meta.update(wanted)
    meta_file.write_text(json.dumps(meta, indent=1))
    times["cached_build_s"] = {k: meta[k] for k in ("synth_s", "pretrain_s") if k in meta}
    return data, checkpoint


# -------------------------------------------------------------------------------------- training


def run_worker(plan: Path) -> dict:
    """--worker PLAN: train and evaluate the one run PLAN describes; write PLAN's .result.json."""
    from privfedtalk.config import load_config
    from privfedtalk.federated.store import atomic_write_text

    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("privfedtalk").setLevel(logging.INFO)
    job = json.loads(plan.read_text())
    run = Run(job["key"], load_config(job["config"], job["overrides"]))
    ensure_trained(run, job["fresh"])
    ensure_evaluated(run, EvalSpec(**job["eval"]), ClipCache())
    result = {"status": run.status, "train_s": run.train_s, "eval_s": run.eval_s}
    atomic_write_text(json.dumps(result), plan.with_suffix(".result.json"))
    return result


def run_in_parallel(runs: list[Run], jobs: int, fresh: bool, spec: EvalSpec, runs_dir: Path):
    """Train + evaluate `runs`, `jobs` at a time, each in its own process (`--worker`).

    Each worker gets max(1, threads // jobs) torch threads: on a 2-core CPU two 1-thread runs finish
    sooner than one 2-thread run after another (small convolutions scale poorly across threads).
    A run's folder is written only by its own worker; a failed worker stops the benchmark, naming its log.
    """
    plans = runs_dir / ".jobs"
    plans.mkdir(parents=True, exist_ok=True)
    pending, active = [], []
    for run in runs:  # a finished, evaluated run needs no worker process
        done = trained_rounds(run) or 0
        if not fresh and done >= run.cfg.federated.rounds and saved_eval(run, spec) is not None:
            run.status = "reused"
        else:
            pending.append(run)
    try:
        _drive_workers(pending, active, jobs, fresh, spec, plans)
    except BaseException:  # Ctrl-C or a failed worker: stop the others; finished rounds stay resumable
        for _, proc, *_ in active:
            proc.terminate()
        raise


def _drive_workers(pending, active, jobs, fresh, spec: EvalSpec, plans: Path) -> None:
    from omegaconf import OmegaConf

    while pending or active:
        while pending and len(active) < jobs:
            run = pending.pop(0)
            name = run.key.replace("/", "_")
            threads = max(1, int(run.cfg.threads) // jobs)
            config_file = plans / f"{name}.yaml"
            config_file.write_text(OmegaConf.to_yaml(run.cfg))
            plan = plans / f"{name}.json"
            plan.write_text(
                json.dumps(
                    {
                        "key": run.key,
                        "config": str(config_file),
                        "overrides": [f"threads={threads}"],
                        "fresh": fresh,
                        "eval": asdict(spec),
                    }
                )
            )
            plan.with_suffix(".result.json").unlink(missing_ok=True)
            log_file = plans / f"{name}.log"
            with open(log_file, "w") as stream:
                proc = subprocess.Popen(
                    [sys.executable, str(Path(__file__).resolve()), "--worker", str(plan)],
                    stdout=stream,
                    stderr=subprocess.STDOUT,
                )
            log.info("%s: started in a worker (%d threads; log %s)", run.key, threads, log_file)
            active.append((run, proc, plan, log_file))
        time.sleep(1.0)
        for item in list(active):
            run, proc, plan, log_file = item
            if proc.poll() is None:
                continue
            active.remove(item)
            if proc.returncode != 0:
                tail = log_file.read_text(errors="replace").strip().splitlines()[-1:] or ["(empty log)"]
                raise SystemExit(f"{run.key}: worker failed ({tail[0]}); full log: {log_file}")
            result = json.loads(plan.with_suffix(".result.json").read_text())
            run.status, run.train_s, run.eval_s = result["status"], result["train_s"], result["eval_s"]
            log.info("%s: %s (train %.0f s, eval %.0f s)", run.key, run.status, run.train_s, run.eval_s)


def reset_peak_memory() -> None:
    """Start each run's peak-memory reading afresh (CUDA peak stats; Linux RSS high-water mark)."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def trained_rounds(run: Run) -> int | None:
    """Rounds the run's folder has completed for this very config; None if it holds another config."""
    from privfedtalk.config import Config, load_config

    run_dir = Path(run.cfg.out_dir)
    if (run_dir / "config.yaml").is_file():
        if signature(load_config(run_dir / "config.yaml", schema=Config)) != signature(run.cfg):
            return None
    state_file = run_dir / "state.json"
    return json.loads(state_file.read_text())["completed_rounds"] if state_file.is_file() else 0


def ensure_trained(run: Run, fresh: bool) -> None:
    from omegaconf import OmegaConf

    from privfedtalk.federated.simulation import train
    from privfedtalk.federated.store import atomic_write_text

    run_dir = Path(run.cfg.out_dir)
    rounds = run.cfg.federated.rounds
    if fresh and run_dir.exists():
        shutil.rmtree(run_dir)
    completed = trained_rounds(run)
    if completed is None:
        log.warning("%s: its config changed since it ran; training it again from scratch", run.key)
        shutil.rmtree(run_dir)
        completed = 0
    if completed >= rounds:
        run.status = "reused"
        return
    (run_dir / "eval.json").unlink(missing_ok=True)
    reset_peak_memory()
    t0 = time.perf_counter()
    if completed > 0:
        log.info("%s: resuming after round %d of %d", run.key, completed, rounds)
        atomic_write_text(OmegaConf.to_yaml(run.cfg), run_dir / "config.yaml")  # e.g. a new threads=
        train(resume=str(run_dir))
        run.status = "resumed"
    else:
        if run_dir.exists():
            shutil.rmtree(run_dir)  # started but no round completed: nothing to keep
        log.info("%s: training %d rounds", run.key, rounds)
        train(run.cfg)
        run.status = "trained"
    run.train_s = time.perf_counter() - t0


def read_jsonl(path: Path) -> list[dict]:
    """One JSON object per line (metrics.jsonl, invocations.jsonl); [] if the file is absent."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def read_records(run_dir: Path) -> list[dict]:
    return read_jsonl(run_dir / "metrics.jsonl")


# ------------------------------------------------------------------------------------ evaluation


class ClipCache:
    """Held-out clips per identity, loaded once per benchmark (same clips for every run)."""

    def __init__(self):
        self.clips = {}

    def heldout(self, cfg, identity: str) -> list:
        from privfedtalk.federated.clients import ClientSpec, heldout_clips

        key = (cfg.data.root, identity, cfg.data.size, cfg.data.heldout_clips)
        if key not in self.clips:
            self.clips[key] = heldout_clips(cfg, [ClientSpec(identity, [identity])])
        return self.clips[key]


def evaluate_run(cfg, run_dir: Path, spec: EvalSpec, cache: ClipCache) -> dict:
    """privfedtalk.evaluate.evaluate_personalized on the spec's identities; the first clip's frames are
    kept in eval_sample.npz for the qualitative figure and the sample videos."""
    from privfedtalk.evaluate import evaluate_personalized

    heldout = {identity: cache.heldout(cfg, identity) for identity in spec.identities}
    kwargs = {"steps": int(spec.steps)} if spec.steps else {}
    result = evaluate_personalized(
        run_dir, spec.identities, heldout=heldout, seed=cfg.seed, inception=spec.inception, **kwargs
    )
    name, frames = result.pop("sample")
    np.savez_compressed(run_dir / "eval_sample.npz", frames=frames, clip=name)
    result["sample_clip"] = name
    return result


def saved_eval(run: Run, spec: EvalSpec) -> dict | None:
    """The run's eval.json if it was made with these evaluation settings (and its sample exists)."""
    run_dir = Path(run.cfg.out_dir)
    eval_file = run_dir / "eval.json"
    if not (eval_file.is_file() and (run_dir / "eval_sample.npz").is_file()):
        return None
    saved = json.loads(eval_file.read_text())
    return saved if saved.get("settings") == spec.settings(run.cfg.seed) else None


def ensure_evaluated(run: Run, spec: EvalSpec, cache: ClipCache) -> None:
    from privfedtalk.federated.store import atomic_write_text

    run_dir = Path(run.cfg.out_dir)
    settings = spec.settings(run.cfg.seed)
    eval_file = run_dir / "eval.json"
    saved = saved_eval(run, spec)
    if saved is not None:
        run.eval = saved
        log.info("%s: reused (%d rounds complete, eval.json present)", run.key, run.cfg.federated.rounds)
        return
    t0 = time.perf_counter()
    log.info("%s: evaluating %d identities' held-out clips", run.key, len(spec.identities))
    result = evaluate_run(run.cfg, run_dir, spec, cache)
    run.eval_s = time.perf_counter() - t0
    result["settings"] = settings
    result["seconds"] = run.eval_s
    atomic_write_text(json.dumps(result, indent=1, default=float), eval_file)
    run.eval = result
    if run.status == "reused":
        run.status = "re-evaluated"


# ------------------------------------------------------------------------------------ the numbers


def run_values(row: Row, run: Run) -> dict:
    """One run's table values: quality from eval.json, systems from metrics.jsonl."""
    values = {key: run.eval["metrics"].get(key) for key, *_ in QUALITY}
    done = [r for r in run.records if "upload_bytes" in r]
    values["upload_kb"] = float(np.median([r["upload_bytes"] for r in done])) / 1e3 if done else None
    values["round_s"] = float(np.median([r["round_seconds"] for r in done])) if done else None
    peaks = [r["peak_memory_mb"] for r in done if r.get("peak_memory_mb") is not None]
    values["peak_mib"] = float(max(peaks)) if peaks else None
    values["epsilon"] = run.records[-1].get("epsilon_observer") if run.records else None
    if row.name == "local-only":
        values["upload_kb"] = 0.0
    if row.name == "centralized":
        values["upload_kb"] = None
    return values


def summarize(row: Row) -> dict:
    per_seed = {seed: run_values(row, run) for seed, run in sorted(row.runs.items())}
    mean, std = {}, {}
    for key, *_ in COLUMNS:
        vals = [v[key] for v in per_seed.values() if v[key] is not None and math.isfinite(v[key])]
        mean[key] = float(np.mean(vals)) if vals else None
        std[key] = float(np.std(vals, ddof=1)) if len(vals) > 1 else None
    first = row.runs[min(row.runs)]
    out = {
        "row": row.name,
        "label": row.label,
        "table": row.table,
        "n_seeds": len(per_seed),
        "seeds": sorted(per_seed),
        "runs": {str(s): r.key for s, r in sorted(row.runs.items())},
        "mean": mean,
        "std": std,
        "per_seed": {str(s): v for s, v in per_seed.items()},
        "note": row.note,
    }
    if row.table == "privacy":
        out["target_epsilon"] = None if math.isinf(row.target_epsilon) else row.target_epsilon
        # The planned z (the last round may have been skipped, or had fewer clients than planned).
        noised = [r["noise_multiplier"] for r in first.records if r.get("noise_multiplier")]
        out["noise_multiplier"] = max(noised) if noised else None
    return out


def fmt(value, decimals: int, key: str = "") -> str:
    if value is None:
        return {"epsilon": "∞", "fid": "n/a"}.get(key, "—")
    if isinstance(value, float) and math.isinf(value):
        return "∞"
    return f"{value:.{decimals}f}"


def cell(summary: dict, key: str, decimals: int) -> str:
    text = fmt(summary["mean"][key], decimals, key)
    if summary["std"][key] is not None:
        text += f" ± {summary['std'][key]:.{decimals}f}"
    return text


def compare(table: dict) -> list[dict]:
    """privfedtalk against each baseline, metric by metric, against the seed spread.

    "Beats beyond seed spread" = better in the metric's direction by more than std(privfedtalk) +
    std(baseline) (sample std over seeds): the mean ± std intervals do not overlap.
    """
    rows = {s["row"]: s for s in table["main"]}
    method = rows.get("privfedtalk")
    out = []
    for base_name in ("fedavg", "fedprox", "local-only"):
        base = rows.get(base_name)
        if method is None or base is None:
            continue
        for key, label, direction, decimals in QUALITY:
            a, b = method["mean"][key], base["mean"][key]
            if a is None or b is None:
                continue
            gain = direction * (a - b)
            sa, sb = method["std"][key], base["std"][key]
            entry = {"baseline": base_name, "metric": key, "label": label, "gain": gain}
            if sa is None or sb is None:
                entry["verdict"] = "not judged"
                entry["text"] = (
                    f"{label}: privfedtalk {fmt(a, decimals)} vs {base_name} {fmt(b, decimals)}; "
                    f"does not beat {base_name} beyond seed spread (fewer than 2 seeds: no spread measured)"
                )
            else:
                spread = sa + sb
                entry["spread"] = spread
                numbers = (
                    f"privfedtalk {a:.{decimals}f} ± {sa:.{decimals}f} vs {base_name} "
                    f"{b:.{decimals}f} ± {sb:.{decimals}f}"
                )
                if gain > spread:
                    entry["verdict"] = "beats"
                    entry["text"] = f"{label}: beats {base_name} beyond seed spread ({numbers})"
                elif -gain > spread:
                    entry["verdict"] = "worse"
                    entry["text"] = f"{label}: worse than {base_name} beyond seed spread ({numbers})"
                else:
                    entry["verdict"] = "does not beat"
                    how = "better, but within the spread" if gain > 0 else "not better"
                    entry["text"] = (
                        f"{label}: does not beat {base_name} beyond seed spread ({how}; {numbers})"
                    )
            out.append(entry)
    return out


KEY_METRICS = ("psnr", "mouth_psnr", "sync_corr", "id_sim")


def reading(table: dict) -> list[str]:
    """Plain-language findings beside the per-metric comparison, derived from the numbers.

    Single-seed rows (centralized, ablations, privacy-utility) have no spread of their own; their
    differences are measured against FedAvg's seed spread (2 x its sample std), the yardstick used
    in every sentence below.
    """
    main = {s["row"]: s for s in table["main"]}
    fedavg = main.get("fedavg")
    labels = {key: (label, decimals, direction) for key, label, direction, decimals in QUALITY}
    lines = []

    def yardstick(key):
        std = fedavg["std"][key] if fedavg else None
        return 2 * std if std is not None else None

    def against(row: dict, ref: dict, ref_name: str) -> str:
        parts, beyond = [], 0
        for key in KEY_METRICS:
            a, b = row["mean"][key], ref["mean"][key]
            if a is None or b is None:
                continue
            label, decimals, direction = labels[key]
            delta, noise = a - b, yardstick(key)
            mark = ""
            if noise is not None and abs(delta) > noise:
                beyond += 1
                mark = " (beyond spread: " + ("better" if direction * delta > 0 else "worse") + ")"
            parts.append(f"{label} {delta:+.{decimals}f}{mark}")
        return f"vs {ref_name}: " + ", ".join(parts), beyond

    if fedavg and "local-only" in main:
        text, beyond = against(fedavg, main["local-only"], "local-only")
        verdict = (
            "federating the shared adapter changes nothing measurable"
            if beyond == 0
            else (f"federation moves {beyond} of {len(KEY_METRICS)} key metrics beyond the spread")
        )
        lines.append(f"FedAvg {text}: {verdict}.")
    if fedavg and "fedprox" in main:
        text, beyond = against(main["fedprox"], fedavg, "FedAvg")
        lines.append(f"FedProx {text}" + (": indistinguishable." if beyond == 0 else "."))
    comparison = table.get("comparison") or []
    if comparison:
        verdicts = [c["verdict"] for c in comparison if c["baseline"] != "local-only"]
        lines.append(
            f"PrivFedTalk vs FedAvg/FedProx, {len(verdicts)} (metric, baseline) pairs: "
            f"{verdicts.count('beats')} better beyond seed spread, {verdicts.count('worse')} worse beyond "
            f"seed spread, {verdicts.count('does not beat')} within the spread."
        )
    if fedavg and "centralized" in main:
        text, beyond = against(main["centralized"], fedavg, "FedAvg")
        lines.append(
            f"Centralized (one client with all private data, seed 0) {text}"
            + (": no gap for federation to close here." if beyond == 0 else ".")
        )
    ablation = {s["row"]: s for s in table.get("ablation", [])}
    if "adapters-only" in ablation:
        for name, row in ablation.items():
            if name == "adapters-only":
                continue
            text, beyond = against(row, ablation["adapters-only"], "adapters-only")
            lines.append(f"Ablation {row['label']} {text}" + (": within the spread." if beyond == 0 else "."))
    privacy = table.get("privacy") or []
    if privacy:
        points = []
        for row in privacy:
            eps = row["mean"].get("epsilon")
            eps_text = "∞" if eps is None else f"{eps:.2f}"
            points.append(
                f"target {row['target_epsilon'] or '∞'} -> ε {eps_text}: PSNR "
                f"{fmt(row['mean']['psnr'], 2)}, sync {fmt(row['mean']['sync_corr'], 3)}"
            )
        lines.append("Privacy-utility (measured ε, seed 0): " + "; ".join(points) + ".")
        ref = next((r for r in privacy if r["target_epsilon"] is None), None)
        if ref is not None and fedavg is not None:
            text, beyond = against(ref, fedavg, "FedAvg")
            lines.append(
                f"The ε=∞ point (PrivFedTalk's pipeline with clipping at C={table.get('clip_norm')} and "
                f"secure aggregation, no noise) {text}"
                + (
                    ": what DP costs here is already lost to clipping, before any noise."
                    if beyond
                    else ": clipping and secure aggregation cost nothing measurable."
                )
            )
        if ref is not None:
            worst = [r for r in privacy if r is not ref and against(r, ref, "ε=∞")[1] > 0]
            lines.append(
                "Against the ε=∞ point, "
                + (
                    "no noise level moves a key metric beyond the spread."
                    if not worst
                    else "key metrics move beyond the spread at target ε "
                    + ", ".join(str(r["target_epsilon"]) for r in worst)
                    + "."
                )
            )
    if lines:
        seeds = fedavg["n_seeds"] if fedavg else 0
        lines.append(
            f"Yardstick (also for single-seed rows): 2 x FedAvg's sample std over its {seeds} seeds. "
            "All numbers come from one synthetic corpus; a difference inside the yardstick is noise."
        )
    return lines


# ---------------------------------------------------------------------------------------- outputs


def markdown_table(summaries: list[dict], extra_privacy: bool = False) -> str:
    head = ["row", "seeds"]
    if extra_privacy:
        head += ["target ε", "measured ε", "noise z"]
    head += [label for key, label, *_ in COLUMNS if not (extra_privacy and key == "epsilon")]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in summaries:
        cells = [s["label"], str(s["n_seeds"])]
        if extra_privacy:
            z = s.get("noise_multiplier")
            cells += [
                fmt(s.get("target_epsilon"), 0, "epsilon"),
                fmt(s["mean"]["epsilon"], 2, "epsilon"),
                "—" if z is None else f"{z:.3f}",
            ]
        cells += [cell(s, k, d) for k, _, _, d in COLUMNS if not (extra_privacy and k == "epsilon")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_csv(path: Path, table: dict) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf)
    header = ["table", "row", "label", "n_seeds", "target_epsilon"]
    for key, *_ in COLUMNS:
        header += [f"{key}_mean", f"{key}_std"]
    writer.writerow(header)
    for name in TABLES:
        for s in table[name]:
            line = [name, s["row"], s["label"], s["n_seeds"], s.get("target_epsilon", "")]
            for key, *_ in COLUMNS:
                line += [s["mean"][key], s["std"][key]]
            writer.writerow(["" if v is None else v for v in line])
    path.write_text(buf.getvalue())


def tex_escape(text: str) -> str:
    for old, new in (
        ("\\", "\\textbackslash{}"),
        ("&", "\\&"),
        ("%", "\\%"),
        ("_", "\\_"),
        ("#", "\\#"),
        ("±", "$\\pm$"),
        ("ε", "$\\varepsilon$"),
        ("λ", "$\\lambda$"),
        ("∞", "$\\infty$"),
        ("—", "--"),
    ):
        text = text.replace(old, new)
    return text


def write_tex(path: Path, table: dict, preset: str) -> None:
    parts = [f"% PrivFedTalk benchmark, preset {preset}; generated by experiments/run_benchmark.py"]
    for name, title in TABLES.items():
        if not table[name]:
            continue
        md = markdown_table(table[name], extra_privacy=name == "privacy").splitlines()
        header = [c.strip() for c in md[0].strip("|").split("|")]
        parts += [
            "\\begin{table}[t]",
            "\\centering\\scriptsize",
            f"\\caption{{{tex_escape(title)}}}",
            "\\begin{tabular}{l" + "r" * (len(header) - 1) + "}",
            "\\hline",
            " & ".join(tex_escape(h) for h in header) + " \\\\",
            "\\hline",
        ]
        for line in md[2:]:
            cells = [c.strip() for c in line.strip("|").split("|")]
            parts.append(" & ".join(tex_escape(c) for c in cells) + " \\\\")
        parts += ["\\hline", "\\end{tabular}", "\\end{table}", ""]
    path.write_text("\n".join(parts))


def plot_convergence(path: Path, rows: list[Row]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for row in rows:
        curves = []
        for run in row.runs.values():
            curve = {r["round"]: r["loss"] for r in run.records if r.get("loss") is not None}
            curves.append(curve)
        rounds = sorted({k for c in curves for k in c})
        if not rounds:
            continue
        mean = [np.mean([c[r] for c in curves if r in c]) for r in rounds]
        std = [np.std([c[r] for c in curves if r in c]) for r in rounds]
        ax.plot(rounds, mean, marker="o", label=f"{row.label} (n={len(curves)})")
        if len(curves) > 1:
            ax.fill_between(rounds, np.subtract(mean, std), np.add(mean, std), alpha=0.2)
    ax.set_xlabel("round")
    ax.set_ylabel("diffusion loss (mean over sampled clients)")
    ax.set_title("Convergence (mean ± std over seeds)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_privacy(path: Path, summaries: list[dict], references: list[dict] = ()) -> None:
    """Quality against measured ε; `references` (e.g. FedAvg, local-only) are drawn as dashed levels,
    so the axis shows differences at the scale that separates methods, not at the noise's scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = []
    for s in summaries:
        target = s.get("target_epsilon", 0.0)
        name = s["label"] if target == 0.0 else f"target {fmt(target, 0, 'epsilon')}"
        points.append((s["mean"]["epsilon"], s["mean"]["psnr"], s["mean"]["sync_corr"], name))
    finite = [p[0] for p in points if p[0] is not None and math.isfinite(p[0])]
    inf_x = max(finite) * 4 if finite else 1.0
    has_inf = any(p[0] is None or math.isinf(p[0]) for p in points)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for ax, index, name in ((axes[0], 1, "PSNR (dB)"), (axes[1], 2, "sync corr")):
        pts = sorted(
            (inf_x if (p[0] is None or math.isinf(p[0])) else p[0], p[index], p[3])
            for p in points
            if p[index] is not None
        )
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label="privfedtalk")
        key = "psnr" if index == 1 else "sync_corr"
        for ref, style in zip(references, ("--", ":", "-."), strict=False):
            if ref["mean"].get(key) is not None:
                label = f"{ref['label']} ({ref['n_seeds']} seeds)"
                ax.axhline(ref["mean"][key], linestyle=style, color="gray", label=label)
        if references:
            ax.legend(fontsize=6)
        for x, y, label in pts:
            ax.annotate(label, (x, y), fontsize=6, textcoords="offset points", xytext=(3, 3))
        ax.set_xscale("log")
        if has_inf:
            ticks = sorted(set(finite)) + [inf_x]
            ax.set_xticks(ticks, [f"{t:.3g}" for t in ticks[:-1]] + ["∞ (no DP)"])
            ax.minorticks_off()
        ax.set_xlabel("measured ε after the last round (δ fixed)")
        ax.set_ylabel(name)
    fig.suptitle("Privacy-utility (privfedtalk, seed 0)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def load_sample(run: Run):
    path = Path(run.cfg.out_dir) / "eval_sample.npz"
    with np.load(path) as data:
        return data["frames"], str(data["clip"])


def clip_by_name(run: Run, name: str, cache: ClipCache):
    identity = name.split("/", 1)[0]
    for clip in cache.heldout(run.cfg, identity):
        if f"{identity}/{clip.name}" == name:
            return clip
    raise SystemExit(f"held-out clip {name} not found")


def plot_qualitative(path: Path, rows: list[Row], cache: ClipCache, frames_shown: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first = rows[0].runs[min(rows[0].runs)]
    _, name = load_sample(first)
    clip = clip_by_name(first, name, cache)
    steps = np.linspace(0, len(clip.frames) - 1, frames_shown).round().astype(int)
    lines = [("reference (input)", None), ("ground truth", clip.frames)]
    for row in rows:
        frames, sample_name = load_sample(row.runs[min(row.runs)])
        if sample_name == name:
            lines.append((row.label, frames))
    fig, axes = plt.subplots(
        len(lines), len(steps), figsize=(1.6 * len(steps), 1.6 * len(lines)), squeeze=False
    )
    for i, (label, frames) in enumerate(lines):
        for j, t in enumerate(steps):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            if frames is None:
                if j == 0:
                    ax.imshow(clip.frames[0], interpolation="nearest")
                else:
                    ax.axis("off")
            else:
                ax.imshow(frames[t], interpolation="nearest")
            if i == 0 and j == 0:
                ax.set_title("frame 0", fontsize=7)
            elif i == 1:
                ax.set_title(f"frame {t}", fontsize=7)
            if j == 0:
                ax.set_ylabel(label, fontsize=6)
    fig.suptitle(f"Held-out clip {name} (seed 0 runs)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_samples(folder: Path, rows: list[Row], cache: ClipCache) -> list[str]:
    from privfedtalk.data.media import write_video

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for row in rows:
        run = row.runs[min(row.runs)]
        frames, name = load_sample(run)
        clip = clip_by_name(run, name, cache)
        path = folder / f"{folder_name(row.name)}.mp4"
        write_video(path, frames, clip.fps, audio=clip.audio, sample_rate=clip.sample_rate)
        written.append(str(path.name))
    return written


def machine() -> dict:
    import torch

    info = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }
    if torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name(0)
    return info


def record_invocation(path: Path, table: dict, args, runs) -> list[dict]:
    """Append this invocation to OUT/PRESET/invocations.jsonl; return them all, oldest first.

    A re-run that reuses finished runs takes seconds; the history keeps the wall time of the
    invocation that trained them, which is what a preset's time budget is about.
    """
    from privfedtalk.federated.store import atomic_write_text

    history = read_jsonl(path)
    statuses = [run.status for run in runs]
    times = table["timings"]
    history.append(
        {
            "finished": table["finished"],
            "command": " ".join(args.argv),
            "total_s": round(times["total_s"], 1),
            "synth_s": round(times["synth_s"], 1),
            "pretrain_s": round(times["pretrain_s"], 1),
            "runs_wall_s": round(times["runs_wall_s"], 1),
            "jobs": times["jobs"],
            "runs_trained": sum(s in ("trained", "resumed") for s in statuses),
            "runs_reused": sum(s in ("reused", "re-evaluated") for s in statuses),
        }
    )
    atomic_write_text("".join(json.dumps(h) + "\n" for h in history), path)
    return history


def readme(table: dict, args, rows: list[Row]) -> str:
    preset, times, m = table["preset"], table["timings"], table["machine"]
    built = times.get("cached_build_s") or {}
    cached = ""
    if built and times["synth_s"] + times["pretrain_s"] == 0:
        cached = (
            " (cache reused; building it took " + ", ".join(f"{k} {v:.0f} s" for k, v in built.items()) + ")"
        )
    elif times["synth_s"] + times["pretrain_s"] == 0:
        cached = " (given with --checkpoint/--data)"
    lines = [
        f"# PrivFedTalk benchmark — preset `{preset}`",
        "",
        f"Generated by `experiments/run_benchmark.py --preset {preset}` on {table['finished']}. "
        f"{table['description']}.",
        "",
        "## What ran",
        "",
        f"- Data: `{table['data']}` (synthetic corpus: procedural faces, speech-like audio); backbone "
        f"`{table['checkpoint']}`, pretrained on the public identities only. "
        f"{table['private_identities']} private identities are the clients.",
        f"- Budget, identical for every row: {table['budget_text']}. Rows differ only in method keys "
        "(privfedtalk/configs/{fedavg,fedprox,privfedtalk}.yaml plus the keys listed per row in "
        "`table.json`).",
        f"- Evaluation: the held-out clips (the last {table['heldout_clips']} clip(s) of each identity, "
        "never trained on) of the first "
        f"{len(table['eval_identities'])} private identities ({', '.join(table['eval_identities'])}), "
        "each generated by its own client's personalized model (global shared adapter + that client's "
        f"identity adapter) from the clip's first frame and its audio; DDIM steps: "
        f"{table['eval_sample_steps'] or 'checkpoint default'}; metric family: {table['metric_family']}.",
        f"- Main-table seeds: {table['seeds']}; ablation and privacy-utility rows: seed 0. Mean ± sample std "
        "(ddof=1) over seeds; no ± where there is one seed.",
        "",
        "Rows: "
        + "; ".join(f"`{r.name}` = {r.label}" + (f" ({r.note})" if r.note else "") for r in rows)
        + ".",
        "",
        "## Machine and time",
        "",
        f"- {m['platform']}, {m['cpu_count']} CPUs ({m['processor']}), Python {m['python']}, "
        f"torch {m['torch']}" + (f", GPU {m['cuda_device']}" if "cuda_device" in m else ", no GPU") + ".",
        f"- corpus: {times['synth_s']:.1f} s, backbone pretraining: {times['pretrain_s']:.1f} s"
        + cached
        + f", federated runs: {times['train_s']:.1f} s, evaluation: {times['eval_s']:.1f} s, "
        f"tables/figures/samples: {times['outputs_s']:.1f} s; whole invocation: {times['total_s']:.1f} s.",
        "",
        "Invocations that built these results (oldest first; `invocations.jsonl`):",
        "",
        "| finished | total s | corpus s | pretraining s | runs wall s | jobs | trained | reused |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for h in table.get("invocations", []):
        lines.append(
            f"| {h['finished']} | {h['total_s']:.1f} | {h['synth_s']:.1f} | {h['pretrain_s']:.1f} "
            f"| {h['runs_wall_s']:.1f} | {h['jobs']} | {h['runs_trained']} | {h['runs_reused']} |"
        )
    lines += [
        "",
        "| run | status | train s (this invocation) | eval s (this invocation) | sum of round s | eval s |",
        "|---|---|---|---|---|---|",
    ]
    for key, info in table["runs"].items():
        lines.append(
            f"| {key} | {info['status']} | {info['train_s']:.1f} | {info['eval_s']:.1f} "
            f"| {info['rounds_s']:.1f} | {info['last_eval_s']:.1f} |"
        )
    lines += [
        "",
        "`reused`: finished by an earlier invocation (0 s now); the last two columns are what each run "
        "cost when it ran (its rounds from metrics.jsonl, its evaluation from eval.json).",
        "",
    ]
    for name, title in TABLES.items():
        if table[name]:
            lines += [f"## {title}", "", markdown_table(table[name], extra_privacy=name == "privacy"), ""]
    lines += [
        "## How to read the tables",
        "",
        "- PSNR / SSIM: whole frame vs the real clip (higher is better); mouth PSNR: inside the "
        "ground-truth mouth box; sync corr: correlation of the generated mouth opening with the real one "
        "at lag 0 (higher is better; 0 = no relation); ID sim: identity-encoder cosine similarity to the "
        "reference (higher is better); jitter: error of frame-to-frame change (lower is better).",
        f"- {FD_LABEL}: Fréchet distance between real and generated frames in the project's small "
        "identity encoder's feature space (lower is better). It is not FID and not comparable to FID.",
        f"- {FID_LABEL}: true FID over the pooled frames, computed only when `--inception FILE` names a "
        "local TorchScript Inception-v3 feature extractor (nothing is downloaded); otherwise n/a.",
        "- upload KB/client-round: what a sampled client sends per round (fixed-point words under "
        "secure aggregation, else float32); local-only uploads nothing; centralized: not applicable. "
        "round s: median wall time of a round (all sampled clients trained in turn in one process). "
        "peak MiB: peak resident memory of the benchmark process during the run (GPU: peak allocated), "
        "reset before each run. ε: measured (ε, δ) client-level DP after the last round (∞: no DP).",
        "- All rows are small-scale synthetic-data runs: differences smaller than the seed spread are noise.",
        "",
        "## Honest reading",
        "",
    ]
    lines += [f"- {text}" for text in table.get("reading", [])]
    lines += ["", "Per metric, PrivFedTalk against each baseline:", ""]
    if table["comparison"]:
        beats = [c for c in table["comparison"] if c["verdict"] == "beats" and c["baseline"] != "local-only"]
        lines.append(
            f"privfedtalk beats a federated baseline beyond seed spread on {len(beats)} of "
            f"{sum(c['baseline'] != 'local-only' for c in table['comparison'])} (metric, baseline) pairs. "
            "Criterion: better in the metric's direction by more than std(privfedtalk) + std(baseline).\n"
        )
        lines += [f"- {c['text']}" for c in table["comparison"]]
    else:
        lines.append("No comparison: the privfedtalk row or the fedavg/fedprox rows were not selected.")
    lines += [
        "",
        "## Files",
        "",
        "`table.md`, `table.csv`, `table.json` (every number, per seed), `table.tex`, `convergence.png`, "
        "`privacy_utility.png`, `qualitative.png`, `samples/*.mp4` (seed-0 generations with the driving "
        "audio), `runs/ROW/seedK/` (config.yaml, metrics.jsonl, eval.json, TensorBoard logs).",
        "",
        f"Command line: `{' '.join(args.argv)}`",
        "",
    ]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ main


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", choices=sorted(PRESETS), default="small")
    parser.add_argument("--out", type=Path, default=Path("results"), help="results folder (default results/)")
    parser.add_argument("--seeds", type=int, help="main-table seeds (default: the preset's)")
    parser.add_argument("--fresh", action="store_true", help="rerun the selected rows' runs (not the cache)")
    parser.add_argument("--only", nargs="+", metavar="ROW", help="only these rows (names: see --list)")
    parser.add_argument("--list", action="store_true", help="print the row names and exit")
    parser.add_argument("--checkpoint", type=Path, help="use this pretrained backbone instead of the cache")
    parser.add_argument("--data", type=Path, help="use this corpus (with split.json) instead of the cache")
    parser.add_argument(
        "--jobs",
        type=int,
        help="runs trained and evaluated at once, each in its own process with threads/jobs torch "
        "threads (default: the preset's)",
    )
    parser.add_argument(
        "--inception",
        type=Path,
        help="local TorchScript Inception-v3 feature file: adds true FID (otherwise the FID column is n/a)",
    )
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)  # one run, for --jobs > 1
    parser.add_argument("overrides", nargs="*", help="key=value applied to every run (e.g. threads=1)")
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
    return args


def main(argv=None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if args.worker is not None:
        return run_worker(args.worker)
    args.argv = ["experiments/run_benchmark.py"] + argv
    preset = PRESETS[args.preset]
    names = row_names(preset)
    if args.list:
        print("\n".join(names))
        return {}
    unknown = [n for n in args.only or [] if n not in names]
    if unknown:
        raise SystemExit(f"unknown rows {unknown}; rows of preset {args.preset}: {', '.join(names)}")
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("privfedtalk").setLevel(logging.INFO)

    from privfedtalk.config import load_config
    from privfedtalk.data.corpus import read_split

    started = time.perf_counter()
    times = {}
    out_dir = args.out / args.preset
    out_dir.mkdir(parents=True, exist_ok=True)
    if args.checkpoint is not None:
        data, checkpoint = args.data, args.checkpoint
        times.update(synth_s=0.0, pretrain_s=0.0)
    else:
        data, checkpoint = prepare_backbone(args.preset, preset, args.out, args.overrides, times)
    split = read_split(data)
    if not split or not split.get("private"):
        raise SystemExit(f"{data}: no split.json with private identities")
    spec = json.loads((Path(checkpoint) / "generator.json").read_text())
    common = [
        f"data.root={Path(data).resolve()}",
        f"data.size={spec['size']}",
        f"federated.checkpoint={Path(checkpoint).resolve()}",
        "federated.eval_every=0",
    ] + list(preset["federated"])
    base = load_config("fedavg.yaml", common + args.overrides)
    budget = {
        "clients_per_round": int(base.federated.clients_per_round),
        "local_steps": int(base.federated.local_steps),
    }
    seeds = args.seeds or int(preset["seeds"])
    rows = row_definitions(preset, seeds, budget, len(split["private"]))
    plan_runs(rows, common, args.overrides, out_dir / "runs")
    selected = [r for r in rows if not args.only or r.name in args.only]
    chosen_runs = {id(run): run for row in selected for run in row.runs.values()}.values()
    eval_identities = list(split["private"][: preset["eval_clients"] or None])
    steps = preset["eval_sample_steps"]

    cache = ClipCache()
    spec = EvalSpec(eval_identities, steps, str(args.inception.resolve()) if args.inception else None)
    jobs = args.jobs or int(preset.get("jobs", 1))
    t0 = time.perf_counter()
    if jobs > 1:
        run_in_parallel(list(chosen_runs), jobs, args.fresh, spec, out_dir / "runs")
    for run in chosen_runs:
        if jobs == 1:
            ensure_trained(run, args.fresh)
        ensure_evaluated(run, spec, cache)  # with jobs > 1: reads the worker's eval.json
        run.records = read_records(Path(run.cfg.out_dir))
    times["train_s"] = sum(r.train_s for r in chosen_runs)
    times["eval_s"] = sum(r.eval_s for r in chosen_runs)
    times["runs_wall_s"] = time.perf_counter() - t0
    times["jobs"] = jobs

    t0 = time.perf_counter()
    fed = base.federated
    table = {
        "preset": args.preset,
        "description": preset["description"],
        "data": str(data),
        "checkpoint": str(checkpoint),
        "private_identities": len(split["private"]),
        "seeds": list(range(seeds)),
        "budget": {
            "rounds": int(fed.rounds),
            "clients_per_round": budget["clients_per_round"],
            "local_steps": budget["local_steps"],
            "batch_windows": int(fed.batch_windows),
            "lr": float(fed.lr),
            "server_lr": float(fed.server_lr),
        },
        "eval_identities": eval_identities,
        "heldout_clips": int(base.data.heldout_clips),
        "eval_sample_steps": steps,
        "columns": [
            {"key": k, "label": label, "direction": {1: "higher", -1: "lower", 0: None}[d]}
            for k, label, d, _ in COLUMNS
        ],
        "rows": {
            r.name: {"config": r.config_file, "overrides": r.overrides, "label": r.label} for r in selected
        },
    }
    table["budget_text"] = ", ".join(f"{k}={v}" for k, v in table["budget"].items())
    for name in TABLES:
        table[name] = [summarize(r) for r in selected if r.table == name]
    table["comparison"] = compare(table)
    privacy_rows = [r for r in selected if r.table == "privacy"]
    if privacy_rows:
        table["clip_norm"] = float(privacy_rows[0].runs[0].cfg.privacy.clip_norm)
    table["reading"] = reading(table)
    families = {run.eval.get("metric_family") for run in chosen_runs}
    table["metric_family"] = "; ".join(sorted(f for f in families if f))
    table["runs"] = {
        run.key: {
            "status": run.status,
            "train_s": run.train_s,
            "eval_s": run.eval_s,
            # What the run cost when it ran (also for reused runs): its rounds, its last evaluation.
            "rounds_s": float(sum(r.get("round_seconds", 0.0) for r in run.records)),
            "last_eval_s": float(run.eval.get("seconds", 0.0)),
        }
        for run in chosen_runs
    }
    table["machine"] = machine()

    (out_dir / "table.md").write_text(
        "\n\n".join(
            f"## {title}\n\n" + markdown_table(table[name], extra_privacy=name == "privacy")
            for name, title in TABLES.items()
            if table[name]
        )
        + "\n"
    )
    write_csv(out_dir / "table.csv", table)
    write_tex(out_dir / "table.tex", table, args.preset)
    main_rows = [r for r in selected if r.table == "main"]
    plot_rows = main_rows or selected
    plot_convergence(out_dir / "convergence.png", plot_rows)
    privacy = table["privacy"] or [s for s in table["main"] if s["row"] == "privfedtalk"]
    if privacy:
        levels = [s for s in table["main"] if s["row"] in ("fedavg", "local-only")]
        plot_privacy(out_dir / "privacy_utility.png", privacy, levels)
    plot_qualitative(out_dir / "qualitative.png", plot_rows, cache, int(preset["qualitative_frames"]))
    table["samples"] = write_samples(out_dir / "samples", plot_rows, cache)
    times["outputs_s"] = time.perf_counter() - t0
    times["total_s"] = time.perf_counter() - started
    table["timings"] = times
    table["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    table["invocations"] = record_invocation(out_dir / "invocations.jsonl", table, args, chosen_runs)
    (out_dir / "README.md").write_text(readme(table, args, selected))
    (out_dir / "table.json").write_text(json.dumps(table, indent=1, default=float))
    log.info("benchmark %s done in %.0f s -> %s", args.preset, times["total_s"], out_dir)
    return table


if __name__ == "__main__":
    main()
